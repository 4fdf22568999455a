package proxy

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/anaplan-proxy/anaplan-proxy/internal/testutil"
)

func mustParseUpstream(t *testing.T, raw string, noProxy ...string) *UpstreamProxy {
	t.Helper()
	up, err := ParseUpstreamProxy(raw, noProxy)
	if err != nil {
		t.Fatal(err)
	}
	return up
}

func TestUpstreamProxyCarriesInjectAndTunnel(t *testing.T) {
	pki := newTestPKI(t)
	u := startUpstream(t, pki)
	corp := testutil.StartCorporateProxy(t, "corp-user", "s3cret:pass", nil)
	tunnelHost := "127.0.0.1:" + u.port
	h := startProxy(t, Config{Inject: []string{u.hostport}, Tunnel: []string{tunnelHost}, UpstreamRoots: u.roots}, func(c *Config) {
		c.UpstreamProxy = mustParseUpstream(t, corp.URL)
	})

	resp, err := h.client(t).Get("https://" + u.hostport + "/2/0/users/me")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("inject host through the corporate proxy: %d", resp.StatusCode)
	}
	resp, err = h.client(t, pki.cert).Get("https://" + tunnelHost + "/tunnelled")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)

	seen := u.requests()
	if len(seen) != 2 || seen[0].Authorization != "AnaplanAuthToken tok-1" || seen[1].Authorization != "" {
		t.Errorf("upstream saw %+v; want the token on the inject request only", seen)
	}
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte("corp-user:s3cret:pass"))
	got := corp.Connects()
	if len(got) != 2 || got[0] != (testutil.Connect{Target: u.hostport, Auth: wantAuth}) || got[1] != (testutil.Connect{Target: tunnelHost, Auth: wantAuth}) {
		t.Errorf("the corporate proxy saw %+v; want CONNECTs to %s and %s with its credentials", got, u.hostport, tunnelHost)
	}
	if strings.Contains(h.logs.String(), "s3cret") {
		t.Error("the log shows the corporate proxy's password")
	}
}

func TestUpstreamProxyHTTPS(t *testing.T) {
	pki := newTestPKI(t)
	u := startUpstream(t, pki)
	cert := pki.serverCert(t)
	corp := testutil.StartCorporateProxy(t, "", "", &cert)
	h := startProxy(t, Config{Inject: []string{u.hostport}, UpstreamRoots: u.roots}, func(c *Config) {
		c.UpstreamProxy = mustParseUpstream(t, corp.URL)
	})
	resp, err := h.client(t).Get("https://" + u.hostport + "/")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	if resp.StatusCode != http.StatusOK || len(corp.Connects()) != 1 {
		t.Errorf("through an https:// corporate proxy: %d, %d CONNECTs; want 200 and 1", resp.StatusCode, len(corp.Connects()))
	}
}

func TestUpstreamProxyNoProxyGoesDirect(t *testing.T) {
	pki := newTestPKI(t)
	u := startUpstream(t, pki)
	other := startUpstream(t, pki)
	corp := testutil.StartCorporateProxy(t, "", "", nil)
	h := startProxy(t, Config{Inject: []string{u.hostport, other.hostport}, UpstreamRoots: u.roots}, func(c *Config) {
		// Only u's port bypasses the corporate proxy.
		c.UpstreamProxy = mustParseUpstream(t, corp.URL, "localhost:"+u.port, "*.example.com")
	})
	for _, target := range []string{u.hostport, other.hostport} {
		resp, err := h.client(t).Get("https://" + target + "/")
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", target, resp.StatusCode)
		}
	}
	if got := corp.Connects(); len(got) != 1 || got[0].Target != other.hostport {
		t.Errorf("the corporate proxy saw %+v; want only the CONNECT to %s", got, other.hostport)
	}
	if len(u.requests()) != 1 || len(other.requests()) != 1 {
		t.Errorf("upstreams saw %d and %d requests, want 1 each", len(u.requests()), len(other.requests()))
	}
}

