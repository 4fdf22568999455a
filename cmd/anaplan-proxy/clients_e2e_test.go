package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// The tests in this file run the clients that integration teams use (curl,
// Python, Java, Go) against the real binary, each configured the way the
// README tells users to: a proxy from the environment or a JVM option, and
// the CA that `anaplan-proxy ca` prints as the one extra thing to trust.

// clientTimeout bounds one client run; Java compiles its source first.
const clientTimeout = 90 * time.Second

// clientEnviron returns the test's environment without the variables
// through which a client could pick up a proxy or trust settings, followed
// by kv ("KEY=value").
func clientEnviron(kv ...string) []string {
	var out []string
	for _, v := range os.Environ() {
		key, _, _ := strings.Cut(v, "=")
		switch key {
		case "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
			"SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS":
			continue
		}
		out = append(out, v)
	}
	return append(out, kv...)
}

// startForClients logs in, starts serve, and writes the CA certificate that
// `anaplan-proxy ca` prints to a file, as a user would before pointing a
// client at the proxy. It returns the daemon and the CA file.
func (e *env) startForClients() (*daemon, string) {
	e.t.Helper()
	e.login()
	d := e.serve()
	code, out, errOut := e.command("ca")
	if code != 0 {
		e.t.Fatalf("anaplan-proxy ca: exit %d\n%s", code, errOut)
	}
	if b, _ := pem.Decode([]byte(out)); b == nil || b.Type != "CERTIFICATE" {
		e.t.Fatalf("anaplan-proxy ca printed no PEM certificate:\n%s", out)
	}
	caFile := filepath.Join(e.t.TempDir(), "anaplan-proxy-ca.crt")
	if err := os.WriteFile(caFile, []byte(out), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return d, caFile
}

// wantAuthorization is the header the fake API must see: the stored access
// token with Anaplan's scheme.
func (e *env) wantAuthorization() string {
	e.t.Helper()
	tok, _ := e.storedSession()["access_token"].(string)
	if tok == "" {
		e.t.Fatal("session.json holds no access token")
	}
	return "AnaplanAuthToken " + tok
}

// injectedCalls counts the requests the fake API answered with 200 that
// carried the stored access token.
func (e *env) injectedCalls() int {
	e.t.Helper()
	want := e.wantAuthorization()
	n := 0
	for _, c := range e.fake.Calls() {
		if c.Listener == "api" && c.Status == http.StatusOK && c.Authorization == want {
			n++
		}
	}
	return n
}

// run runs a client program with environ as its whole environment and returns
// its exit code and combined output, which assertNoSecrets checks later.
func (e *env) run(environ []string, name string, args ...string) (int, string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	out := e.capture()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = environ
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	default:
		e.t.Fatalf("running %s: %v", name, err)
		return -1, ""
	}
}

// echo is the fake API's answer to a GET.
type echo struct {
	Method              string `json:"method"`
	Path                string `json:"path"`
	AuthorizationScheme string `json:"authorization_scheme"`
}

// parseStatusAndEcho reads "<status>\n<echo JSON>" as the client programs
// below print it.
func parseStatusAndEcho(t *testing.T, out string) (string, echo) {
	t.Helper()
	status, body, _ := strings.Cut(strings.TrimSpace(out), "\n")
	var ec echo
	if err := json.Unmarshal([]byte(body), &ec); err != nil {
		t.Fatalf("the client's output is not a status and the fake's JSON (%v):\n%s", err, out)
	}
	return strings.TrimSpace(status), ec
}

