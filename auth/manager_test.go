package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// managerHarness is a Manager under test with everything it reported.
type managerHarness struct {
	*Manager
	srv   *anaplantest.Server
	cfg   OAuthConfig
	store *FileStore
	logs  *syncBuffer

	mu        sync.Mutex
	states    []State
	refreshes []string
	started   []time.Time // when each refresh attempt began
}

func (h *managerHarness) sawState(s State) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, x := range h.states {
		if x == s {
			return true
		}
	}
	return false
}

func (h *managerHarness) refreshResults() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.refreshes...)
}

// newHarness starts a Manager on store (a fresh one when nil) and checks,
// when the test ends, that nothing secret reached its logs.
func newHarness(t *testing.T, srv *anaplantest.Server, cfg OAuthConfig, store Store) *managerHarness {
	t.Helper()
	return newTunedHarness(t, srv, cfg, store, nil)
}

// newTunedHarness is newHarness with a chance to adjust the Manager before
// it runs.
func newTunedHarness(t *testing.T, srv *anaplantest.Server, cfg OAuthConfig, store Store, tune func(*Manager)) *managerHarness {
	t.Helper()
	h := &managerHarness{srv: srv, cfg: cfg, logs: &syncBuffer{}}
	if fs, ok := store.(*FileStore); ok {
		h.store = fs
	}
	logger := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.Manager = NewManager(cfg, store, ManagerOptions{
		Logger:        logger,
		WatchInterval: 100 * time.Millisecond,
		OnState: func(s Status) {
			h.mu.Lock()
			h.states = append(h.states, s.State)
			h.mu.Unlock()
		},
		OnRefresh: func(result string, d time.Duration) {
			h.mu.Lock()
			h.refreshes = append(h.refreshes, result)
			h.started = append(h.started, time.Now().Add(-d))
			h.mu.Unlock()
		},
	})
	t.Cleanup(func() {
		assertNoSecrets(t, "the logs", h.logs.String(), srv.IssuedSecrets())
		assertNoSecrets(t, "the status", fmt.Sprintf("%+v", h.Status()), srv.IssuedSecrets())
	})
	if tune != nil {
		tune(h.Manager)
	}
	runManager(t, h.Manager)
	return h
}

