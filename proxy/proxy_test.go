package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func decodeSeen(t *testing.T, resp *http.Response) seen {
	t.Helper()
	var s seen
	if err := json.Unmarshal([]byte(readBody(t, resp)), &s); err != nil {
		t.Fatalf("decoding upstream echo: %v", err)
	}
	return s
}

func TestInjectionModes(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	tests := []struct {
		name       string
		mode       string
		scheme     string
		clientAuth string // sent by the client; "" = none
		wantStatus int
		wantAuth   string // seen upstream
		wantHits   int
	}{
		{"replace without client header", "", "", "", 200, "AnaplanAuthToken tok-1", 1},
		{"replace overrides client header", "replace", "", "Basic dXNlcjpwdw==", 200, "AnaplanAuthToken tok-1", 1},
		{"bearer scheme", "replace", "Bearer", "", 200, "Bearer tok-1", 1},
		{"keep forwards the client's header", "keep", "", "AnaplanAuthToken mine", 200, "AnaplanAuthToken mine", 1},
		{"keep injects when the client sent none", "keep", "", "", 200, "AnaplanAuthToken tok-1", 1},
		{"reject refuses a client header", "reject", "", "Basic dXNlcjpwdw==", 403, "", 0},
		{"reject injects when the client sent none", "reject", "", "", 200, "AnaplanAuthToken tok-1", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.requests())
			h := startProxy(t, Config{Inject: []string{up.hostport}, Scheme: tc.scheme, ClientAuthorization: tc.mode, UpstreamRoots: up.roots})
			req, _ := http.NewRequest("GET", "https://"+up.hostport+"/2/0/workspaces?tenantDetails=true", nil)
			if tc.clientAuth != "" {
				req.Header.Set("Authorization", tc.clientAuth)
			}
			req.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
			resp, err := h.client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, readBody(t, resp))
			}
			got := up.requests()[before:]
			if len(got) != tc.wantHits {
				t.Fatalf("upstream saw %d requests, want %d", len(got), tc.wantHits)
			}
			if tc.wantStatus != 200 {
				mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=http_request_denied")
				mustContain(t, "body", readBody(t, resp), "client_authorization: reject")
				return
			}
			s := decodeSeen(t, resp)
			if s.Authorization != tc.wantAuth {
				t.Errorf("upstream Authorization = %q, want %q", s.Authorization, tc.wantAuth)
			}
			if s.ProxyAuth != "" || s.Forwarded != "" {
				t.Errorf("upstream saw Proxy-Authorization %q, X-Forwarded-For %q; want neither", s.ProxyAuth, s.Forwarded)
			}
			if s.Host != up.hostport || s.Path != "/2/0/workspaces" || s.Query != "tenantDetails=true" {
				t.Errorf("upstream saw host %q path %q query %q", s.Host, s.Path, s.Query)
			}
		})
	}
}

func TestDeniedConnect(t *testing.T) {
	// A listener standing in for a host that is not allowed: it must
	// never see a connection.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	h := startProxy(t, Config{Inject: []string{"api.anaplan.com", "*.api.anaplan.com", "localhost:" + port}})

	tests := []struct {
		target, wantBody, wantReason string
	}{
		{"127.0.0.1:" + port, "CONNECT to 127.0.0.1:" + port + " refused: not an Anaplan API host (allowed: api.anaplan.com, *.api.anaplan.com, localhost:" + port + ")", reasonNotAllowed},
		{"example.com:443", "not an Anaplan API host", reasonNotAllowed},
		{"api.anaplan.com:8443", "port 8443 is not allowed", reasonPort},
		{"localhost:443", "port 443 is not allowed", reasonPort},
		{"anaplan.com:443", "not an Anaplan API host", reasonNotAllowed},
		{"api.anaplan.com", "not host:port", reasonBadTarget},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			resp, body := h.rawConnect(t, tc.target)
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("status = %d, want 403", resp.StatusCode)
			}
			mustContain(t, "body", body, "anaplan-proxy: ")
			mustContain(t, "body", body, tc.wantBody)
			if strings.Count(strings.TrimSpace(body), "\n") != 0 {
				t.Errorf("body %q is not one line", body)
			}
			ps := resp.Header.Get("Proxy-Status")
			mustContain(t, "Proxy-Status", ps, `anaplan-proxy; error=http_request_denied; details="`)
		})
	}
	snap := h.obs.snapshot()
	for i, tc := range tests {
		if want := "deny " + tc.wantReason; snap.connects[i] != want {
			t.Errorf("Connect #%d = %q, want %q", i, snap.connects[i], want)
		}
	}
	select {
	case <-accepted:
		t.Fatal("the denied host received a connection")
	default:
	}
}

