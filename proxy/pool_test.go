package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/testutil"
	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// rawUpstream is a TLS origin that answers with the bytes its test writes,
// so that a test can send what no well-behaved server would. Each accepted
// connection gets a number, from 1; answer is called with it and each
// request read on it, on the connection's goroutine.
type rawUpstream struct {
	ln       net.Listener
	hostport string
	answer   func(conn int, req *http.Request, w io.Writer) (keep bool)
	opened   atomic.Int32
	closed   atomic.Int32
	wg       sync.WaitGroup
}

func startRawUpstream(t *testing.T, pki *testPKI, answer func(conn int, req *http.Request, w io.Writer) bool) *rawUpstream {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pki.serverCert(t)}})
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln, answer: answer}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	u.hostport = "localhost:" + port
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(u.opened.Add(1))
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
					u.closed.Add(1)
				}()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if !u.answer(n, req, c) {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		u.wg.Wait()
	})
	return u
}

// writeAnswer writes a 200 answer with body and its Content-Length.
func writeAnswer(w io.Writer, body string) {
	fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// getOn sends a GET for path on an intercepted connection and returns the
// status and body of its answer.
func getOn(t *testing.T, c *rawConn, hostport, path string) (int, string) {
	t.Helper()
	c.send("GET " + path + " HTTP/1.1\r\nHost: " + hostport + "\r\n\r\n")
	resp, body := c.read(http.MethodGet)
	return resp.StatusCode, body
}

// TestPoolUnsolicitedBytesCloseIdleConnection: bytes that an upstream
// sends on a connection after a complete answer, before any request asks
// for them, never reach a client as an answer: not the next request of the
// same client connection, nor one of another client, on the fast path and
// the general way.
func TestPoolUnsolicitedBytesCloseIdleConnection(t *testing.T) {
	for _, general := range []bool{false, true} {
		t.Run(fmt.Sprintf("general=%v", general), func(t *testing.T) {
			pki := newTestPKI(t)
			speak, smuggled := make(chan struct{}), make(chan struct{})
			up := startRawUpstream(t, pki, func(conn int, req *http.Request, w io.Writer) bool {
				if conn == 1 && req.URL.Path == "/first" {
					writeAnswer(w, "ok")
					go func() {
						// The upstream speaks up on its own once the
						// answer has reached the client.
						<-speak
						_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED")
						close(smuggled)
					}()
					return true
				}
				writeAnswer(w, fmt.Sprintf("conn %d %s", conn, req.URL.Path))
				return true
			})
			h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
			h.p.generalOnly = general
			addr := h.srv.Listener.Addr().String()
			c := dialRaw(t, addr, h.ca, up.hostport)
			if code, body := getOn(t, c, up.hostport, "/first"); code != 200 || body != "ok" {
				t.Fatalf("first GET: %d %q", code, body)
			}
			close(speak)
			<-smuggled
			for _, path := range []string{"/second", "/third"} {
				code, body := getOn(t, c, up.hostport, path)
				if code != 200 || !strings.HasSuffix(body, " "+path) || strings.HasPrefix(body, "conn 1 ") {
					t.Errorf("GET %s on the same client connection: %d %q, want the answer to it from a new upstream connection", path, code, body)
				}
			}
			other := dialRaw(t, addr, h.ca, up.hostport)
			if code, body := getOn(t, other, up.hostport, "/other"); code != 200 || !strings.HasSuffix(body, " /other") {
				t.Errorf("GET /other on another client connection: %d %q", code, body)
			}
			eventually(t, 10*time.Second, "the upstream connection that spoke unasked to be closed", func() bool {
				return up.closed.Load() >= 1
			})
		})
	}
}

// TestPoolReplacesConnectionClosedWhileIdle: an idle pooled connection
// that the upstream closed is found closed when taken and replaced, and
// no request fails for it, whatever its method.
func TestPoolReplacesConnectionClosedWhileIdle(t *testing.T) {
	pki := newTestPKI(t)
	up := startCountedUpstream(t, pki, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", "2")
		_, _ = io.WriteString(w, "ok")
	})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
	url := "https://" + up.hostport + "/2/0/tasks/1"
	for i, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodGet} {
		// A new client connection for each call, as a script's curl.
		c := h.client(t)
		req, _ := http.NewRequest(method, url, strings.NewReader(`{"localeName":"en_US"}`))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s after the upstream closed the idle connection: %v", method, err)
		}
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != "ok" {
			t.Fatalf("%s after the upstream closed the idle connection: %d %q", method, resp.StatusCode, body)
		}
		if i > 0 {
			if n := int(up.opened.Load()); n != i+1 {
				t.Errorf("%s: %d upstream connections opened, want %d (one for each closed idle one)", method, n, i+1)
			}
		}
		eventually(t, 10*time.Second, "the connection to be idle in the pool", func() bool {
			return h.obs.snapshot().idle == 1
		})
		up.srv.CloseClientConnections()
		eventually(t, 10*time.Second, "the upstream to close its connections", func() bool {
			return up.closed.Load() == up.opened.Load()
		})
	}
	o := h.obs.snapshot()
	if o.poolClosed[h1.ClosedUpstreamClosed] != 3 || o.pool["hit"] != 0 || o.pool["miss"] != 4 {
		t.Errorf("pool metrics: closed %v, lookups %v; want 3 closed by the upstream, 4 misses", o.poolClosed, o.pool)
	}
	for _, r := range o.requests {
		if !strings.HasSuffix(r, " 200") {
			t.Errorf("request metric %q, want every request answered 200", r)
		}
	}
}

