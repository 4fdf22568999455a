package auth

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// hangingTokenEndpoint sits in front of the fake's token endpoint. While
// hang is set it takes each request whole and never answers, as a server
// that rotated the refresh token and whose answer was lost would look.
type hangingTokenEndpoint struct {
	hang     atomic.Bool
	received atomic.Int32 // requests taken while hanging
	url      string
}

func startHangingTokenEndpoint(t *testing.T, srv *anaplantest.Server, cfg *OAuthConfig) *hangingTokenEndpoint {
	t.Helper()
	target, err := url.Parse(srv.OAuthURL())
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = srv.Client().Transport
	h := &hangingTokenEndpoint{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.hang.Load() {
			h.received.Add(1)
			// The whole request is taken (the server notices the client
			// leaving only once the body has been read).
			io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	h.url = ts.URL + "/oauth/token"
	cfg.TokenURL = h.url
	return h
}

// A refresh request that went out and got no answer may have rotated the
// refresh token: it is never sent again. The session ends with a cause
// that says so, in this process and in the store for every other one.
func TestRefreshWithoutAnswerIsNeverReplayed(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(2*time.Second, false))
	store := newTestStore(t)
	loginFake(t, cfg, store)
	hang := startHangingTokenEndpoint(t, srv, &cfg)
	hang.hang.Store(true)
	h := newTunedHarness(t, srv, cfg, store, func(m *Manager) { m.r.callTimeout = 300 * time.Millisecond })

	eventually(t, 10*time.Second, "login_required", func() bool { return h.Status().State == StateLoginRequired })
	st := h.Status()
	if !strings.Contains(st.LastError, "outcome of a refresh is unknown") {
		t.Errorf("last_error = %q, want it to say the refresh's outcome is unknown", st.LastError)
	}
	rec, err := store.Load(context.Background())
	if err != nil || rec.Session.Ended == "" || rec.Flight != nil {
		t.Fatalf("stored record = %+v, %v; want the session ended and no mark", rec, err)
	}
	// Another process on the same store does not send it either.
	hang.hang.Store(false)
	other := newHarness(t, srv, cfg, NewFileStore(store.Path()))
	eventually(t, 5*time.Second, "the other process to load the ended session", func() bool {
		return other.Status().State == StateLoginRequired
	})
	if n := hang.received.Load(); n != 1 {
		t.Errorf("the unanswered refresh token reached the endpoint %d times, want 1", n)
	}
	if n := srv.Refreshes(); n != 0 {
		t.Errorf("%d refreshes reached the fake after the lost answer, want 0", n)
	}
	if r := h.refreshResults(); len(r) != 1 || r[0] != "uncertain" {
		t.Errorf("OnRefresh results = %v, want [uncertain]", r)
	}
}

// A refresh token that does not rotate may be sent again: a lost answer is
// then only a transient failure.
func TestRefreshWithoutAnswerRetriesAFixedRefreshToken(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(2*time.Second, true))
	store := newTestStore(t)
	loginFake(t, cfg, store)
	hang := startHangingTokenEndpoint(t, srv, &cfg)
	h := newTunedHarness(t, srv, cfg, store, func(m *Manager) {
		// Long enough for the first refresh to be answered on a loaded
		// machine: one whose answer came too late would leave the
		// rotation unknown, and the session would end instead.
		m.r.callTimeout = 2 * time.Second
		m.backoffMax = 200 * time.Millisecond
	})
	// One refresh shows that the refresh token does not rotate.
	eventually(t, 5*time.Second, "a first refresh", func() bool { return srv.Refreshes() >= 1 })
	eventually(t, 5*time.Second, "the rotation to be known", func() bool {
		s, err := loadSession(context.Background(), store)
		return err == nil && s.Rotation == RotationFixed
	})
	hang.hang.Store(true)
	eventually(t, 5*time.Second, "a request to go unanswered", func() bool { return hang.received.Load() >= 1 })
	hang.hang.Store(false)
	n := srv.Refreshes()
	eventually(t, 10*time.Second, "a refresh after the lost answer", func() bool { return srv.Refreshes() > n })
	if h.sawState(StateLoginRequired) {
		t.Error("a lost answer for a fixed refresh token ended the session")
	}
}

