package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
)

// Tuning of the refresh loop. The refresh timeout is deliberately long: a
// refresh abandoned after the server rotated the refresh token loses the
// new one, and the next attempt would replay the old one.
const (
	refreshTimeout     = 60 * time.Second
	lockTimeout        = 30 * time.Second
	backoffBase        = time.Second
	backoffMax         = 60 * time.Second
	maxRetryAfter      = 10 * time.Minute
	persistBase        = 500 * time.Millisecond
	persistMax         = 30 * time.Second
	minRetryDelay      = 100 * time.Millisecond
	defaultForced      = 5 * time.Minute
	minFreshForced     = time.Second
	expiryMarginMin    = 500 * time.Millisecond
	expiryMarginPart   = 0.02
	refreshJitter      = 0.05
	refreshLead        = 0.01
	finalSaveTimeout   = 5 * time.Second
	defaultFraction    = 0.75
	defaultWatch       = time.Second
	defaultWaitRefresh = 10 * time.Second
	// notifiedPoll is how often a store that announces its changes is
	// read anyway, in case an announcement was lost.
	notifiedPoll = 30 * time.Second
)

// Manager holds the session and hands out its access token. Its Run loop
// refreshes the token in the background before it expires, by the Store's
// refresh protocol (see Store): one refresh at a time across every process
// that shares the store, every rotated refresh token in the store before the
// new access token is used, and never a refresh token sent twice. It also
// adopts what other processes write to the store: their refreshes, logins
// and logouts.
//
// The I/O of a refresh is the refresher's; the Manager holds the state and
// publishes one immutable snapshot of the token.
//
// A Manager is safe for concurrent use. AccessToken and Ready are cheap
// while the token is valid; they never refresh on the caller's goroutine.
type Manager struct {
	cfg   OAuthConfig
	store Store
	opts  ManagerOptions
	log   *slog.Logger
	r     *refresher
	// Backoff after failed refreshes: full jitter up to base·2^(n-1),
	// capped.
	backoffBase, backoffMax time.Duration

	snap   atomic.Pointer[tokenSnap] // the token AccessToken may return
	kick   chan struct{}             // asks the loop to look at the session now
	loaded chan struct{}             // closed once Run has read the store
	once   sync.Once                 // closes loaded

	mu          sync.Mutex
	running     bool
	stopped     bool
	changed     chan struct{} // closed and replaced on every change
	sess        *Session      // newest session, possibly not yet saved
	ver         int64         // the store version sess was read or written as
	issued      time.Time     // when sess's access token was obtained
	state       State
	since       time.Time
	cause       error // why the state was entered; nil when valid
	lastErr     error
	lastRefresh time.Time
	refreshAt   time.Time
	retryAt     time.Time     // no refresh before this (backoff)
	bad         string        // access token reported as rejected
	forced      bool          // refresh now, the token was rejected
	lastForced  time.Time     // when a rejected token last forced a refresh
	forcedTok   string        // the token that refresh brought
	dead        bool          // sess can no longer be refreshed: serve nothing
	pending     *pendingWrite // a result write not yet in the store; sess is newer than the store
	failed      uint64        // refresh attempts that failed so far

	// Owned by the Run goroutine.
	failures        int
	persistFailures int
	persistAt       time.Time
	lease           *Lease // kept while pending on a store whose lease cannot lapse
	stamp           fileStamp
	haveStamp       bool
	lastStoreErr    string
}

type tokenSnap struct {
	token       string
	usableUntil time.Time
}