// TestPoolBadFramingPoisonsNothing: an answer whose framing leaves any
// doubt about where it ends closes its upstream connection; the next
// client gets its own answer on a clean connection.
func TestPoolBadFramingPoisonsNothing(t *testing.T) {
	bad := map[string]string{
		// More bytes than the Content-Length says.
		"/overlong": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED",
		// A whole second answer after the first, in one write.
		"/two": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
		// Bytes after the last chunk.
		"/chunked": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED",
		// Connection: close, and yet the upstream goes on.
		"/close": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED",
		// A body cut short of its Content-Length.
		"/short": "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
		// Two Content-Lengths that disagree.
		"/conflict": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 10\r\n\r\nokSMUGGLED",
	}
	for path, raw := range bad {
		for _, general := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/general=%v", path[1:], general), func(t *testing.T) {
				pki := newTestPKI(t)
				var poisoned atomic.Int32
				up := startRawUpstream(t, pki, func(conn int, req *http.Request, w io.Writer) bool {
					if req.URL.Path == path {
						poisoned.Store(int32(conn))
						_, _ = io.WriteString(w, raw)
						return path != "/short"
					}
					writeAnswer(w, fmt.Sprintf("conn %d %s", conn, req.URL.Path))
					return true
				})
				h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
				h.p.generalOnly = general
				addr := h.srv.Listener.Addr().String()
				first := dialRaw(t, addr, h.ca, up.hostport)
				first.send("GET " + path + " HTTP/1.1\r\nHost: " + up.hostport + "\r\n\r\n")
				// What the first client gets is beside the point: the
				// proxy may relay or refuse it, and may close.
				_ = first.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				if resp, err := http.ReadResponse(first.br, &http.Request{Method: http.MethodGet}); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
				}
				for i := range 3 {
					next := dialRaw(t, addr, h.ca, up.hostport)
					p := fmt.Sprintf("/next%d", i)
					code, body := getOn(t, next, up.hostport, p)
					want := " " + p
					if code != 200 || !strings.HasSuffix(body, want) || body == fmt.Sprintf("conn %d %s", poisoned.Load(), p) {
						t.Errorf("GET %s from another client after %s: %d %q, want its own answer on another upstream connection than %d",
							p, path, code, body, poisoned.Load())
					}
				}
			})
		}
	}
}

