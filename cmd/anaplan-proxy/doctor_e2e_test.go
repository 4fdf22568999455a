package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/testutil"
)

// doctorReport is the output of `anaplan-proxy doctor --json`.
type doctorReport struct {
	OK     bool          `json:"ok"`
	Checks []checkResult `json:"checks"`
}

// find returns the checks named check whose detail contains text.
func (r doctorReport) find(check, text string) []checkResult {
	var out []checkResult
	for _, c := range r.Checks {
		if c.Check == check && strings.Contains(c.Detail, text) {
			out = append(out, c)
		}
	}
	return out
}

// runDoctor runs doctor --json with the env's config, the running daemon's
// addresses and extra environment and arguments.
func (e *env) runDoctor(d *daemon, environ []string, args ...string) (int, doctorReport) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args = append([]string{"doctor", "--json", "--config", e.configPath, "--listen", d.proxyAddr, "--admin-listen", d.adminAddr}, args...)
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = append(os.Environ(), environ...)
	out, errb := e.capture(), e.capture()
	cmd.Stdout, cmd.Stderr = out, errb
	code := 0
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			e.t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	var rep doctorReport
	if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
		e.t.Fatalf("doctor --json printed no report (%v):\n%s\n%s", err, out, errb)
	}
	return code, rep
}

// keytoolStore makes a PKCS12 truststore holding the PEM certificate in
// certFile.
func keytoolStore(t *testing.T, certFile string) string {
	t.Helper()
	store := filepath.Join(t.TempDir(), "truststore.p12")
	out, err := exec.Command("keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", certFile,
		"-keystore", store, "-storetype", "PKCS12", "-storepass", "changeit").CombinedOutput()
	if err != nil {
		t.Fatalf("keytool: %v\n%s", err, out)
	}
	return store
}