// loginFake logs in against an auto-approving fake and returns the session.
func loginFake(t *testing.T, cfg OAuthConfig, store Store) *Session {
	t.Helper()
	s, err := Login(testContext(t, 20*time.Second), cfg, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fakeOpts(life time.Duration, nonRotating bool) anaplantest.Options {
	return anaplantest.Options{AutoApprove: true, Interval: time.Second, AccessTokenLifetime: life, NonRotating: nonRotating}
}

// apiAccepts reports whether the fake's API accepts token.
func apiAccepts(t *testing.T, srv *anaplantest.Server, client *http.Client, token string) (bool, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.APIURL()+"/2/0/users/me", nil)
	req.Header.Set("Authorization", "AnaplanAuthToken "+token)
	resp, err := client.Do(req)
	if err != nil {
		t.Errorf("API request: %v", err)
		return false, ""
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, resp.Status
}

// Not parallel: it measures timing, so it runs before the busy tests.
func TestManagerRefreshesAtThreeQuartersOfLifetime(t *testing.T) {
	tests := []struct {
		name        string
		nonRotating bool
	}{
		{"rotating", false},
		{"non-rotating", true},
	}
	runConcurrently(t, len(tests), func(i int) string { return tests[i].name }, func(t *testing.T, i int) {
		tt := tests[i]
		const life = 2 * time.Second
		srv, cfg := startFake(t, fakeOpts(life, tt.nonRotating))
		store := newTestStore(t)
		first := loginFake(t, cfg, store)
		h := newHarness(t, srv, cfg, store)
		ctx := testContext(t, 20*time.Second)

		tok, err := h.AccessToken(ctx)
		if err != nil || tok != first.AccessToken {
			t.Fatalf("AccessToken = %.8q, %v; want the login's token", tok, err)
		}
		eventually(t, 5*time.Second, "the first refresh", func() bool { return len(h.refreshResults()) > 0 })
		h.mu.Lock()
		at := h.started[0].Sub(first.LoggedInAt)
		h.mu.Unlock()
		// 75% ±5% of 2 s, capped at the 500 ms safety margin.
		if at < 1300*time.Millisecond || at > 1700*time.Millisecond {
			t.Errorf("first refresh %v after login, want about 1.5 s", at)
		}
		eventually(t, 5*time.Second, "the refreshed token", func() bool {
			tok, err := h.AccessToken(ctx)
			return err == nil && tok != first.AccessToken
		})
		// Whoever holds the new token reads a valid status, unless the
		// next refresh has begun since (the token lives 2 s).
		st := h.Status()
		nextBegun := st.State == StateRefreshing && st.Since.After(st.LastRefresh)
		if (st.State != StateValid && !nextBegun) || st.LastRefresh.IsZero() || st.RefreshTokenAge == "" || !st.AccessTokenExpiry.After(time.Now()) {
			t.Errorf("Status = %+v", st)
		}
		stored, err := loadSession(ctx, store)
		if err != nil {
			t.Fatal(err)
		}
		if tt.nonRotating {
			if stored.RefreshToken != first.RefreshToken || !stored.RefreshTokenIssuedAt.Equal(first.RefreshTokenIssuedAt) {
				t.Error("a non-rotating refresh replaced the stored refresh token")
			}
		} else if stored.RefreshToken == first.RefreshToken || !stored.RefreshTokenIssuedAt.After(first.RefreshTokenIssuedAt) {
			t.Error("the rotated refresh token was not stored")
		}
		if !h.sawState(StateRefreshing) {
			t.Error("the refreshing state was never reported")
		}
		if r := h.refreshResults(); len(r) == 0 || r[0] != "success" {
			t.Errorf("OnRefresh results = %v", r)
		}
		if n := srv.RefreshReplays(); n != 0 {
			t.Errorf("%d refresh replays", n)
		}
	})
}

// Fifty callers hammer AccessToken across several refreshes of 1 s tokens:
// every caller gets a token the API accepts and the rotated refresh token is
// never presented twice.
func TestManagerConcurrentCallersNeverReplay(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(time.Second, false))
	store := newTestStore(t)
	loginFake(t, cfg, store)
	h := newHarness(t, srv, cfg, store)
	ctx := testContext(t, 30*time.Second)
	api := srv.Client()

	stop := time.Now().Add(3500 * time.Millisecond)
	var wg sync.WaitGroup
	var calls, failures, rejectedByAPI atomic.Int64
	var firstSeen sync.Map // tokens handed out
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pace := time.NewTicker(2 * time.Millisecond)
			defer pace.Stop()
			for n := 0; time.Now().Before(stop); n++ {
				<-pace.C
				tok, err := h.AccessToken(ctx)
				calls.Add(1)
				if err != nil {
					failures.Add(1)
					t.Errorf("AccessToken: %v", err)
					return
				}
				firstSeen.Store(tok, struct{}{})
				if i%10 == 0 && n%5 == 0 {
					if ok, status := apiAccepts(t, srv, api, tok); !ok {
						rejectedByAPI.Add(1)
						t.Errorf("API refused a token the Manager handed out: %s", status)
					}
				}
			}
		}()
	}
	wg.Wait()
	if n := srv.Refreshes(); n < 4 {
		t.Errorf("%d refreshes in 3.5 s of 1 s tokens, want at least 4", n)
	}
	if n := srv.RefreshReplays(); n != 0 {
		t.Errorf("%d refresh replays", n)
	}
	distinct := 0
	firstSeen.Range(func(any, any) bool { distinct++; return true })
	if distinct < 4 {
		t.Errorf("callers saw %d distinct tokens, want at least 4", distinct)
	}
	t.Logf("%d calls, %d refreshes, %d failures", calls.Load(), srv.Refreshes(), failures.Load()+rejectedByAPI.Load())
}

// TestManagerStoresRotatedTokenBeforeUse checks, on every new token, that the store holds
// it (or a newer session) at the moment it is first returned.
func TestManagerStoresRotatedTokenBeforeUse(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(time.Second, false))
	store := newTestStore(t)
	first := loginFake(t, cfg, store)
	h := newHarness(t, srv, cfg, store)
	ctx := testContext(t, 20*time.Second)
	prev := first.AccessToken
	seen := 0
	for seen < 3 {
		tok, err := h.AccessToken(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tok == prev {
			continue
		}
		s, err := loadSession(ctx, store)
		if err != nil {
			t.Fatal(err)
		}
		if s.AccessToken != tok {
			t.Fatalf("new token %d returned while the store holds another one", seen+1)
		}
		prev = tok
		seen++
	}
	if n := srv.RefreshReplays(); n != 0 {
		t.Errorf("%d refresh replays", n)
	}
}