// NewManager returns a Manager for the session kept in store. Nothing
// happens until Run is called.
func NewManager(cfg OAuthConfig, store Store, opts ManagerOptions) *Manager {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.RefreshFraction <= 0 || opts.RefreshFraction >= 1 {
		opts.RefreshFraction = defaultFraction
	}
	if opts.WatchInterval <= 0 {
		opts.WatchInterval = defaultWatch
	}
	if opts.WaitForRefresh <= 0 {
		opts.WaitForRefresh = defaultWaitRefresh
	}
	if opts.ForcedRefreshInterval <= 0 {
		opts.ForcedRefreshInterval = defaultForced
	}
	if opts.Instance == "" {
		opts.Instance = DefaultInstance()
	}
	return &Manager{
		cfg:   cfg,
		store: store,
		opts:  opts,
		log:   opts.Logger,
		r: &refresher{
			cfg:         cfg,
			conf:        oauth2Config(cfg),
			client:      oauthClient(cfg, nil),
			store:       store,
			holder:      opts.Instance,
			log:         opts.Logger,
			leaseWait:   lockTimeout,
			callTimeout: refreshTimeout,
			failpoint:   opts.Failpoint,
		},
		backoffBase: backoffBase,
		backoffMax:  backoffMax,
		kick:        make(chan struct{}, 1),
		loaded:      make(chan struct{}),
		changed:     make(chan struct{}),
	}
}

// SessionError messages. They are the one line a script's operator sees.
func (e *SessionError) Error() string {
	switch e.State {
	case StateLoggedOut:
		return "no Anaplan session: run `anaplan-proxy login`"
	case StateLoginRequired:
		var se *StoreError
		if errors.As(e.Cause, &se) {
			return "the Anaplan session cannot be used: " + se.Error()
		}
		if e.Cause != nil {
			return "the Anaplan session ended (" + e.Cause.Error() + "): run `anaplan-proxy login`"
		}
		return "the Anaplan session ended: run `anaplan-proxy login`"
	default:
		if e.Cause != nil {
			return "the Anaplan token could not be refreshed (" + e.Cause.Error() + "); retrying"
		}
		return "the Anaplan token is being refreshed; retry shortly"
	}
}

// rejectionError is the cause of login_required after the token endpoint
// refused the refresh token.
type rejectionError struct{ e *EndpointError }

func (r *rejectionError) Error() string {
	s := "refresh token rejected: "
	switch {
	case r.e.Code != "" && r.e.Description != "":
		return s + r.e.Code + ", " + r.e.Description
	case r.e.Code != "":
		return s + r.e.Code
	}
	return s + r.e.Status
}

func (r *rejectionError) Unwrap() error { return r.e }

// AccessToken returns the current access token. While it is valid this
// returns at once. When it has expired or was rejected, it waits (at most
// ManagerOptions.WaitForRefresh, and not beyond ctx) for the refresh that
// the Run loop performs; the refresh itself is never tied to ctx. When no
// token can be had it returns a *SessionError.
func (m *Manager) AccessToken(ctx context.Context) (string, error) {
	if tok, ok := m.current(time.Now()); ok {
		return tok, nil
	}
	return m.wait(ctx)
}

// Loaded returns a channel that is closed once Run has read the store for
// the first time (or has stopped without reading it). Until then Status
// says logged_out even when a session is stored, so a caller that reports
// the state at start-up should wait for it, with a bound of its own.
func (m *Manager) Loaded() <-chan struct{} { return m.loaded }

// Ready reports whether a usable access token exists now.
func (m *Manager) Ready() bool {
	_, ok := m.current(time.Now())
	return ok
}

// Rejected tells the Manager that an API refused token. If the Manager
// already holds a different usable token it returns that one. Otherwise it
// refreshes (once, however many callers report the same token) and returns
// the new token, waiting as AccessToken does. Two kinds of token are
// returned as they are, without a refresh: one obtained less than a second
// ago, and one that a forced refresh brought, within
// ManagerOptions.ForcedRefreshInterval (at most half its lifetime) of that
// refresh. A 401 that a fresh token cannot fix then reaches the client,
// instead of a refresh any client could force at will.
func (m *Manager) Rejected(ctx context.Context, token string) (string, error) {
	now := time.Now()
	m.mu.Lock()
	if s := m.snap.Load(); s != nil && s.token != "" && s.token != token && now.Before(s.usableUntil) {
		m.mu.Unlock()
		return s.token, nil
	}
	if m.sess != nil && m.sess.AccessToken == token && token != "" && m.bad != token {
		window := min(m.opts.ForcedRefreshInterval, m.sess.Expiry.Sub(m.issued)/2)
		if now.Sub(m.issued) < minFreshForced || (token == m.forcedTok && now.Sub(m.lastForced) < window) {
			m.mu.Unlock()
			m.onForced("suppressed")
			return token, nil
		}
		m.lastForced = now
		m.bad = token
		m.forced = true
		m.publishLocked()
		m.mu.Unlock()
		m.onForced("refreshed")
		m.log.Info("access token rejected by the API; refreshing")
		m.poke()
		return m.wait(ctx)
	}
	m.mu.Unlock()
	m.poke()
	return m.wait(ctx)
}

