package h1

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// poolCounts is a PoolObserver that counts what it hears.
type poolCounts struct {
	mu     sync.Mutex
	lookup map[string]int
	idle   int
	closed map[string]int
}

func newPoolCounts() *poolCounts {
	return &poolCounts{lookup: map[string]int{}, closed: map[string]int{}}
}

func (o *poolCounts) UpstreamPool(result string) { o.mu.Lock(); o.lookup[result]++; o.mu.Unlock() }
func (o *poolCounts) UpstreamIdle(delta int)     { o.mu.Lock(); o.idle += delta; o.mu.Unlock() }
func (o *poolCounts) UpstreamClosed(reason string) {
	o.mu.Lock()
	o.closed[reason]++
	o.mu.Unlock()
}

func (o *poolCounts) get() (lookup map[string]int, idle int, closed map[string]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	lookup, closed = map[string]int{}, map[string]int{}
	for k, v := range o.lookup {
		lookup[k] = v
	}
	for k, v := range o.closed {
		closed[k] = v
	}
	return lookup, o.idle, closed
}

// testPool returns a new pool with limits, closed when the test ends,
// and what its observer hears.
func testPool(t testing.TB, limits PoolLimits) (*Pool, *poolCounts) {
	t.Helper()
	obs := newPoolCounts()
	p := NewPool(limits, obs, nil)
	t.Cleanup(p.Close)
	return p, obs
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

// pooled returns a connection of route "r" as an exchange that ended
// cleanly leaves it, and the upstream's end of it.
func pooled(t testing.TB, p *Pool) (*Conn, net.Conn) {
	t.Helper()
	nc, server := tcpPair(t)
	c := NewConn(nc)
	c.pool, c.route = p, Route{Key: "r", Host: "localhost", Addr: nc.RemoteAddr().String()}
	return c, server
}

// waitPending waits until c's socket holds what the upstream sent, or
// its close.
func waitPending(t testing.TB, c *Conn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.socketPending() == socketIdle {
		if time.Now().After(deadline) {
			t.Fatal("nothing arrived on the idle connection")
		}
		time.Sleep(time.Millisecond)
	}
}

// wantClosed checks that the upstream sees c closed.
func wantClosed(t *testing.T, server net.Conn) {
	t.Helper()
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the upstream's read: %v, want the connection closed", err)
	}
}

// TestPoolIdleCheck: an idle connection is handed out only when nothing
// happened on it while it was idle; one on which the upstream spoke, or
// that it closed, is closed and counted.
func TestPoolIdleCheck(t *testing.T) {
	tests := []struct {
		name       string
		meanwhile  func(t *testing.T, c *Conn, server net.Conn)
		wantReused bool
		wantReason string
	}{
		{"quiet", func(*testing.T, *Conn, net.Conn) {}, true, ""},
		{"its deadline passed", func(t *testing.T, c *Conn, _ net.Conn) {
			_ = c.Net.SetReadDeadline(ALongTimeAgo)
		}, true, ""},
		{"unsolicited bytes", func(t *testing.T, c *Conn, server net.Conn) {
			_, _ = io.WriteString(server, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED")
			waitPending(t, c)
		}, false, ClosedUnsolicited},
		{"unsolicited bytes, deadline passed", func(t *testing.T, c *Conn, server net.Conn) {
			_, _ = io.WriteString(server, "X")
			waitPending(t, c)
			_ = c.Net.SetReadDeadline(ALongTimeAgo)
		}, false, ClosedUnsolicited},
		{"closed by the upstream", func(t *testing.T, c *Conn, server net.Conn) {
			_ = server.Close()
			waitPending(t, c)
		}, false, ClosedUpstreamClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, obs := testPool(t, PoolLimits{})
			c, server := pooled(t, p)
			p.put(c)
			tt.meanwhile(t, c, server)
			got := p.get("r")
			if (got == c) != tt.wantReused {
				t.Fatalf("Get: reused %v, want %v", got == c, tt.wantReused)
			}
			lookup, idle, closed := obs.get()
			if idle != 0 {
				t.Errorf("idle count %d, want 0", idle)
			}
			if tt.wantReused {
				if lookup["hit"] != 1 || len(closed) != 0 {
					t.Errorf("lookups %v, closed %v; want one hit", lookup, closed)
				}
				return
			}
			if lookup["miss"] != 1 || closed[tt.wantReason] != 1 {
				t.Errorf("lookups %v, closed %v; want one miss and one %s", lookup, closed, tt.wantReason)
			}
			if tt.wantReason == ClosedUnsolicited {
				wantClosed(t, server)
			}
		})
	}
}

