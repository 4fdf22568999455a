package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/testutil"
)

// binPath is the anaplan-proxy binary built once for the end-to-end tests.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "anaplan-proxy-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "anaplan-proxy")
	// The failpoints tag lets tests stop or kill the binary inside a refresh.
	build := exec.Command("go", "build", "-tags", "failpoints", "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building anaplan-proxy:", err)
		os.Exit(1)
	}
	code := m.Run()
	sharedPG.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects output that goroutines write while the test reads it.
type syncBuffer = testutil.Buffer

// env is one end-to-end set-up: a fake Anaplan and a config file pointing
// the real binary at it.
type env struct {
	t          *testing.T
	fake       *anaplantest.Server
	dir        string
	stateDir   string
	configPath string
	logs       []*syncBuffer // every output captured from the binary
}

func newEnv(t *testing.T, opts anaplantest.Options) *env {
	t.Helper()
	if opts.Interval == 0 {
		opts.Interval = time.Second
	}
	fake, err := anaplantest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	dir := t.TempDir()
	caFile, err := fake.WriteCAFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, fake: fake, dir: dir, stateDir: filepath.Join(dir, "state"), configPath: filepath.Join(dir, "config.yaml")}
	cfg := fakeConfig(fake, e.stateDir, caFile)
	if err := os.WriteFile(e.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// fakeConfig is a config for serving fake's API with state in stateDir;
// caFile holds the fake's CA.
func fakeConfig(fake *anaplantest.Server, stateDir, caFile string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
state_dir: %s
log_format: json
log_level: debug
oauth:
  client_id: %s
  device_authorization_url: %s
  token_url: %s
  ca_file: %s
inject:
  hosts: ["%s"]
upstream:
  ca_file: %s
  # The fake Anaplan listens on loopback, which the proxy refuses by default.
  allow_private: true
`, stateDir, fake.ClientID(), fake.DeviceAuthURL(), fake.TokenURL(), caFile, fake.APIHost(), caFile)
}

// capture returns a buffer that is checked for secrets at the end of the test.
func (e *env) capture() *syncBuffer {
	b := &syncBuffer{}
	e.logs = append(e.logs, b)
	return b
}

// command runs the binary with the env's config and returns its exit code.
func (e *env) command(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, errb := e.capture(), e.capture()
	cmd := exec.CommandContext(ctx, binPath, append(args, "--config", e.configPath)...)
	cmd.Stdout, cmd.Stderr = out, errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		e.t.Fatalf("running %v: %v", args, err)
	}
	return code, out.String(), errb.String()
}

// login runs `anaplan-proxy login` and approves its code through the fake.
func (e *env) login() string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, errb := e.capture(), e.capture()
	cmd := exec.CommandContext(ctx, binPath, "login", "--config", e.configPath)
	cmd.Stdout, cmd.Stderr = out, errb
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	code, err := e.fake.WaitForPendingCode(ctx)
	if err != nil {
		e.t.Fatalf("no device code issued: %v\nstdout: %s\nstderr: %s", err, out, errb)
	}
	if !waitFor(func() bool { return strings.Contains(out.String(), code) }) {
		e.t.Fatalf("login did not print the user code %s:\n%s", code, out)
	}
	if err := e.fake.Approve(code); err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		e.t.Fatalf("login: %v\nstdout: %s\nstderr: %s", err, out, errb)
	}
	return out.String()
}

// daemon is a running `anaplan-proxy serve`.
type daemon struct {
	cmd       *exec.Cmd
	proxyAddr string
	adminAddr string
	logs      *syncBuffer
	done      chan error
}

func (e *env) serve() *daemon {
	e.t.Helper()
	return e.serveCmd(exec.Command(binPath, "serve", "--config", e.configPath))
}

// serveCmd starts a prepared serve command and waits for its start line.
func (e *env) serveCmd(cmd *exec.Cmd) *daemon {
	e.t.Helper()
	logs := e.capture()
	cmd.Stderr = logs
	cmd.Stdout = logs
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	d := &daemon{cmd: cmd, logs: logs, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	e.t.Cleanup(func() { d.stop(e.t) })
	if !waitFor(func() bool {
		sc := bufio.NewScanner(strings.NewReader(logs.String()))
		for sc.Scan() {
			var line struct {
				Msg         string `json:"msg"`
				ProxyListen string `json:"proxy_listen"`
				AdminListen string `json:"admin_listen"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "anaplan-proxy started" {
				d.proxyAddr, d.adminAddr = line.ProxyListen, line.AdminListen
				return true
			}
		}
		select {
		case err := <-d.done:
			d.done <- err
			return true
		default:
			return false
		}
	}) || d.proxyAddr == "" {
		e.t.Fatalf("serve did not start:\n%s", logs)
	}
	return d
}

func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		t.Errorf("serve did not stop within 30 s of SIGINT")
	}
}