// Status returns a snapshot for /status and metrics.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.statusLocked(time.Now())
}

func (m *Manager) statusLocked(now time.Time) Status {
	st := Status{State: m.state, Since: m.since, LastRefresh: m.lastRefresh}
	if st.State == "" {
		st.State = StateLoggedOut
	}
	if m.lastErr != nil {
		st.LastError = m.lastErr.Error()
	}
	if m.sess != nil && st.State != StateLoginRequired && st.State != StateLoggedOut {
		st.AccessTokenExpiry = m.sess.Expiry
	}
	if m.sess != nil && !m.sess.RefreshTokenIssuedAt.IsZero() && st.State != StateLoggedOut {
		st.RefreshTokenIssuedAt = m.sess.RefreshTokenIssuedAt
		st.RefreshTokenAge = now.Sub(m.sess.RefreshTokenIssuedAt).Round(time.Second).String()
	}
	st.Store = m.store.String()
	st.Instance = m.opts.Instance
	if m.sess != nil {
		st.Refresher = m.sess.RefreshedBy
	}
	return st
}

func (m *Manager) current(now time.Time) (string, bool) {
	s := m.snap.Load()
	if s == nil || s.token == "" || !now.Before(s.usableUntil) {
		return "", false
	}
	return s.token, true
}

func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// wait is the slow path of AccessToken and Rejected.
func (m *Manager) wait(ctx context.Context) (string, error) {
	deadline := time.Now().Add(m.opts.WaitForRefresh)
	timer := time.NewTimer(m.opts.WaitForRefresh)
	defer timer.Stop()
	select {
	case <-m.loaded:
	case <-timer.C:
		return "", &SessionError{State: StateRefreshing, Cause: errors.New("the session has not been loaded yet"), Retry: time.Second}
	case <-ctx.Done():
		return "", ctx.Err()
	}
	var failedBefore uint64
	for first := true; ; first = false {
		now := time.Now()
		if tok, ok := m.current(now); ok {
			return tok, nil
		}
		m.mu.Lock()
		if first {
			failedBefore = m.failed
		}
		serr, wait := m.verdictLocked(now, deadline)
		// Wait for the outcome of one refresh attempt, not for recovery.
		wait = wait && m.failed == failedBefore
		ch := m.changed
		m.mu.Unlock()
		if !wait {
			return "", serr
		}
		m.poke()
		select {
		case <-ch:
		case <-timer.C:
			m.mu.Lock()
			serr, _ := m.verdictLocked(time.Now(), time.Time{})
			m.mu.Unlock()
			return "", serr
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// verdictLocked explains why no token is available and whether waiting
// until deadline could change that.
func (m *Manager) verdictLocked(now, deadline time.Time) (*SessionError, bool) {
	state := m.state
	switch {
	case state == StateLoginRequired || m.dead:
		return &SessionError{State: StateLoginRequired, Cause: m.cause}, false
	case m.sess == nil || state == StateLoggedOut || state == "":
		return &SessionError{State: StateLoggedOut, Cause: m.cause}, false
	case m.sess.RefreshToken == "":
		return &SessionError{State: StateLoginRequired, Cause: errors.New("the access token expired and the server issued no refresh token")}, false
	}
	retry := time.Second
	if m.retryAt.After(now) {
		retry = m.retryAt.Sub(now)
	}
	serr := &SessionError{State: state, Cause: m.cause, Retry: retry}
	if m.stopped {
		serr.Cause = errors.New("the session manager has stopped")
		return serr, false
	}
	if state == StateValid {
		serr.State = StateRefreshing
	}
	return serr, !m.retryAt.After(deadline)
}

// Run loads the session from the store and keeps it fresh until ctx is
// done, then returns nil. It returns an error only when the store is unsafe
// (open to other users): such a store is never used or replaced. A refresh
// in flight when ctx ends is allowed to finish, so that a rotated refresh
// token is not lost.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running || m.stopped {
		m.mu.Unlock()
		return errors.New("auth: Manager.Run called twice")
	}
	m.running = true
	m.mu.Unlock()
	defer m.shutdown()

	if err := m.initialLoad(ctx); err != nil {
		return err
	}
	m.once.Do(func() { close(m.loaded) })

	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	notes := m.store.Watch(wctx)
	poll := m.opts.WatchInterval
	if notes != nil {
		// The store says when it changes; polling is only the fallback.
		poll = max(poll, notifiedPoll)
	}
	watch := time.NewTicker(poll)
	defer watch.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if d, ok := m.nextWake(time.Now()); ok {
			timer.Reset(d)
		} else {
			timer.Stop()
		}
		var err error
		select {
		case <-ctx.Done():
			return nil
		case <-watch.C:
			err = m.watch(ctx, false)
		case <-notes:
			err = m.watch(ctx, true)
		case <-m.kick:
			err = m.step(ctx)
		case <-timer.C:
			err = m.step(ctx)
		}
		if err != nil {
			return err
		}
	}
}

