package auth

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
)

func testSession(access, refresh string, expiry time.Time) *Session {
	now := time.Now().Round(0)
	return &Session{
		Version:              1,
		ClientID:             "client",
		TokenURL:             "https://oauth.example/oauth/token",
		AccessToken:          access,
		TokenType:            "Bearer",
		Expiry:               expiry.Round(0),
		RefreshToken:         refresh,
		LoggedInAt:           now,
		RefreshTokenIssuedAt: now,
	}
}

func newTestStore(t *testing.T) *FileStore {
	t.Helper()
	return NewFileStore(filepath.Join(t.TempDir(), "session.json"))
}

func TestFileStoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	f := newTestStore(t)
	if _, err := loadSession(ctx, f); !errors.Is(err, ErrNoSession) {
		t.Fatalf("Load of a missing file = %v, want ErrNoSession", err)
	}
	want := testSession("at-1", "rt-1", time.Now().Add(time.Hour))
	want.IDToken = "id"
	if err := f.Save(ctx, want); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("mode = %04o, want 0600", perm)
	}
	got, err := loadSession(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	if got.AccessToken != want.AccessToken || got.RefreshToken != want.RefreshToken || got.IDToken != want.IDToken ||
		!got.Expiry.Equal(want.Expiry) || !got.LoggedInAt.Equal(want.LoggedInAt) || got.Version != 1 {
		t.Errorf("Load = %+v, want %+v", got, want)
	}
	raw, _ := os.ReadFile(f.Path())
	if !strings.Contains(string(raw), "\n  \"access_token\"") {
		t.Errorf("stored file is not indented JSON:\n%s", raw)
	}

	if err := f.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := loadSession(ctx, f); !errors.Is(err, ErrNoSession) {
		t.Fatalf("Load after Delete = %v, want ErrNoSession", err)
	}
	if err := f.Delete(ctx); err != nil {
		t.Errorf("Delete of a missing file = %v, want nil", err)
	}
}

func TestFileStoreRefusesUnsafeFiles(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string)
		want    string
	}{
		{"group and world readable", func(t *testing.T, path string) {
			if err := os.Chmod(path, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "chmod 600 "},
		{"owned by another user", func(t *testing.T, path string) {
			if os.Geteuid() != 0 {
				t.Skip("changing a file's owner needs root")
			}
			if err := os.Chown(path, 4242, 4242); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 4242"},
		{"symbolic link", func(t *testing.T, path string) {
			target := path + ".real"
			if err := os.Rename(path, target); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := newTestStore(t)
			if err := f.Save(ctx, testSession("at", "rt", time.Now().Add(time.Hour))); err != nil {
				t.Fatal(err)
			}
			tt.prepare(t, f.Path())
			s, err := loadSession(ctx, f)
			if err == nil {
				t.Fatalf("Load of an unsafe file returned a session: %+v", s)
			}
			if !errors.Is(err, securefile.ErrUnsafe) {
				t.Errorf("error %v does not wrap securefile.ErrUnsafe", err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), f.Path()) {
				t.Errorf("error %q should name the file and contain %q", err, tt.want)
			}
		})
	}
}

func TestFileStoreRejectsBadContent(t *testing.T) {
	const secret = "secret-refresh-value"
	tests := []struct {
		name    string
		content string
		want    string
	}{
		{"corrupt JSON", `{"version":1,"access_token":"` + secret, "truncated"},
		{"not JSON", "garbage " + secret, "not valid JSON"},
		{"empty file", "", "empty"},
		{"unknown version", `{"version":7,"access_token":"at","expiry":"2030-01-01T00:00:00Z"}`, "unknown format version 7"},
		{"missing access token", `{"version":1,"refresh_token":"` + secret + `","expiry":"2030-01-01T00:00:00Z"}`, "no access_token"},
		{"missing expiry", `{"version":1,"access_token":"at"}`, "no expiry"},
		{"wrong type", `{"version":"1","access_token":"at"}`, "wrong type"},
		{"trailing data", `{"version":1,"access_token":"at","expiry":"2030-01-01T00:00:00Z"} {}`, "trailing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTestStore(t)
			if err := os.WriteFile(f.Path(), []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := loadSession(context.Background(), f)
			var se *StoreError
			if !errors.As(err, &se) {
				t.Fatalf("Load = %v, want a *StoreError", err)
			}
			msg := err.Error()
			for _, part := range []string{f.Path(), tt.want, "move it aside and run `anaplan-proxy login`"} {
				if !strings.Contains(msg, part) {
					t.Errorf("error %q lacks %q", msg, part)
				}
			}
			if strings.Contains(msg, secret) {
				t.Errorf("error %q quotes the file's content", msg)
			}
		})
	}
}

func TestFileStoreLockExcludesAnotherStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "session.json")
	a, b := NewFileStore(path), NewFileStore(path)
	ctx := context.Background()

	unlockA, err := a.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	var held *LeaseHeldError
	if _, err := b.Acquire(short, "b"); !errors.As(err, &held) || held.Holder != "test" {
		t.Fatalf("second store got the lease while the first held it, or the error does not name the holder (err=%v)", err)
	}
	// The same store renews the lease it holds: same fence.
	l1, err := a.Acquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if l2, err := a.Acquire(ctx, "a"); err != nil || l2.Fence != l1.Fence || l1.Lapses() {
		t.Fatalf("renewing the held lease = %+v, %v; want fence %d that never lapses", l2, err, l1.Fence)
	}

	got := make(chan error, 1)
	go func() {
		unlockB, err := b.Lock(ctx)
		if err == nil {
			err = unlockB()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second store got the lock before it was released (err=%v)", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := unlockA(); err != nil {
		t.Fatal(err)
	}
	if err := unlockA(); err != nil {
		t.Errorf("second unlock = %v, want nil", err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second store never got the lock after release")
	}
}

func TestFileStoreStampChangesOnWrite(t *testing.T) {
	ctx := context.Background()
	f := newTestStore(t)
	empty, err := f.stamp()
	if err != nil || empty.exists {
		t.Fatalf("stamp of a missing file = %+v, %v", empty, err)
	}
	if err := f.Save(ctx, testSession("at-1", "rt-1", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	first, _ := f.stamp()
	if again, _ := f.stamp(); again != first {
		t.Fatal("stamp changed without a write")
	}
	if err := f.Save(ctx, testSession("at-1", "rt-1", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if second, _ := f.stamp(); second == first {
		t.Error("stamp did not change after Save")
	}
}

func TestLockRemovesTempsOfKilledWriters(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "session.json")
	stale := filepath.Join(dir, ".session.json.tmp-4242")
	if err := os.WriteFile(stale, []byte(`{"version":1,"access_token":"half`), 0o600); err != nil {
		t.Fatal(err)
	}
	unlock, err := NewFileStore(path).Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a killed writer's temporary file survives taking the lock: %v", err)
	}
}
