package anaplantest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAPIAuthorization(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	at := str(login(t, s, c, clk, testScope), "access_token")

	tests := []struct {
		name       string
		header     string
		wantStatus int
		wantReason string
	}{
		{"AnaplanAuthToken", "AnaplanAuthToken " + at, 200, ""},
		{"Bearer", "Bearer " + at, 200, ""},
		{"scheme in lower case", "anaplanauthtoken " + at, 200, ""},
		{"no header", "", 401, "missing_token"},
		{"scheme only", "AnaplanAuthToken", 401, "missing_token"},
		{"Basic", "Basic dXNlcjpwYXNz", 401, "missing_token"},
		{"token without scheme", at, 401, "missing_token"},
		{"unknown token", "AnaplanAuthToken fake-at-never-issued-by-this-server", 401, "unknown_token"},
		{"refresh token as access token", "AnaplanAuthToken " + s.IssuedSecrets()[2], 401, "unknown_token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(s.Calls())
			status, body := apiGet(t, s, c, "/2/0/workspaces", tt.header)
			if status != tt.wantStatus {
				t.Fatalf("status %d, body %v; want %d", status, body, tt.wantStatus)
			}
			if status == http.StatusUnauthorized {
				st, _ := body["status"].(map[string]any)
				if st["code"] != 401.0 || st["message"] != "Unauthorized" {
					t.Errorf("401 body %v, want Anaplan's {status:{code:401,message:Unauthorized}}", body)
				}
			} else if want, _, _ := strings.Cut(tt.header, " "); str(body, "authorization_scheme") != want {
				t.Errorf("echoed authorization_scheme %q, want %q", str(body, "authorization_scheme"), want)
			} else if strings.Contains(fmt.Sprint(body), at) {
				t.Errorf("the answer carries the access token: %v", body)
			}
			calls := s.Calls()
			if len(calls) != before+1 {
				t.Fatalf("recorded %d calls, want 1", len(calls)-before)
			}
			got := calls[before]
			if got.Listener != "api" || got.Method != "GET" || got.Path != "/2/0/workspaces" ||
				got.Authorization != tt.header || got.Status != tt.wantStatus || got.Error != tt.wantReason {
				t.Errorf("recorded %+v", got)
			}
		})
	}
}

func TestAccessTokenExpiry(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{AccessTokenLifetime: 1500 * time.Millisecond}, clk)
	c := testClient(t, s)
	tok := login(t, s, c, clk, testScope)
	if tok["expires_in"] != 1.0 {
		t.Errorf("expires_in = %v for a 1.5s lifetime, want 1", tok["expires_in"])
	}
	auth := "AnaplanAuthToken " + str(tok, "access_token")
	clk.Advance(1499 * time.Millisecond)
	if status, _ := apiGet(t, s, c, "/", auth); status != http.StatusOK {
		t.Fatalf("just before expiry: status %d, want 200", status)
	}
	clk.Advance(time.Millisecond)
	if status, _ := apiGet(t, s, c, "/", auth); status != http.StatusUnauthorized {
		t.Fatalf("at expiry: status %d, want 401", status)
	}
	if got := s.Calls(); got[len(got)-1].Error != "expired_token" {
		t.Errorf("recorded reason %q, want expired_token", got[len(got)-1].Error)
	}
	status, tok2 := refresh(t, s, c, str(tok, "refresh_token"))
	if status != http.StatusOK {
		t.Fatalf("refresh after expiry: status %d", status)
	}
	if status, _ := apiGet(t, s, c, "/", "AnaplanAuthToken "+str(tok2, "access_token")); status != http.StatusOK {
		t.Fatalf("new access token: status %d, want 200", status)
	}
}

func TestExpireAccessTokens(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	tok := login(t, s, c, clk, testScope)
	s.ExpireAccessTokens()
	if status, _ := apiGet(t, s, c, "/", "AnaplanAuthToken "+str(tok, "access_token")); status != http.StatusUnauthorized {
		t.Fatalf("after ExpireAccessTokens: status %d, want 401", status)
	}
	status, tok2 := refresh(t, s, c, str(tok, "refresh_token"))
	if status != http.StatusOK {
		t.Fatalf("refresh after ExpireAccessTokens: status %d", status)
	}
	if status, _ := apiGet(t, s, c, "/", "AnaplanAuthToken "+str(tok2, "access_token")); status != http.StatusOK {
		t.Fatalf("token issued after ExpireAccessTokens: status %d, want 200", status)
	}
}

