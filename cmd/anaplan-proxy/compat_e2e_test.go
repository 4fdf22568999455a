package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// The tests in this file run clients written for Anaplan's classic
// authentication API, unchanged, through the real binary: they post a user
// name and password to /token/authenticate and send the tokenValue they get
// to the API. The fake's classic listener stands in for auth.anaplan.com.

// classicUser and classicPassword are what the scripts send to
// /token/authenticate. The password must never appear in the proxy's output.
const (
	classicUser     = "integration.user@example.com"
	classicPassword = "Classic-Pa55word-7f3a!"
)

// classicScript is a classic-API shell script as integration teams write
// them: authenticate with Basic credentials, take tokenInfo.tokenValue, call
// the API. Nothing in it knows about the proxy; only its environment does
// (HTTPS_PROXY and CURL_CA_BUNDLE).
const classicScript = `#!/bin/bash
set -euo pipefail

response=$(curl -sS --max-time 30 -w '\n%{http_code}' -u "$ANAPLAN_USER:$ANAPLAN_PASSWORD" -X POST "$AUTH_URL/token/authenticate")
status=${response##*$'\n'}
body=${response%$'\n'*}
if [ "$status" != 201 ]; then
    echo "authentication failed: HTTP $status: $body" >&2
    exit 1
fi
TOKEN=$(printf '%s' "$body" | python3 -c 'import json, sys; print(json.load(sys.stdin)["tokenInfo"]["tokenValue"])')
EXPIRES=$(printf '%s' "$body" | sed -n 's/.*"expiresAt":\([0-9]*\).*/\1/p')
echo "expiresAt=$EXPIRES"

curl -sS --max-time 30 --fail-with-body -H "Authorization: AnaplanAuthToken $TOKEN" "$API_URL/2/0/users/me"
echo
`

// withCompatHost makes the fake's classic listener the only compat host.
func (e *env) withCompatHost() {
	e.t.Helper()
	f, err := os.OpenFile(e.configPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "compat:\n  hosts: [\"%s\"]\n", e.fake.ClassicAuthHost()); err != nil {
		e.t.Fatal(err)
	}
}

// runClassicScript runs classicScript through the daemon, trusting caFile,
// and returns its exit code and output.
func (e *env) runClassicScript(d *daemon, caFile string) (int, string) {
	e.t.Helper()
	script := filepath.Join(e.t.TempDir(), "nightly.sh")
	if err := os.WriteFile(script, []byte(classicScript), 0o700); err != nil {
		e.t.Fatal(err)
	}
	return e.run(clientEnviron(
		"HTTPS_PROXY=http://"+d.proxyAddr,
		"CURL_CA_BUNDLE="+caFile,
		"ANAPLAN_USER="+classicUser,
		"ANAPLAN_PASSWORD="+classicPassword,
		"AUTH_URL="+e.fake.ClassicAuthURL(),
		"API_URL="+e.fake.APIURL(),
	), "bash", script)
}

// assertCredentialsKept fails when the classic listener saw a call, or when
// the password appears in anything captured: the binary's logs, and the
// clients' output, which never print it themselves.
func (e *env) assertCredentialsKept() {
	e.t.Helper()
	for _, c := range e.fake.Calls() {
		if c.Listener == "classic" {
			e.t.Errorf("the classic authentication listener saw %s %s; the proxy must answer it itself", c.Method, c.Path)
		}
	}
	basic := base64.StdEncoding.EncodeToString([]byte(classicUser + ":" + classicPassword))
	for i, l := range e.logs {
		s := l.String()
		if strings.Contains(s, classicPassword) || strings.Contains(s, basic) {
			e.t.Errorf("output %d contains the script's password", i)
		}
	}
	e.assertNoSecrets()
}