func TestManagerTransientOutage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
	}{
		{http.StatusServiceUnavailable},
		{http.StatusTooManyRequests},
	}
	runConcurrently(t, len(tests), func(i int) string { return http.StatusText(tests[i].status) }, func(t *testing.T, i int) {
		tt := tests[i]
		srv, cfg := startFake(t, fakeOpts(2*time.Second, false))
		store := newTestStore(t)
		first := loginFake(t, cfg, store)
		srv.SetTokenOutage(tt.status)
		// Short backoff keeps the test fast; the cap is what differs
		// from production.
		h := newTunedHarness(t, srv, cfg, store, func(m *Manager) { m.backoffMax = time.Second })
		ctx := testContext(t, 30*time.Second)

		eventually(t, 5*time.Second, "degraded", func() bool { return h.Status().State == StateDegraded })
		// The still-valid token is served while refreshes fail.
		if time.Now().Before(first.Expiry.Add(-600 * time.Millisecond)) {
			if tok, err := h.AccessToken(ctx); err != nil || tok != first.AccessToken {
				t.Errorf("AccessToken while degraded = %v, want the still-valid token", err)
			}
		}
		if st := h.Status(); !strings.Contains(st.LastError, "temporarily_unavailable") {
			t.Errorf("LastError = %q", st.LastError)
		}
		// Once it has expired, callers get a clear, retryable answer.
		eventually(t, 5*time.Second, "the token to run out", func() bool { return !h.Ready() })
		_, err := h.AccessToken(ctx)
		var se *SessionError
		if !errors.As(err, &se) || se.LoginRequired() || se.RetryAfter() <= 0 ||
			!strings.HasPrefix(err.Error(), "the Anaplan token could not be refreshed (token endpoint: temporarily_unavailable") ||
			!strings.HasSuffix(err.Error(), "; retrying") {
			t.Errorf("AccessToken after expiry during an outage = %v", err)
		}

		srv.SetTokenOutage(0)
		eventually(t, 5*time.Second, "recovery", func() bool { return h.Status().State == StateValid })
		tok, err := h.AccessToken(ctx)
		if err != nil || tok == first.AccessToken {
			t.Errorf("AccessToken after recovery = %v", err)
		}
		if ok, status := apiAccepts(t, srv, srv.Client(), tok); !ok {
			t.Errorf("API refused the recovered token: %s", status)
		}
		if r := h.refreshResults(); len(r) < 2 || r[0] != "transient_error" || r[len(r)-1] != "success" {
			t.Errorf("OnRefresh results = %v", r)
		}
		if h.sawState(StateLoginRequired) {
			t.Error("a transient outage was reported as login_required")
		}
	})
}

func TestManagerRejectedRefreshTokenRequiresLogin(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(2*time.Second, false))
	store := newTestStore(t)
	loginFake(t, cfg, store)
	srv.RevokeAll()
	h := newHarness(t, srv, cfg, store)
	ctx := testContext(t, 20*time.Second)

	eventually(t, 5*time.Second, "login_required", func() bool { return h.Status().State == StateLoginRequired })
	if h.Ready() {
		t.Error("Ready with a rejected session")
	}
	_, err := h.AccessToken(ctx)
	var se *SessionError
	if !errors.As(err, &se) || !se.LoginRequired() || se.RetryAfter() != 0 {
		t.Fatalf("AccessToken = %v, want a login-required SessionError", err)
	}
	const want = "the Anaplan session ended (refresh token rejected: invalid_grant, refresh_token is revoked): run `anaplan-proxy login`"
	if err.Error() != want {
		t.Errorf("message = %q\nwant      %q", err, want)
	}
	if r := h.refreshResults(); len(r) != 1 || r[0] != "rejected" {
		t.Errorf("OnRefresh results = %v, want one rejection (no retries)", r)
	}
	if !strings.Contains(h.logs.String(), "state=login_required previous_state=refreshing cause=\"refresh token rejected: invalid_grant") {
		t.Errorf("state change not logged with its cause:\n%s", h.logs.String())
	}

	// A new login by another process brings it back.
	loginFake(t, cfg, NewFileStore(store.Path()))
	eventually(t, 3*time.Second, "the new login to be adopted", func() bool { return h.Ready() })
}

