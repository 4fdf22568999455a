package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// appendConfig adds YAML sections that the env's config file does not have.
func (e *env) appendConfig(yaml string) {
	e.t.Helper()
	f, err := os.OpenFile(e.configPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(yaml); err != nil {
		e.t.Fatal(err)
	}
}

func TestServeRefusesNonLoopbackListenWithoutClientControls(t *testing.T) {
	e := newEnv(t, anaplantest.Options{})
	for _, listen := range []string{"0.0.0.0:0", "[::]:0", "192.0.2.1:3128"} {
		code, _, errOut := e.command("serve", "--listen", listen)
		if code == 0 || !strings.Contains(errOut, "clients.allow_cidrs") || !strings.Contains(errOut, "clients.users_file") {
			t.Errorf("serve --listen %s: exit %d, stderr %q; want a refusal naming clients.allow_cidrs and clients.users_file", listen, code, errOut)
		}
	}
	if calls := e.fake.Calls(); len(calls) != 0 {
		t.Errorf("the fake saw %d calls from a daemon that must not start", len(calls))
	}
}

func TestProxyUsersEndToEnd(t *testing.T) {
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{})
	hash, err := bcrypt.GenerateFromPassword([]byte("pa55-w0rd"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(e.dir, "users")
	if err := os.WriteFile(users, []byte("script:"+string(hash)+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	e.appendConfig(fmt.Sprintf("clients:\n  users_file: %s\n", users))
	e.login()
	d := e.serve()
	url := e.fake.APIURL() + "/2/0/users/me"

	tests := []struct {
		name        string
		args        []string
		wantConnect string
		wantHTTP    string
	}{
		{"no credentials", nil, "407", "000"},
		{"wrong password", []string{"--proxy-user", "script:guess"}, "407", "000"},
		{"unknown user", []string{"--proxy-user", "nobody:pa55-w0rd"}, "407", "000"},
		{"right credentials", []string{"--proxy-user", "script:pa55-w0rd"}, "200", "200"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.injectedCalls()
			exit, connect, httpCode, body := e.curl(d, url, tc.args...)
			if connect != tc.wantConnect || httpCode != tc.wantHTTP {
				t.Fatalf("curl: exit %d, CONNECT %s, HTTP %s, body %q; want CONNECT %s, HTTP %s", exit, connect, httpCode, body, tc.wantConnect, tc.wantHTTP)
			}
			got := e.injectedCalls() - before
			if tc.wantHTTP == "200" {
				if got != 1 || lastAPICall(t, e.fake).Authorization != e.wantAuthorization() {
					t.Errorf("the fake API saw %d calls, want 1 with the session's token", got)
				}
			} else if got != 0 {
				t.Errorf("the fake API saw %d calls from a refused client", got)
			}
		})
	}
	d.stop(t)
	if strings.Contains(d.logs.String(), "pa55-w0rd") || strings.Contains(d.logs.String(), "guess") {
		t.Error("the daemon logged a proxy password")
	}
	if !strings.Contains(d.logs.String(), `"user":"script"`) {
		t.Error("the access log does not name the proxy user")
	}
	e.assertNoSecrets()
}

func TestPrivateDestinationRefusedEndToEnd(t *testing.T) {
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{})
	e.login()
	// The fake API is on localhost: without allow_private the proxy must
	// refuse to connect there, and no token may leave.
	t.Setenv("ANAPLAN_PROXY_UPSTREAM_ALLOW_PRIVATE", "false")
	d := e.serve()
	before := e.injectedCalls()
	exit, connect, httpCode, body := e.curl(d, e.fake.APIURL()+"/2/0/users/me", "-D", "-")
	if exit != 0 || connect != "200" || httpCode != "403" {
		t.Fatalf("curl: exit %d, CONNECT %s, HTTP %s, body %q; want the intercepted request answered 403", exit, connect, httpCode, body)
	}
	if !strings.Contains(body, "resolves to 127.0.0.1 (loopback)") && !strings.Contains(body, "resolves to ::1 (loopback)") {
		t.Errorf("body %q does not say which address was refused", body)
	}
	if n := e.injectedCalls() - before; n != 0 {
		t.Errorf("the fake API saw %d calls", n)
	}
	if !strings.Contains(d.logs.String(), "destination_ip_prohibited") {
		t.Errorf("the log does not record the refusal:\n%s", d.logs)
	}
	d.stop(t)
	e.assertNoSecrets()
}
