package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/pgtest"
)

// High availability: several serve processes, each with its own state
// directory and config, share one session through a real PostgreSQL
// server. The fake Anaplan rotates refresh tokens and revokes the grant on
// any replay, so a refresh token sent twice shows as a replay there.

// sharedPG is the PostgreSQL server of this package's tests, started by
// the first test that needs one (tests that stop the database start their
// own).
var sharedPG pgtest.Shared

// haEnv is an env whose instances share a PostgreSQL store.
type haEnv struct {
	*env
	dsn     string
	keyFile string
	lease   time.Duration
	configs []string // one config file per instance
}

// newHAEnv prepares n instance configs on one store. Instance 0's config
// is also the env's own (login, status and curl use it).
func newHAEnv(t *testing.T, opts anaplantest.Options, n int, lease time.Duration, dsn string) *haEnv {
	t.Helper()
	e := newEnv(t, opts)
	if dsn == "" {
		dsn = sharedPG.Database(t)
	}
	h := &haEnv{env: e, dsn: dsn, lease: lease, keyFile: filepath.Join(e.dir, "store.key")}
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(h.keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile(e.configPath)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		stateDir := filepath.Join(e.dir, fmt.Sprintf("state-%d", i))
		cfg := strings.Replace(string(base), "state_dir: "+e.stateDir, "state_dir: "+stateDir, 1)
		cfg += fmt.Sprintf("store:\n  type: postgres\n  postgres_dsn: %q\n  key_file: %s\n  lease: %s\n", dsn, h.keyFile, lease)
		path := filepath.Join(e.dir, fmt.Sprintf("config-%d.yaml", i))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		h.configs = append(h.configs, path)
	}
	// login, status and curl use instance 0's config; curl trusts the
	// shared CA, written where it looks for it.
	e.configPath = h.configs[0]
	return h
}

// serveInstance starts instance i, with extra environment variables.
func (h *haEnv) serveInstance(i int, environ ...string) *daemon {
	h.t.Helper()
	cmd := exec.Command(binPath, "serve", "--config", h.configs[i])
	cmd.Env = append(os.Environ(), environ...)
	return h.serveCmd(cmd)
}

// writeCA saves the shared CA, as `anaplan-proxy ca` prints it, where curl
// reads it.
func (h *haEnv) writeCA() string {
	h.t.Helper()
	code, out, errs := h.command("ca")
	if code != 0 || !strings.Contains(out, "BEGIN CERTIFICATE") {
		h.t.Fatalf("anaplan-proxy ca = %d: %s %s", code, out, errs)
	}
	if err := os.MkdirAll(h.stateDir, 0o700); err != nil {
		h.t.Fatal(err)
	}
	path := filepath.Join(h.stateDir, "ca.crt")
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return path
}

// haStatus is what /status says of the shared session.
type haStatus struct {
	State             string    `json:"state"`
	Store             string    `json:"store"`
	Instance          string    `json:"instance"`
	Refresher         string    `json:"refresher"`
	LastError         string    `json:"last_error"`
	AccessTokenExpiry time.Time `json:"access_token_expiry"`
}

func (d *daemon) haStatus(t *testing.T) haStatus {
	t.Helper()
	code, body := d.admin(t, "/status")
	var st haStatus
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("/status = %d: %s", code, body)
	}
	return st
}

// dump returns everything pg_dump prints of the store's database.
func (h *haEnv) dump() string {
	h.t.Helper()
	srv := sharedPG.Server(h.t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, srv.Bin("pg_dump"), "--data-only", "--inserts", h.dsn).CombinedOutput()
	if err != nil {
		h.t.Fatalf("pg_dump: %v: %s", err, out)
	}
	return string(out)
}