// TestPoolNeverSharesConnection: many clients at once each get the
// answers to their own requests, and no upstream connection ever carries
// two requests at once (which the race detector would also see).
func TestPoolNeverSharesConnection(t *testing.T) {
	const clients, calls = 200, 3
	pki := newTestPKI(t)
	var overlaps atomic.Int32
	var mu sync.Mutex
	inFlight := map[int]bool{}
	up := startRawUpstream(t, pki, func(conn int, req *http.Request, w io.Writer) bool {
		mu.Lock()
		if inFlight[conn] {
			overlaps.Add(1)
		}
		inFlight[conn] = true
		mu.Unlock()
		body := req.Header.Get("X-Call") + " " + req.Header.Get("Authorization")
		mu.Lock()
		inFlight[conn] = false
		mu.Unlock()
		writeAnswer(w, body)
		return true
	})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
	var wg sync.WaitGroup
	errs := make(chan error, clients*calls)
	for i := range clients {
		c := h.client(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range calls {
				id := fmt.Sprintf("client-%d-call-%d", i, j)
				method := http.MethodGet
				var body io.Reader
				if j == 1 {
					method, body = http.MethodPost, strings.NewReader(id)
				}
				req, _ := http.NewRequest(method, "https://"+up.hostport+"/2/0/x", body)
				req.Header.Set("X-Call", id)
				resp, err := c.Do(req)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := id + " AnaplanAuthToken tok-1"; err != nil || string(b) != want {
					errs <- fmt.Errorf("%s: got %q (%v), want %q", id, b, err, want)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := overlaps.Load(); n != 0 {
		t.Errorf("%d requests arrived on an upstream connection that was serving another", n)
	}
	o := h.obs.snapshot()
	if o.pool["hit"] == 0 {
		t.Errorf("pool lookups %v: no connection was shared between client connections", o.pool)
	}
	t.Logf("%d upstream connections for %d calls of %d clients; lookups %v, closed %v",
		up.opened.Load(), clients*calls, clients, o.pool, o.poolClosed)
}

// TestPoolTokenOfCurrentSession: a request on a pooled connection opened
// before the session's token changed carries the current token.
func TestPoolTokenOfCurrentSession(t *testing.T) {
	pki := newTestPKI(t)
	up := startCountedUpstream(t, pki, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, r.Header.Get("Authorization"))
	})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
	call := func(method string) string {
		t.Helper()
		var body io.Reader
		if method == http.MethodPost {
			body = strings.NewReader("{}")
		}
		req, _ := http.NewRequest(method, "https://"+up.hostport+"/2/0/tasks", body)
		resp, err := h.client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got := readBody(t, resp)
		eventually(t, 10*time.Second, "the connection to be idle in the pool", func() bool {
			return h.obs.snapshot().idle == 1
		})
		return got
	}
	if got := call(http.MethodGet); got != "AnaplanAuthToken tok-1" {
		t.Fatalf("first call: %q", got)
	}
	h.tokens.mu.Lock()
	h.tokens.token = "tok-2"
	h.tokens.mu.Unlock()
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		if got := call(method); got != "AnaplanAuthToken tok-2" {
			t.Errorf("%s after the refresh: upstream saw %q, want the new token", method, got)
		}
	}
	if n := up.connections(); n != 1 {
		t.Errorf("%d upstream connections, want the one opened before the refresh", n)
	}
}

// TestPoolLimits: the pool keeps at most MaxIdlePerHost idle connections
// to a host, and closes one idle for IdleTimeout.
func TestPoolLimits(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	entered, release := make(chan struct{}), make(chan struct{})
	up.holdPath(t, "/hold", entered, release)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool, Pool: PoolLimits{MaxIdlePerHost: 2, IdleTimeout: time.Hour}})
	const held = 5
	var wg sync.WaitGroup
	for range held {
		c := h.client(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get("https://" + up.hostport + "/hold")
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	for range held {
		<-entered
	}
	close(release)
	wg.Wait()
	eventually(t, 10*time.Second, "the pool to keep 2 of the 5 connections", func() bool {
		o := h.obs.snapshot()
		return o.idle == 2 && o.poolClosed[h1.ClosedPoolFull] == held-2
	})
}

// TestPoolIdleTimeout: a connection idle for the pool's idle timeout is
// closed by the proxy, before the upstream's own timeout would.
func TestPoolIdleTimeout(t *testing.T) {
	pki := newTestPKI(t)
	up := startCountedUpstream(t, pki, func(w http.ResponseWriter, r *http.Request) {})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool, Pool: PoolLimits{IdleTimeout: 50 * time.Millisecond}})
	resp, err := h.client(t).Get("https://" + up.hostport + "/2/0/workspaces")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	eventually(t, 10*time.Second, "the idle upstream connection to be closed", func() bool {
		return up.opened.Load() == 1 && up.closed.Load() == 1
	})
	o := h.obs.snapshot()
	if o.idle != 0 || o.poolClosed[h1.ClosedIdleTimeout] != 1 {
		t.Errorf("idle %d, closed %v; want 0 idle, 1 closed for the idle timeout", o.idle, o.poolClosed)
	}
}

