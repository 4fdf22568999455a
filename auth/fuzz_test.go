package auth

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzLoadSession writes arbitrary bytes as the session file and loads it
// through a FileStore: Load must never panic, must refuse what is not a
// usable session with an error that names the file and never quotes its
// content, and whatever it accepts must survive a Save and Load unchanged.
func FuzzLoadSession(f *testing.F) {
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	good, err := json.Marshal(&Session{Version: 1, ClientID: "cid", TokenURL: "https://auth.example/oauth/token",
		AccessToken: "at", RefreshToken: "rt", Expiry: exp, LoggedInAt: exp.Add(-time.Hour), RefreshTokenIssuedAt: exp.Add(-time.Hour)})
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(good),
		"",
		"{}",
		"null",
		"[]",
		`{"version":1,"access_token":"at","expiry":"2030-01-02T03:04:05Z"}`,
		`{"version":2,"access_token":"at","expiry":"2030-01-02T03:04:05Z"}`,
		`{"version":1,"access_token":"","expiry":"2030-01-02T03:04:05Z"}`,
		`{"version":1,"access_token":"at","expiry":"not a time"}`,
		`{"version":1,"access_token":1}`,
		`{"version":1,"access_token":"at","expiry":"2030-01-02T03:04:05Z"} {}`,
		`{"version":1,"access_token":"at","expiry":"2030-01-02T03:04:05Z"`,
		`{"version":1e400}`,
		"\xef\xbb\xbf{}",
		`{"version":1,"access_token":"at\u0000","expiry":"0001-01-01T00:00:00Z"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "session.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		store := NewFileStore(path)
		ctx := context.Background()
		s, err := loadSession(ctx, store)
		if err != nil {
			var se *StoreError
			if !errors.As(err, &se) {
				t.Fatalf("Load error %v is not a *StoreError", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, path) {
				t.Errorf("error %q does not name the file", msg)
			}
			if len(data) >= 8 && strings.Contains(msg, string(data)) {
				t.Errorf("error %q quotes the file's content", msg)
			}
			return
		}
		if s.AccessToken == "" || s.Expiry.IsZero() || s.Version != sessionVersion {
			t.Fatalf("Load accepted an unusable session: version %d, token %t, expiry %v", s.Version, s.AccessToken != "", s.Expiry)
		}
		if err := store.Save(ctx, s); err != nil {
			t.Fatalf("Save of a loaded session: %v", err)
		}
		again, err := loadSession(ctx, store)
		if err != nil {
			t.Fatalf("Load after Save: %v", err)
		}
		if again.AccessToken != s.AccessToken || again.RefreshToken != s.RefreshToken || !again.Expiry.Equal(s.Expiry) {
			t.Errorf("the session changed in a Save and Load round trip")
		}
	})
}