// admin GETs a path on the daemon's admin listener.
func (d *daemon) admin(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + d.adminAddr + path)
	if err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// curl runs the real curl through the proxy and returns its exit code,
// the proxy's CONNECT answer code, the HTTP code and the body.
func (e *env) curl(d *daemon, url string, extra ...string) (exit int, connectCode, httpCode, body string) {
	e.t.Helper()
	return e.curlEnv(d, nil, url, extra...)
}

// curlEnv is curl with extra environment variables ("KEY=value"), which
// override the proxy variables curl gets by default (e.g. NO_PROXY).
func (e *env) curlEnv(d *daemon, environ []string, url string, extra ...string) (exit int, connectCode, httpCode, body string) {
	e.t.Helper()
	bodyFile := filepath.Join(e.t.TempDir(), "body")
	args := append([]string{"-sS", "--max-time", "20", "--cacert", filepath.Join(e.stateDir, "ca.crt"),
		"-o", bodyFile, "-w", "%{http_connect} %{http_code}"}, extra...)
	args = append(args, url)
	cmd := exec.Command("curl", args...)
	cmd.Env = append(os.Environ(), "HTTPS_PROXY=http://"+d.proxyAddr, "https_proxy=http://"+d.proxyAddr, "NO_PROXY=", "no_proxy=")
	cmd.Env = append(cmd.Env, environ...)
	out := e.capture()
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		exit = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("curl: %v", err)
	}
	fields := strings.Fields(out.String())
	if len(fields) >= 2 {
		connectCode, httpCode = fields[len(fields)-2], fields[len(fields)-1]
	}
	b, _ := os.ReadFile(bodyFile)
	e.capture().Write(b)
	return exit, connectCode, httpCode, string(b)
}

// assertNoSecrets fails when any token the fake issued appears in anything
// the binary printed or curl received.
func (e *env) assertNoSecrets() {
	e.t.Helper()
	secrets := e.fake.IssuedSecrets()
	if len(secrets) == 0 {
		e.t.Fatal("the fake issued no secrets: the test proves nothing")
	}
	for i, l := range e.logs {
		s := l.String()
		for _, secret := range secrets {
			if strings.Contains(s, secret) {
				e.t.Errorf("output %d contains an issued secret (%.12s…)", i, secret)
			}
		}
	}
}

func (e *env) storedSession() map[string]any {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.stateDir, "session.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		e.t.Fatalf("session.json does not parse: %v", err)
	}
	return s
}

func lastAPICall(t *testing.T, fake *anaplantest.Server) anaplantest.Call {
	t.Helper()
	calls := fake.Calls()
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].Listener == "api" {
			return calls[i]
		}
	}
	t.Fatal("the fake API saw no call")
	return anaplantest.Call{}
}

// waitFor polls cond until it holds or 30 s pass.
func waitFor(cond func() bool) bool {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}

func requireCurl(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestEndToEndLoginServeCurl(t *testing.T) {
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{})

	if code, out, _ := e.command("status"); code != statusLoginRequired {
		t.Fatalf("status before login: exit %d, want %d\n%s", code, statusLoginRequired, out)
	}

	d := e.serve()
	if code, body := d.admin(t, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before login = %d %q, want 503", code, body)
	}
	// Without a session, a script gets a clear answer, not a hang or an empty reply.
	_, connect, httpCode, body := e.curl(d, e.fake.APIURL()+"/2/0/users/me")
	if connect != "200" || httpCode != "511" || !strings.Contains(body, "anaplan-proxy login") {
		t.Fatalf("before login: CONNECT %s, HTTP %s, body %q; want 200, 511 and the login hint", connect, httpCode, body)
	}

	screen := e.login()
	for _, want := range []string{"SSO exception user", "Logged in as integration.user@example.com"} {
		if !strings.Contains(screen, want) {
			t.Errorf("login screen lacks %q:\n%s", want, screen)
		}
	}
	// serve picks up the new login without a restart.
	if !waitFor(func() bool { code, _ := d.admin(t, "/readyz"); return code == http.StatusOK }) {
		t.Fatalf("/readyz did not turn 200 after login:\n%s", d.logs)
	}

	exit, connect, httpCode, body := e.curl(d, e.fake.APIURL()+"/2/0/users/me", "-H", "Authorization: Basic c2NyaXB0OnBhc3N3b3Jk")
	if exit != 0 || connect != "200" || httpCode != "200" {
		t.Fatalf("curl through the proxy: exit %d, CONNECT %s, HTTP %s, body %q\nlogs:\n%s", exit, connect, httpCode, body, d.logs)
	}
	call := lastAPICall(t, e.fake)
	want := "AnaplanAuthToken " + e.storedSession()["access_token"].(string)
	if call.Authorization != want {
		t.Errorf("the fake API saw Authorization %.30q…, want the stored access token with scheme AnaplanAuthToken", call.Authorization)
	}

	if code, out, _ := e.command("status"); code != statusUsable || !strings.Contains(out, "state:               valid") {
		t.Errorf("status after login: exit %d, want %d\n%s", code, statusUsable, out)
	}
	for _, f := range []string{"session.json", "ca.key"} {
		if m := fileMode(t, filepath.Join(e.stateDir, f)); m != 0o600 {
			t.Errorf("%s mode = %04o, want 0600", f, m)
		}
	}
	if m := fileMode(t, e.stateDir); m&0o077 != 0 {
		t.Errorf("state directory mode = %04o, want no group or other access", m)
	}
	if code, metrics := d.admin(t, "/metrics"); code != 200 || !strings.Contains(metrics, "anaplan_proxy_") {
		t.Errorf("/metrics = %d, lacks anaplan_proxy_ metrics", code)
	}
	d.stop(t)
	e.assertNoSecrets()
}