// TestPoolReusesConnectionAfterItsDeadlinePassed: a read deadline that
// passes while a connection is idle (the first wait for an answer sets
// one, half a second ahead) does not make the connection look closed.
func TestPoolReusesConnectionAfterItsDeadlinePassed(t *testing.T) {
	pki := newTestPKI(t)
	up := startCountedUpstream(t, pki, func(w http.ResponseWriter, r *http.Request) {})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
	// The test keeps the upstream connections the proxy opens.
	var mu sync.Mutex
	var conns []net.Conn
	dial := h.p.client.Dial
	h.p.client.Dial = func(ctx context.Context, r h1.Route) (net.Conn, error) {
		c, err := dial(ctx, r)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
	for i := range 3 {
		resp, err := h.client(t).Get("https://" + up.hostport + "/2/0/workspaces")
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		eventually(t, 10*time.Second, "the connection to be idle in the pool", func() bool {
			return h.obs.snapshot().idle == 1
		})
		// The deadline of the idle connection passes.
		mu.Lock()
		for _, c := range conns {
			_ = c.SetReadDeadline(h1.ALongTimeAgo)
		}
		mu.Unlock()
		if n := up.opened.Load(); n != 1 {
			t.Fatalf("call %d: %d upstream connections, want the idle one reused", i+1, n)
		}
	}
	if o := h.obs.snapshot(); len(o.poolClosed) != 0 {
		t.Errorf("connections closed unused: %v, want none", o.poolClosed)
	}
}

// TestPoolKeepWarm: with KeepWarm, the idle connection that the idle
// timeout closes is replaced while the session is valid, so that a call
// after a quiet spell finds one; without a valid session it is not.
func TestPoolKeepWarm(t *testing.T) {
	pki := newTestPKI(t)
	up := startCountedUpstream(t, pki, func(w http.ResponseWriter, r *http.Request) {})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool,
		Pool: PoolLimits{IdleTimeout: 200 * time.Millisecond, KeepWarm: time.Hour}})
	call := func() {
		t.Helper()
		resp, err := h.client(t).Get("https://" + up.hostport + "/2/0/workspaces")
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
	}
	call()
	eventually(t, 10*time.Second, "the expired connection to be replaced", func() bool {
		return up.closed.Load() >= 2 && h.obs.snapshot().idle == 1
	})
	before := h.obs.snapshot().pool["hit"]
	call()
	if hits := h.obs.snapshot().pool["hit"]; hits != before+1 {
		t.Errorf("a call after the idle timeout: %d pool hits, want %d (a warm connection)", hits, before+1)
	}

	h.tokens.mu.Lock()
	h.tokens.err = &sessionError{msg: "login required", login: true}
	h.tokens.mu.Unlock()
	eventually(t, 10*time.Second, "no connection to be kept warm without a session", func() bool {
		return h.obs.snapshot().idle == 0 && up.closed.Load() == up.opened.Load()
	})
}

// TestPoolThroughCorporateProxy: connections through a corporate proxy's
// tunnel (http:// and https://, TLS in TLS) are shared and looked at like
// direct ones: bytes that arrive while one is idle close it.
func TestPoolThroughCorporateProxy(t *testing.T) {
	for _, https := range []bool{false, true} {
		t.Run(fmt.Sprintf("https=%v", https), func(t *testing.T) {
			pki := newTestPKI(t)
			speak, smuggled := make(chan struct{}), make(chan struct{})
			up := startRawUpstream(t, pki, func(conn int, req *http.Request, w io.Writer) bool {
				writeAnswer(w, fmt.Sprintf("conn %d %s", conn, req.URL.Path))
				if conn == 1 {
					go func() {
						<-speak
						_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED")
						close(smuggled)
					}()
				}
				return true
			})
			var corpCert *tls.Certificate
			if https {
				c := pki.serverCert(t)
				corpCert = &c
			}
			corp := testutil.StartCorporateProxy(t, "", "", corpCert)
			h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool}, func(c *Config) {
				c.UpstreamProxy = mustParseUpstream(t, corp.URL)
			})
			addr := h.srv.Listener.Addr().String()
			if code, body := getOn(t, dialRaw(t, addr, h.ca, up.hostport), up.hostport, "/first"); code != 200 || body != "conn 1 /first" {
				t.Fatalf("first GET: %d %q", code, body)
			}
			eventually(t, 10*time.Second, "the connection to be idle in the pool", func() bool {
				return h.obs.snapshot().idle == 1
			})
			close(speak)
			<-smuggled
			for i, want := range []string{"conn 2 /second", "conn 2 /third"} {
				path := strings.Fields(want)[2]
				code, body := getOn(t, dialRaw(t, addr, h.ca, up.hostport), up.hostport, path)
				if code != 200 || body != want {
					t.Errorf("call %d from a new client: %d %q, want %q", i+2, code, body, want)
				}
				eventually(t, 10*time.Second, "the connection to be idle in the pool", func() bool {
					return h.obs.snapshot().idle == 1
				})
			}
			if n := len(corp.Connects()); n != 2 {
				t.Errorf("%d CONNECTs through the corporate proxy, want 2 (the second connection shared)", n)
			}
			if o := h.obs.snapshot(); o.poolClosed[h1.ClosedUnsolicited] != 1 {
				t.Errorf("connections closed unused: %v, want 1 for unsolicited bytes", o.poolClosed)
			}
		})
	}
}