// failingStore fails its intent and result writes while failSaves is
// positive, as a full disk does.
type failingStore struct {
	*FileStore
	failSaves atomic.Int32
}

var errDiskFull = errors.New("write session.json: no space left on device")

func (f *failingStore) Begin(ctx context.Context, l Lease, version int64, timeout time.Duration) (Record, error) {
	if f.failSaves.Add(-1) >= 0 {
		return Record{}, errDiskFull
	}
	return f.FileStore.Begin(ctx, l, version, timeout)
}

func (f *failingStore) Finish(ctx context.Context, base Flight, s *Session) (Record, error) {
	if f.failSaves.Add(-1) >= 0 {
		return Record{}, errDiskFull
	}
	return f.FileStore.Finish(ctx, base, s)
}

func TestManagerKeepsUnsavedRotationAndCatchesUp(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(2*time.Second, false))
	fs := newTestStore(t)
	first := loginFake(t, cfg, fs)
	store := &failingStore{FileStore: fs}
	store.failSaves.Store(3)
	h := newHarness(t, srv, cfg, store)
	ctx := testContext(t, 20*time.Second)

	eventually(t, 5*time.Second, "degraded after a failed save", func() bool { return h.Status().State == StateDegraded })
	if st := h.Status(); !strings.Contains(st.LastError, "no space left on device") {
		t.Errorf("LastError = %q", st.LastError)
	}
	// The refreshed token is served from memory.
	tok, err := h.AccessToken(ctx)
	if err != nil || tok == first.AccessToken {
		t.Fatalf("AccessToken while the store is failing = %v; want the refreshed token", err)
	}
	if ok, status := apiAccepts(t, srv, srv.Client(), tok); !ok {
		t.Errorf("API refused the in-memory token: %s", status)
	}
	// While the store holds a dead refresh token, no other process may
	// refresh from it: the lock stays taken.
	if store.failSaves.Load() > 0 {
		lctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		if unlock, err := NewFileStore(fs.Path()).Lock(lctx); err == nil {
			unlock()
			if store.failSaves.Load() > 0 {
				t.Error("the store lock was free while the rotated refresh token was unsaved")
			}
		}
		cancel()
	}

	eventually(t, 15*time.Second, "the session to reach the disk", func() bool {
		s, err := loadSession(ctx, fs)
		return err == nil && s.RefreshToken != first.RefreshToken && h.Status().State == StateValid
	})
	eventually(t, 5*time.Second, "the stored token to be current", func() bool {
		s, err := loadSession(ctx, fs)
		tok, terr := h.AccessToken(ctx)
		return err == nil && terr == nil && s.AccessToken == tok
	})
	if n := srv.RefreshReplays(); n != 0 {
		t.Errorf("%d refresh replays", n)
	}
	// The lock is free again.
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	unlock, err := NewFileStore(fs.Path()).Lock(lctx)
	if err != nil {
		t.Fatalf("store lock still held after the session was written: %v", err)
	}
	unlock()
}

