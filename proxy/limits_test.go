package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
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

// served is a proxy on a real listener with its own Server and Listener,
// so that Limits apply as in the daemon.
type served struct {
	*harness
	addr string
}

func startServed(t testing.TB, cfg Config, edit ...func(*Config)) *served {
	t.Helper()
	h := startProxy(t, cfg, edit...) // its httptest server is unused here
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := h.p.Server()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(h.p.Listener(ln))
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return &served{harness: h, addr: ln.Addr().String()}
}

// intercepted opens a CONNECT to target through addr and a TLS connection
// inside it that trusts the proxy's CA.
func intercepted(t *testing.T, addr string, ca *CA, target string) *tls.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM())
	host, _, _ := net.SplitHostPort(target)
	tc := tls.Client(conn, &tls.Config{RootCAs: roots, ServerName: host})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS inside CONNECT: %v", err)
	}
	return tc
}

func TestRequestSmugglingRefused(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots}, func(c *Config) {
		c.Limits.MaxHeaderBytes = 4096
	})
	addr := h.srv.Listener.Addr().String()
	head := "POST /2/0/files/1 HTTP/1.1\r\nHost: " + up.hostport + "\r\n"
	tests := []struct {
		name       string
		raw        string
		wantStatus int
		wantBody   string
	}{
		{"Content-Length and Transfer-Encoding", head + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "both Content-Length and Transfer-Encoding"},
		{"Transfer-Encoding and Content-Length", head + "Transfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /steal HTTP/1.1\r\n\r\n", 400, "both Content-Length and Transfer-Encoding"},
		{"differing Content-Lengths", head + "Content-Length: 4\r\nContent-Length: 40\r\n\r\nbody", 400, "several Content-Length headers that differ"},
		{"Content-Length list", head + "Content-Length: 4, 40\r\n\r\nbody", 400, "Content-Length is not a number"},
		{"other transfer coding", head + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, "only Transfer-Encoding: chunked"},
		{"folded Transfer-Encoding", head + "X-A: b\r\n Transfer-Encoding: chunked\r\n\r\n", 400, "folded header lines"},
		{"space before colon", head + "Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\nbody", 400, "malformed header line"},
		{"protocol upgrade", "GET / HTTP/1.1\r\nHost: " + up.hostport + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400, "upgrades are not supported"},
		{"headers over the limit", "GET / HTTP/1.1\r\nHost: " + up.hostport + "\r\nX-Big: " + strings.Repeat("a", 5000) + "\r\n\r\n", 431, "larger than 4096 bytes"},
		// Sent in one write: the whole batch is refused.
		{"pipelined behind a good request", head + "Content-Length: 4\r\n\r\nbody" + head + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nx", 400, "differ"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.requests())
			conn := intercepted(t, addr, h.ca, up.hostport)
			if _, err := io.WriteString(conn, tc.raw); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
			}
			mustContain(t, "body", body, tc.wantBody)
			mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=http_request_error")
			// The connection ends: nothing more is read from it.
			if _, err := br.ReadByte(); err == nil {
				t.Error("the connection stayed open after a framing error")
			}
			if n := len(up.requests()) - before; n != 0 {
				t.Errorf("the upstream saw %d requests", n)
			}
		})
	}
	t.Run("repeated equal Content-Length and chunked bodies pass", func(t *testing.T) {
		conn := intercepted(t, addr, h.ca, up.hostport)
		raw := head + "Content-Length: 4\r\nContent-Length: 4\r\n\r\nbody" +
			head + "Transfer-Encoding: chunked\r\n\r\n4;ext=1\r\nbody\r\n3\r\nmore\r\n0\r\nTrailer-A: x\r\n\r\n" +
			"GET /last HTTP/1.1\r\nHost: " + up.hostport + "\r\n\r\n"
		raw = strings.Replace(raw, "3\r\nmore", "4\r\nmore", 1)
		if _, err := io.WriteString(conn, raw); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		for i, wantLen := range []int64{4, 8, 0} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			s := decodeSeen(t, resp)
			if resp.StatusCode != 200 || s.BodyLen != wantLen {
				t.Errorf("response %d: %d, upstream body %d bytes, want 200 and %d", i, resp.StatusCode, s.BodyLen, wantLen)
			}
		}
	})
}