// markInFlight writes an intent mark as another process would, with a
// deadline d from now, and returns its flight.
func markInFlight(t *testing.T, path string, d time.Duration) Flight {
	t.Helper()
	other := NewFileStore(path)
	ctx := context.Background()
	l, err := other.Acquire(ctx, "other-host:4242")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release(ctx, l)
	rec, err := other.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	brec, err := other.Begin(ctx, l, rec.Version, d)
	if err != nil {
		t.Fatal(err)
	}
	return *brec.Flight
}

// A process that finds a refresh in flight under another holder waits for
// its result and never sends that refresh token, before or after the
// holder's deadline. Past it, the session is marked uncertain (login
// required), and a late result from the holder still rescues it.
func TestInFlightRefreshOfAnotherProcess(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		deadline time.Duration
		finish   bool // the holder writes its result in time
	}{
		{"holder finishes in time", 3 * time.Second, true},
		{"holder misses its deadline, then rescues", 200 * time.Millisecond, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, cfg := startFake(t, fakeOpts(2*time.Second, false))
			store := newTestStore(t)
			first := loginFake(t, cfg, store)
			flight := markInFlight(t, store.Path(), tt.deadline)
			var events []string
			evc := make(chan string, 64)
			h := newTunedHarness(t, srv, cfg, store, func(m *Manager) {
				m.opts.OnEvent = func(e string) { evc <- e }
			})
			saw := func(e string) bool {
				for {
					select {
					case got := <-evc:
						events = append(events, got)
					default:
						return contains(events, e)
					}
				}
			}
			if tt.finish {
				eventually(t, 5*time.Second, "the manager to find the refresh in flight", func() bool { return saw(EventInFlight) })
			} else {
				eventually(t, 10*time.Second, "login_required after the deadline", func() bool {
					return h.Status().State == StateLoginRequired
				})
				if st := h.Status(); !strings.Contains(st.LastError, "other-host:4242") {
					t.Errorf("last_error = %q does not name the holder", st.LastError)
				}
				rec, err := store.Load(context.Background())
				if err != nil || rec.Flight == nil || !rec.Flight.Uncertain {
					t.Fatalf("stored record = %+v, %v; want the flight marked uncertain", rec, err)
				}
				if !saw(EventUncertain) {
					t.Errorf("events = %v, want %s", events, EventUncertain)
				}
			}
			if n := srv.Refreshes(); n != 0 {
				t.Fatalf("%d refreshes while another process held the refresh in flight, want 0", n)
			}

			// The holder's refresh, done by hand (the fake rotates), and its
			// result write.
			tok, err := oauth2Config(cfg).TokenSource(withClient(context.Background(), oauthClient(cfg, nil)),
				&oauth2.Token{RefreshToken: first.RefreshToken}).Token()
			if err != nil {
				t.Fatal(err)
			}
			result := *first
			result.AccessToken, result.RefreshToken, result.Expiry = tok.AccessToken, tok.RefreshToken, tok.Expiry
			result.RefreshedBy = "other-host:4242"
			result.RefreshedAt = time.Now()
			if _, err := NewFileStore(store.Path()).Finish(context.Background(), flight, &result); err != nil {
				t.Fatalf("the holder's result write: %v", err)
			}
			eventually(t, 10*time.Second, "the holder's session to be adopted", func() bool { return saw(EventAdopted) })
			eventually(t, 5*time.Second, "state valid", func() bool { return h.Status().State == StateValid })
			got, err := h.AccessToken(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if ok, status := apiAccepts(t, srv, srv.Client(), got); !ok {
				t.Errorf("API refused the token served after the rescue: %s", status)
			}
			if n := srv.RefreshReplays(); n != 0 {
				t.Errorf("%d refresh tokens replayed", n)
			}
		})
	}
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// A write under a lease that has passed on is refused, whatever the
// holder believes.
func TestFileStoreFencesStaleWrites(t *testing.T) {
	store := newTestStore(t)
	ctx := context.Background()
	if err := store.Save(ctx, testSession("at", "rt", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	l, err := store.Acquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := store.Load(ctx)
	if err := store.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Begin(ctx, l, rec.Version, time.Second); !errors.Is(err, ErrFenced) {
		t.Errorf("Begin under a released lease = %v, want ErrFenced", err)
	}
	l2, _ := store.Acquire(ctx, "a")
	defer store.Release(ctx, l2)
	if _, err := store.Begin(ctx, l2, rec.Version-1, time.Second); !errors.Is(err, ErrConflict) {
		t.Errorf("Begin at a stale version = %v, want ErrConflict", err)
	}
	b, err := store.Begin(ctx, l2, rec.Version, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Begin(ctx, l2, b.Version, time.Second); !errors.Is(err, ErrConflict) {
		t.Errorf("Begin of a record already in flight = %v, want ErrConflict", err)
	}
	if _, err := store.MarkUncertain(ctx, l2, *b.Flight); !errors.Is(err, ErrConflict) {
		t.Errorf("MarkUncertain before the deadline = %v, want ErrConflict", err)
	}
	if err := store.Save(ctx, testSession("at-login", "rt-login", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Finish(ctx, *b.Flight, testSession("at-late", "rt-late", time.Now().Add(time.Hour))); !errors.Is(err, ErrConflict) {
		t.Errorf("Finish after a new login = %v, want ErrConflict", err)
	}
}

// lostAnswerStore is a store whose lease lapses (as a shared store's
// does) and whose first intent write is stored but reported as failed, as
// when the connection drops before COMMIT's answer arrives.
type lostAnswerStore struct {
	*FileStore
	lost atomic.Int32
}

func (s *lostAnswerStore) Acquire(ctx context.Context, holder string) (Lease, error) {
	l, err := s.FileStore.Acquire(ctx, holder)
	l.TTL = time.Hour
	return l, err
}

func (s *lostAnswerStore) Begin(ctx context.Context, l Lease, version int64, timeout time.Duration) (Record, error) {
	rec, err := s.FileStore.Begin(ctx, l, version, timeout)
	if err == nil && s.lost.Add(-1) >= 0 {
		return Record{}, errors.New("the connection was lost before COMMIT's answer")
	}
	return rec, err
}

// An intent write whose answer was lost leaves this process's own mark in
// the store. Nothing was sent under it, so this process clears it and
// refreshes: the session does not end as if another process had died
// inside a refresh.
func TestOwnUnansweredIntentIsCleared(t *testing.T) {
	t.Parallel()
	srv, cfg := startFake(t, fakeOpts(2*time.Second, false))
	fs := newTestStore(t)
	first := loginFake(t, cfg, fs)
	store := &lostAnswerStore{FileStore: fs}
	store.lost.Store(1)
	h := newTunedHarness(t, srv, cfg, store, func(m *Manager) { m.backoffMax = 200 * time.Millisecond })
	eventually(t, 10*time.Second, "a refresh after the lost answer", func() bool { return srv.Refreshes() >= 1 })
	eventually(t, 5*time.Second, "state valid", func() bool { return h.Status().State == StateValid })
	tok, err := h.AccessToken(context.Background())
	if err != nil || tok == first.AccessToken {
		t.Fatalf("AccessToken = %v; want the refreshed token", err)
	}
	if h.sawState(StateLoginRequired) {
		t.Error("the session ended over this process's own unused mark")
	}
	if store.lost.Load() >= 0 {
		t.Fatal("no intent write lost its answer: the test proves nothing")
	}
	if n := srv.RefreshReplays(); n != 0 {
		t.Errorf("%d refresh tokens replayed", n)
	}
}