func (m *Manager) shutdown() {
	m.mu.Lock()
	p := m.pending
	m.mu.Unlock()
	if p != nil {
		ctx, cancel := context.WithTimeout(context.Background(), finalSaveTimeout)
		if _, err := m.store.Finish(ctx, p.base, p.sess); err != nil && !p.abort {
			m.log.Error("the newest session could not be written before stopping; the refresh token in the store is no longer valid",
				"cause", err.Error())
		} else {
			m.mu.Lock()
			m.pending = nil
			m.mu.Unlock()
		}
		cancel()
	}
	m.releaseLease()
	m.mu.Lock()
	m.running = false
	m.stopped = true
	m.notifyLocked()
	m.mu.Unlock()
	m.once.Do(func() { close(m.loaded) })
}

func (m *Manager) initialLoad(ctx context.Context) error {
	m.recordStamp()
	rec, err := m.store.Load(ctx)
	switch {
	case errors.Is(err, ErrNoSession):
		m.mu.Lock()
		m.ver = rec.Version
		m.mu.Unlock()
		m.setState(StateLoggedOut, nil)
	case err != nil:
		if errors.Is(err, securefile.ErrUnsafe) {
			m.log.Error("refusing the token store", "cause", err.Error())
			return err
		}
		m.lastStoreErr = err.Error()
		m.setState(StateLoginRequired, err)
	default:
		m.adopt(rec, "loaded the stored session")
	}
	return nil
}

// releaseLease gives up a lease kept from a refresh.
func (m *Manager) releaseLease() {
	if m.lease == nil {
		return
	}
	if err := m.store.Release(context.Background(), *m.lease); err != nil {
		m.log.Warn("releasing the refresh lease failed", "cause", err.Error())
	}
	m.lease = nil
}

// nextWake is how long the loop may sleep before step has work to do.
func (m *Manager) nextWake(now time.Time) (time.Duration, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var next time.Time
	if m.pending != nil {
		next = m.persistAt
	}
	if t, ok := m.refreshTimeLocked(); ok && (next.IsZero() || t.Before(next)) {
		next = t
	}
	if m.sess != nil && m.sess.RefreshToken == "" && m.state == StateValid {
		if s := m.snap.Load(); s != nil && (next.IsZero() || s.usableUntil.Before(next)) {
			next = s.usableUntil
		}
	}
	if next.IsZero() {
		return 0, false
	}
	return max(next.Sub(now), 0), true
}

// refreshTimeLocked is when the next refresh is due, if one can happen.
func (m *Manager) refreshTimeLocked() (time.Time, bool) {
	if m.sess == nil || m.sess.RefreshToken == "" || m.dead || m.state == StateLoggedOut {
		return time.Time{}, false
	}
	t := m.refreshAt
	if m.forced || m.bad != "" {
		t = time.Time{}
	}
	if m.retryAt.After(t) {
		t = m.retryAt
	}
	return t, true
}

