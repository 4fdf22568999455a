package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// These tests hold the session to its promise: whatever happens to
// the process, the disk, the token endpoint or a second process on the same
// state directory, a rotated refresh token is never presented twice and
// scripts keep getting answers.

// kill ends serve with SIGKILL: no shutdown code runs.
func (d *daemon) kill(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	err := <-d.done
	d.done <- err
}

// sessionStatus is the part of /status these tests read.
type sessionStatus struct {
	State     string `json:"state"`
	LastError string `json:"last_error"`
}

// status reads /status; a daemon that does not answer gives state "".
func (d *daemon) status(t *testing.T) sessionStatus {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + d.adminAddr + "/status")
	if err != nil {
		return sessionStatus{}
	}
	defer resp.Body.Close()
	var st sessionStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return st
}

// ready reports whether /readyz answers 200.
func (d *daemon) ready() bool {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + d.adminAddr + "/readyz")
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// awaitStatus polls /status until cond holds, failing after within.
func (d *daemon) awaitStatus(t *testing.T, within time.Duration, what string, cond func(sessionStatus) bool) sessionStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st := d.status(t)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: /status is %+v, waiting for %s\nlogs:\n%s", within, st, what, d.logs)
		}
		<-tick.C
	}
}

// awaitReady polls /readyz until it answers 200, failing after within.
func (d *daemon) awaitReady(t *testing.T, within time.Duration) {
	t.Helper()
	d.awaitStatus(t, within, "/readyz 200", func(sessionStatus) bool { return d.ready() })
}

// bannerState is session_state in the start-up line serve logged.
func (d *daemon) bannerState() string {
	sc := bufio.NewScanner(strings.NewReader(d.logs.String()))
	for sc.Scan() {
		var line struct {
			Msg   string `json:"msg"`
			State string `json:"session_state"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "anaplan-proxy started" {
			return line.State
		}
	}
	return ""
}

// lastState is the state of the last "session state changed" line serve
// logged. serve logs a change before acting on it, so after a kill this is
// the state the process died in.
func (d *daemon) lastState() string {
	state := ""
	sc := bufio.NewScanner(strings.NewReader(d.logs.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line struct {
			Msg   string `json:"msg"`
			State string `json:"state"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "session state changed" {
			state = line.State
		}
	}
	return state
}

// storePath is the session file of the env's state directory.
func (e *env) storePath() string { return filepath.Join(e.stateDir, "session.json") }

// loadStore reads the session file as serve does, failing the test when it
// does not parse.
func (e *env) loadStore(when string) *auth.Session {
	e.t.Helper()
	s, err := auth.NewFileStore(e.storePath()).Load(context.Background())
	if err != nil {
		e.t.Fatalf("%s: the token store does not load: %v", when, err)
	}
	return s.Session
}

// proxyClient is a Go client that sends every request through the proxy
// at addr() (asked per connection, so it can follow a restarted daemon),
// keeps its connection alive, and trusts only the proxy's CA.
func (e *env) proxyClient(addr func() string) *http.Client {
	e.t.Helper()
	pem, err := os.ReadFile(filepath.Join(e.stateDir, "ca.crt"))
	if err != nil {
		e.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		e.t.Fatal("ca.crt holds no certificate")
	}
	tr := &http.Transport{
		Proxy:               func(*http.Request) (*url.URL, error) { return &url.URL{Scheme: "http", Host: addr()}, nil },
		TLSClientConfig:     &tls.Config{RootCAs: pool},
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     30 * time.Second,
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// load is clients sending requests in a loop until halted.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ok     atomic.Int64
	failed atomic.Int64

	mu       sync.Mutex
	failures []string // the first few, for the test's message
}

// startLoad runs one request loop per client against target. pace, when
// positive, is the least time between two requests of one client.
func startLoad(t *testing.T, clients []*http.Client, target string, pace time.Duration) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	for _, c := range clients {
		l.wg.Go(func() { l.run(ctx, c, target, pace) })
	}
	t.Cleanup(l.halt)
	return l
}

func (l *load) run(ctx context.Context, c *http.Client, target string, pace time.Duration) {
	var tick <-chan time.Time
	if pace > 0 {
		tk := time.NewTicker(pace)
		defer tk.Stop()
		tick = tk.C
	}
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		start := time.Now()
		resp, err := c.Do(req)
		if ctx.Err() != nil {
			return // halted mid-request: no verdict
		}
		switch {
		case err != nil:
			l.fail(start, err.Error())
		case resp.StatusCode != http.StatusOK:
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
			resp.Body.Close()
			l.fail(start, fmt.Sprintf("HTTP %d, Proxy-Status %q: %s", resp.StatusCode, resp.Header.Get("Proxy-Status"), strings.TrimSpace(string(b))))
		default:
			_, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil && ctx.Err() == nil {
				l.fail(start, "reading the body: "+err.Error())
			} else {
				l.ok.Add(1)
			}
		}
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
			}
		}
	}
}