// TestDoctor runs doctor on a healthy set-up, where every check passes, and
// breaks one thing at a time, where the check that names it fails with a fix.
func TestDoctor(t *testing.T) {
	e := newEnv(t, anaplantest.Options{})
	e.login()
	d := e.serve()
	caPath := filepath.Join(e.stateDir, "ca.crt")
	// Clients that trust the local CA: curl, Python's ssl and requests.
	trusting := []string{"CURL_CA_BUNDLE=" + caPath, "SSL_CERT_FILE=" + caPath, "REQUESTS_CA_BUNDLE=" + caPath}
	var javaArgs []string
	_, keytoolErr := exec.LookPath("keytool")
	if keytoolErr == nil {
		javaArgs = []string{"--truststore", keytoolStore(t, caPath)}
	}

	t.Run("healthy", func(t *testing.T) {
		code, rep := e.runDoctor(d, trusting, javaArgs...)
		for _, c := range rep.Checks {
			if c.Status == checkFail {
				t.Errorf("%s failed: %s (fix: %s)", c.Check, c.Detail, c.Fix)
			}
		}
		if code != 0 || !rep.OK {
			t.Fatalf("exit %d, ok %t on a healthy set-up", code, rep.OK)
		}
		for _, want := range []struct{ check, text string }{
			{"config", "parsed"},
			{"state dir", "0700"},
			{"file", "session.json: 0600"},
			{"file", "ca.key: 0600"},
			{"session", "valid"},
			{"oauth host", "TLS verified"},
			{"inject host", e.fake.APIHost() + ": resolves, TLS verified"},
			{"clock", "within 1m0s"},
			{"proxy listener", "listening"},
			{"through proxy", "HTTP 200 with the session's token"},
			{"trust: curl", "holds the local CA"},
		} {
			if cs := rep.find(want.check, want.text); len(cs) == 0 || cs[0].Status != checkPass {
				t.Errorf("no passing %q check saying %q: %+v", want.check, want.text, rep.Checks)
			}
		}
		if keytoolErr == nil && len(rep.find("trust: java", "holds the local CA")) != 1 {
			t.Errorf("the Java truststore check did not pass: %+v", rep.Checks)
		}
	})

	t.Run("through the corporate proxy", func(t *testing.T) {
		corp := testutil.StartCorporateProxy(t, "svc-anaplan", "s3cret-corp", nil)
		code, rep := e.runDoctor(d, trusting, "--upstream-proxy", corp.URL)
		if code != 0 {
			t.Errorf("exit %d: %+v", code, rep.Checks)
		}
		for _, check := range []string{"oauth host", "inject host"} {
			if cs := rep.find(check, "TLS verified through the corporate proxy http://"+corp.Addr); len(cs) != 1 || cs[0].Status != checkPass {
				t.Errorf("%s: %+v", check, rep.Checks)
			}
		}
		for _, l := range e.logs {
			if strings.Contains(l.String(), "s3cret-corp") {
				t.Error("doctor printed the corporate proxy's password")
			}
		}
		var targets []string
		for _, c := range corp.Connects() {
			targets = append(targets, c.Target)
		}
		oauthHost := strings.TrimPrefix(e.fake.OAuthURL(), "https://")
		if !slices.Contains(targets, oauthHost) || !slices.Contains(targets, e.fake.APIHost()) {
			t.Errorf("the corporate proxy saw CONNECTs to %q; want %s and %s", targets, oauthHost, e.fake.APIHost())
		}
	})

	// fails runs doctor and returns the one failed check named check.
	fails := func(t *testing.T, environ []string, check string, args ...string) checkResult {
		t.Helper()
		code, rep := e.runDoctor(d, environ, args...)
		if code != 1 || rep.OK {
			t.Errorf("exit %d, ok %t; want 1, false", code, rep.OK)
		}
		var failed []checkResult
		for _, c := range rep.Checks {
			if c.Status == checkFail {
				failed = append(failed, c)
			}
		}
		if len(failed) != 1 || failed[0].Check != check {
			t.Fatalf("failed checks %+v; want only %q", failed, check)
		}
		if failed[0].Fix == "" {
			t.Errorf("%s failed without a fix: %s", check, failed[0].Detail)
		}
		return failed[0]
	}

	t.Run("key file 0644", func(t *testing.T) {
		key := filepath.Join(e.stateDir, "ca.key")
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(key, 0o600) })
		c := fails(t, trusting, "file")
		if c.Detail != key+": mode 0644 lets other users read it" || c.Fix != "chmod 600 "+key {
			t.Errorf("detail %q, fix %q", c.Detail, c.Fix)
		}
	})

	t.Run("state directory open to others", func(t *testing.T) {
		if err := os.Chmod(e.stateDir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(e.stateDir, 0o700) })
		c := fails(t, trusting, "state dir")
		if c.Detail != e.stateDir+": mode 0755 lets other users see or change the session and the CA key" || c.Fix != "chmod 700 "+e.stateDir {
			t.Errorf("detail %q, fix %q", c.Detail, c.Fix)
		}
	})

	t.Run("unreachable inject host", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := ln.Addr().String()
		ln.Close()
		c := fails(t, trusting, "inject host", "--inject-hosts", e.fake.APIHost()+","+closed)
		if !strings.HasPrefix(c.Detail, closed+": unreachable") || !strings.Contains(c.Fix, "allow outbound TCP to "+closed) {
			t.Errorf("detail %q, fix %q", c.Detail, c.Fix)
		}
	})

	t.Run("CA missing from the truststore", func(t *testing.T) {
		if keytoolErr != nil {
			t.Skip("keytool is not installed")
		}
		other := filepath.Join(t.TempDir(), "other.pem")
		if err := os.WriteFile(other, e.fake.CACertPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		store := keytoolStore(t, other)
		c := fails(t, trusting, "trust: java", "--truststore", store)
		if c.Detail != store+" does not hold the local CA" || !strings.HasPrefix(c.Fix, "keytool -importcert -noprompt -alias anaplan-proxy -file "+caPath) {
			t.Errorf("detail %q, fix %q", c.Detail, c.Fix)
		}
	})

	t.Run("CA missing from curl's bundle", func(t *testing.T) {
		other := filepath.Join(t.TempDir(), "bundle.pem")
		if err := os.WriteFile(other, e.fake.CACertPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		c := fails(t, append(trusting, "CURL_CA_BUNDLE="+other), "trust: curl")
		if c.Detail != other+" (CURL_CA_BUNDLE) does not hold the local CA" || !strings.Contains(c.Fix, "update-ca-certificates") {
			t.Errorf("detail %q, fix %q", c.Detail, c.Fix)
		}
	})

	t.Run("skewed clock", func(t *testing.T) {
		// A token endpoint whose Date is five minutes ahead of this clock.
		skewed, err := anaplantest.Start(anaplantest.Options{Now: func() time.Time { return time.Now().Add(5 * time.Minute) }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(skewed.Close)
		ca, err := skewed.WriteCAFile(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		c := fails(t, trusting, "clock", "--oauth-token-url", skewed.TokenURL(), "--oauth-ca-file", ca)
		// The Date header has whole seconds: the skew shows as 4m59s or 5m0s.
		skew, rest, _ := strings.Cut(strings.TrimPrefix(c.Detail, "this machine's clock is "), " ")
		d, err := time.ParseDuration(skew)
		if err != nil || (5*time.Minute-d).Abs() > 2*time.Second || !strings.HasPrefix(rest, "behind the token endpoint's Date") ||
			!strings.Contains(c.Fix, "timedatectl set-ntp true") {
			t.Errorf("detail %q, fix %q", c.Detail, c.Fix)
		}
	})

	t.Run("no session", func(t *testing.T) {
		// A state directory without a session, and no daemon answering.
		empty := filepath.Join(t.TempDir(), "state")
		if err := os.Mkdir(empty, 0o700); err != nil {
			t.Fatal(err)
		}
		c := fails(t, trusting, "session", "--state-dir", empty, "--admin-listen", "127.0.0.1:1")
		if !strings.HasPrefix(c.Detail, "no session yet") || c.Fix != "run: anaplan-proxy login --config "+e.configPath {
			t.Errorf("detail %q, fix %q", c.Detail, c.Fix)
		}
	})
	d.stop(t)
	e.assertNoSecrets()
}

// TestDoctorSharedStore: with the session and the CA in PostgreSQL, doctor
// reads both from the store, checks the key file and passes.
func TestDoctorSharedStore(t *testing.T) {
	h := newHAEnv(t, anaplantest.Options{}, 1, time.Second, "")
	d := h.serveInstance(0)
	h.login()
	d.awaitReady(t, 10*time.Second)
	bundle := filepath.Join(t.TempDir(), "ca.pem")
	if _, out, _ := h.command("ca"); os.WriteFile(bundle, []byte(out), 0o644) != nil {
		t.Fatal("cannot write the CA bundle")
	}
	code, rep := h.runDoctor(d, []string{"CURL_CA_BUNDLE=" + bundle, "SSL_CERT_FILE=" + bundle, "REQUESTS_CA_BUNDLE=" + bundle})
	for _, c := range rep.Checks {
		if c.Status == checkFail {
			t.Errorf("%s failed: %s (fix: %s)", c.Check, c.Detail, c.Fix)
		}
	}
	if code != 0 {
		t.Fatalf("exit %d with a shared store", code)
	}
	for _, want := range []struct{ check, text string }{
		{"file", h.keyFile + ": 0600"},
		{"session", "valid"},
		{"through proxy", "HTTP 200 with the session's token"},
		{"trust: curl", "holds the local CA"},
	} {
		if cs := rep.find(want.check, want.text); len(cs) != 1 || cs[0].Status != checkPass {
			t.Errorf("no passing %q check saying %q: %+v", want.check, want.text, rep.Checks)
		}
	}
	if cs := rep.find("state dir", "not used"); len(cs) != 1 || cs[0].Status != checkSkip {
		t.Errorf("state dir check with a shared store: %+v", cs)
	}
	if len(rep.find("file", "session.json")) != 0 {
		t.Errorf("doctor looked for session.json with a shared store: %+v", rep.Checks)
	}
	d.stop(t)
	h.assertNoSecrets()
}