func TestRefusedRequests(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	c := h.client(t)

	t.Run("host differs from CONNECT target", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "https://"+up.hostport+"/x", nil)
		req.Host = "evil.example:" + up.port
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != 403 {
			t.Fatalf("status = %d, want 403", resp.StatusCode)
		}
		mustContain(t, "body", body, "differs from the CONNECT target")
	})
	t.Run("host with other port", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "https://"+up.hostport+"/x", nil)
		req.Host = "localhost"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != 403 {
			t.Fatalf("status = %d, want 403", resp.StatusCode)
		}
	})
	t.Run("host in other case and with trailing dot is the same host", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "https://"+up.hostport+"/x", nil)
		req.Host = "LOCALHOST.:" + up.port
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("status = %d, want 200", resp.StatusCode)
		}
	})
	t.Run("plain http", func(t *testing.T) {
		resp, err := c.Get("http://" + up.hostport + "/x")
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != 403 {
			t.Fatalf("status = %d, want 403", resp.StatusCode)
		}
		mustContain(t, "body", body, "use https://")
		mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=http_request_denied")
	})
	t.Run("request to the proxy itself", func(t *testing.T) {
		resp, err := http.Get(h.srv.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != 400 {
			t.Fatalf("status = %d, want 400", resp.StatusCode)
		}
		mustContain(t, "body", body, "forward proxy")
	})
	for _, s := range up.requests() {
		if s.Host != up.hostport {
			t.Errorf("upstream received a request for Host %q", s.Host)
		}
	}
	if n := len(up.requests()); n != 1 {
		t.Errorf("upstream saw %d requests, want only the same-host one", n)
	}
}

func TestUpstreamFailures(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	other := newTestPKI(t) // roots that do not sign the upstream
	down := "localhost:" + closedPort(t)

	plain := startPlainUpstream(t)

	tests := []struct {
		name, host string
		roots      *testPKI
		wantStatus int
		wantType   string
		wantBody   string
		wantReason string
	}{
		{"nothing listening", down, pki, 502, "connection_refused", "cannot reach " + down + ": connection refused", "connect"},
		{"unknown certificate authority", up.hostport, other, 502, "tls_certificate_error", "cannot reach " + up.hostport + ": tls: certificate signed by unknown authority", "tls"},
		{"no TLS upstream", plain, pki, 502, "tls_protocol_error", "did not answer with TLS", "tls"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.requests())
			h := startProxy(t, Config{Inject: []string{tc.host}, UpstreamRoots: tc.roots.pool})
			resp, err := h.client(t).Get("https://" + tc.host + "/2/0/users/me")
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
			}
			mustContain(t, "body", body, "anaplan-proxy: cannot reach "+tc.host+": ")
			mustContain(t, "body", body, tc.wantBody)
			mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error="+tc.wantType)
			if got := up.requests()[before:]; len(got) != 0 {
				t.Errorf("upstream received %d requests; the token must not leave over unverified TLS", len(got))
			}
			if snap := h.obs.snapshot(); len(snap.upstream) != 1 || snap.upstream[0] != tc.wantReason {
				t.Errorf("UpstreamError calls = %v, want [%s]", snap.upstream, tc.wantReason)
			}
		})
	}
}

// startPlainUpstream is a listener that answers in plain HTTP, not TLS.
func startPlainUpstream(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ReadHeaderTimeout: time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return "localhost:" + port
}