// Two instances on one store: a login on either is picked up by both,
// exactly one refreshes at a time, both serve the newest token to curl,
// the other takes over when the refresher is killed, and neither the logs
// nor a database dump hold a token.
func TestHATwoInstancesShareOneSession(t *testing.T) {
	t.Parallel()
	requireCurl(t)
	h := newHAEnv(t, anaplantest.Options{AccessTokenLifetime: 3 * time.Second}, 2, 500*time.Millisecond, "")
	a := h.serveInstance(0)
	b := h.serveInstance(1)
	for _, d := range []*daemon{a, b} {
		d.awaitStatus(t, 10*time.Second, "logged_out before any login", func(st sessionStatus) bool { return st.State == "logged_out" })
	}
	h.login()
	for _, d := range []*daemon{a, b} {
		d.awaitReady(t, 10*time.Second)
	}
	h.writeCA()
	for i, d := range []*daemon{a, b} {
		if exit, connect, code, body := h.curl(d, h.fake.APIURL()+"/2/0/users/me"); exit != 0 || connect != "200" || code != "200" {
			t.Fatalf("curl through instance %d: exit %d, CONNECT %s, HTTP %s: %s", i, exit, connect, code, body)
		}
	}
	// Several lifetimes: the session is refreshed about once per 0.75 of
	// a lifetime in all, not once per instance, and never replayed.
	start := h.fake.Refreshes()
	cs := []*http.Client{h.proxyClient(func() string { return a.proxyAddr }), h.proxyClient(func() string { return b.proxyAddr })}
	l := startLoad(t, cs, apiTarget(h.env), 50*time.Millisecond)
	began := time.Now()
	<-time.After(9 * time.Second)
	l.halt()
	l.assertNoFailures(t)
	refreshes := h.fake.Refreshes() - start
	want := float64(time.Since(began)) / float64(3*time.Second*3/4)
	if float64(refreshes) > want*1.5+1 || float64(refreshes) < want*0.5 {
		t.Errorf("%d refreshes in %s by two instances, want about %.1f (one set for both)", refreshes, time.Since(began).Round(time.Millisecond), want)
	}
	h.assertNoReplay("two instances refreshing")

	// The instance that refreshed last is killed; the other carries on.
	victim, survivor := a, b
	if st := a.haStatus(t); st.Refresher != st.Instance {
		victim, survivor = b, a
	}
	victim.kill(t)
	l = startLoad(t, []*http.Client{h.proxyClient(func() string { return survivor.proxyAddr })}, apiTarget(h.env), 50*time.Millisecond)
	n := h.fake.Refreshes()
	if !waitFor(func() bool { return h.fake.Refreshes() >= n+2 }) {
		t.Fatalf("the surviving instance did not refresh\nlogs:\n%s", survivor.logs)
	}
	l.halt()
	l.assertNoFailures(t)
	h.assertNoReplay("after the refresher was killed")
	st := survivor.haStatus(t)
	if !strings.HasPrefix(st.Store, "postgres ") || st.Refresher != st.Instance || (st.State != "valid" && st.State != "refreshing") {
		t.Errorf("/status %+v: want valid, the postgres store, refreshed by the survivor", st)
	}

	dump := h.dump()
	if !strings.Contains(dump, "anaplan_proxy_session") {
		t.Fatalf("the dump holds no session table: the test proves nothing:\n%.2000s", dump)
	}
	for _, secret := range h.fake.IssuedSecrets() {
		if strings.Contains(dump, secret) {
			t.Errorf("the database dump holds an issued token in the clear (%.12s…)", secret)
		}
	}
	if strings.Contains(dump, "PRIVATE KEY") {
		t.Error("the database dump holds the CA key in the clear")
	}
	survivor.stop(t)
	h.assertNoSecrets()
}

// procState is the state letter of process pid in /proc/<pid>/stat: R, S,
// D, T (stopped), Z…
func procState(pid int) (byte, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may itself hold spaces and ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, b)
	}
	return b[i+2], nil
}

// exited reports whether d's process has ended.
func (d *daemon) exited() bool {
	select {
	case err := <-d.done:
		d.done <- err
		return true
	default:
		return false
	}
}

// awaitStopped waits until d has stopped itself at a failpoint (SIGSTOP).
func (d *daemon) awaitStopped(t *testing.T, within time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := procState(d.cmd.Process.Pid)
		if err == nil && st == 'T' {
			return
		}
		if d.exited() {
			t.Fatalf("serve exited while waiting for it to stop %s\nlogs:\n%s", what, d.logs)
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not stop %s within %s (state %c, %v)\nlogs:\n%s", what, within, st, err, d.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// signal sends sig to d's process.
func (d *daemon) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%v: %v", sig, err)
	}
}

// continueOnCleanup makes sure a process that may stop itself is running
// again when the test ends, so that the daemon's own clean-up (SIGINT,
// registered earlier and so run later) can end it.
func (d *daemon) continueOnCleanup(t *testing.T) {
	t.Cleanup(func() { d.cmd.Process.Signal(syscall.SIGCONT) })
}

// newestAccessToken is the access token the fake issued last.
func (h *haEnv) newestAccessToken() string {
	secrets := h.fake.IssuedSecrets()
	for i := len(secrets) - 1; i >= 0; i-- {
		if strings.HasPrefix(secrets[i], "fake-at-") {
			return secrets[i]
		}
	}
	h.t.Fatal("the fake issued no access token")
	return ""
}

// probePath is the API path that servesNewest requests, so that its calls
// are told apart from a load's.
const probePath = "/2/0/users/me"

// awaitServesNewest waits until a request through d reaches the fake API
// with the newest access token the fake issued.
func (h *haEnv) awaitServesNewest(t *testing.T, d *daemon, within time.Duration) {
	t.Helper()
	c := h.proxyClient(func() string { return d.proxyAddr })
	deadline := time.Now().Add(within)
	last := ""
	for {
		want := "AnaplanAuthToken " + h.newestAccessToken()
		resp, err := c.Get(h.fake.APIURL() + probePath)
		if err == nil {
			resp.Body.Close()
			calls := h.fake.Calls()
			for i := len(calls) - 1; i >= 0; i-- {
				if calls[i].Listener == "api" && calls[i].Path == probePath {
					if calls[i].Authorization == want && resp.StatusCode == http.StatusOK {
						return
					}
					last = fmt.Sprintf("HTTP %d with %.30s…", resp.StatusCode, calls[i].Authorization)
					break
				}
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s the proxy at %s does not serve the newest access token (last: %s)\nlogs:\n%s", within, d.proxyAddr, last, d.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metric returns the value of the sample named exactly name (with its
// labels) on d's /metrics, or -1 when it is absent.
func (d *daemon) metric(t *testing.T, name string) float64 {
	t.Helper()
	code, body := d.admin(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}