func TestCurlHTTPSProxyAndNoProxy(t *testing.T) {
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{})
	d, caFile := e.startForClients()

	// A second TLS server that the proxy refuses (an IP literal that is no
	// inject or tunnel host): only a client that bypasses the proxy reaches it.
	var mu sync.Mutex
	var direct []http.Header
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		direct = append(direct, r.Header.Clone())
		mu.Unlock()
		w.Write([]byte("direct"))
	}))
	t.Cleanup(other.Close)
	directSeen := func() []http.Header { mu.Lock(); defer mu.Unlock(); return append([]http.Header(nil), direct...) }

	// One bundle that trusts both the proxy's CA and the other server.
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	otherPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Certificate().Raw})
	if err := os.WriteFile(bundle, append(caPEM, otherPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	otherURL, _ := url.Parse(other.URL)

	tests := []struct {
		name    string
		noProxy string
		bypass  bool // the other server is reached directly
	}{
		{"NO_PROXY empty: everything goes to the proxy", "", false},
		{"NO_PROXY lists the other host", "anaplan.example.com," + otherURL.Hostname(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			noProxy := []string{"NO_PROXY=" + tt.noProxy, "no_proxy=" + tt.noProxy}

			// The Anaplan host is not in NO_PROXY: through the proxy, with the token.
			before := e.injectedCalls()
			exit, connect, httpCode, body := e.curlEnv(d, noProxy, e.fake.APIURL()+"/2/0/users/me", "--cacert", bundle)
			if exit != 0 || connect != "200" || httpCode != "200" || !strings.Contains(body, `"authorization_scheme":"AnaplanAuthToken"`) {
				t.Fatalf("curl to the API: exit %d, CONNECT %s, HTTP %s, body %q; want 0, 200, 200 and the echo", exit, connect, httpCode, body)
			}
			if got := e.injectedCalls() - before; got != 1 {
				t.Errorf("the fake API saw %d requests with the stored token, want 1", got)
			}

			seen := len(directSeen())
			exit, connect, httpCode, body = e.curlEnv(d, noProxy, other.URL+"/", "--cacert", bundle)
			if tt.bypass {
				// No CONNECT was sent: curl went straight to the server.
				if exit != 0 || connect != "000" || httpCode != "200" || body != "direct" {
					t.Fatalf("curl to a NO_PROXY host: exit %d, CONNECT %s, HTTP %s, body %q; want 0, no CONNECT (000), 200 %q",
						exit, connect, httpCode, body, "direct")
				}
				got := directSeen()
				if len(got) != seen+1 {
					t.Fatalf("the other server saw %d requests, want %d", len(got), seen+1)
				}
				if h := got[len(got)-1]; h.Get("Authorization") != "" {
					t.Errorf("a request that bypassed the proxy carried Authorization %.20q…", h.Get("Authorization"))
				}
				return
			}
			if exit == 0 || connect != "403" {
				t.Fatalf("curl to a host outside NO_PROXY: exit %d, CONNECT %s; want the proxy's 403", exit, connect)
			}
			if len(directSeen()) != seen {
				t.Errorf("the other server was reached although the proxy refused the CONNECT")
			}
		})
	}
	d.stop(t)
	e.assertNoSecrets()
}

// pythonClient is a Python 3 script that uses only the standard library, as
// a scheduled job would: urllib reads https_proxy, and the trusted CAs come
// from SSL_CERT_FILE or, when given, from the cafile argument.
const pythonClient = `import json
import ssl
import sys
import urllib.request

url = sys.argv[1]
cafile = sys.argv[2] if len(sys.argv) > 2 else None
context = ssl.create_default_context(cafile=cafile)
with urllib.request.urlopen(url, context=context, timeout=30) as resp:
    print(resp.status)
    print(json.dumps(json.load(resp)))
`

func TestPythonURLLib(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	e := newEnv(t, anaplantest.Options{})
	d, caFile := e.startForClients()
	script := filepath.Join(t.TempDir(), "client.py")
	if err := os.WriteFile(script, []byte(pythonClient), 0o644); err != nil {
		t.Fatal(err)
	}
	target := e.fake.APIURL() + "/2/0/workspaces"
	proxyVar := "https_proxy=http://" + d.proxyAddr

	tests := []struct {
		name    string
		environ []string
		args    []string
	}{
		{"SSL_CERT_FILE", clientEnviron(proxyVar, "SSL_CERT_FILE="+caFile), []string{script, target}},
		{"create_default_context cafile", clientEnviron(proxyVar), []string{script, target, caFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.injectedCalls()
			code, out := e.run(tt.environ, python, tt.args...)
			if code != 0 {
				t.Fatalf("python3 exited %d:\n%s\nproxy logs:\n%s", code, out, d.logs)
			}
			status, ec := parseStatusAndEcho(t, out)
			if status != "200" || ec.Path != "/2/0/workspaces" || ec.AuthorizationScheme != "AnaplanAuthToken" {
				t.Errorf("python3 printed status %s, echo %+v; want 200 for /2/0/workspaces with scheme AnaplanAuthToken", status, ec)
			}
			if got := e.injectedCalls() - before; got != 1 {
				t.Errorf("the fake API saw %d requests with the stored token, want 1", got)
			}
		})
	}
	d.stop(t)
	e.assertNoSecrets()
}

// requireJava skips the test when the JDK tools it needs are missing. A
// single-file program needs the JDK's compiler, which javac stands for.
func requireJava(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"java", "javac", "keytool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (a JDK, e.g. Debian's default-jdk-headless, provides it)", tool)
		}
	}
}