func TestTokenErrors(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	tests := []struct {
		name           string
		err            error
		wantStatus     int
		wantRetryAfter string
		wantType       string
		wantBody       string
	}{
		{"login required", &sessionError{msg: "no usable Anaplan session: run `anaplan-proxy login`", login: true},
			511, "", "proxy_configuration_error", "anaplan-proxy: no usable Anaplan session: run `anaplan-proxy login`\n"},
		{"transient with retry hint", &sessionError{msg: "refresh failing: token endpoint unreachable", retryAfter: 2500 * time.Millisecond},
			503, "3", "proxy_internal_error", "anaplan-proxy: refresh failing: token endpoint unreachable\n"},
		{"transient, retry below one second", fmt.Errorf("wrapped: %w", &sessionError{msg: "busy", retryAfter: time.Millisecond}),
			503, "1", "proxy_internal_error", "anaplan-proxy: wrapped: busy\n"},
		{"plain error", errors.New("store unreadable"), 503, "5", "proxy_internal_error", "anaplan-proxy: store unreadable\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.requests())
			h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
			h.tokens.err = tc.err
			resp, err := h.client(t).Get("https://" + up.hostport + "/2/0/workspaces")
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != tc.wantStatus || body != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tc.wantStatus, tc.wantBody)
			}
			if got := resp.Header.Get("Retry-After"); got != tc.wantRetryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tc.wantRetryAfter)
			}
			mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error="+tc.wantType)
			if n := len(up.requests()) - before; n != 0 {
				t.Errorf("upstream saw %d requests, want none", n)
			}
		})
	}
}

func TestReplayOn401(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	big := bytes.Repeat([]byte("x"), 2<<20)
	small := bytes.Repeat([]byte("y"), 1000)
	tests := []struct {
		name        string
		method      string
		body        []byte
		chunked     bool
		alwaysDeny  bool
		wantStatus  int
		wantHits    int
		wantReplays []string
	}{
		{"GET is replayed with the new token", "GET", nil, false, false, 200, 2, []string{"success"}},
		{"small PUT is replayed with its body", "PUT", small, false, false, 200, 2, []string{"success"}},
		{"large PUT is not replayed", "PUT", big, false, false, 401, 1, []string{"not_replayable"}},
		{"chunked POST is not replayed", "POST", small, true, false, 401, 1, []string{"not_replayable"}},
		{"only one replay", "GET", nil, false, true, 401, 2, []string{"failed"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
			h.tokens.next = map[string]string{"tok-1": "tok-2", "tok-2": "tok-3"}
			up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
				if tc.alwaysDeny || s.Authorization != "AnaplanAuthToken tok-2" {
					w.WriteHeader(http.StatusUnauthorized)
					return true
				}
				return false
			})
			t.Cleanup(func() { up.setHandler(nil) })
			before := len(up.requests())
			var body io.Reader
			if tc.body != nil {
				body = bytes.NewReader(tc.body)
				if tc.chunked {
					body = io.MultiReader(body) // hides the length
				}
			}
			req, _ := http.NewRequest(tc.method, "https://"+up.hostport+"/2/0/files/1/chunks/0", body)
			resp, err := h.client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			readBody(t, resp)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			got := up.requests()[before:]
			if len(got) != tc.wantHits {
				t.Fatalf("upstream saw %d requests, want %d", len(got), tc.wantHits)
			}
			sum := sha256.Sum256(tc.body)
			for i, s := range got {
				if s.BodyLen != int64(len(tc.body)) || s.BodySHA256 != hex.EncodeToString(sum[:]) {
					t.Errorf("attempt %d carried %d bytes, want the client's %d", i, s.BodyLen, len(tc.body))
				}
			}
			if rej := h.tokens.rejectedCalls(); tc.wantHits == 2 && (len(rej) != 1 || rej[0] != "tok-1") {
				t.Errorf("Rejected calls = %v, want [tok-1]", rej)
			}
			if snap := h.obs.snapshot(); fmt.Sprint(snap.replays) != fmt.Sprint(tc.wantReplays) {
				t.Errorf("Replay outcomes = %v, want %v", snap.replays, tc.wantReplays)
			}
		})
	}
}