// step does whatever is due: write an unsaved session, refresh.
func (m *Manager) step(ctx context.Context) error {
	now := time.Now()
	m.mu.Lock()
	persist := m.pending != nil && !now.Before(m.persistAt)
	m.mu.Unlock()
	if persist {
		m.persist(ctx)
	}
	m.mu.Lock()
	t, ok := m.refreshTimeLocked()
	due := ok && !now.Before(t)
	dead := m.sess != nil && m.sess.RefreshToken == "" && m.state == StateValid
	m.mu.Unlock()
	if due {
		return m.refresh(ctx)
	}
	if dead && !m.Ready() {
		m.setState(StateLoginRequired, errors.New("the access token expired and the server issued no refresh token"))
	}
	return nil
}

// refresh runs one refresh cycle and publishes its outcome.
func (m *Manager) refresh(ctx context.Context) error {
	start := time.Now()
	m.mu.Lock()
	from := m.state
	mem, ver, bad, p := m.sess, m.ver, m.bad, m.pending
	m.mu.Unlock()
	if from == StateValid {
		m.setState(StateRefreshing, nil)
	}
	if p != nil && p.abort {
		// Clear our own in-flight mark first: until then the store says a
		// refresh is in flight and nobody, this process included, may
		// start one.
		m.persist(ctx)
		m.mu.Lock()
		p = m.pending
		m.mu.Unlock()
		if p != nil {
			m.transientFailure(errors.New("the token store cannot be written"))
			return nil
		}
	}
	var out outcome
	if p != nil {
		out = m.r.chained(ctx, m.lease, p)
	} else {
		out = m.r.cycle(ctx, m.lease, ver, mem, bad)
	}
	m.lease = out.lease
	if out.result != "" {
		m.onRefresh(out.result, time.Since(start))
	}
	if out.event != "" {
		m.onEvent(out.event)
	}
	return m.apply(out)
}

// apply publishes the outcome of a refresh cycle.
func (m *Manager) apply(out outcome) error {
	switch out.kind {
	case outRefreshed:
		m.failures = 0
		m.persistFailures = 0
		m.recordStamp()
		m.publishRefreshed(out.rec.Session, out.rec.Version, out.sent)
	case outUnsaved:
		m.failures = 0
		m.mu.Lock()
		m.pending = out.pending
		m.mu.Unlock()
		m.publishRefreshed(out.pending.sess, 0, out.sent)
		m.saveFailed(out.err)
	case outAdopt:
		m.adopt(out.rec, "another process refreshed the session")
	case outBusy:
		m.mu.Lock()
		m.retryAt = time.Now().Add(out.retry)
		m.mu.Unlock()
		if out.err != nil {
			m.log.Debug("not refreshing now", "cause", out.err.Error(), "retry_in", out.retry.Round(time.Millisecond).String())
		}
	case outTransient:
		if out.pending != nil {
			m.mu.Lock()
			m.pending = out.pending
			m.mu.Unlock()
		}
		m.transientFailure(out.err)
	case outEnded:
		if out.rec.Session != nil {
			m.mu.Lock()
			m.sess, m.ver = out.rec.Session, out.rec.Version
			m.mu.Unlock()
		}
		m.rejected(out.err)
	case outLoggedOut:
		m.loggedOut()
	case outFatal:
		m.log.Error("refusing the token store", "cause", out.err.Error())
		return out.err
	}
	return nil
}

// publishRefreshed makes ns, obtained by a refresh sent at sent and
// stored as ver (0 when not stored yet), the session served.
func (m *Manager) publishRefreshed(ns *Session, ver int64, sent time.Time) {
	now := time.Now()
	// The new token and the valid state are published together: a caller
	// holding the new token never reads a status that still says refreshing.
	var late time.Duration
	m.changeState(func() (State, error, bool) {
		late = lateness(m.refreshAt, now)
		if ver != 0 {
			m.ver = ver
			m.pending = nil
		}
		m.takeLocked(ns, sent)
		m.lastRefresh = now
		if ver == 0 {
			return "", nil, false
		}
		return StateValid, nil, true
	})
	m.log.Debug("access token refreshed", "rotated", ns.Rotation == RotationRotating, "expiry", ns.Expiry, "stored", ver != 0)
	m.onNewToken(late)
}

