package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

// plainClient sends plain-HTTP requests through the proxy, as curl -x does.
func (h *harness) plainClient(t *testing.T) *http.Client {
	t.Helper()
	proxyURL, _ := url.Parse(h.srv.URL)
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func TestPlainHTTPInjectsOverVerifiedTLS(t *testing.T) {
	pki := newTestPKI(t)
	u := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{u.hostport}, UpstreamRoots: u.roots, PlainHTTP: true})

	req, _ := http.NewRequest(http.MethodGet, "http://"+u.hostport+"/2/0/users/me?x=1", nil)
	req.Header.Set("Authorization", "Basic c2NyaXB0OnBhc3N3b3Jk")
	req.Header.Set("Proxy-Authorization", "Basic bm90OmZvcndhcmRlZA==")
	resp, err := h.plainClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("plain-HTTP request: %d %q", resp.StatusCode, body)
	}
	seen := u.requests()
	if len(seen) != 1 {
		t.Fatalf("upstream saw %d requests, want 1", len(seen))
	}
	// The upstream is a TLS server: reaching it at all means HTTPS.
	if s := seen[0]; s.Authorization != "AnaplanAuthToken tok-1" || s.ProxyAuth != "" || s.Path != "/2/0/users/me" || s.Query != "x=1" || s.Host != u.hostport {
		t.Errorf("upstream saw %+v; want the token instead of the client's Authorization, no Proxy-Authorization, the same path", s)
	}
	mustContain(t, "log", h.logs.String(), `"decision":"inject_plain_http"`)

	// Verification is not skipped: an upstream the roots do not trust fails.
	h2 := startProxy(t, Config{Inject: []string{u.hostport}, PlainHTTP: true})
	resp, err = h2.plainClient(t).Get("http://" + u.hostport + "/")
	if err != nil {
		t.Fatal(err)
	}
	body = readBody(t, resp)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Header.Get("Proxy-Status"), "tls_certificate_error") {
		t.Errorf("untrusted upstream: %d %q", resp.StatusCode, body)
	}
	if len(u.requests()) != 1 {
		t.Error("a request reached an upstream whose certificate failed verification")
	}
}

func TestPlainHTTPReplaysAndStreams(t *testing.T) {
	pki := newTestPKI(t)
	u := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{u.hostport}, UpstreamRoots: u.roots, PlainHTTP: true})
	h.tokens.next = map[string]string{"tok-1": "tok-2"}
	u.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		if s.Authorization == "AnaplanAuthToken tok-1" {
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		return false
	})
	resp, err := h.plainClient(t).Get("http://" + u.hostport + "/2/0/workspaces")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	if resp.StatusCode != http.StatusOK || len(h.tokens.rejectedCalls()) != 1 {
		t.Errorf("after a 401: %d, %d rejections; want 200 after one replay", resp.StatusCode, len(h.tokens.rejectedCalls()))
	}

	// A body of unknown length streams through.
	data := make([]byte, 3<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	req, _ := http.NewRequest(http.MethodPut, "http://"+u.hostport+"/2/0/files/1/chunks/0", io.MultiReader(bytes.NewReader(data)))
	req.ContentLength = -1
	resp, err = h.plainClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	last := u.requests()[len(u.requests())-1]
	if resp.StatusCode != http.StatusOK || last.BodyLen != int64(len(data)) || last.BodySHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("streamed upload: %d, upstream got %d bytes", resp.StatusCode, last.BodyLen)
	}
}

func TestPlainHTTPRefusals(t *testing.T) {
	pki := newTestPKI(t)
	u := startUpstream(t, pki)
	tunnel := "127.0.0.1:" + u.port
	tests := []struct {
		name   string
		on     bool
		url    string
		header http.Header
		remote string // the client address; loopback when empty
		status int
		want   string
	}{
		{name: "mode off", url: "http://" + u.hostport + "/2/0/users/me", status: 403, want: "set inject.plain_http: true"},
		{name: "not loopback", on: true, remote: "192.0.2.7:40000", url: "http://" + u.hostport + "/2/0/users/me", status: 403, want: "loopback clients only"},
		{name: "not an inject host", on: true, url: "http://example.com/", status: 403, want: "not an Anaplan API host"},
		{name: "a tunnel host", on: true, url: "http://" + tunnel + "/", status: 403, want: "plain HTTP is only for inject hosts"},
		{name: "inject host on another port", on: true, url: "http://localhost:1/", status: 403, want: "port 1 is not allowed"},
		{name: "upgrade", on: true, url: "http://" + u.hostport + "/", header: http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, status: 400, want: "upgrades are not supported"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, Config{Inject: []string{u.hostport}, Tunnel: []string{tunnel}, UpstreamRoots: u.roots, PlainHTTP: tc.on,
				AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24")}})
			before := len(u.requests())
			req := httptest.NewRequest(http.MethodGet, tc.url, nil)
			req.RemoteAddr = "127.0.0.1:40000"
			if tc.remote != "" {
				req.RemoteAddr = tc.remote
			}
			for k, v := range tc.header {
				req.Header[k] = v
			}
			rec := httptest.NewRecorder()
			h.p.ServeHTTP(rec, req)
			if rec.Code != tc.status || !strings.Contains(rec.Body.String(), tc.want) || rec.Header().Get("Proxy-Status") == "" {
				t.Errorf("%d %q; want %d with %q and a Proxy-Status", rec.Code, rec.Body.String(), tc.status, tc.want)
			}
			if n := len(u.requests()) - before; n != 0 {
				t.Errorf("a refused request reached the upstream (%d)", n)
			}
			if tok := h.tokens.token; strings.Contains(rec.Body.String(), tok) {
				t.Error("the answer carries the token")
			}
		})
	}
}