// readAhead is a connection that holds bytes read ahead of the one under
// it, as a corporate proxy's tunnel may.
type readAhead struct {
	net.Conn
	ahead int
}

func (r *readAhead) NetConn() net.Conn { return r.Conn }
func (r *readAhead) Buffered() int     { return r.ahead }

// TestPoolSeesThroughReadAhead: bytes a tunnel read ahead of the socket
// count as bytes that arrived while the connection was idle.
func TestPoolSeesThroughReadAhead(t *testing.T) {
	p, obs := testPool(t, PoolLimits{})
	nc, _ := tcpPair(t)
	ra := &readAhead{Conn: nc}
	c := NewConn(ra)
	c.pool, c.route = p, Route{Key: "r"}
	p.put(c)
	if got := p.get("r"); got != c {
		t.Fatal("a quiet connection behind a tunnel was not reused")
	}
	ra.ahead = 1
	p.put(c)
	if got := p.get("r"); got != nil {
		t.Fatal("a connection whose tunnel holds bytes was reused")
	}
	if _, _, closed := obs.get(); closed[ClosedUnsolicited] != 1 {
		t.Errorf("closed %v, want one unsolicited", closed)
	}
}

// TestPoolBounds: the pool keeps at most MaxIdlePerHost connections of a
// route, the most recently used; the rest are closed as pool_full.
func TestPoolBounds(t *testing.T) {
	p, obs := testPool(t, PoolLimits{MaxIdlePerHost: 2, IdleTimeout: time.Hour})
	var conns []*Conn
	for range 3 {
		c, _ := pooled(t, p)
		conns = append(conns, c)
		p.put(c)
	}
	_, idle, closed := obs.get()
	if idle != 2 || closed[ClosedPoolFull] != 1 {
		t.Errorf("idle %d, closed %v; want 2 idle and 1 pool_full", idle, closed)
	}
	if got := p.get("r"); got != conns[2] {
		t.Error("Get did not hand out the most recently used connection")
	}
}

// TestPoolIdleTimeout: a connection idle for IdleTimeout is closed.
func TestPoolIdleTimeout(t *testing.T) {
	p, obs := testPool(t, PoolLimits{IdleTimeout: 20 * time.Millisecond})
	c, server := pooled(t, p)
	p.put(c)
	wantClosed(t, server)
	if _, idle, closed := obs.get(); idle != 0 || closed[ClosedIdleTimeout] != 1 {
		t.Errorf("idle %d, closed %v; want 0 idle and 1 idle_timeout", idle, closed)
	}
}