// lateness is how long after the planned refresh time at a new token
// arrived at now; zero when it was not late or none was planned.
func lateness(at, now time.Time) time.Duration {
	if at.IsZero() || now.Before(at) {
		return 0
	}
	return now.Sub(at)
}

func (m *Manager) onNewToken(late time.Duration) {
	if m.opts.OnNewToken != nil {
		m.opts.OnNewToken(late)
	}
}

// saveFailed keeps a refreshed session that could not be written: it is
// the only copy of the rotated refresh token, so it is served from memory
// and written again with backoff.
func (m *Manager) saveFailed(err error) {
	m.persistFailures++
	delay := jittered(persistBase, persistMax, m.persistFailures)
	m.mu.Lock()
	m.persistAt = time.Now().Add(delay)
	m.mu.Unlock()
	cause := fmt.Errorf("the new refresh token could not be written to the store, keeping it in memory: %w", err)
	m.log.Warn("writing the session failed; retrying", "cause", err.Error(), "retry_in", delay.Round(time.Millisecond).String())
	m.setState(StateDegraded, cause)
}

// persist retries a result write that failed.
func (m *Manager) persist(ctx context.Context) {
	m.mu.Lock()
	p := m.pending
	m.mu.Unlock()
	if p == nil {
		return
	}
	rec, err := m.store.Finish(context.WithoutCancel(ctx), p.base, p.sess)
	switch {
	case errors.Is(err, ErrConflict):
		// A login replaced the session: it wins.
		m.mu.Lock()
		m.pending = nil
		m.mu.Unlock()
		m.releaseLease()
		m.log.Warn("a new login replaced the session before its refresh could be written; using the new login")
		return
	case err != nil:
		if p.abort {
			m.persistFailures++
			m.mu.Lock()
			m.persistAt = time.Now().Add(jittered(persistBase, persistMax, m.persistFailures))
			m.mu.Unlock()
			return
		}
		m.saveFailed(err)
		return
	}
	m.recordStamp()
	m.persistFailures = 0
	m.releaseLease()
	m.mu.Lock()
	m.pending = nil
	m.ver = rec.Version
	m.mu.Unlock()
	if p.abort {
		return
	}
	m.log.Info("the session was written to the store")
	if m.Ready() {
		m.setState(StateValid, nil)
	}
}

// transientFailure backs off after a refresh that may succeed later. The
// current access token keeps being served while it lasts.
func (m *Manager) transientFailure(err error) {
	m.failures++
	now := time.Now()
	delay := jittered(m.backoffBase, m.backoffMax, m.failures)
	if hint := retryHint(err); hint > delay {
		delay = min(hint, maxRetryAfter)
	} else if s := m.snap.Load(); s != nil && s.token != "" && s.usableUntil.After(now.Add(minRetryDelay)) {
		// Try again before the token in hand runs out.
		delay = min(delay, s.usableUntil.Sub(now)-minRetryDelay/2)
	}
	m.mu.Lock()
	m.retryAt = now.Add(delay)
	m.failed++
	m.mu.Unlock()
	m.log.Debug("refresh failed; retrying", "cause", err.Error(), "retry_in", delay.Round(time.Millisecond).String())
	m.setState(StateDegraded, err)
}

// rejected ends the session: only a new login can help.
func (m *Manager) rejected(err error) {
	m.mu.Lock()
	m.dead = true
	m.failed++
	m.pending = nil
	m.forced = false
	m.retryAt = time.Time{}
	m.mu.Unlock()
	m.failures = 0
	m.setState(StateLoginRequired, err)
}

func (m *Manager) loggedOut() {
	m.mu.Lock()
	m.sess = nil
	m.bad = ""
	m.forced = false
	m.pending = nil
	m.retryAt = time.Time{}
	m.mu.Unlock()
	m.failures = 0
	m.setState(StateLoggedOut, errors.New("the stored session was removed"))
}