func TestAPIAnswers(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	auth := "AnaplanAuthToken " + str(login(t, s, c, clk, testScope), "access_token")
	sum := sha256.Sum256([]byte("chunk"))

	tests := []struct {
		name, method, path, body string
		wantStatus               int
		want                     map[string]any
	}{
		{"GET echo", "GET", "/2/0/workspaces?tenantDetails=true", "", 200,
			map[string]any{"method": "GET", "path": "/2/0/workspaces", "query": "tenantDetails=true", "host": s.APIHost(), "authorization_scheme": "AnaplanAuthToken"}},
		{"DELETE echo", "DELETE", "/2/0/tasks/1", "", 200,
			map[string]any{"method": "DELETE", "path": "/2/0/tasks/1", "host": s.APIHost()}},
		{"POST without body", "POST", "/2/0/files/1/complete", "", 200,
			map[string]any{"method": "POST", "path": "/2/0/files/1/complete", "bytes": nil}},
		{"PUT chunk", "PUT", "/2/0/files/1/chunks/0", "chunk", 200,
			map[string]any{"method": "PUT", "path": "/2/0/files/1/chunks/0", "bytes": 5.0, "sha256": hex.EncodeToString(sum[:]), "authorization_scheme": "AnaplanAuthToken"}},
		{"POST body", "POST", "/2/0/imports/1/tasks", "chunk", 200,
			map[string]any{"method": "POST", "bytes": 5.0, "sha256": hex.EncodeToString(sum[:])}},
		{"stream with a bad size", "GET", "/stream?bytes=lots", "", 400, nil},
		{"stream with a negative size", "GET", "/stream?bytes=-1", "", 400, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req, _ := http.NewRequest(tt.method, s.APIURL()+tt.path, body)
			req.Header.Set("Authorization", auth)
			status, got := do(t, c, req)
			if status != tt.wantStatus {
				t.Fatalf("status %d, body %v; want %d", status, got, tt.wantStatus)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v (answer %v)", k, got[k], v, got)
				}
			}
		})
	}

	t.Run("redirect", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, s.APIURL()+"/redirect", nil)
		req.Header.Set("Authorization", auth)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://example.invalid/" {
			t.Fatalf("status %d, Location %q; want 302 to https://example.invalid/", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
	t.Run("redirect needs a token", func(t *testing.T) {
		if status, _ := apiGet(t, s, c, "/redirect", ""); status != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", status)
		}
	})
}

// memSampler tracks the peak heap in use while bytes flow through it.
type memSampler struct {
	mu    sync.Mutex
	seen  int64
	next  int64
	every int64
	peak  uint64
}

func newMemSampler(every int64) *memSampler {
	return &memSampler{every: every, next: every}
}

func (m *memSampler) observe(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seen += int64(n)
	if m.seen < m.next {
		return
	}
	m.next += m.every
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.peak = max(m.peak, ms.HeapInuse)
}

func (m *memSampler) Write(p []byte) (int, error) {
	m.observe(len(p))
	return len(p), nil
}

func (m *memSampler) peakInUse() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.peak
}

// sampledReader reports every read to a memSampler.
type sampledReader struct {
	r io.Reader
	m *memSampler
}

