package main

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// TestReloadOnSIGHUP adds an inject host to the config file and sends
// SIGHUP: the new host gets the token without a restart, the session is the
// same one, and a broken config on a later SIGHUP changes nothing.
func TestReloadOnSIGHUP(t *testing.T) {
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{})
	e.login()
	d := e.serve()

	// The fake's OAuth listener stands in for a host that is not yet
	// configured: same name (localhost), so the CA already covers it.
	newHost := strings.TrimPrefix(e.fake.OAuthURL(), "https://")
	probe := e.fake.OAuthURL() + "/activate"
	if _, connect, _, _ := e.curl(d, probe); connect != "403" {
		t.Fatalf("before the reload, CONNECT to %s answered %s; want 403", newHost, connect)
	}
	sinceBefore := sessionSince(t, d)
	loginsBefore := countGrants(e.fake, "urn:ietf:params:oauth:grant-type:device_code")

	orig, err := os.ReadFile(e.configPath)
	if err != nil {
		t.Fatal(err)
	}
	apiLine := `hosts: ["` + e.fake.APIHost() + `"]`
	if !strings.Contains(string(orig), apiLine) {
		t.Fatalf("config has no line %q:\n%s", apiLine, orig)
	}
	updated := strings.Replace(string(orig), apiLine, `hosts: ["`+e.fake.APIHost()+`", "`+newHost+`"]`, 1)
	if err := os.WriteFile(e.configPath, []byte(updated), 0o600); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	if !waitFor(func() bool { return strings.Contains(d.logs.String(), "configuration reloaded") }) {
		t.Fatalf("no reload logged:\n%s", d.logs)
	}

	exit, connect, code, _ := e.curl(d, probe)
	if exit != 0 || connect != "200" || code != "200" {
		t.Fatalf("after the reload: curl exit %d, CONNECT %s, HTTP %s; want the new inject host served", exit, connect, code)
	}
	var got string
	for _, c := range e.fake.Calls() {
		if c.Listener == "oauth" && c.Path == "/activate" {
			got = c.Authorization
		}
	}
	if want := "AnaplanAuthToken " + e.storedSession()["access_token"].(string); got != want {
		t.Errorf("the new inject host got Authorization %.30q…, want the session's token", got)
	}
	if exit, _, code, _ := e.curl(d, e.fake.APIURL()+"/2/0/users/me"); exit != 0 || code != "200" {
		t.Errorf("the original inject host after the reload: exit %d, HTTP %s", exit, code)
	}
	if since := sessionSince(t, d); !since.Equal(sinceBefore) {
		t.Errorf("session state changed at %v during the reload (was %v): the session must be kept", since, sinceBefore)
	}
	if n := countGrants(e.fake, "urn:ietf:params:oauth:grant-type:device_code"); n != loginsBefore {
		t.Errorf("%d device-code exchanges after the reload, %d before: the reload must not log in again", n, loginsBefore)
	}

	// A broken file: the error is logged and the running configuration stays.
	if err := os.WriteFile(e.configPath, []byte(updated+"listn: oops\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	if !waitFor(func() bool { return strings.Contains(d.logs.String(), "configuration not reloaded") }) {
		t.Fatalf("a bad config on SIGHUP was not reported:\n%s", d.logs)
	}
	if !strings.Contains(d.logs.String(), `unknown key \"listn\"`) {
		t.Errorf("the reload error does not name the bad key:\n%s", d.logs)
	}
	if exit, connect, code, _ := e.curl(d, probe); exit != 0 || connect != "200" || code != "200" {
		t.Errorf("after a failed reload: exit %d, CONNECT %s, HTTP %s; want the last good configuration", exit, connect, code)
	}
	if r := e.fake.RefreshReplays(); r != 0 {
		t.Errorf("%d refresh-token replays", r)
	}
	d.stop(t)
	e.assertNoSecrets()
}

// sessionSince reads the time of the last session state change from /status.
func sessionSince(t *testing.T, d *daemon) time.Time {
	t.Helper()
	code, body := d.admin(t, "/status")
	if code != http.StatusOK {
		t.Fatalf("/status = %d", code)
	}
	var st struct {
		Since time.Time `json:"since"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return st.Since
}

func countGrants(fake *anaplantest.Server, grant string) int {
	n := 0
	for _, c := range fake.Calls() {
		if c.Listener == "oauth" && c.GrantType == grant && c.Status == http.StatusOK {
			n++
		}
	}
	return n
}