// adopt takes rec, read from the store, as the current session.
func (m *Manager) adopt(rec Record, why string) {
	s := rec.Session
	if s.Ended != "" || (rec.Flight != nil && rec.Flight.Uncertain) {
		cause := errors.New(s.Ended)
		if s.Ended == "" {
			cause = uncertainError(rec.Flight.Holder)
		}
		m.mu.Lock()
		m.sess, m.ver = s, rec.Version
		m.mu.Unlock()
		m.rejected(cause)
		return
	}
	now := time.Now()
	issued := s.RefreshedAt
	if issued.IsZero() || s.LoggedInAt.After(issued) {
		issued = s.LoggedInAt
	}
	if issued.IsZero() || !issued.Before(s.Expiry) || issued.After(now) {
		issued = now
	}
	m.failures = 0
	m.mu.Lock()
	prev := m.sess
	m.mu.Unlock()
	if prev != nil && s.RefreshedAt.After(prev.RefreshedAt) && s.RefreshedBy != m.opts.Instance {
		m.onEvent(EventAdopted)
	}
	m.log.Info(why, "access_token_expiry", s.Expiry)
	// The adopted token and the state it gives are published together.
	late, fresh := time.Duration(0), false
	m.changeState(func() (State, error, bool) {
		fresh = m.sess != nil && m.sess.AccessToken != s.AccessToken
		late = lateness(m.refreshAt, now)
		m.ver = rec.Version
		m.takeLocked(s, issued)
		if !s.RefreshedAt.IsZero() {
			m.lastRefresh = s.RefreshedAt
		}
		switch _, ready := m.current(now); {
		case ready:
			return StateValid, nil, true
		case s.RefreshToken == "":
			return StateLoginRequired, errors.New("the stored access token has expired and there is no refresh token"), true
		case m.state == StateLoggedOut || m.state == StateLoginRequired || m.state == "":
			return StateRefreshing, nil, true
		}
		return "", nil, false
	})
	if fresh {
		m.onNewToken(late)
	}
}

// watch notices sessions written or removed by other processes. notified
// says the store announced a change (no stamp to compare).
func (m *Manager) watch(ctx context.Context, notified bool) error {
	m.mu.Lock()
	pending := m.pending != nil
	m.mu.Unlock()
	if pending {
		return nil // the store is stale until our own session is written
	}
	if st, ok := m.store.(stamper); ok && !notified {
		cur, err := st.stamp()
		if err == nil && m.haveStamp && cur == m.stamp {
			return nil
		}
	}
	m.recordStamp()
	rec, err := m.store.Load(ctx)
	if err != nil && !errors.Is(err, ErrNoSession) {
		if errors.Is(err, securefile.ErrUnsafe) {
			m.log.Error("refusing the token store", "cause", err.Error())
			return err
		}
		if msg := err.Error(); msg != m.lastStoreErr {
			m.lastStoreErr = msg
			m.log.Warn("the token store cannot be read", "cause", msg)
		}
		m.mu.Lock()
		noSession := m.sess == nil
		m.mu.Unlock()
		if noSession {
			m.setState(StateLoginRequired, err)
		}
		return nil
	}
	m.lastStoreErr = ""
	m.mu.Lock()
	mem, state, ver, dead := m.sess, m.state, m.ver, m.dead
	m.mu.Unlock()
	switch {
	case errors.Is(err, ErrNoSession):
		if mem != nil || state != StateLoggedOut {
			m.loggedOut()
		}
		m.mu.Lock()
		m.ver = rec.Version
		m.mu.Unlock()
	case rec.Version == ver && mem != nil:
	case mem == nil || rec.Session.RefreshToken != mem.RefreshToken || rec.Session.AccessToken != mem.AccessToken ||
		rec.Session.Ended != mem.Ended || (rec.Flight != nil && rec.Flight.Uncertain && !dead):
		m.adopt(rec, "adopted the session written to the store by another process")
	default:
		m.mu.Lock()
		m.ver = rec.Version
		m.mu.Unlock()
	}
	return nil
}

func (m *Manager) recordStamp() {
	if st, ok := m.store.(stamper); ok {
		if cur, err := st.stamp(); err == nil {
			m.stamp, m.haveStamp = cur, true
		}
	}
}