func (r *sampledReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.m.observe(n)
	return n, err
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func TestStreamingLargeBodies(t *testing.T) {
	const size = 64 << 20
	const maxGrowth = 24 << 20 // far below the body size: nothing may hold a whole body
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	auth := "AnaplanAuthToken " + str(login(t, s, c, clk, testScope), "access_token")
	want := sha256.New()
	io.Copy(want, NewPatternReader(size))
	wantSum := hex.EncodeToString(want.Sum(nil))

	t.Run("download", func(t *testing.T) {
		base := heapInUse()
		req, _ := http.NewRequest(http.MethodGet, s.APIURL()+"/stream?bytes=67108864", nil)
		req.Header.Set("Authorization", auth)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ContentLength != size || resp.Header.Get("Content-Type") != "application/octet-stream" {
			t.Fatalf("status %d, length %d, type %q", resp.StatusCode, resp.ContentLength, resp.Header.Get("Content-Type"))
		}
		m := newMemSampler(4 << 20)
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(h, m), resp.Body)
		if err != nil || n != size {
			t.Fatalf("read %d bytes, err %v; want %d", n, err, size)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != wantSum {
			t.Fatalf("sha256 %s, want %s", got, wantSum)
		}
		if peak := m.peakInUse(); peak > base+maxGrowth {
			t.Errorf("heap in use grew from %d to %d bytes while streaming %d bytes", base, peak, size)
		}
	})
	t.Run("upload", func(t *testing.T) {
		base := heapInUse()
		m := newMemSampler(4 << 20)
		req, _ := http.NewRequest(http.MethodPut, s.APIURL()+"/2/0/files/1/chunks/0", &sampledReader{NewPatternReader(size), m})
		req.ContentLength = size
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", "application/octet-stream")
		status, body := do(t, c, req)
		if status != http.StatusOK || body["bytes"] != float64(size) || body["sha256"] != wantSum {
			t.Fatalf("status %d, answer %v; want %d bytes with sha256 %s", status, body, size, wantSum)
		}
		if peak := m.peakInUse(); peak > base+maxGrowth {
			t.Errorf("heap in use grew from %d to %d bytes while streaming %d bytes", base, peak, size)
		}
	})
	t.Run("chunked upload", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			_, err := io.Copy(pw, NewPatternReader(1<<20))
			pw.CloseWithError(err)
		}()
		req, _ := http.NewRequest(http.MethodPost, s.APIURL()+"/upload", pr)
		req.Header.Set("Authorization", auth)
		status, body := do(t, c, req)
		oneMiB := sha256.New()
		io.Copy(oneMiB, NewPatternReader(1<<20))
		if status != http.StatusOK || body["bytes"] != float64(1<<20) || body["sha256"] != hex.EncodeToString(oneMiB.Sum(nil)) {
			t.Fatalf("status %d, answer %v", status, body)
		}
	})
}

func TestPatternReader(t *testing.T) {
	tests := []struct {
		n      int64
		bufLen int
	}{{0, 7}, {1, 7}, {250, 1}, {251, 64}, {1000, 251}, {100003, 4096}}
	for _, tt := range tests {
		r := NewPatternReader(tt.n)
		buf := make([]byte, tt.bufLen)
		var off int64
		for {
			n, err := r.Read(buf)
			for i := range n {
				if want := byte((off + int64(i)) % 251); buf[i] != want {
					t.Fatalf("n=%d: byte %d = %d, want %d", tt.n, off+int64(i), buf[i], want)
				}
			}
			off += int64(n)
			if errors.Is(err, io.EOF) {
				break
			}
		}
		if off != tt.n {
			t.Errorf("n=%d: read %d bytes", tt.n, off)
		}
	}
}

func TestClassicAuthAPI(t *testing.T) {
	s := start(t, Options{}, nil)
	c := testClient(t, s)
	tests := []struct {
		method, path string
		wantStatus   int
	}{
		{"POST", "/token/authenticate", 401},
		{"POST", "/token/refresh", 401},
		{"GET", "/token/validate", 401},
		{"POST", "/token/logout", 401},
		{"GET", "/other", 404},
	}
	for i, tt := range tests {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, s.ClassicAuthURL()+tt.path, strings.NewReader(`{"encodedData":"x"}`))
			req.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
			if status, _ := do(t, c, req); status != tt.wantStatus {
				t.Fatalf("status %d, want %d", status, tt.wantStatus)
			}
			calls := s.Calls()
			if len(calls) != i+1 {
				t.Fatalf("%d calls recorded, want %d", len(calls), i+1)
			}
			got := calls[i]
			if got.Listener != "classic" || got.Method != tt.method || got.Path != tt.path || got.Status != tt.wantStatus || got.Authorization != "Basic dXNlcjpwYXNz" {
				t.Errorf("recorded %+v", got)
			}
		})
	}
}