// TestRetryRule: a failed request goes once more only on a reused
// connection, before any byte of an answer, after a stale connection's
// error, and when it may be sent twice.
func TestRetryRule(t *testing.T) {
	replays := []struct {
		method  string
		header  http.Header
		hasBody bool
		want    bool
	}{
		{http.MethodGet, nil, false, true},
		{http.MethodHead, nil, false, true},
		{http.MethodOptions, nil, false, true},
		{http.MethodGet, nil, true, false},
		{http.MethodPost, nil, false, false},
		{http.MethodDelete, http.Header{"Idempotency-Key": {"k"}}, false, true},
		{http.MethodPost, http.Header{"X-Idempotency-Key": {"k"}}, false, true},
		{http.MethodPost, http.Header{"Idempotency-Key": {"k"}}, true, false},
	}
	for _, tt := range replays {
		if got := replayable(tt.method, tt.header, tt.hasBody); got != tt.want {
			t.Errorf("replayable(%s, %v, body %v) = %v, want %v", tt.method, tt.header, tt.hasBody, got, tt.want)
		}
	}
	retries := []struct {
		name     string
		reused   bool
		answered bool
		err      error
		want     bool
	}{
		{"stale reused connection", true, false, io.EOF, true},
		{"reset", true, false, syscall.ECONNRESET, true},
		{"broken pipe", true, false, syscall.EPIPE, true},
		{"new connection", false, false, io.EOF, false},
		{"after an answer's first byte", true, true, io.ErrUnexpectedEOF, false},
		{"timeout", true, false, os.ErrDeadlineExceeded, false},
	}
	for _, tt := range retries {
		c := &Conn{Answered: tt.answered}
		if got := shouldRetry(c, tt.reused, tt.err); got != tt.want {
			t.Errorf("%s: shouldRetry = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestHolder: the end of the client connection's context ends the held
// connection's reads, and the holder's Close closes a connection that an
// exchange left; a cleanly released one goes back to the pool.
func TestHolder(t *testing.T) {
	p := NewPool(PoolLimits{}, newPoolCounts(), nil)
	t.Cleanup(p.Close)

	ctx, cancel := context.WithCancel(context.Background())
	hctx, h := WithHolder(ctx)
	c, _ := pooled(t, p)
	c.hold(hctx)
	cancel()
	// The read returns once the holder has moved the deadline into the
	// past, on a goroutine of its own.
	if _, err := c.Net.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after the context ended: %v, want the deadline exceeded", err)
	}
	c.Release(true)
	if got := p.get("r"); got != nil {
		t.Error("a connection whose context ended went back to the pool")
	}
	h.Close()

	hctx, h = WithHolder(context.Background())
	c, _ = pooled(t, p)
	c.hold(hctx)
	c.Release(true)
	if got := p.get("r"); got != c {
		t.Error("a cleanly released connection did not go back to the pool")
	}
	c2, server2 := pooled(t, p)
	c2.hold(hctx)
	h.Close()
	wantClosed(t, server2)
}

// TestPoolHoldsEachConnectionOnce: however full the pool is and whichever
// route's connection makes room, every idle connection is in the pool
// once, and the count and bounds hold. A connection in it twice would be
// handed to two exchanges at once.
func TestPoolHoldsEachConnectionOnce(t *testing.T) {
	tests := []struct {
		name             string
		perHost, maxIdle int
		routes           string // one put per letter, in order
	}{
		// The pool is full and the oldest idle connection is of the
		// route given back: making room shifts that route's list.
		{"oldest of all is of the same route", 4, 4, "AABBA"},
		{"oldest of all is of another route", 4, 4, "BBAAA"},
		{"the route is at its own bound", 2, 8, "AAAAB"},
		{"both bounds, many routes", 3, 5, "ABCABCABCAACCBBA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPool(PoolLimits{MaxIdlePerHost: tt.perHost, MaxIdle: tt.maxIdle}, newPoolCounts(), nil)
			t.Cleanup(p.Close)
			for i, r := range tt.routes {
				a, b := net.Pipe()
				t.Cleanup(func() { _ = b.Close() })
				c := NewConn(a)
				c.pool, c.route = p, Route{Key: string(r)}
				p.put(c)
				checkPool(t, p, tt.perHost, tt.maxIdle, i+1)
			}
		})
	}
}

// checkPool fails t unless every idle connection of p is there once,
// p's count is right and the bounds hold, after put number step.
func checkPool(t *testing.T, p *Pool, perHost, maxIdle, step int) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[*Conn]bool{}
	total := 0
	for key, list := range p.idle {
		if len(list) > perHost {
			t.Errorf("after put %d: route %s holds %d idle connections, bound %d", step, key, len(list), perHost)
		}
		for _, c := range list {
			if seen[c] {
				t.Errorf("after put %d: a connection of route %s is idle twice", step, key)
			}
			seen[c] = true
		}
		total += len(list)
	}
	if total != p.n || total > maxIdle {
		t.Errorf("after put %d: %d idle connections, count %d, bound %d", step, total, p.n, maxIdle)
	}
}