func TestTwoManagersOnOneStoreNeverReplay(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(time.Second, false))
	store := newTestStore(t)
	loginFake(t, cfg, store)
	a := newHarness(t, srv, cfg, NewFileStore(store.Path()))
	b := newHarness(t, srv, cfg, NewFileStore(store.Path()))
	ctx := testContext(t, 20*time.Second)

	stop := time.Now().Add(4 * time.Second)
	var wg sync.WaitGroup
	for _, m := range []*managerHarness{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if _, err := m.AccessToken(ctx); err != nil {
					t.Errorf("AccessToken: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := srv.RefreshReplays(); n != 0 {
		t.Errorf("%d refresh replays", n)
	}
	if n := srv.Refreshes(); n < 4 || n > 12 {
		t.Errorf("%d refreshes for 4 s of 1 s tokens shared by two Managers, want 4 to 12", n)
	}
	for _, m := range []*managerHarness{a, b} {
		tok, err := m.AccessToken(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok, status := apiAccepts(t, srv, srv.Client(), tok); !ok {
			t.Errorf("API refused a token: %s", status)
		}
	}
}

func TestManagerWatchesStore(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(time.Hour, false))
	store := newTestStore(t)
	h := newHarness(t, srv, cfg, store)
	ctx := testContext(t, 20*time.Second)

	eventually(t, 2*time.Second, "logged_out", func() bool { return h.sawState(StateLoggedOut) })
	_, err := h.AccessToken(ctx)
	if err == nil || err.Error() != "no Anaplan session: run `anaplan-proxy login`" {
		t.Fatalf("AccessToken without a session = %v", err)
	}

	other := NewFileStore(store.Path())
	s := loginFake(t, cfg, other)
	start := time.Now()
	eventually(t, 2*time.Second, "the login to be adopted", func() bool { return h.Ready() })
	t.Logf("login adopted after %v", time.Since(start))
	// The adopted token and the state it gives come together.
	if st := h.Status(); st.State != StateValid {
		t.Errorf("Status once the adopted token is usable = %s, want valid", st.State)
	}
	if tok, err := h.AccessToken(ctx); err != nil || tok != s.AccessToken {
		t.Errorf("AccessToken after login = %v, want the new login's token", err)
	}

	// A second login replaces the first.
	s2 := loginFake(t, cfg, other)
	eventually(t, 2*time.Second, "the second login to be adopted", func() bool {
		tok, err := h.AccessToken(ctx)
		return err == nil && tok == s2.AccessToken
	})

	if err := Logout(ctx, cfg, other); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "the logout to be noticed", func() bool { return h.Status().State == StateLoggedOut })
	if _, err := h.AccessToken(ctx); err == nil {
		t.Error("AccessToken still answers after logout")
	}
	if srv.Refreshes() != 0 {
		t.Errorf("%d refreshes; adopting a login needs none", srv.Refreshes())
	}
}

func TestManagerRejectedToken(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(time.Hour, false))
	store := newTestStore(t)
	first := loginFake(t, cfg, store)
	h := newHarness(t, srv, cfg, store)
	ctx := testContext(t, 20*time.Second)
	if _, err := h.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	// A token younger than a second is not refreshed on rejection.
	if time.Since(first.LoggedInAt) < 800*time.Millisecond {
		tok, err := h.Rejected(ctx, first.AccessToken)
		if err != nil || tok != first.AccessToken {
			t.Errorf("Rejected of a brand-new token = %v", err)
		}
	}
	eventually(t, 3*time.Second, "the token to be a second old", func() bool { return time.Since(first.LoggedInAt) > 1100*time.Millisecond })

	srv.ExpireAccessTokens()
	results := make(chan string, 20)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := h.Rejected(ctx, first.AccessToken)
			if err != nil {
				t.Errorf("Rejected: %v", err)
			}
			results <- tok
		}()
	}
	wg.Wait()
	close(results)
	var got string
	for tok := range results {
		if tok == first.AccessToken || (got != "" && tok != got) {
			t.Fatal("callers reporting the same rejected token did not all get one new token")
		}
		got = tok
	}
	if n := srv.Refreshes(); n != 1 {
		t.Errorf("%d refreshes for one rejected token, want 1", n)
	}
	// Reporting the old token again returns the current one without a refresh.
	if tok, err := h.Rejected(ctx, first.AccessToken); err != nil || tok != got {
		t.Errorf("Rejected(old token) = %v, want the current token", err)
	}
	if n := srv.Refreshes(); n != 1 {
		t.Errorf("%d refreshes after reporting a stale token, want 1", n)
	}
	if ok, status := apiAccepts(t, srv, srv.Client(), got); !ok {
		t.Errorf("API refused the new token: %s", status)
	}
}