func TestSlowClientsAreCutOff(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	const timeout = 400 * time.Millisecond
	s := startServed(t, Config{Inject: []string{up.hostport}, Tunnel: []string{}, UpstreamRoots: up.roots}, func(c *Config) {
		c.Limits.ReadHeaderTimeout = timeout
	})
	// trickle writes one byte per tick and reports how long the
	// connection lasted and whether the whole text was sent.
	trickle := func(t *testing.T, w io.Writer, r io.Reader, text string) (time.Duration, bool) {
		t.Helper()
		start := time.Now()
		closed := make(chan struct{})
		go func() {
			_, _ = io.Copy(io.Discard, r)
			close(closed)
		}()
		tick := time.NewTicker(50 * time.Millisecond) // 20 bytes a second
		defer tick.Stop()
		for i := 0; i < len(text); i++ {
			select {
			case <-closed:
				return time.Since(start), false
			case <-tick.C:
			}
			if _, err := w.Write([]byte{text[i]}); err != nil {
				break
			}
		}
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("the connection was not closed")
		}
		return time.Since(start), false
	}
	slowHead := "GET /2/0/users/me HTTP/1.1\r\nHost: " + up.hostport + "\r\nX-Padding: " + strings.Repeat("a", 200) + "\r\n\r\n"

	t.Run("proxy listener", func(t *testing.T) {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		d, _ := trickle(t, conn, conn, "CONNECT "+up.hostport+" HTTP/1.1\r\nX-Padding: "+strings.Repeat("a", 200)+"\r\n\r\n")
		if d > 4*timeout+time.Second {
			t.Errorf("cut off after %s, want about %s", d, timeout)
		}
	})
	t.Run("inside an intercepted connection", func(t *testing.T) {
		before := len(up.requests())
		conn := intercepted(t, s.addr, s.ca, up.hostport)
		d, _ := trickle(t, conn, conn, slowHead)
		if d > 4*timeout+time.Second {
			t.Errorf("cut off after %s, want about %s", d, timeout)
		}
		if n := len(up.requests()) - before; n != 0 {
			t.Errorf("the upstream saw %d requests", n)
		}
	})
	t.Run("TLS handshake inside CONNECT", func(t *testing.T) {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", up.hostport, up.hostport)
		br := bufio.NewReader(conn)
		if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		// Never start the handshake: the proxy gives up.
		start := time.Now()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, br)
		if errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 4*timeout+time.Second {
			t.Errorf("an idle TLS handshake was kept for %s", time.Since(start))
		}
	})
}

func TestTunnelIdleTimeout(t *testing.T) {
	port, _ := countingListenerKeepOpen(t)
	h := startProxy(t, Config{Tunnel: []string{"localhost:" + port}}, func(c *Config) {
		c.Limits.TunnelIdleTimeout = 300 * time.Millisecond
	})
	conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT localhost:%s HTTP/1.1\r\nHost: localhost:%s\r\n\r\n", port, port)
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, br)
	if err != nil || time.Since(start) > 5*time.Second {
		t.Errorf("idle tunnel: closed after %s with %v, want a close after about 300ms", time.Since(start), err)
	}
}

// countingListenerKeepOpen accepts connections and holds them open without
// a byte, until the test ends.
func countingListenerKeepOpen(t *testing.T) (string, func() int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port, func() int { mu.Lock(); defer mu.Unlock(); return len(conns) }
}

func TestMaxConnections(t *testing.T) {
	s := startServed(t, Config{Tunnel: []string{"example.com"}}, func(c *Config) { c.Limits.MaxConnections = 2 })
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		defer c.Close()
	}
	// Both held connections are being served (each answered once).
	for _, c := range held {
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 400 {
			t.Fatalf("held connection: %v %v", resp, err)
		}
	}
	resp, body := connectWith(t, s.addr, "example.com:443", "")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third connection: %d %q, want 503", resp.StatusCode, body)
	}
	mustContain(t, "body", body, "limits.max_connections")
	mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=proxy_internal_error")

	held[0].Close()
	eventually(t, 5*time.Second, "a free slot", func() bool {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			return false
		}
		defer c.Close()
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		return err == nil && resp.StatusCode == 400
	})
}

// After 10,000 client connections (denied CONNECTs, tunnels and
// intercepted requests) and their close, the proxy holds no more
// goroutines than before them.
func TestTenThousandConnectionsLeaveNoGoroutines(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 connections")
	}
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	tunnelPort, _ := countingListener(t)
	s := startServed(t, Config{Inject: []string{up.hostport}, Tunnel: []string{"localhost:" + tunnelPort}, UpstreamRoots: up.roots})

	one := func(i int) error {
		switch {
		case i%250 == 0: // intercepted, with an upstream request
			conn := intercepted(t, s.addr, s.ca, up.hostport)
			fmt.Fprintf(conn, "GET /x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", up.hostport)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			conn.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("intercepted request: %d", resp.StatusCode)
			}
		case i%4 == 0: // tunnel (the far end closes at once)
			resp, _ := connectWith(t, s.addr, "localhost:"+tunnelPort, "")
			if resp.StatusCode != 200 {
				return fmt.Errorf("tunnel: %d", resp.StatusCode)
			}
		default: // denied
			resp, _ := connectWith(t, s.addr, "example.com:443", "")
			if resp.StatusCode != 403 {
				return fmt.Errorf("denied CONNECT: %d", resp.StatusCode)
			}
		}
		return nil
	}
	// Warm up: the internal server, the upstream connection pool.
	for i := range 4 {
		if err := one(i * 250); err != nil {
			t.Fatal(err)
		}
	}
	s.p.transport.CloseIdleConnections()
	eventually(t, 10*time.Second, "a settled baseline", func() bool { return s.p.handlers.idle() && s.p.tunnels.idle() })
	runtime.GC()
	baseline := runtime.NumGoroutine()

	const total, workers = 10000, 16
	start := time.Now()
	jobs := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				if err := one(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := range total {
		select {
		case jobs <- i:
		case err := <-errs:
			close(jobs)
			wg.Wait()
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	close(jobs)
	wg.Wait()
	t.Logf("%d connections in %s", total, time.Since(start).Round(time.Millisecond))

	s.p.transport.CloseIdleConnections()
	eventually(t, 15*time.Second, fmt.Sprintf("goroutines back to the baseline of %d", baseline), func() bool {
		return runtime.NumGoroutine() <= baseline
	})
}

func (t *tracker) idle() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n == 0
}
