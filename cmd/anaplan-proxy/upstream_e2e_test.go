package main

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/testutil"
)

// addConfig adds lines (already indented) at the top of a section of the
// env's config file.
func (e *env) addConfig(section string, lines ...string) {
	e.t.Helper()
	b, err := os.ReadFile(e.configPath)
	if err != nil {
		e.t.Fatal(err)
	}
	head := section + ":\n"
	if !strings.Contains(string(b), head) {
		e.t.Fatalf("the config has no section %q", section)
	}
	out := strings.Replace(string(b), head, head+strings.Join(lines, "\n")+"\n", 1)
	if err := os.WriteFile(e.configPath, []byte(out), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func countCalls(fake *anaplantest.Server, listener string) int {
	n := 0
	for _, c := range fake.Calls() {
		if c.Listener == listener {
			n++
		}
	}
	return n
}

func TestUpstreamProxyEndToEnd(t *testing.T) {
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{})
	const password = "corp-Pa55:word"
	corp := testutil.StartCorporateProxy(t, "svc-anaplan", password, nil)
	e.addConfig("upstream", "  proxy: "+corp.URL)
	oauthHost := strings.TrimPrefix(e.fake.OAuthURL(), "https://")

	e.login()
	if n := countCalls(e.fake, "oauth"); n < 2 {
		t.Fatalf("the fake OAuth saw %d calls during login", n)
	}
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte("svc-anaplan:"+password))
	for _, c := range corp.Connects() {
		if c != (testutil.Connect{Target: oauthHost, Auth: wantAuth}) {
			t.Errorf("during login the corporate proxy saw a CONNECT to %s (credentials right: %v); want only CONNECTs to %s with its credentials",
				c.Target, c.Auth == wantAuth, oauthHost)
		}
	}
	if len(corp.Connects()) == 0 {
		t.Fatal("login did not go through the corporate proxy")
	}

	d := e.serve()
	exit, connect, httpCode, body := e.curl(d, e.fake.APIURL()+"/2/0/users/me")
	if exit != 0 || connect != "200" || httpCode != "200" {
		t.Fatalf("curl through both proxies: exit %d, CONNECT %s, HTTP %s, body %q\nlogs:\n%s", exit, connect, httpCode, body, d.logs)
	}
	if got, want := lastAPICall(t, e.fake).Authorization, "AnaplanAuthToken "+e.storedSession()["access_token"].(string); got != want {
		t.Error("the fake API did not see the stored access token")
	}
	if seen := corp.Connects(); seen[len(seen)-1] != (testutil.Connect{Target: e.fake.APIHost(), Auth: wantAuth}) {
		t.Errorf("the corporate proxy's last CONNECT went to %s (credentials right: %v); want the API host %s with its credentials",
			seen[len(seen)-1].Target, seen[len(seen)-1].Auth == wantAuth, e.fake.APIHost())
	}

	// Status shows the corporate proxy, never its credentials.
	shown := "http://" + corp.Addr
	_, statusJSON := d.admin(t, "/status")
	var doc struct {
		UpstreamProxy string `json:"upstream_proxy"`
	}
	if err := json.Unmarshal([]byte(statusJSON), &doc); err != nil || doc.UpstreamProxy != shown {
		t.Errorf("/status upstream_proxy = %q (%v), want %q", doc.UpstreamProxy, err, shown)
	}
	if _, out, _ := e.command("status"); !strings.Contains(out, "corporate proxy:     "+shown+"\n") {
		t.Errorf("status output lacks the corporate proxy:\n%s", out)
	}

	// With the corporate proxy down, nothing goes around it.
	corp.Close()
	before := len(e.fake.Calls())
	_, connect, httpCode, body = e.curl(d, e.fake.APIURL()+"/2/0/users/me")
	if connect != "200" || httpCode != "502" || !strings.Contains(body, "corporate proxy "+shown) || !strings.Contains(body, "connection refused") {
		t.Errorf("corporate proxy down: CONNECT %s, HTTP %s, body %q; want 502 naming the corporate proxy", connect, httpCode, body)
	}
	code, _, errOut := e.command("login")
	t.Logf("login with the corporate proxy down: %s", errOut)
	if code == 0 || !strings.Contains(errOut, "corporate proxy "+shown) {
		t.Errorf("login with the corporate proxy down: exit %d, stderr %q; want a failure naming the proxy", code, errOut)
	}
	if after := len(e.fake.Calls()); after != before {
		t.Errorf("the fake saw %d calls while the corporate proxy was down", after-before)
	}

	d.stop(t)
	for i, l := range e.logs {
		if strings.Contains(l.String(), password) || strings.Contains(l.String(), url.QueryEscape(password)) {
			t.Errorf("output %d shows the corporate proxy's password", i)
		}
	}
	e.assertNoSecrets()
}