// A client cannot make the proxy refresh at will: a 401 for the token a
// forced refresh just brought is passed on, and so is every 401 until the
// interval has passed (F8: six 401s 1.2 s apart made six refreshes).
func TestManagerForcedRefreshIsRateLimited(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		interval time.Duration
		want     int // refreshes from six rejections 1.2 s apart
	}{
		{"default interval", 0, 1},
		{"two-second interval", 2 * time.Second, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, cfg := startFake(t, fakeOpts(time.Hour, false))
			store := newTestStore(t)
			first := loginFake(t, cfg, store)
			var forced, suppressed atomic.Int32
			h := newTunedHarness(t, srv, cfg, store, func(m *Manager) {
				if tt.interval > 0 {
					m.opts.ForcedRefreshInterval = tt.interval
				}
				m.opts.OnForcedRefresh = func(r string) {
					if r == "refreshed" {
						forced.Add(1)
					} else {
						suppressed.Add(1)
					}
				}
			})
			ctx := testContext(t, 30*time.Second)
			eventually(t, 3*time.Second, "the token to be a second old", func() bool { return time.Since(first.LoggedInAt) > 1100*time.Millisecond })
			tok, err := h.AccessToken(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 6 {
				if i > 0 {
					<-time.After(1200 * time.Millisecond)
				}
				if tok, err = h.Rejected(ctx, tok); err != nil {
					t.Fatalf("Rejected #%d: %v", i+1, err)
				}
			}
			if n := srv.Refreshes(); n != tt.want {
				t.Errorf("%d refreshes from six rejections, want %d", n, tt.want)
			}
			if int(forced.Load()) != tt.want || int(suppressed.Load()) != 6-tt.want {
				t.Errorf("reported %d forced and %d suppressed, want %d and %d", forced.Load(), suppressed.Load(), tt.want, 6-tt.want)
			}
		})
	}
}

func TestSessionErrorMessages(t *testing.T) {
	tests := []struct {
		err  *SessionError
		want string
	}{
		{&SessionError{State: StateLoggedOut}, "no Anaplan session: run `anaplan-proxy login`"},
		{&SessionError{State: StateLoginRequired, Cause: &rejectionError{&EndpointError{Endpoint: "token", Code: "invalid_grant"}}},
			"the Anaplan session ended (refresh token rejected: invalid_grant): run `anaplan-proxy login`"},
		{&SessionError{State: StateDegraded, Cause: &EndpointError{Endpoint: "token", StatusCode: 503, Status: "503 Service Unavailable"}, Retry: time.Second},
			"the Anaplan token could not be refreshed (token endpoint: 503 Service Unavailable); retrying"},
		{&SessionError{State: StateDegraded, Cause: &EndpointError{Endpoint: "token", StatusCode: 503, Status: "503 Service Unavailable",
			Code: "temporarily_unavailable", Description: "down for maintenance"}, Retry: time.Second},
			"the Anaplan token could not be refreshed (token endpoint: temporarily_unavailable (down for maintenance), HTTP 503 Service Unavailable); retrying"},
		{&SessionError{State: StateLoginRequired, Cause: &StoreError{Path: "/var/lib/anaplan-proxy/session.json", Problem: "cannot be used", Fix: fixCorrupt, Err: errors.New("not valid JSON at byte 3")}},
			"the Anaplan session cannot be used: token store /var/lib/anaplan-proxy/session.json cannot be used (not valid JSON at byte 3): move it aside and run `anaplan-proxy login`"},
		{&SessionError{State: StateRefreshing}, "the Anaplan token is being refreshed; retry shortly"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q\nwant      %q", got, tt.want)
		}
		if strings.Contains(tt.err.Error(), "\n") {
			t.Errorf("message spans lines: %q", tt.err.Error())
		}
	}
}

func TestManagerCorruptStoreAtStart(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(time.Hour, false))
	store := newTestStore(t)
	if err := os.WriteFile(store.Path(), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, srv, cfg, store)
	ctx := testContext(t, 10*time.Second)
	eventually(t, 2*time.Second, "login_required", func() bool { return h.Status().State == StateLoginRequired })
	_, err := h.AccessToken(ctx)
	if err == nil || !strings.Contains(err.Error(), store.Path()) || !strings.Contains(err.Error(), "move it aside") {
		t.Errorf("AccessToken with a corrupt store = %v", err)
	}
	loginFake(t, cfg, NewFileStore(store.Path()))
	eventually(t, 2*time.Second, "the new login to be adopted", func() bool { return h.Ready() })
}

