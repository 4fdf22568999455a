package auth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

func TestLoginWithFakeAnaplan(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		opts     anaplantest.Options
		decide   func(srv *anaplantest.Server, code string) error
		outage   bool
		wantErr  error
		wantSave bool
	}{
		{name: "approved", decide: (*anaplantest.Server).Approve, wantSave: true},
		{name: "denied", decide: (*anaplantest.Server).Deny, wantErr: ErrAccessDenied},
		{name: "expired", opts: anaplantest.Options{DeviceCodeLifetime: 1500 * time.Millisecond}, wantErr: ErrCodeExpired},
		{name: "token endpoint outage while polling", decide: (*anaplantest.Server).Approve, outage: true, wantSave: true},
	}
	runConcurrently(t, len(tests), func(i int) string { return tests[i].name }, func(t *testing.T, i int) {
		tt := tests[i]
		opts := tt.opts
		opts.Interval = time.Second
		srv, cfg := startFake(t, opts)
		store := newTestStore(t)
		ctx := testContext(t, 20*time.Second)

		if tt.outage {
			srv.SetTokenOutage(http.StatusServiceUnavailable)
		}
		shown := make(chan DeviceCode, 1)
		type result struct {
			s   *Session
			err error
		}
		done := make(chan result, 1)
		go func() {
			s, err := Login(ctx, cfg, store, func(dc DeviceCode) { shown <- dc })
			done <- result{s, err}
		}()
		dc := <-shown
		if dc.UserCode == "" || !strings.HasPrefix(dc.VerificationURIComplete, dc.VerificationURI) || dc.Interval != time.Second {
			t.Errorf("shown device code = %+v", dc)
		}
		if tt.outage {
			eventually(t, 10*time.Second, "a poll answered 503", func() bool {
				for _, c := range srv.Calls() {
					if c.Path == "/oauth/token" && c.Status == http.StatusServiceUnavailable {
						return true
					}
				}
				return false
			})
			srv.SetTokenOutage(0)
		}
		if tt.decide != nil {
			if err := tt.decide(srv, dc.UserCode); err != nil {
				t.Fatal(err)
			}
		}
		r := <-done
		if !errors.Is(r.err, tt.wantErr) {
			t.Fatalf("Login error = %v, want %v", r.err, tt.wantErr)
		}
		assertNoSecrets(t, "the error", errString(r.err), srv.IssuedSecrets())
		stored, err := loadSession(context.Background(), store)
		if !tt.wantSave {
			if !errors.Is(err, ErrNoSession) {
				t.Errorf("store after a failed login: %v, want ErrNoSession", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if stored.AccessToken != r.s.AccessToken || stored.RefreshToken == "" || stored.IDToken == "" ||
			stored.ClientID != cfg.ClientID || stored.TokenURL != cfg.TokenURL || stored.Version != 1 ||
			stored.LoggedInAt.IsZero() || stored.RefreshTokenIssuedAt.IsZero() || !stored.Expiry.After(time.Now()) {
			t.Errorf("stored session = %+v", stored)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestLoginAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		script    []scriptedAnswer
		wantErr   error
		wantIn    string
		wantPolls int
		minGaps   []time.Duration // between consecutive polls
	}{
		{name: "5xx then approved", script: []scriptedAnswer{{status: 502, body: "<html>bad gateway</html>", header: http.Header{"Content-Type": {"text/html"}}}, tokenAnswer("at", "rt", 60)}, wantPolls: 2},
		{name: "429 honours Retry-After", script: []scriptedAnswer{{status: 429, body: `{"error":"too_many"}`, header: http.Header{"Retry-After": {"3"}}}, tokenAnswer("at", "rt", 60)}, wantPolls: 2, minGaps: []time.Duration{2900 * time.Millisecond}},
		// slow_down adds 5 s to the 1 s interval for good, also across a
		// transient error that makes Login poll again.
		{name: "slow_down survives a retry", script: []scriptedAnswer{oauthErr(400, "slow_down"), {status: 503, body: "down"}, tokenAnswer("at", "rt", 60)},
			wantPolls: 3, minGaps: []time.Duration{5900 * time.Millisecond, 5900 * time.Millisecond}},
		{name: "pending then approved", script: []scriptedAnswer{oauthErr(400, "authorization_pending"), tokenAnswer("at", "rt", 60)}, wantPolls: 2},
		{name: "denied", script: []scriptedAnswer{oauthErr(400, "access_denied")}, wantErr: ErrAccessDenied, wantPolls: 1},
		{name: "2xx carrying access_denied", script: []scriptedAnswer{oauthErr(200, "access_denied")}, wantErr: ErrAccessDenied, wantPolls: 1},
		{name: "expired_token", script: []scriptedAnswer{oauthErr(400, "expired_token")}, wantErr: ErrCodeExpired, wantPolls: 1},
		{name: "unknown client is final", script: []scriptedAnswer{oauthErr(401, "invalid_client")}, wantIn: "token endpoint: invalid_client (described invalid_client)", wantPolls: 1},
		{name: "2xx carrying invalid_grant is final", script: []scriptedAnswer{oauthErr(200, "invalid_grant")}, wantIn: "invalid_grant", wantPolls: 1},
	}
	runConcurrently(t, len(tests), func(i int) string { return tests[i].name }, func(t *testing.T, i int) {
		tt := tests[i]
		srv, cfg := startScripted(t, tt.script...)
		store := newTestStore(t)
		s, err := Login(testContext(t, 20*time.Second), cfg, store, nil)
		if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
			t.Fatalf("Login error = %v, want %v", err, tt.wantErr)
		}
		if tt.wantIn != "" && (err == nil || !strings.Contains(err.Error(), tt.wantIn)) {
			t.Fatalf("Login error = %v, want one containing %q", err, tt.wantIn)
		}
		if tt.wantErr == nil && tt.wantIn == "" {
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			if s.AccessToken != "at" || s.RefreshToken != "rt" {
				t.Errorf("session = %+v", s)
			}
		}
		if err != nil && strings.Contains(err.Error(), "dc-secret") {
			t.Errorf("error %q contains the device code", err)
		}
		polls := srv.pollTimes()
		if len(polls) != tt.wantPolls {
			t.Errorf("token endpoint polled %d times, want %d", len(polls), tt.wantPolls)
		}
		for j, want := range tt.minGaps {
			if j+1 < len(polls) {
				if gap := polls[j+1].Sub(polls[j]); gap < want {
					t.Errorf("poll %d came %v after the previous one, want at least %v", j+2, gap, want)
				}
			}
		}
	})
}

func TestLoginEncodings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		encoding Encoding
		wantType string
		decode   func(t *testing.T, body string) map[string]string
	}{
		{EncodingJSON, "application/json", func(t *testing.T, body string) map[string]string {
			var m map[string]string
			if err := json.Unmarshal([]byte(body), &m); err != nil {
				t.Fatalf("body %q is not a JSON object of strings: %v", body, err)
			}
			return m
		}},
		{EncodingForm, "application/x-www-form-urlencoded", func(t *testing.T, body string) map[string]string {
			v, err := url.ParseQuery(body)
			if err != nil || strings.HasPrefix(body, "{") {
				t.Fatalf("body %q is not a form", body)
			}
			m := map[string]string{}
			for k := range v {
				m[k] = v.Get(k)
			}
			return m
		}},
	}
	runConcurrently(t, len(tests), func(i int) string { return string(tests[i].encoding) }, func(t *testing.T, i int) {
		tt := tests[i]
		srv, cfg := startFake(t, anaplantest.Options{AutoApprove: true, Interval: time.Second, AccessTokenLifetime: 2 * time.Second})
		rec := &recordingTransport{base: cfg.HTTPClient.Transport}
		cfg.HTTPClient = &http.Client{Transport: rec}
		cfg.Encoding = tt.encoding
		store := newTestStore(t)
		ctx := testContext(t, 20*time.Second)
		if _, err := Login(ctx, cfg, store, nil); err != nil {
			t.Fatal(err)
		}
		// The Manager's refreshes use the same encoding.
		runManager(t, NewManager(cfg, store, ManagerOptions{}))
		eventually(t, 10*time.Second, "a background refresh", func() bool { return srv.Refreshes() > 0 })

		want := map[string]map[string]string{
			"/oauth/device/code":   {"client_id": cfg.ClientID, "scope": "openid profile email offline_access"},
			"/oauth/token#device":  {"client_id": cfg.ClientID, "grant_type": "urn:ietf:params:oauth:grant-type:device_code"},
			"/oauth/token#refresh": {"client_id": cfg.ClientID, "grant_type": "refresh_token"},
		}
		seen := map[string]bool{}
		for _, r := range rec.sent() {
			if !strings.HasPrefix(r.ContentType, tt.wantType) {
				t.Errorf("%s sent with Content-Type %q, want %q", r.Path, r.ContentType, tt.wantType)
			}
			got := tt.decode(t, r.Body)
			key := r.Path
			if r.Path == "/oauth/token" {
				key += "#" + map[bool]string{true: "refresh", false: "device"}[got["grant_type"] == "refresh_token"]
			}
			seen[key] = true
			for k, v := range want[key] {
				if got[k] != v {
					t.Errorf("%s: %s = %q, want %q", key, k, got[k], v)
				}
			}
			if strings.HasSuffix(key, "device") && got["device_code"] == "" {
				t.Errorf("%s: no device_code", key)
			}
			if strings.HasSuffix(key, "refresh") && got["refresh_token"] == "" {
				t.Errorf("%s: no refresh_token", key)
			}
			if _, ok := got["client_secret"]; ok {
				t.Errorf("%s: sent a client_secret", key)
			}
		}
		for k := range want {
			if !seen[k] {
				t.Errorf("no %s request was sent", k)
			}
		}
	})
}

func TestLogout(t *testing.T) {
	t.Parallel()
	t.Run("revokes and deletes", func(t *testing.T) {
		t.Parallel()
		srv, cfg := startFake(t, anaplantest.Options{AutoApprove: true, Interval: time.Second})
		store := newTestStore(t)
		ctx := testContext(t, 20*time.Second)
		s, err := Login(ctx, cfg, store, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := Logout(ctx, cfg, store); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(store.Path()); !os.IsNotExist(err) {
			t.Errorf("session file still there after Logout (%v)", err)
		}
		revoked := false
		for _, c := range srv.Calls() {
			revoked = revoked || (c.Path == "/oauth/revoke" && c.Status == 200)
		}
		if !revoked {
			t.Error("the refresh token was not revoked")
		}
		// The revoked refresh token no longer works.
		if err := store.Save(ctx, s); err != nil {
			t.Fatal(err)
		}
		ts := oauth2Config(cfg).TokenSource(withClient(ctx, cfg.HTTPClient), &oauth2.Token{RefreshToken: s.RefreshToken})
		if _, err := ts.Token(); !isPermanent(sanitize("token", err)) {
			t.Errorf("refresh with the revoked token: %v, want a rejection", err)
		}
		if err := Logout(ctx, OAuthConfig{}, NewFileStore(store.Path()+".none")); err != nil {
			t.Errorf("Logout without a session = %v, want nil", err)
		}
	})
	t.Run("revocation failure still deletes", func(t *testing.T) {
		t.Parallel()
		srv, cfg := startScripted(t)
		srv.revoke = oauthErr(503, "temporarily_unavailable")
		store := newTestStore(t)
		ctx := testContext(t, 10*time.Second)
		if err := store.Save(ctx, testSession("at-secret", "rt-secret", time.Now().Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
		err := Logout(ctx, cfg, store)
		if err == nil || !strings.Contains(err.Error(), "revocation endpoint: temporarily_unavailable") {
			t.Errorf("Logout error = %v, want a revocation failure", err)
		}
		if err != nil && strings.Contains(err.Error(), "rt-secret") {
			t.Errorf("error %q contains the refresh token", err)
		}
		if _, err := loadSession(ctx, store); !errors.Is(err, ErrNoSession) {
			t.Errorf("session still stored after Logout: %v", err)
		}
		if len(srv.revokes) != 1 || srv.revokes[0].Get("token") != "rt-secret" || srv.revokes[0].Get("token_type_hint") != "refresh_token" {
			t.Errorf("revocation requests = %v", srv.revokes)
		}
	})
	t.Run("unsafe store is left alone", func(t *testing.T) {
		t.Parallel()
		store := newTestStore(t)
		ctx := testContext(t, 10*time.Second)
		if err := store.Save(ctx, testSession("at", "rt", time.Now().Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
		os.Chmod(store.Path(), 0o644)
		if err := Logout(ctx, OAuthConfig{}, store); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("Logout error = %v, want the unsafe-file error", err)
		}
		if _, err := os.Stat(store.Path()); err != nil {
			t.Errorf("unsafe session file was removed: %v", err)
		}
	})
}