func TestUpstreamProxyFailures(t *testing.T) {
	pki := newTestPKI(t)
	u := startUpstream(t, pki)
	tests := []struct {
		name       string
		answer     int
		down       bool
		badPass    bool
		status     int
		proxyState string
		body       string
	}{
		{name: "wrong credentials", badPass: true, status: 502,
			proxyState: "error=proxy_configuration_error; received-status=407", body: "answered 407 Proxy Authentication Required"},
		{name: "destination forbidden", answer: 403, status: 502,
			proxyState: "error=destination_unavailable; received-status=403", body: "answered 403 Forbidden"},
		{name: "destination unreachable", answer: 502, status: 502,
			proxyState: "error=destination_unavailable; received-status=502", body: "answered 502 Bad Gateway"},
		{name: "corporate proxy down", down: true, status: 502,
			proxyState: "error=connection_refused", body: "failed: dial tcp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			corp := testutil.StartCorporateProxy(t, "corp-user", "s3cret", nil)
			corp.SetAnswer(tc.answer)
			raw := corp.URL
			if tc.badPass {
				raw = strings.Replace(raw, "s3cret", "wrong-s3cret", 1)
			}
			if tc.down {
				corp.Close()
			}
			h := startProxy(t, Config{Inject: []string{u.hostport}, Tunnel: []string{"127.0.0.1:" + u.port}, UpstreamRoots: u.roots}, func(c *Config) {
				c.UpstreamProxy = mustParseUpstream(t, raw)
			})
			before := len(u.requests())
			resp, err := h.client(t).Get("https://" + u.hostport + "/2/0/users/me")
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			ps := resp.Header.Get("Proxy-Status")
			if resp.StatusCode != tc.status || !strings.Contains(ps, tc.proxyState) ||
				!strings.Contains(body, "corporate proxy http://"+corp.Addr) || !strings.Contains(body, tc.body) {
				t.Errorf("inject: %d %q, Proxy-Status %q; want %d naming the corporate proxy and %q, Proxy-Status with %q",
					resp.StatusCode, body, ps, tc.status, tc.body, tc.proxyState)
			}
			// A tunnel host gets the same answer to its CONNECT.
			cresp, cbody := h.rawConnect(t, "127.0.0.1:"+u.port)
			if cresp.StatusCode != tc.status || !strings.Contains(cresp.Header.Get("Proxy-Status"), tc.proxyState) || !strings.Contains(cbody, tc.body) {
				t.Errorf("tunnel: %d %q Proxy-Status %q", cresp.StatusCode, cbody, cresp.Header.Get("Proxy-Status"))
			}
			if n := len(u.requests()) - before; n != 0 {
				t.Errorf("the destination saw %d requests; nothing may bypass the corporate proxy", n)
			}
			if got := h.obs.snapshot().upstream; len(got) != 2 || got[0] != "upstream_proxy" {
				t.Errorf("upstream error reasons %q, want upstream_proxy twice", got)
			}
			for what, text := range map[string]string{"body": body, "tunnel body": cbody, "logs": h.logs.String()} {
				if strings.Contains(text, "s3cret") {
					t.Errorf("the %s show the corporate proxy's password", what)
				}
			}
		})
	}
}

// TestUpstreamProxyAddressGuard: IP-literal destinations are still
// checked; names are resolved by the corporate proxy, not here.
func TestUpstreamProxyAddressGuard(t *testing.T) {
	pki := newTestPKI(t)
	u := startUpstream(t, pki)
	corp := testutil.StartCorporateProxy(t, "", "", nil)
	literal := "127.0.0.1:" + u.port
	h := startProxy(t, Config{Inject: []string{u.hostport}, Tunnel: []string{literal}, UpstreamRoots: u.roots}, func(c *Config) {
		c.AllowPrivateUpstream = false
		c.UpstreamProxy = mustParseUpstream(t, corp.URL)
	})
	resp, body := h.rawConnect(t, literal)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(resp.Header.Get("Proxy-Status"), "destination_ip_prohibited") {
		t.Errorf("CONNECT to a loopback literal: %d %q; want 403 destination_ip_prohibited", resp.StatusCode, body)
	}
	if got := corp.Connects(); len(got) != 0 {
		t.Errorf("the corporate proxy saw %+v for a prohibited address", got)
	}
	// The corporate proxy itself sits on loopback here, and a name goes to it.
	r, err := h.client(t).Get("https://" + u.hostport + "/")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, r)
	if r.StatusCode != http.StatusOK || len(corp.Connects()) != 1 {
		t.Errorf("a name through the corporate proxy: %d, CONNECTs %+v", r.StatusCode, corp.Connects())
	}
}