func (l *load) fail(start time.Time, msg string) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.failures) < 5 {
		l.failures = append(l.failures, start.Format("15:04:05.000")+" "+msg)
	}
	l.mu.Unlock()
}

// halt stops the loops and waits for them.
func (l *load) halt() {
	l.cancel()
	l.wg.Wait()
}

// assertNoFailures fails the test if any request failed.
func (l *load) assertNoFailures(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed; first: \n%s", n, n+l.ok.Load(), strings.Join(l.failures, "\n"))
	}
	if l.ok.Load() == 0 {
		t.Error("no request succeeded: the load proves nothing")
	}
}

func (e *env) assertNoReplay(when string) {
	e.t.Helper()
	if r := e.fake.RefreshReplays(); r != 0 {
		e.t.Fatalf("%s: the fake saw %d rotated refresh tokens presented again (each revokes the grant)", when, r)
	}
}

// assertNoEmptyPreviousState fails if a state change was logged with an
// empty previous state.
func assertNoEmptyPreviousState(t *testing.T, d *daemon) {
	t.Helper()
	if strings.Contains(d.logs.String(), `"previous_state":""`) {
		t.Errorf("a state change was logged with previous_state \"\":\n%s", d.logs)
	}
}

func apiTarget(e *env) string { return e.fake.APIURL() + "/2/0/workspaces" }

// Crash safety: serve dies by SIGKILL at random moments while tokens
// rotate every 1.5 s under load, and each restart resumes the session from
// the store without a login.
func TestSessionSurvivesSIGKILL(t *testing.T) {
	const kills = 20
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: 2 * time.Second})
	e.login()
	d := e.serve()
	var addr atomic.Pointer[string]
	addr.Store(&d.proxyAddr)
	d.awaitReady(t, 15*time.Second)

	clients := make([]*http.Client, 4)
	for i := range clients {
		clients[i] = e.proxyClient(func() string { return *addr.Load() })
	}
	l := startLoad(t, clients, apiTarget(e), 10*time.Millisecond)

	midRefresh := 0
	for i := range kills {
		// A random moment: before, during or after a refresh.
		<-time.After(200*time.Millisecond + rand.N(1800*time.Millisecond))
		before := e.fake.Refreshes()
		d.kill(t)
		e.loadStore(fmt.Sprintf("after kill %d", i+1))
		if d.lastState() == string(auth.StateRefreshing) {
			// Killed during a refresh: the server may have rotated the
			// refresh token after the request left and before the answer
			// reached the disk. No client can keep that session; the store
			// still parses (checked above), and a new login goes on.
			midRefresh++
			e.login()
		}

		d = e.serve()
		addr.Store(&d.proxyAddr)
		if s := d.bannerState(); s == "" || s == string(auth.StateLoggedOut) {
			t.Errorf("restart %d logged session_state %q at start-up with a stored session", i+1, s)
		}
		d.awaitReady(t, 15*time.Second)
		exit, connect, code, body := e.curl(d, apiTarget(e))
		if exit != 0 || connect != "200" || code != "200" {
			t.Fatalf("restart %d: curl exit %d, CONNECT %s, HTTP %s, body %q\nlogs:\n%s", i+1, exit, connect, code, body, d.logs)
		}
		e.assertNoReplay(fmt.Sprintf("restart %d (%d refreshes before the kill)", i+1, before))
	}
	// The last daemon keeps rotating: two more refreshes, still no replay.
	n := e.fake.Refreshes()
	if !waitFor(func() bool { return e.fake.Refreshes() >= n+2 }) {
		t.Fatalf("the restarted daemon stopped refreshing\nlogs:\n%s", d.logs)
	}
	l.halt()
	e.assertNoReplay("at the end")
	if !d.ready() {
		t.Errorf("the session did not survive:\n%s", d.logs)
	}
	t.Logf("%d kills (%d during a refresh), %d refreshes, %d requests ok and %d failed (failures are expected while serve is down)",
		kills, midRefresh, e.fake.Refreshes(), l.ok.Load(), l.failed.Load())
	if midRefresh > kills/2 {
		t.Errorf("%d of %d kills came during a refresh: too few resumed a session to prove anything", midRefresh, kills)
	}
	assertNoEmptyPreviousState(t, d)
	d.stop(t)
	e.assertNoSecrets()
}