func TestRejectedFailsWithLoginRequired(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		h.tokens.mu.Lock()
		h.tokens.err = &sessionError{msg: "refresh token rejected: run `anaplan-proxy login`", login: true}
		h.tokens.mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	t.Cleanup(func() { up.setHandler(nil) })
	resp, err := h.client(t).Get("https://" + up.hostport + "/2/0/users/me")
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != 511 {
		t.Fatalf("status = %d, want 511", resp.StatusCode)
	}
	mustContain(t, "body", body, "run `anaplan-proxy login`")
}

func TestRedirectPassedThrough(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		if r.URL.Path == "/from" {
			http.Redirect(w, r, "https://elsewhere.example/to", http.StatusFound)
			return true
		}
		return false
	})
	t.Cleanup(func() { up.setHandler(nil) })
	before := len(up.requests())
	resp, err := h.client(t).Get("https://" + up.hostport + "/from")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://elsewhere.example/to" {
		t.Fatalf("got %d Location %q, want the upstream's 302", resp.StatusCode, resp.Header.Get("Location"))
	}
	if n := len(up.requests()) - before; n != 1 {
		t.Errorf("upstream saw %d requests, want 1 (redirects are never followed)", n)
	}
}

// patternReader yields n bytes of a fixed pattern without holding them.
type patternReader struct{ left int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), r.left)
	for i := range p[:n] {
		p[i] = byte(i)
	}
	r.left -= n
	return int(n), nil
}

// heapWatch samples HeapInuse while a transfer runs.
type heapWatch struct {
	base, peak uint64
}

func newHeapWatch() *heapWatch {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return &heapWatch{base: m.HeapInuse, peak: m.HeapInuse}
}

func (h *heapWatch) sample() {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	h.peak = max(h.peak, m.HeapInuse)
}

func TestStreaming64MiB(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 128 MiB")
	}
	const size = 64 << 20
	const allowed = 24 << 20 // far below the transfer: nothing holds a body
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		if r.URL.Path == "/download" {
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = io.Copy(w, &patternReader{left: size})
			return true
		}
		return false
	})
	t.Cleanup(func() { up.setHandler(nil) })
	c := h.client(t)

	t.Run("download", func(t *testing.T) {
		hw := newHeapWatch()
		resp, err := c.Get("https://" + up.hostport + "/download")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var n int64
		buf := make([]byte, 1<<20)
		for {
			k, err := io.ReadFull(resp.Body, buf)
			n += int64(k)
			hw.sample()
			if err != nil {
				break
			}
		}
		if n != size {
			t.Fatalf("downloaded %d bytes, want %d", n, size)
		}
		if hw.peak-hw.base > allowed {
			t.Errorf("heap grew by %d MiB during a %d MiB download", (hw.peak-hw.base)>>20, size>>20)
		}
	})
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("upload chunked=%v", chunked), func(t *testing.T) {
			hw := newHeapWatch()
			var body io.Reader = &sampling{r: &patternReader{left: size}, hw: hw}
			req, _ := http.NewRequest("PUT", "https://"+up.hostport+"/upload", body)
			if !chunked {
				req.ContentLength = size
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			s := decodeSeen(t, resp)
			want := sha256.New()
			_, _ = io.Copy(want, &patternReader{left: size})
			if s.BodyLen != size || s.BodySHA256 != hex.EncodeToString(want.Sum(nil)) {
				t.Fatalf("upstream received %d bytes (sha %s), want %d", s.BodyLen, s.BodySHA256, size)
			}
			if hw.peak-hw.base > allowed {
				t.Errorf("heap grew by %d MiB during a %d MiB upload", (hw.peak-hw.base)>>20, size>>20)
			}
		})
	}
}

// sampling samples the heap every 4 MiB of a request body.
type sampling struct {
	r    io.Reader
	hw   *heapWatch
	read int64
}