func TestListenersAndCertificate(t *testing.T) {
	s := start(t, Options{}, nil)

	block, _ := pem.Decode(s.CACertPEM())
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("CACertPEM is not a PEM certificate")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if key, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || key.Curve != elliptic.P256() || !ca.IsCA {
		t.Errorf("CA: IsCA=%t, key %T; want an ECDSA P-256 CA", ca.IsCA, ca.PublicKey)
	}

	hosts := map[string]string{"oauth": strings.TrimPrefix(s.OAuthURL(), "https://"), "api": s.APIHost(), "classic": s.ClassicAuthHost()}
	ports := map[string]bool{}
	for name, host := range hosts {
		_, port, err := net.SplitHostPort(host)
		if err != nil || !strings.HasPrefix(host, "localhost:") {
			t.Fatalf("%s host %q is not localhost:PORT", name, host)
		}
		ports[port] = true
		for _, addr := range []string{"127.0.0.1", "localhost"} {
			conf := &tls.Config{RootCAs: s.CertPool(), ServerName: addr}
			conn, err := tls.Dial("tcp", net.JoinHostPort(addr, port), conf)
			if err != nil {
				t.Errorf("%s via %s: %v", name, addr, err)
				continue
			}
			if proto := conn.ConnectionState().NegotiatedProtocol; proto != "" && proto != "http/1.1" {
				t.Errorf("%s negotiated %q, want HTTP/1.1", name, proto)
			}
			conn.Close()
		}
		if _, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", port), &tls.Config{ServerName: "localhost"}); err == nil {
			t.Errorf("%s: a client without the fake's CA accepted its certificate", name)
		}
	}
	if len(ports) != 3 {
		t.Errorf("listeners share ports: %v", hosts)
	}
	if urls := []string{s.DeviceAuthURL(), s.TokenURL(), s.RevokeURL()}; !strings.HasSuffix(urls[0], "/oauth/device/code") ||
		!strings.HasSuffix(urls[1], "/oauth/token") || !strings.HasSuffix(urls[2], "/oauth/revoke") {
		t.Errorf("OAuth URLs %v", urls)
	}

	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln.Close()
		_, port, _ := net.SplitHostPort(s.APIHost())
		conn, err := tls.Dial("tcp6", net.JoinHostPort("::1", port), &tls.Config{RootCAs: s.CertPool(), ServerName: "::1"})
		if err != nil {
			t.Errorf("API on [::1]: %v", err)
		} else {
			conn.Close()
		}
	}
}

func TestWriteCAFile(t *testing.T) {
	s := start(t, Options{}, nil)
	dir := t.TempDir()
	path, err := s.WriteCAFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if path != dir+"/anaplantest-ca.pem" {
		t.Errorf("path %q", path)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(s.CACertPEM()) {
		t.Error("CA file differs from CACertPEM")
	}
	if _, err := s.WriteCAFile(dir + "/missing"); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	clk := newFakeClock()
	s, err := Start(Options{Now: clk.Now, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	c := s.Client()
	auth := "AnaplanAuthToken " + str(login(t, s, c, clk, testScope), "access_token")

	// One download is left half read and one upload half sent, so Close
	// has handlers blocked in both directions to end.
	req, _ := http.NewRequest(http.MethodGet, s.APIURL()+"/stream?bytes=1073741824", nil)
	req.Header.Set("Authorization", auth)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<16)); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	upload, _ := http.NewRequest(http.MethodPut, s.APIURL()+"/upload", pr)
	upload.Header.Set("Authorization", auth)
	uploadDone := make(chan error, 1)
	go func() {
		resp, err := c.Do(upload)
		if err == nil {
			resp.Body.Close()
		}
		uploadDone <- err
	}()
	if _, err := pw.Write(make([]byte, 1<<16)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the upload to reach the server", func() bool {
		calls := s.Calls()
		return calls[len(calls)-1].Path == "/upload"
	})

	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with transfers in flight")
	}
	pw.CloseWithError(errors.New("test over"))
	<-uploadDone
	resp.Body.Close()
	c.CloseIdleConnections()

	eventually(t, 5*time.Second, "goroutines to end", func() bool {
		return runtime.NumGoroutine() <= before
	})
}