// Concurrency: 200 keep-alive clients for a minute with 2-second tokens.
// Every request succeeds and refreshes follow the token's lifetime, not
// the number of requests.
func TestSessionTwoHundredClients(t *testing.T) {
	const (
		clients  = 200
		lifetime = 2 * time.Second
	)
	dur := 60 * time.Second
	if testing.Short() {
		dur = 15 * time.Second
	}
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: lifetime})
	e.login()
	d := e.serve()
	d.awaitReady(t, 15*time.Second)

	cs := make([]*http.Client, clients)
	for i := range cs {
		cs[i] = e.proxyClient(func() string { return d.proxyAddr })
	}
	before := e.fake.Refreshes()
	start := time.Now()
	l := startLoad(t, cs, apiTarget(e), 0)
	<-time.After(dur)
	l.halt()
	took := time.Since(start)

	refreshes := e.fake.Refreshes() - before
	want := took.Seconds() / (0.75 * lifetime.Seconds())
	t.Logf("%d clients, %s: %d requests, %d refreshes (%.0f expected)", clients, took.Round(time.Second), l.ok.Load(), refreshes, want)
	l.assertNoFailures(t)
	e.assertNoReplay("after the load")
	if float64(refreshes) < 0.5*want || float64(refreshes) > 1.5*want {
		t.Errorf("%d refreshes in %s with %s tokens; want about %.0f (one per 75%% of the lifetime)", refreshes, took.Round(time.Second), lifetime, want)
	}
	if l.ok.Load() < int64(20*refreshes) {
		t.Errorf("%d requests for %d refreshes: refreshing per request, not per token lifetime", l.ok.Load(), refreshes)
	}
	d.stop(t)
	e.assertNoSecrets()
}

// Outage: the token endpoint answers 503 for 20 s around the moment the
// 30-second token is due for refresh. Requests keep their valid token,
// /status says degraded with the cause, and valid again once it is over.
func TestSessionRidesOutTokenEndpointOutage(t *testing.T) {
	t.Parallel()
	const lifetime = 30 * time.Second
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: lifetime})
	e.login()
	issued := e.loadStore("after login").Expiry.Add(-lifetime)
	d := e.serve()
	d.awaitReady(t, 15*time.Second)
	cs := make([]*http.Client, 10)
	for i := range cs {
		cs[i] = e.proxyClient(func() string { return d.proxyAddr })
	}
	l := startLoad(t, cs, apiTarget(e), 50*time.Millisecond)

	// From 4 s to 24 s of the token's life: the refresh due at ~22.5 s
	// fails, and the token (usable until ~29.4 s) outlives the outage.
	<-time.After(time.Until(issued.Add(4 * time.Second)))
	e.fake.SetTokenOutage(http.StatusServiceUnavailable)
	t.Cleanup(func() { e.fake.SetTokenOutage(0) })
	end := issued.Add(24 * time.Second)
	st := d.awaitStatus(t, time.Until(end), "state degraded naming 503", func(st sessionStatus) bool {
		return st.State == string(auth.StateDegraded) && strings.Contains(st.LastError, "503")
	})
	t.Logf("during the outage: %+v", st)
	if !d.ready() {
		t.Errorf("/readyz is not 200 while the access token is still valid")
	}
	<-time.After(time.Until(end))
	e.fake.SetTokenOutage(0)
	d.awaitStatus(t, time.Until(issued.Add(lifetime)), "state valid after the outage", func(st sessionStatus) bool {
		return st.State == string(auth.StateValid)
	})
	l.halt()
	l.assertNoFailures(t)
	e.assertNoReplay("after the outage")
	if e.fake.Refreshes() < 1 {
		t.Error("no refresh succeeded after the outage")
	}
	d.stop(t)
	e.assertNoSecrets()
}

