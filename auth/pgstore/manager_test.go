package pgstore

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/testutil"
)

// Two proxies on one database share one session with rotating refresh
// tokens: the access token is refreshed again and again, by one of them
// at a time, no refresh token is ever sent twice (the fake Anaplan would
// revoke the grant), and both hand out the current token.
func TestTwoManagersShareOneSession(t *testing.T) {
	srv, err := anaplantest.Start(anaplantest.Options{AutoApprove: true, Interval: time.Second, AccessTokenLifetime: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cfg := auth.OAuthConfig{
		ClientID:      srv.ClientID(),
		DeviceAuthURL: srv.DeviceAuthURL(),
		TokenURL:      srv.TokenURL(),
		Scopes:        []string{"openid", "offline_access"},
		Encoding:      auth.EncodingJSON,
		HTTPClient:    srv.Client(),
	}
	dsn := pg.Database(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	out := &testutil.Buffer{}
	var managers []*auth.Manager
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after cancel: Run returns
	t.Cleanup(cancel)
	for _, host := range []string{"host-a", "host-b"} {
		s := openStore(t, dsn, withLease(3*time.Second), withLogs(out))
		if host == "host-a" {
			lctx, lcancel := context.WithTimeout(ctx, 20*time.Second)
			if _, err := auth.Login(lctx, cfg, s, nil); err != nil {
				lcancel()
				t.Fatalf("login: %v", err)
			}
			lcancel()
		}
		m := auth.NewManager(cfg, s, auth.ManagerOptions{
			Instance:      host,
			Logger:        slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})),
			WatchInterval: 200 * time.Millisecond,
		})
		managers = append(managers, m)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Run(ctx); err != nil {
				t.Errorf("%s: Run: %v", host, err)
			}
		}()
	}

	refreshes := func() (ok, refused int) {
		for _, c := range srv.Calls() {
			if c.GrantType != "refresh_token" || c.Status == 0 {
				continue
			}
			if c.Status == 200 {
				ok++
			} else {
				refused++
			}
		}
		return ok, refused
	}
	eventually(t, 60*time.Second, "four refreshes", func() bool {
		ok, refused := refreshes()
		if refused > 0 {
			t.Fatalf("the token endpoint refused %d refreshes:\n%s", refused, out)
		}
		return ok >= 4
	})
	// Both hand out the same, current token once the last refresh has
	// reached them.
	eventually(t, 10*time.Second, "both managers hand out one token", func() bool {
		a, errA := managers[0].AccessToken(ctx)
		b, errB := managers[1].AccessToken(ctx)
		return errA == nil && errB == nil && a == b
	})
	cancel()
	wg.Wait()
	if _, refused := refreshes(); refused > 0 {
		t.Fatalf("the token endpoint refused %d refreshes", refused)
	}
	for _, secret := range srv.IssuedSecrets() {
		if strings.Contains(out.String(), secret) {
			t.Fatal("a token is in the logs")
		}
	}
}
