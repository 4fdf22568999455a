package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/testutil"
)

// stubTokens is a TokenSource whose answers the test controls.
type stubTokens struct {
	mu       sync.Mutex
	token    string
	err      error
	next     map[string]string // Rejected(old) returns next[old]
	rejected []string
}

func (s *stubTokens) AccessToken(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return "", s.err
	}
	return s.token, nil
}

func (s *stubTokens) Rejected(ctx context.Context, old string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejected = append(s.rejected, old)
	if s.err != nil {
		return "", s.err
	}
	if n, ok := s.next[old]; ok {
		s.token = n
		return n, nil
	}
	return s.token, nil
}

func (s *stubTokens) rejectedCalls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.rejected...)
}

// sessionError mimics the session's errors.
type sessionError struct {
	msg        string
	login      bool
	retryAfter time.Duration
}

func (e *sessionError) Error() string             { return e.msg }
func (e *sessionError) LoginRequired() bool       { return e.login }
func (e *sessionError) RetryAfter() time.Duration { return e.retryAfter }

// recObserver records every Observer call.
type recObserver struct {
	mu       sync.Mutex
	requests []string // "host method code"
	connects []string // "decision reason"
	upstream []string
	replays  []string
	certs    map[string]int
	inFlight int              // InFlight sum
	bytes    map[string]int64 // Bytes by direction

	authFailures int // ProxyAuthFailure calls

	pool       map[string]int // UpstreamPool by result
	idle       int            // UpstreamIdle sum
	poolClosed map[string]int // UpstreamClosed by reason
}

func (o *recObserver) UpstreamPool(result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.pool == nil {
		o.pool = map[string]int{}
	}
	o.pool[result]++
}

func (o *recObserver) UpstreamIdle(delta int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.idle += delta
}

func (o *recObserver) UpstreamClosed(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.poolClosed == nil {
		o.poolClosed = map[string]int{}
	}
	o.poolClosed[reason]++
}

func (o *recObserver) Request(host, method string, code int, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.requests = append(o.requests, fmt.Sprintf("%s %s %d", host, method, code))
}

func (o *recObserver) Connect(decision, reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.connects = append(o.connects, decision+" "+reason)
}

func (o *recObserver) UpstreamError(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.upstream = append(o.upstream, reason)
}

func (o *recObserver) Replay(outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.replays = append(o.replays, outcome)
}

func (o *recObserver) CertCache(result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.certs == nil {
		o.certs = map[string]int{}
	}
	o.certs[result]++
}

func (o *recObserver) ProxyAuthFailure() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.authFailures++
}

func (o *recObserver) snapshot() recObserver {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := map[string]int{}
	for k, v := range o.certs {
		c[k] = v
	}
	b := map[string]int64{}
	for k, v := range o.bytes {
		b[k] = v
	}
	return recObserver{
		requests: append([]string(nil), o.requests...),
		connects: append([]string(nil), o.connects...),
		upstream: append([]string(nil), o.upstream...),
		replays:  append([]string(nil), o.replays...),
		certs:    c,
		inFlight: o.inFlight,
		bytes:    b,

		authFailures: o.authFailures,
		pool:         maps.Clone(o.pool),
		idle:         o.idle,
		poolClosed:   maps.Clone(o.poolClosed),
	}
}

// testPKI is an upstream CA standing in for the public web PKI.
type testPKI struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test upstream root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testPKI{cert: cert, key: key, pool: pool}
}

func (k *testPKI) serverCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, k.cert, key.Public(), k.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// seen is what the upstream observed of one request.
type seen struct {
	Method        string `json:"method"`
	Path          string `json:"path"`
	Query         string `json:"query"`
	Host          string `json:"host"`
	Authorization string `json:"authorization"`
	ProxyAuth     string `json:"proxy_authorization"`
	Forwarded     string `json:"x_forwarded_for"`
	BodyLen       int64  `json:"body_len"`
	BodySHA256    string `json:"body_sha256"`
}

// upstream is a TLS origin server that records what reaches it.
type upstream struct {
	srv      *httptest.Server
	hostport string // "localhost:PORT"
	port     string
	roots    *x509.CertPool
	mu       sync.Mutex
	seen     []seen
	handle   func(w http.ResponseWriter, r *http.Request, s seen) bool // true: handled
}