func (s *sampling) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if s.read/(4<<20) != (s.read+int64(n))/(4<<20) {
		s.hw.sample()
	}
	s.read += int64(n)
	return n, err
}

func TestAccessLogCarriesNoSecrets(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	h.tokens.token = "SECRET-ACCESS-TOKEN"
	req, _ := http.NewRequest("POST", "https://"+up.hostport+"/2/0/models?password=SECRET-QUERY", strings.NewReader("SECRET-BODY"))
	req.Header.Set("Cookie", "session=SECRET-COOKIE")
	req.Header.Set("Authorization", "Basic SECRET-CLIENT-AUTH")
	req.Header.Set("Proxy-Authorization", "Basic SECRET-PROXY-AUTH")
	resp, err := h.client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	// The access log line is written once the response is complete.
	eventually(t, 5*time.Second, "the request's log line", func() bool {
		return strings.Contains(h.logs.String(), `"decision":"inject"`)
	})
	h.rawConnect(t, "example.com:443")

	logs := h.logs.String()
	for _, secret := range []string{"SECRET-ACCESS-TOKEN", "SECRET-QUERY", "SECRET-BODY", "SECRET-COOKIE", "SECRET-CLIENT-AUTH", "SECRET-PROXY-AUTH"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %s:\n%s", secret, logs)
		}
	}
	var lines []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "request" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("got %d request log lines, want 2:\n%s", len(lines), logs)
	}
	inj := lines[0]
	for k, want := range map[string]any{"method": "POST", "host": up.hostport, "path": "/2/0/models", "status": 200.0, "decision": "inject"} {
		if inj[k] != want {
			t.Errorf("request log %s = %v, want %v", k, inj[k], want)
		}
	}
	for _, k := range []string{"client", "bytes", "duration_ms"} {
		if _, ok := inj[k]; !ok {
			t.Errorf("request log lacks %s", k)
		}
	}
	if lines[1]["decision"] != "deny" || lines[1]["status"] != 403.0 {
		t.Errorf("denied CONNECT logged as %v", lines[1])
	}
	snap := h.obs.snapshot()
	want := []string{fmt.Sprintf("%s POST 200", up.hostport), "denied CONNECT 403"}
	if fmt.Sprint(snap.requests) != fmt.Sprint(want) {
		t.Errorf("Observer.Request calls = %v, want %v", snap.requests, want)
	}
}

func TestTunnel(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{"api.anaplan.com"}, Tunnel: []string{up.hostport}, UpstreamRoots: up.roots})
	// The client talks TLS with the upstream itself: it trusts the
	// upstream's root, not the proxy's CA.
	c := h.client(t, pki.cert)
	req, _ := http.NewRequest("GET", "https://"+up.hostport+"/tunnelled", nil)
	req.Header.Set("Authorization", "Basic own")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	s := decodeSeen(t, resp)
	if s.Authorization != "Basic own" {
		t.Errorf("tunnelled request carried Authorization %q, want the client's own", s.Authorization)
	}
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 || resp.TLS.PeerCertificates[0].Issuer.CommonName != "test upstream root" {
		t.Errorf("tunnelled TLS was not end to end with the upstream")
	}
	if snap := h.obs.snapshot(); len(snap.connects) != 1 || snap.connects[0] != "tunnel " {
		t.Errorf("Connect calls = %q", snap.connects)
	}
	t.Run("tunnel host down", func(t *testing.T) {
		down := "localhost:" + closedPort(t)
		h := startProxy(t, Config{Tunnel: []string{down}})
		resp, body := h.rawConnect(t, down)
		if resp.StatusCode != 502 {
			t.Fatalf("status = %d, want 502", resp.StatusCode)
		}
		mustContain(t, "body", body, "connection refused")
		mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=connection_refused")
	})
}

func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, h.ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, curl, append([]string{"-sS", "--noproxy", "", "--proxy", h.srv.URL, "--cacert", caFile}, args...)...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("-H", "Authorization: Basic Zm9vOmJhcg==", "https://"+up.hostport+"/2/0/users/me")
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	mustContain(t, "curl output", out, `"authorization":"AnaplanAuthToken tok-1"`)

	out, err = run("-w", "%{http_code}", "-o", "/dev/null", "https://example.com/")
	if err == nil {
		t.Fatalf("curl to a denied host succeeded: %s", out)
	}
	mustContain(t, "curl output", out, "403")
}