// chattr sets or clears the immutable attribute of dir. An immutable
// directory refuses new files and renames even to root, for whom chmod
// would change nothing.
func chattr(dir string, on bool) error {
	flag := "-i"
	if on {
		flag = "+i"
	}
	out, err := exec.Command("chattr", flag, dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("chattr %s %s: %v: %s", flag, dir, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Disk: the state directory turns read-only while tokens rotate. The
// session lives on in memory, /status says why, and once the directory is
// writable the store catches up: a new process refreshes from the file
// without a replay.
func TestSessionSurvivesReadOnlyStateDir(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("chattr"); err != nil {
		t.Skip("chattr (e2fsprogs) is not installed")
	}
	const lifetime = 3 * time.Second
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: lifetime})
	e.login()
	d := e.serve()
	d.awaitReady(t, 15*time.Second)
	if err := chattr(e.stateDir, true); err != nil {
		t.Skipf("the state directory cannot be made immutable here: %v", err)
	}
	t.Cleanup(func() { chattr(e.stateDir, false) })
	if f, err := os.CreateTemp(e.stateDir, "probe"); err == nil {
		f.Close()
		t.Skip("an immutable directory still accepts new files here")
	}
	onDisk := e.loadStore("before").RefreshToken

	cs := make([]*http.Client, 10)
	for i := range cs {
		cs[i] = e.proxyClient(func() string { return d.proxyAddr })
	}
	l := startLoad(t, cs, apiTarget(e), 50*time.Millisecond)

	st := d.awaitStatus(t, 2*lifetime, "state degraded naming the session file", func(st sessionStatus) bool {
		return st.State == string(auth.StateDegraded) && strings.Contains(st.LastError, e.storePath())
	})
	if !strings.Contains(st.LastError, "operation not permitted") {
		t.Errorf("last_error %q does not say why the file could not be written", st.LastError)
	}
	// Two more rotations while nothing can be written: each new refresh
	// token exists only in memory.
	n := e.fake.Refreshes()
	if !waitFor(func() bool { return e.fake.Refreshes() >= n+2 }) {
		t.Fatalf("no refresh while the directory is read-only\nlogs:\n%s", d.logs)
	}
	if got := e.loadStore("while read-only").RefreshToken; got != onDisk {
		t.Fatal("the store changed while its directory was immutable: the test proves nothing")
	}
	if !d.ready() {
		t.Errorf("/readyz is not 200 while the session lives in memory")
	}

	if err := chattr(e.stateDir, false); err != nil {
		t.Fatal(err)
	}
	d.awaitStatus(t, 2*lifetime, "state valid once the directory is writable", func(st sessionStatus) bool {
		return st.State == string(auth.StateValid) && e.loadStore("after").RefreshToken != onDisk
	})
	l.halt()
	l.assertNoFailures(t)

	// The file holds the newest refresh token: a daemon started from it
	// (after one that had no chance to write anything more) refreshes
	// without a replay.
	d.kill(t)
	d2 := e.serve()
	n = e.fake.Refreshes()
	if !waitFor(func() bool { return e.fake.Refreshes() >= n+1 && d2.ready() }) {
		t.Fatalf("the restarted daemon did not refresh from the store\nlogs:\n%s", d2.logs)
	}
	e.assertNoReplay("after the store caught up")
	d2.stop(t)
	e.assertNoSecrets()
}

// Two processes: two serve daemons, repeated `status` and a new `login` on
// one state directory, with 1-second tokens, never replay a refresh token
// and never fail a request.
func TestSessionSharedStateDirNeverReplays(t *testing.T) {
	t.Parallel()
	dur := 20 * time.Second
	if testing.Short() {
		dur = 8 * time.Second
	}
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: time.Second})
	e.login()
	a := e.serve()
	b := e.serve()
	a.awaitReady(t, 15*time.Second)
	b.awaitReady(t, 15*time.Second)

	var cs []*http.Client
	for _, d := range []*daemon{a, b} {
		for range 4 {
			cs = append(cs, e.proxyClient(func() string { return d.proxyAddr }))
		}
	}
	l := startLoad(t, cs, apiTarget(e), 20*time.Millisecond)

	deadline := time.Now().Add(dur)
	statuses, logins := 0, 0
	nextLogin := time.Now().Add(dur / 3)
	for time.Now().Before(deadline) {
		if code, out, errOut := e.command("status"); code != statusUsable {
			t.Errorf("status: exit %d, want %d\n%s%s", code, statusUsable, out, errOut)
		}
		statuses++
		if time.Now().After(nextLogin) {
			e.login()
			logins++
			nextLogin = time.Now().Add(dur / 3)
		}
	}
	l.halt()
	t.Logf("%s: %d refreshes, %d status runs, %d logins, %d requests", dur, e.fake.Refreshes(), statuses, logins, l.ok.Load())
	l.assertNoFailures(t)
	e.assertNoReplay("after " + dur.String())
	if e.fake.Refreshes() < int(dur/time.Second) {
		t.Errorf("only %d refreshes in %s with 1-second tokens", e.fake.Refreshes(), dur)
	}
	// With 1-second tokens a daemon is briefly not ready while each
	// refresh is in flight; a lost session stays not ready.
	for _, d := range []*daemon{a, b} {
		d.awaitReady(t, 5*time.Second)
		d.stop(t)
	}
	e.assertNoSecrets()
}