// TestUpstreamProxyWrongCredentials: a 407 from the corporate proxy ends
// login with the proxy's answer, and nothing reaches Anaplan.
func TestUpstreamProxyWrongCredentials(t *testing.T) {
	e := newEnv(t, anaplantest.Options{})
	corp := testutil.StartCorporateProxy(t, "svc-anaplan", "right", nil)
	wrong := strings.Replace(corp.URL, ":right@", ":wrong-hunter2@", 1)
	code, _, errOut := e.command("login", "--upstream-proxy", wrong)
	t.Logf("login with wrong proxy credentials: %s", errOut)
	if code == 0 || !strings.Contains(errOut, "corporate proxy http://"+corp.Addr) || !strings.Contains(errOut, "Proxy Authentication Required") {
		t.Errorf("login with wrong proxy credentials: exit %d, stderr %q; want the proxy's 407", code, errOut)
	}
	if strings.Contains(errOut, "hunter2") {
		t.Errorf("the error shows the password: %q", errOut)
	}
	if n := len(e.fake.Calls()); n != 0 {
		t.Errorf("the fake saw %d calls", n)
	}
	right := "Basic " + base64.StdEncoding.EncodeToString([]byte("svc-anaplan:right"))
	if got := corp.Connects(); len(got) == 0 || got[0].Auth == "" || got[0].Auth == right {
		t.Errorf("the corporate proxy saw %d CONNECTs; want the first with the configured, wrong credentials", len(got))
	}
}

func TestPlainHTTPEndToEnd(t *testing.T) {
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{})
	e.login()
	apiURL := "http://" + e.fake.APIHost() + "/2/0/users/me"

	d := e.serve()
	_, _, httpCode, body := e.curl(d, apiURL, "-x", "http://"+d.proxyAddr)
	if httpCode != "403" || !strings.Contains(body, "inject.plain_http: true") {
		t.Fatalf("plain HTTP by default: HTTP %s, body %q; want 403 saying how to turn it on", httpCode, body)
	}
	if n := countCalls(e.fake, "api"); n != 0 {
		t.Fatalf("the fake API saw %d calls", n)
	}
	d.stop(t)

	e.addConfig("inject", "  plain_http: true")
	d = e.serve()
	exit, _, httpCode, body := e.curl(d, apiURL, "-x", "http://"+d.proxyAddr, "-H", "Authorization: Basic c2NyaXB0OnBhc3N3b3Jk")
	if exit != 0 || httpCode != "200" {
		t.Fatalf("curl -x plain HTTP: exit %d, HTTP %s, body %q\nlogs:\n%s", exit, httpCode, body, d.logs)
	}
	if got, want := lastAPICall(t, e.fake).Authorization, "AnaplanAuthToken "+e.storedSession()["access_token"].(string); got != want {
		t.Error("the fake API (an HTTPS server) did not get the stored access token")
	}
	// Other hosts are still refused.
	_, _, httpCode, body = e.curl(d, "http://example.com/", "-x", "http://"+d.proxyAddr)
	if httpCode != "403" || !strings.Contains(body, "not an Anaplan API host") {
		t.Errorf("plain HTTP to another host: HTTP %s, body %q", httpCode, body)
	}
	d.stop(t)
	e.assertNoSecrets()
}