func TestDeniedConnectReachesNothing(t *testing.T) {
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{})
	e.login()
	d := e.serve()

	// A listener that must never see a connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())

	tests := []struct{ name, url string }{
		{"other host", "https://localhost:" + port + "/"},
		{"IP literal", "https://127.0.0.1:" + port + "/"},
		{"inject host name on another port", "https://localhost:" + port + "/2/0/users/me"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exit, connect, _, _ := e.curl(d, tt.url, "-v")
			if exit == 0 || connect != "403" {
				t.Fatalf("curl %s: exit %d, CONNECT answer %s; want a failure with 403", tt.url, exit, connect)
			}
		})
	}
	// The reason is in the body of the 403, for a human reading curl -v or logs.
	conn, err := net.Dial("tcp", d.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "example.com") || resp.Header.Get("Proxy-Status") == "" {
		t.Errorf("CONNECT example.com: %d %q Proxy-Status %q; want 403 naming the host, with Proxy-Status",
			resp.StatusCode, body, resp.Header.Get("Proxy-Status"))
	}
	select {
	case <-accepted:
		t.Error("a denied CONNECT reached the target")
	default:
	}
	e.assertNoSecrets()
}

func TestShortLivedTokensUnderLoad(t *testing.T) {
	requireCurl(t)
	if testing.Short() {
		t.Skip("runs 30 s of traffic")
	}
	const lifetime = 3 * time.Second
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: lifetime})
	e.login()
	d := e.serve()

	start := time.Now()
	n := 0
	for time.Since(start) < 30*time.Second {
		exit, connect, httpCode, body := e.curl(d, e.fake.APIURL()+"/2/0/workspaces")
		if exit != 0 || connect != "200" || httpCode != "200" {
			t.Fatalf("request %d after %s: exit %d, CONNECT %s, HTTP %s, body %q\nlogs:\n%s",
				n, time.Since(start).Round(time.Millisecond), exit, connect, httpCode, body, d.logs)
		}
		n++
	}
	refreshes := e.fake.Refreshes()
	t.Logf("%d requests, %d refreshes in %s", n, refreshes, time.Since(start).Round(time.Second))
	// Refreshing at ~75%% of 3 s gives about 13 in 30 s; one per request would be n.
	if refreshes < 5 || refreshes > 25 {
		t.Errorf("%d refreshes in 30 s with 3 s tokens; want about 13 (refresh ahead of expiry, not per request)", refreshes)
	}
	if r := e.fake.RefreshReplays(); r != 0 {
		t.Errorf("the fake saw %d refresh tokens presented twice", r)
	}
	d.stop(t)
	e.assertNoSecrets()
}

func TestStatusExitCodes(t *testing.T) {
	e := newEnv(t, anaplantest.Options{})
	tests := []struct {
		name string
		prep func()
		want int
	}{
		{"no session", func() {}, statusLoginRequired},
		{"stored session, daemon down", func() { e.login() }, statusUsable},
		{"corrupt store", func() {
			os.WriteFile(filepath.Join(e.stateDir, "session.json"), []byte("{not json"), 0o600)
		}, statusError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.prep()
			if code, out, errOut := e.command("status"); code != tt.want {
				t.Fatalf("exit %d, want %d\n%s%s", code, tt.want, out, errOut)
			}
		})
	}
	// No client ID: login says which key to set.
	code, _, errOut := e.command("login", "--oauth-client-id", " ")
	if code == 0 || !strings.Contains(errOut, "oauth.client_id") {
		t.Errorf("login without a client id: exit %d, stderr %q", code, errOut)
	}
}

func TestServeRefusesUnsafeStore(t *testing.T) {
	e := newEnv(t, anaplantest.Options{})
	e.login()
	path := filepath.Join(e.stateDir, "session.json")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := e.command("serve")
	if code == 0 || !strings.Contains(errOut, "chmod 600 "+path) {
		t.Fatalf("serve with a world-readable store: exit %d, stderr %q; want a refusal naming the chmod", code, errOut)
	}
	// The file is not replaced or changed.
	if m := fileMode(t, path); m != 0o644 {
		t.Errorf("store mode changed to %04o", m)
	}
	e.assertNoSecrets()
}