// scheduleLocked picks the next background refresh for a token obtained at
// issued: RefreshFraction of its lifetime, ±5%, and always a little before
// the token stops being handed out.
func (m *Manager) scheduleLocked(issued time.Time) time.Time {
	life := m.sess.Expiry.Sub(issued)
	if life <= 0 {
		return issued
	}
	f := m.opts.RefreshFraction * (1 + refreshJitter*(2*rand.Float64()-1))
	at := issued.Add(time.Duration(float64(life) * f))
	latest := usableUntil(m.sess.Expiry, life).Add(-time.Duration(float64(life) * refreshLead))
	if at.After(latest) {
		at = latest
	}
	return at
}

// usableUntil is when a token stops being handed out: a little before its
// expiry, so that it never reaches the API already expired.
func usableUntil(expiry time.Time, life time.Duration) time.Time {
	margin := max(expiryMarginMin, time.Duration(float64(life)*expiryMarginPart))
	return expiry.Add(-margin)
}

// takeLocked makes s, whose access token was obtained at issued, the
// session served: the token is published and the next refresh planned.
// A token that a forced refresh brought is remembered as such.
func (m *Manager) takeLocked(s *Session, issued time.Time) {
	m.sess = s
	m.issued = issued
	m.dead = false
	m.bad = ""
	if m.forced {
		m.forcedTok = s.AccessToken
	}
	m.forced = false
	m.retryAt = time.Time{}
	m.refreshAt = m.scheduleLocked(issued)
	m.publishLocked()
}

// publishLocked updates the token AccessToken returns and wakes waiters.
func (m *Manager) publishLocked() {
	snap := &tokenSnap{}
	if s := m.sess; s != nil && !m.dead && s.AccessToken != m.bad {
		snap.token = s.AccessToken
		snap.usableUntil = usableUntil(s.Expiry, s.Expiry.Sub(m.issued))
	}
	m.snap.Store(snap)
	m.notifyLocked()
}

func (m *Manager) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// setState records a state change, logs it once and reports it.
func (m *Manager) setState(s State, cause error) {
	m.changeState(func() (State, error, bool) { return s, cause, true })
}

// changeState runs decide under the lock that guards the state and then
// moves to the state it returns, if it says to change: what decide
// updates (a published token) and the new state are seen at once.
func (m *Manager) changeState(decide func() (s State, cause error, change bool)) {
	now := time.Now()
	m.mu.Lock()
	s, cause, change := decide()
	if !change {
		m.mu.Unlock()
		return
	}
	prev := m.state
	m.state = s
	m.cause = cause
	if cause != nil {
		m.lastErr = cause
	}
	if s == StateLoginRequired || s == StateLoggedOut {
		m.publishLocked() // drops the token
	} else {
		m.notifyLocked()
	}
	if prev == s {
		m.mu.Unlock()
		return
	}
	m.since = now
	st := m.statusLocked(now)
	m.mu.Unlock()

	attrs := []any{"state", string(s)}
	if prev != "" {
		// The first state is set when the store is read: there is no
		// previous state to report.
		attrs = append(attrs, "previous_state", string(prev))
	}
	if cause != nil {
		attrs = append(attrs, "cause", cause.Error())
	}
	m.log.Info("session state changed", attrs...)
	if m.opts.OnState != nil {
		m.opts.OnState(st)
	}
}

func (m *Manager) onEvent(event string) {
	if m.opts.OnEvent != nil {
		m.opts.OnEvent(event)
	}
}

func (m *Manager) onForced(result string) {
	if m.opts.OnForcedRefresh != nil {
		m.opts.OnForcedRefresh(result)
	}
}

func (m *Manager) onRefresh(result string, d time.Duration) {
	if m.opts.OnRefresh != nil {
		m.opts.OnRefresh(result, d)
	}
}

// jittered is exponential backoff with full jitter: a random delay up to
// base·2^(n-1), capped, and never below minRetryDelay.
func jittered(base, ceiling time.Duration, n int) time.Duration {
	d := ceiling
	if n < 32 {
		d = min(base<<(n-1), ceiling)
	}
	return max(time.Duration(rand.Int64N(int64(d))+1), minRetryDelay)
}