func startUpstream(t testing.TB, pki *testPKI) *upstream {
	t.Helper()
	u := &upstream{roots: pki.pool}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.serverCert(t)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	u.srv = srv
	_, u.port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	u.hostport = "localhost:" + u.port
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, _ := io.Copy(h, r.Body)
	s := seen{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Host: r.Host,
		Authorization: r.Header.Get("Authorization"), ProxyAuth: r.Header.Get("Proxy-Authorization"),
		Forwarded: r.Header.Get("X-Forwarded-For"),
		BodyLen:   n, BodySHA256: hex.EncodeToString(h.Sum(nil)),
	}
	u.mu.Lock()
	u.seen = append(u.seen, s)
	handle := u.handle
	u.mu.Unlock()
	if handle != nil && handle(w, r, s) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s)
}

func (u *upstream) setHandler(h func(w http.ResponseWriter, r *http.Request, s seen) bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.handle = h
}

func (u *upstream) requests() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.seen...)
}

// syncBuffer collects output that goroutines write while the test reads it.
type syncBuffer = testutil.Buffer

// harness is a running proxy with its CA, observer, log and tokens.
type harness struct {
	p      *Proxy
	srv    *httptest.Server
	ca     *CA
	obs    *recObserver
	logs   *syncBuffer
	tokens *stubTokens
}

// startProxy runs a proxy on a loopback listener. edit may change cfg
// before New; the CA is created for cfg.Inject.
func startProxy(t testing.TB, cfg Config, edit ...func(*Config)) *harness {
	t.Helper()
	h := &harness{obs: &recObserver{}, logs: &syncBuffer{}, tokens: &stubTokens{token: "tok-1"}}
	cfg.Tokens = h.tokens
	cfg.Observer = h.obs
	cfg.Logger = slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// The test upstreams listen on loopback; tests of the guard turn
	// this off again.
	cfg.AllowPrivateUpstream = true
	if len(cfg.Inject) > 0 && cfg.CA == nil {
		ca, err := LoadOrCreateCA(t.TempDir(), cfg.Inject)
		if err != nil {
			t.Fatal(err)
		}
		cfg.CA = ca
	}
	for _, e := range edit {
		e(&cfg)
	}
	h.ca = cfg.CA
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.p = p
	h.srv = httptest.NewServer(p)
	t.Cleanup(func() {
		h.srv.Close()
		if p.isClosing() {
			return // the test shut it down itself
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return h
}

// client returns an HTTP client that uses the proxy and trusts its CA
// (and, if given, other roots).
func (h *harness) client(t testing.TB, extra ...*x509.Certificate) *http.Client {
	t.Helper()
	roots := x509.NewCertPool()
	if h.ca != nil {
		roots.AppendCertsFromPEM(h.ca.CertPEM())
	}
	for _, c := range extra {
		roots.AddCert(c)
	}
	proxyURL, _ := url.Parse(h.srv.URL)
	tr := &http.Transport{
		Proxy:              http.ProxyURL(proxyURL),
		TLSClientConfig:    &tls.Config{RootCAs: roots},
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// rawConnect sends a CONNECT for target to the proxy and returns the
// response with its body read.
func (h *harness) rawConnect(t testing.TB, target string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("reading CONNECT response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func readBody(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return string(b)
}

// closedPort returns a loopback port with nothing listening on it.
func closedPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	return port
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		poll := time.NewTimer(2 * time.Millisecond)
		<-poll.C
	}
}

func mustContain(t testing.TB, what, got, want string) {
	t.Helper()
	if !strings.Contains(got, want) {
		t.Errorf("%s = %q, want it to contain %q", what, got, want)
	}
}

// holdPath makes u answer requests for path only once release is closed
// (or fed), or the request ends, with the body "done"; entered, if not
// nil, gets a value as each such request arrives. Other paths are served
// as before.
func (u *upstream) holdPath(t testing.TB, path string, entered chan<- struct{}, release <-chan struct{}) {
	t.Helper()
	u.setHandler(func(w http.ResponseWriter, r *http.Request, _ seen) bool {
		if r.URL.Path != path {
			return false
		}
		if entered != nil {
			entered <- struct{}{}
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return true
		}
		_, _ = io.WriteString(w, "done")
		return true
	})
	t.Cleanup(func() { u.setHandler(nil) })
}