// javaTrustStore imports the PEM certificate in caFile into a new PKCS#12
// truststore made with keytool, and returns the JVM options that make Java
// trust it (and nothing else).
func (e *env) javaTrustStore(caFile string) []string {
	e.t.Helper()
	requireJava(e.t)
	const password = "truststore-password"
	store := filepath.Join(e.t.TempDir(), "anaplan-proxy.p12")
	code, out := e.run(clientEnviron(), "keytool", "-importcert", "-noprompt", "-alias", "anaplan-proxy",
		"-file", caFile, "-keystore", store, "-storetype", "PKCS12", "-storepass", password)
	if code != 0 {
		e.t.Fatalf("keytool -importcert: exit %d\n%s", code, out)
	}
	return []string{
		"-Djavax.net.ssl.trustStore=" + store,
		"-Djavax.net.ssl.trustStoreType=PKCS12",
		"-Djavax.net.ssl.trustStorePassword=" + password,
	}
}

// runJava runs src as a single-file Java program (`java [jvmOpts] Main.java
// [args]`, JDK 11 or later) and returns its exit code and combined output,
// which assertNoSecrets checks later. The first top-level class in src must
// hold main. The JVM gets no proxy or trust settings from the test's
// environment: only jvmOpts. It skips the test when java is missing.
func (e *env) runJava(src string, jvmOpts []string, args ...string) (int, string) {
	e.t.Helper()
	requireJava(e.t)
	file := filepath.Join(e.t.TempDir(), "Main.java")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		e.t.Fatal(err)
	}
	// Start-up flags that only make the short-lived JVM start faster.
	argv := append([]string{"-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"}, jvmOpts...)
	argv = append(argv, file)
	return e.run(clientEnviron(), "java", append(argv, args...)...)
}

// javaClient requests args[0] with java.net.http.HttpClient twice: once
// through the proxy named by args[1] and args[2] as an explicit
// ProxySelector (what Anaplan Connect's -via sets up), and once with the
// default ProxySelector, which reads -Dhttps.proxyHost/-Dhttps.proxyPort.
// For each it prints "<mode> <status>" and the body on the next line, or
// "<mode> error <exception>".
const javaClient = `import java.net.InetSocketAddress;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Client {
    public static void main(String[] args) {
        URI target = URI.create(args[0]);
        ProxySelector via = ProxySelector.of(new InetSocketAddress(args[1], Integer.parseInt(args[2])));
        get("explicit", HttpClient.newBuilder().proxy(via), target);
        get("properties", HttpClient.newBuilder(), target);
    }

    static void get(String mode, HttpClient.Builder builder, URI target) {
        HttpClient client = builder.connectTimeout(Duration.ofSeconds(20)).build();
        HttpRequest req = HttpRequest.newBuilder(target).timeout(Duration.ofSeconds(30)).GET().build();
        try {
            HttpResponse<String> resp = client.send(req, HttpResponse.BodyHandlers.ofString());
            System.out.println(mode + " " + resp.statusCode());
            System.out.println(resp.body());
        } catch (Exception ex) {
            System.out.println(mode + " error " + ex);
        }
    }
}
`