func TestManagerRefusesUnsafeStore(t *testing.T) {
	t.Parallel()
	store := newTestStore(t)
	if err := store.Save(context.Background(), testSession("at", "rt", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(store.Path(), 0o640); err != nil {
		t.Fatal(err)
	}
	m := NewManager(OAuthConfig{}, store, ManagerOptions{})
	err := m.Run(testContext(t, 5*time.Second))
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Run with a world-readable store = %v, want a refusal naming the fix", err)
	}
	if m.Ready() {
		t.Error("Ready with a refused store")
	}
}

// Loaded lets start-up report the stored session's state instead of the
// logged_out that precedes the first read; the first state change has no
// previous state to name.
func TestManagerLoadedReportsStoredSession(t *testing.T) {
	tests := []struct {
		name  string
		login bool
		want  State
	}{
		{"stored session", true, StateValid},
		{"nothing stored", false, StateLoggedOut},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, cfg := startFake(t, fakeOpts(time.Hour, false))
			store := NewFileStore(t.TempDir() + "/session.json")
			if tt.login {
				loginFake(t, cfg, store)
			}
			h := newHarness(t, srv, cfg, store)
			select {
			case <-h.Loaded():
			case <-time.After(10 * time.Second):
				t.Fatal("Loaded was not closed after Run read the store")
			}
			if got := h.Status().State; got != tt.want {
				t.Errorf("state once loaded = %s, want %s", got, tt.want)
			}
			logs := h.logs.String()
			at := strings.Index(logs, `msg="session state changed"`)
			if at < 0 {
				t.Fatalf("no state change logged:\n%s", logs)
			}
			first, _, _ := strings.Cut(logs[at:], "\n")
			if strings.Contains(first, "previous_state") {
				t.Errorf("the first state change names a previous state: %s", first)
			}
			if !strings.Contains(first, "state="+string(tt.want)) {
				t.Errorf("the first state change is %q, want state=%s", first, tt.want)
			}
		})
	}
}

// A Manager whose Run stops before reading the store (an unsafe store) still
// closes Loaded, so nobody waits for a load that never comes.
func TestManagerLoadedClosedWhenRunFails(t *testing.T) {
	_, cfg := startFake(t, fakeOpts(time.Hour, false))
	dir := t.TempDir()
	store := NewFileStore(dir + "/session.json")
	loginFake(t, cfg, store)
	if err := os.Chmod(dir+"/session.json", 0o644); err != nil {
		t.Fatal(err)
	}
	m := NewManager(cfg, store, ManagerOptions{})
	if err := m.Run(context.Background()); err == nil {
		t.Fatal("Run accepted a world-readable store")
	}
	select {
	case <-m.Loaded():
	default:
		t.Fatal("Loaded is still open after Run returned")
	}
}

// A token answer that arrives late must not stretch the token's life: the
// server counted expires_in from when it issued the token, so the Manager
// counts it from when it sent the request, and never injects a token the
// API already considers expired.
func TestManagerCountsLifetimeFromRequest(t *testing.T) {
	t.Parallel()
	const delay = 800 * time.Millisecond
	var issued atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		issued.CompareAndSwap(0, time.Now().UnixNano())
		// The answer is slow to arrive (a loaded server or network).
		<-time.After(delay)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"at-new","refresh_token":"rt-new","token_type":"Bearer","expires_in":3}`)
	}))
	t.Cleanup(srv.Close)
	store := newTestStore(t)
	ctx := testContext(t, 20*time.Second)
	now := time.Now()
	if err := store.Save(ctx, &Session{Version: 1, ClientID: "client", TokenURL: srv.URL, AccessToken: "at-old",
		Expiry: now.Add(-time.Minute), RefreshToken: "rt-old", LoggedInAt: now.Add(-time.Hour), RefreshTokenIssuedAt: now.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	m := NewManager(OAuthConfig{ClientID: "client", TokenURL: srv.URL, Encoding: EncodingForm, HTTPClient: srv.Client()}, store, ManagerOptions{})
	runManager(t, m)
	tok, err := m.AccessToken(ctx)
	if err != nil || tok != "at-new" {
		t.Fatalf("AccessToken = %q, %v; want the refreshed token", tok, err)
	}
	serverExpiry := time.Unix(0, issued.Load()).Add(3 * time.Second)
	if got := m.Status().AccessTokenExpiry; got.After(serverExpiry) {
		t.Errorf("expiry %s is %s after the server's", got.Format(time.StampMilli), got.Sub(serverExpiry))
	}
}