func TestConcurrentConnectsSignOneLeaf(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A client per goroutine: a CONNECT and handshake each.
			resp, err := h.client(t).Get("https://" + up.hostport + "/x")
			if err != nil {
				errs <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if g := h.p.certs.generate.Load(); g != 1 {
		t.Errorf("signed %d leaves for one host, want 1", g)
	}
	if snap := h.obs.snapshot(); snap.certs["hit"]+snap.certs["miss"] != n {
		t.Errorf("cert cache lookups = %v, want %d", snap.certs, n)
	}
}

func TestShutdownDrainsThenCloses(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	release := make(chan struct{})
	entered := make(chan struct{}, 16)
	up.holdPath(t, "/slow", entered, release)

	t.Run("in-flight request finishes", func(t *testing.T) {
		h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
		result := make(chan string, 1)
		go func() {
			resp, err := h.client(t).Get("https://" + up.hostport + "/slow")
			if err != nil {
				result <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			result <- string(b)
		}()
		<-entered
		h.srv.Close()
		shut := make(chan error, 1)
		go func() { shut <- h.p.Shutdown(context.Background()) }()
		// New CONNECTs are refused while draining.
		eventually(t, 5*time.Second, "closing", h.p.isClosing)
		release <- struct{}{}
		if got := <-result; got != "done" {
			t.Errorf("in-flight request got %q, want done", got)
		}
		if err := <-shut; err != nil {
			t.Errorf("Shutdown = %v, want nil", err)
		}
	})
	t.Run("stuck request is cut at the deadline", func(t *testing.T) {
		h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
		result := make(chan error, 1)
		go func() {
			resp, err := h.client(t).Get("https://" + up.hostport + "/slow")
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			result <- err
		}()
		<-entered
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := h.p.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want a deadline error", err)
		}
		<-result // returns: the connection was closed
	})
}

func TestNoGoroutinesLeftAfterShutdown(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	tunnelUp := startUpstream(t, pki)
	before := runtime.NumGoroutine()

	h := startProxy(t, Config{Inject: []string{up.hostport}, Tunnel: []string{tunnelUp.hostport}, UpstreamRoots: up.roots})
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := h.client(t, pki.cert)
			host := up.hostport
			if i%2 == 1 {
				host = tunnelUp.hostport
			}
			resp, err := c.Get("https://" + host + "/x")
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			// Keep-alive connections stay open: Shutdown must close them.
		}()
	}
	wg.Wait()
	h.srv.Close()
	h.srv.CloseClientConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_ = h.p.Shutdown(ctx) // idle tunnels are cut at the deadline
	up.srv.CloseClientConnections()
	tunnelUp.srv.CloseClientConnections()
	eventually(t, 10*time.Second, fmt.Sprintf("goroutines back to %d", before), func() bool {
		return runtime.NumGoroutine() <= before
	})
}

// TestTokenThatCannotBeSent checks that an access token with bytes no
// header field may hold gets the proxy's own error, on the fast path and
// the general way, and that nothing reaches the upstream.
func TestTokenThatCannotBeSent(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			before := len(up.requests())
			h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
			h.tokens.token = "broken\r\nX-Injected: 1"
			req, err := http.NewRequest(method, "https://"+up.hostport+"/2/0/workspaces", strings.NewReader(""))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := h.client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != http.StatusInternalServerError {
				t.Fatalf("got %d %q, want 500", resp.StatusCode, body)
			}
			mustContain(t, "body", body, "the access token cannot be sent in an Authorization header")
			mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=proxy_internal_error")
			if strings.Contains(body, "broken") {
				t.Errorf("the answer carries the token: %q", body)
			}
			if n := len(up.requests()) - before; n != 0 {
				t.Errorf("upstream saw %d requests, want none", n)
			}
		})
	}
}