func TestJavaHttpClient(t *testing.T) {
	requireJava(t)
	e := newEnv(t, anaplantest.Options{})
	d, caFile := e.startForClients()
	host, port, err := net.SplitHostPort(d.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	opts := append(e.javaTrustStore(caFile),
		"-Dhttps.proxyHost="+host, "-Dhttps.proxyPort="+port,
		// The default ProxySelector skips localhost and 127.* unless this
		// list is set; set empty, it proxies every host.
		"-Dhttp.nonProxyHosts=")

	before := e.injectedCalls()
	code, out := e.runJava(javaClient, opts, e.fake.APIURL()+"/2/0/users/me", host, port)
	if code != 0 {
		t.Fatalf("java exited %d:\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, mode := range []string{"explicit", "properties"} {
		t.Run(mode, func(t *testing.T) {
			for i, l := range lines {
				status, ok := strings.CutPrefix(l, mode+" ")
				if !ok {
					continue
				}
				if strings.HasPrefix(status, "error ") || i+1 >= len(lines) {
					t.Fatalf("the request failed: %s\n%s", status, out)
				}
				status, ec := parseStatusAndEcho(t, status+"\n"+lines[i+1])
				if status != "200" || ec.Path != "/2/0/users/me" || ec.AuthorizationScheme != "AnaplanAuthToken" {
					t.Errorf("status %s, echo %+v; want 200 for /2/0/users/me with scheme AnaplanAuthToken\n%s", status, ec, out)
				}
				return
			}
			t.Fatalf("no answer for %s:\n%s", mode, out)
		})
	}
	if got := e.injectedCalls() - before; got != 2 {
		t.Errorf("the fake API saw %d requests with the stored token, want 2", got)
	}
	d.stop(t)
	e.assertNoSecrets()
}

// goClient is a Go program as an integration job would write it: the
// default transport takes its proxy from HTTPS_PROXY through
// http.ProxyFromEnvironment, and its roots from SSL_CERT_FILE; with -cafile
// it builds RootCAs from that file instead.
const goClient = `package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	cafile := flag.String("cafile", "", "PEM file with the CA to trust")
	flag.Parse()
	client := http.DefaultClient
	if *cafile != "" {
		pem, err := os.ReadFile(*cafile)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fmt.Println("no certificate in", *cafile)
			os.Exit(1)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		client = &http.Client{Transport: tr}
	}
	resp, err := client.Get(flag.Arg(0))
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	fmt.Println(resp.StatusCode)
	io.Copy(os.Stdout, resp.Body)
}
`

func TestGoNetHTTPProxyFromEnvironment(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not installed")
	}
	e := newEnv(t, anaplantest.Options{})
	dir := t.TempDir()
	src := filepath.Join(dir, "client.go")
	if err := os.WriteFile(src, []byte(goClient), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	if code, out := e.run(clientEnviron("GOFLAGS="), goTool, "-C", dir, "build", "-o", bin, src); code != 0 {
		t.Fatalf("building the Go client: exit %d\n%s", code, out)
	}
	d, caFile := e.startForClients()

	// ProxyFromEnvironment never proxies "localhost" or a loopback IP, the
	// only names the fake answers on. Host names are case-insensitive but
	// that check is not, so the same host in capitals goes through the proxy.
	target := strings.Replace(e.fake.APIURL(), "localhost", "LOCALHOST", 1) + "/2/0/users/me"
	proxyVar := "HTTPS_PROXY=http://" + d.proxyAddr

	tests := []struct {
		name    string
		environ []string
		args    []string
	}{
		{"SSL_CERT_FILE", clientEnviron(proxyVar, "SSL_CERT_FILE="+caFile), []string{target}},
		{"RootCAs from the CA file", clientEnviron(proxyVar), []string{"-cafile", caFile, target}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.injectedCalls()
			code, out := e.run(tt.environ, bin, tt.args...)
			if code != 0 {
				t.Fatalf("the Go client exited %d:\n%s\nproxy logs:\n%s", code, out, d.logs)
			}
			status, ec := parseStatusAndEcho(t, out)
			if status != "200" || ec.Path != "/2/0/users/me" || ec.AuthorizationScheme != "AnaplanAuthToken" {
				t.Errorf("status %s, echo %+v; want 200 for /2/0/users/me with scheme AnaplanAuthToken", status, ec)
			}
			if got := e.injectedCalls() - before; got != 1 {
				t.Errorf("the fake API saw %d requests with the stored token, want 1", got)
			}
		})
	}
	d.stop(t)
	e.assertNoSecrets()
}