func TestParseUpstreamProxy(t *testing.T) {
	tests := []struct {
		raw     string
		noProxy []string
		shown   string // String()
		auth    string
		wantErr string
	}{
		{raw: "http://10.0.0.1:8080", shown: "http://10.0.0.1:8080"},
		{raw: "http://proxy.example.com:3128/", shown: "http://proxy.example.com:3128"},
		{raw: "https://u:p%40ss@proxy.example.com:443", shown: "https://proxy.example.com:443", auth: "Basic " + base64.StdEncoding.EncodeToString([]byte("u:p@ss"))},
		{raw: "http://[fd00::1]:8080", shown: "http://[fd00::1]:8080"},
		{raw: "socks5://10.0.0.1:1080", wantErr: `"socks5://10.0.0.1:1080": the scheme must be http:// or https://, not socks5://`},
		{raw: "http://proxy.example.com", wantErr: `"http://proxy.example.com" must name a host and a port (like http://proxy.example.com:8080)`},
		{raw: "http://user:hunter2@proxy.example.com:8080/path", wantErr: `"http://user:xxxxx@proxy.example.com:8080/path" must be scheme://host:port only, without a path, query or fragment`},
		{raw: "http://proxy.example.com:8080?x=1", wantErr: "without a path, query or fragment"},
		{raw: "proxy.example.com:8080", wantErr: `"proxy.example.com:8080" is not a URL like http://proxy.example.com:8080`},
		{raw: "10.0.0.1:8080", wantErr: `"10.0.0.1:8080" is not a URL like http://proxy.example.com:8080`},
		{raw: "http://user:hun ter2@proxy:8080", wantErr: `"xxxxx@proxy:8080" is not a URL like http://proxy.example.com:8080`},
		{raw: "http://:hunter2@proxy.example.com:8080", wantErr: `"http://:xxxxx@proxy.example.com:8080" has a password but no user name`},
		{raw: "http://proxy.example.com:99999", wantErr: "port 99999 is not a number from 1 to 65535"},
		{raw: "http://10.0.0.1:8080", noProxy: []string{"*"}, wantErr: `no-proxy pattern "*" would bypass the corporate proxy for everything`},
	}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			up, err := ParseUpstreamProxy(tc.raw, tc.noProxy)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if up.String() != tc.shown || up.authValue != tc.auth {
				t.Errorf("String %q, auth %q; want %q, %q", up.String(), up.authValue, tc.shown, tc.auth)
			}
		})
	}
}

func TestNoProxyPatterns(t *testing.T) {
	tests := []struct {
		pattern string
		host    string
		port    int
		want    bool
	}{
		{"login.example.com", "login.example.com", 443, true},
		{"login.example.com", "LOGIN.example.com.", 443, true},
		{"login.example.com", "a.login.example.com", 443, false},
		{".example.com", "a.example.com", 443, true},
		{".example.com", "example.com", 443, false},
		{"*.example.com", "a.b.example.com", 443, true},
		{"*.example.com", "badexample.com", 443, false},
		{"example.com:8443", "example.com", 8443, true},
		{"example.com:8443", "example.com", 443, false},
		{"10.0.0.0/8", "10.1.2.3", 443, true},
		{"10.0.0.0/8", "11.1.2.3", 443, false},
		{"10.0.0.0/8", "ten.example.com", 443, false},
		{"192.0.2.1", "192.0.2.1", 443, true},
		{"192.0.2.1", "::ffff:192.0.2.1", 443, true},
		{"192.0.2.1:8080", "192.0.2.1", 443, false},
		{"2001:db8::/32", "[2001:db8::1]", 443, true},
		{"[2001:db8::1]:443", "2001:db8::1", 443, true},
		{"localhost", "127.0.0.1", 443, false},
	}
	for _, tc := range tests {
		t.Run(tc.pattern+" "+tc.host, func(t *testing.T) {
			up := mustParseUpstream(t, "http://10.0.0.1:3128", tc.pattern)
			if got := up.Bypass(tc.host, tc.port); got != tc.want {
				t.Errorf("Bypass(%q, %d) = %v, want %v", tc.host, tc.port, got, tc.want)
			}
		})
	}
	for _, bad := range []string{"", " a.example.com", "*", "http://a.example.com", "a.*.example.com", "10.0.0.0/33", "a.example.com:0", "a.example.com/x", "fe80::1%eth0"} {
		if err := ValidateNoProxyPattern(bad); err == nil {
			t.Errorf("ValidateNoProxyPattern(%q) accepted it", bad)
		}
	}
}

func TestUpstreamProxyFunc(t *testing.T) {
	up := mustParseUpstream(t, "http://u:p@10.0.0.1:3128", "direct.example.com", "plain.example.com:80")
	fn := up.ProxyFunc()
	for raw, want := range map[string]string{
		"https://api.anaplan.com/2/0":       "http://u:p@10.0.0.1:3128",
		"https://direct.example.com/x":      "",
		"http://plain.example.com/x":        "",
		"https://plain.example.com/x":       "http://u:p@10.0.0.1:3128",
		"https://localhost:8443/oauth/code": "http://u:p@10.0.0.1:3128",
	} {
		req, _ := http.NewRequest(http.MethodGet, raw, nil)
		got, err := fn(req)
		if err != nil {
			t.Fatal(err)
		}
		gotText := ""
		if got != nil {
			gotText = got.String()
		}
		if gotText != want {
			t.Errorf("%s: proxy %q, want %q", raw, gotText, want)
		}
	}
}