// requireClassicTools skips when the script's tools are missing.
func requireClassicTools(t *testing.T) {
	t.Helper()
	requireCurl(t)
	for _, tool := range []string{"bash", "python3", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
}

func TestClassicScriptUnchanged(t *testing.T) {
	requireClassicTools(t)
	e := newEnv(t, anaplantest.Options{})
	e.withCompatHost()
	d, caFile := e.startForClients()

	code, out := e.runClassicScript(d, caFile)
	if code != 0 {
		t.Fatalf("the classic script failed (exit %d):\n%s\nproxy logs:\n%s", code, out, d.logs)
	}
	if want := e.wantAuthorization(); lastAPICall(t, e.fake).Authorization != want {
		t.Errorf("the fake API did not see the session's access token")
	}
	if !strings.Contains(out, `"authorization_scheme":"AnaplanAuthToken"`) {
		t.Errorf("the script's API call did not succeed:\n%s", out)
	}

	// expiresAt follows the session's access token.
	_, statusBody := d.admin(t, "/status")
	var st struct {
		Expiry      time.Time `json:"access_token_expiry"`
		CompatHosts []string  `json:"compat_hosts"`
	}
	if err := json.Unmarshal([]byte(statusBody), &st); err != nil {
		t.Fatal(err)
	}
	if want := "expiresAt=" + strconv.FormatInt(st.Expiry.UnixMilli(), 10); !strings.Contains(out, want) {
		t.Errorf("the script printed\n%s\nwant %s (the session's access-token expiry)", out, want)
	}
	if len(st.CompatHosts) != 1 || st.CompatHosts[0] != e.fake.ClassicAuthHost() {
		t.Errorf("/status compat_hosts = %q, want the classic host", st.CompatHosts)
	}
	if !strings.Contains(d.logs.String(), `"decision":"compat"`) {
		t.Errorf("the access log has no compat decision:\n%s", d.logs)
	}
	d.stop(t)
	e.assertCredentialsKept()
}

// javaClassicClient authenticates with Basic credentials and calls the API
// with the tokenValue, through an explicit ProxySelector as Anaplan Connect
// does with -via. Arguments: auth URL, API URL, proxy host, proxy port,
// user, password. It prints "auth <status>", "api <status>" and the API's
// body, or "error <exception>".
const javaClassicClient = `import java.net.InetSocketAddress;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Classic {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder()
            .proxy(ProxySelector.of(new InetSocketAddress(args[2], Integer.parseInt(args[3]))))
            .connectTimeout(Duration.ofSeconds(20))
            .build();
        String basic = Base64.getEncoder().encodeToString((args[4] + ":" + args[5]).getBytes(StandardCharsets.UTF_8));
        try {
            HttpResponse<String> auth = client.send(HttpRequest.newBuilder(URI.create(args[0] + "/token/authenticate"))
                .timeout(Duration.ofSeconds(30))
                .header("Authorization", "Basic " + basic)
                .POST(HttpRequest.BodyPublishers.noBody()).build(), HttpResponse.BodyHandlers.ofString());
            System.out.println("auth " + auth.statusCode());
            Matcher m = Pattern.compile("\"tokenValue\":\"([^\"]+)\"").matcher(auth.body());
            if (!m.find()) {
                System.out.println(auth.body());
                System.exit(1);
            }
            HttpResponse<String> api = client.send(HttpRequest.newBuilder(URI.create(args[1] + "/2/0/users/me"))
                .timeout(Duration.ofSeconds(30))
                .header("Authorization", "AnaplanAuthToken " + m.group(1))
                .GET().build(), HttpResponse.BodyHandlers.ofString());
            System.out.println("api " + api.statusCode());
            System.out.println(api.body());
        } catch (Exception ex) {
            System.out.println("error " + ex);
            System.exit(1);
        }
    }
}
`

func TestClassicJavaHttpClientVia(t *testing.T) {
	requireJava(t)
	e := newEnv(t, anaplantest.Options{})
	e.withCompatHost()
	d, caFile := e.startForClients()
	host, port, err := net.SplitHostPort(d.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	code, out := e.runJava(javaClassicClient, e.javaTrustStore(caFile),
		e.fake.ClassicAuthURL(), e.fake.APIURL(), host, port, classicUser, classicPassword)
	if code != 0 {
		t.Fatalf("java exited %d:\n%s\nproxy logs:\n%s", code, out, d.logs)
	}
	if !strings.Contains(out, "auth 201\n") || !strings.Contains(out, "api 200\n") ||
		!strings.Contains(out, `"authorization_scheme":"AnaplanAuthToken"`) {
		t.Fatalf("want auth 201 and api 200 with the API's answer:\n%s", out)
	}
	if want := e.wantAuthorization(); lastAPICall(t, e.fake).Authorization != want {
		t.Errorf("the fake API did not see the session's access token")
	}
	d.stop(t)
	e.assertCredentialsKept()
}

func TestClassicScriptStopsWithoutSession(t *testing.T) {
	requireClassicTools(t)
	e := newEnv(t, anaplantest.Options{})
	e.withCompatHost()
	d, caFile := e.startForClients()

	// The grant is revoked in Anaplan. API calls that get 401 make the
	// daemon refresh, and the refresh is refused: login_required.
	e.fake.RevokeAll()
	if !waitFor(func() bool {
		e.curl(d, e.fake.APIURL()+"/2/0/users/me")
		_, body := d.admin(t, "/status")
		var st struct{ State string }
		return json.Unmarshal([]byte(body), &st) == nil && st.State == "login_required"
	}) {
		_, body := d.admin(t, "/status")
		t.Fatalf("the session did not turn login_required: %s", body)
	}

	before := len(e.fake.Calls())
	code, out := e.runClassicScript(d, caFile)
	if code == 0 {
		t.Fatalf("the classic script succeeded without a session:\n%s", out)
	}
	if !strings.Contains(out, "authentication failed: HTTP 511") || !strings.Contains(out, "anaplan-proxy login") {
		t.Errorf("the script's first call did not stop it with the proxy's message (511, anaplan-proxy login):\n%s", out)
	}
	if strings.Contains(out, "expiresAt=") {
		t.Errorf("the script went past its first step:\n%s", out)
	}
	if n := len(e.fake.Calls()) - before; n != 0 {
		t.Errorf("the fake saw %d calls from a script that should have stopped at the proxy", n)
	}
	if code, _ := d.admin(t, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d, want 503", code)
	}
	d.stop(t)
	e.assertCredentialsKept()
}