// Non-rotating refresh tokens: the answer has no refresh_token, so the
// stored one is kept and keeps working.
func TestSessionNonRotatingRefreshToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: 2 * time.Second, NonRotating: true})
	e.login()
	first := e.loadStore("after login")
	d := e.serve()
	d.awaitReady(t, 15*time.Second)
	cs := make([]*http.Client, 5)
	for i := range cs {
		cs[i] = e.proxyClient(func() string { return d.proxyAddr })
	}
	l := startLoad(t, cs, apiTarget(e), 20*time.Millisecond)
	if !waitFor(func() bool { return e.fake.Refreshes() >= 4 }) {
		t.Fatalf("%d refreshes, want 4\nlogs:\n%s", e.fake.Refreshes(), d.logs)
	}
	l.halt()
	l.assertNoFailures(t)
	now := e.loadStore("after refreshes")
	if now.RefreshToken != first.RefreshToken {
		t.Error("the stored refresh token changed although the server never sent a new one")
	}
	if now.AccessToken == first.AccessToken || !now.RefreshTokenIssuedAt.Equal(first.RefreshTokenIssuedAt) {
		t.Errorf("after 4 refreshes: access token renewed %v, refresh token issue time %s (was %s); want a new access token and the old issue time",
			now.AccessToken != first.AccessToken, now.RefreshTokenIssuedAt, first.RefreshTokenIssuedAt)
	}
	// With 2-second tokens the next refresh may already be running.
	if st := d.status(t); st.State != string(auth.StateValid) && st.State != string(auth.StateRefreshing) {
		t.Errorf("state %+v, want valid (or refreshing)", st)
	}
	d.stop(t)
	e.assertNoSecrets()
}

// The long run: consecutive rotations with 1-second tokens, no replay, no
// lost session. Not part of the suite: scripts/soak-rotation.sh runs it
// (ANAPLAN_PROXY_SOAK=1, ANAPLAN_PROXY_SOAK_ROTATIONS, default 600).
func TestSoakRotation(t *testing.T) {
	if os.Getenv("ANAPLAN_PROXY_SOAK") != "1" {
		t.Skip("set ANAPLAN_PROXY_SOAK=1 to run the rotation soak")
	}
	rotations := 600
	if v := os.Getenv("ANAPLAN_PROXY_SOAK_ROTATIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("ANAPLAN_PROXY_SOAK_ROTATIONS=%q is not a positive number", v)
		}
		rotations = n
	}
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: time.Second})
	e.login()
	d := e.serve()
	d.awaitReady(t, 15*time.Second)
	cs := make([]*http.Client, 4)
	for i := range cs {
		cs[i] = e.proxyClient(func() string { return d.proxyAddr })
	}
	l := startLoad(t, cs, apiTarget(e), 50*time.Millisecond)

	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, lastAt := 0, time.Now()
	for e.fake.Refreshes() < rotations {
		<-tick.C
		e.assertNoReplay(fmt.Sprintf("after %d rotations", e.fake.Refreshes()))
		if n := e.fake.Refreshes(); n > last {
			last, lastAt = n, time.Now()
		} else if time.Since(lastAt) > 30*time.Second {
			t.Fatalf("no rotation for 30 s after %d\nstatus %+v\nlogs:\n%s", n, d.status(t), d.logs)
		}
	}
	l.halt()
	took := time.Since(start)
	stored := e.loadStore("at the end")
	t.Logf("%d rotations in %s (%.2f/s), %d replays, %d requests ok, %d failed, state %s, refresh token age %s",
		e.fake.Refreshes(), took.Round(time.Second), float64(e.fake.Refreshes())/took.Seconds(), e.fake.RefreshReplays(),
		l.ok.Load(), l.failed.Load(), d.status(t).State, time.Since(stored.RefreshTokenIssuedAt).Round(time.Millisecond))
	e.assertNoReplay("at the end")
	l.assertNoFailures(t)
	if !d.ready() {
		t.Errorf("the session was lost:\n%s", d.logs)
	}
	d.stop(t)
	e.assertNoSecrets()
}
