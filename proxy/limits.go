package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// Limits bounds what clients can hold of the proxy. A zero field takes its
// default.
type Limits struct {
	// MaxConnections is the number of client connections served at once
	// (default 1024); a connection beyond it gets 503 and is closed.
	MaxConnections int
	// ReadHeaderTimeout is how long a client may take to send a request's
	// headers, on the proxy listener and inside intercepted connections,
	// and to complete the TLS handshake of an intercepted connection
	// (default 30 s).
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection, on the proxy listener or
	// intercepted, that waits this long for its next request (default 2 min).
	IdleTimeout time.Duration
	// TunnelIdleTimeout closes a tunnel in which no byte moved either way
	// for this long (default 10 min).
	TunnelIdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header block (default 64 KiB);
	// larger ones get 431.
	MaxHeaderBytes int
	// BodyTimeout ends a request whose client sends no byte of its body
	// for this long (default 60 s), with 408, on the proxy listener and
	// inside intercepted connections. It is the longest pause between
	// two reads of a body, not a bound on the whole upload.
	BodyTimeout time.Duration
	// MaxBodyWaits bounds the requests whose body is still arriving from
	// the client, on the proxy listener and inside intercepted
	// connections (default: half of MaxConnections, rounded up), so that
	// clients that send their bodies slowly cannot hold every
	// connection; a request with a body beyond it gets 503 at once.
	MaxBodyWaits int
}

// Defaults of Limits.
const (
	DefaultMaxConnections = 1024
	defaultHeaderTimeout  = 30 * time.Second
	defaultIdleTimeout    = 2 * time.Minute
	defaultTunnelIdle     = 10 * time.Minute
	defaultMaxHeaderBytes = 64 << 10
	defaultBodyTimeout    = time.Minute
)

func (l Limits) withDefaults() Limits {
	if l.MaxConnections <= 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = defaultHeaderTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = defaultIdleTimeout
	}
	if l.TunnelIdleTimeout <= 0 {
		l.TunnelIdleTimeout = defaultTunnelIdle
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = defaultMaxHeaderBytes
	}
	if l.BodyTimeout <= 0 {
		l.BodyTimeout = defaultBodyTimeout
	}
	if l.MaxBodyWaits <= 0 {
		l.MaxBodyWaits = (l.MaxConnections + 1) / 2
	}
	return l
}

// Server returns an http.Server for the proxy listener with p as its
// handler and the header timeout, idle timeout and header size of
// Config.Limits. Serve it on p.Listener(l) so that the connection limit
// applies too.
func (p *Proxy) Server() *http.Server {
	return &http.Server{
		Handler:           p,
		ReadHeaderTimeout: p.limits.ReadHeaderTimeout,
		IdleTimeout:       p.limits.IdleTimeout,
		MaxHeaderBytes:    p.limits.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.log.With("component", "listener").Handler(), slog.LevelDebug),
	}
}

// Listener wraps l so that at most Limits.MaxConnections client
// connections are open at once, hijacked (tunnelled or intercepted)
// connections included. A connection over the limit is answered with 503
// and closed.
func (p *Proxy) Listener(l net.Listener) net.Listener {
	return &limitListener{Listener: l, p: p, max: int64(p.limits.MaxConnections), refusing: make(chan struct{}, maxRefusing)}
}

// maxRefusing bounds the goroutines that answer connections over the limit;
// beyond it, such connections are closed without an answer.
const maxRefusing = 64

type limitListener struct {
	net.Listener
	p        *Proxy
	max      int64
	open     atomic.Int64
	refusing chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			return &limitedConn{Conn: c, release: func() { l.open.Add(-1) }}, nil
		}
		l.open.Add(-1)
		l.p.obs.Connect(actionDeny.String(), reasonTooManyConnections)
		select {
		case l.refusing <- struct{}{}:
			go func() {
				defer func() { <-l.refusing }()
				l.refuse(c)
			}()
		default:
			_ = c.Close()
		}
	}
}

// refuse reads the client's request head (so that closing does not reset
// the connection before the answer is read) and answers 503.
func (l *limitListener) refuse(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	method, addr := "", ""
	if req, err := http.ReadRequest(bufio.NewReader(io.LimitReader(c, 16<<10))); err == nil {
		method, addr = req.Method, req.Host
	}
	a := unavailable("the proxy serves its maximum number of connections (limits.max_connections): retry later", time.Second)
	_ = a.writeOn(c, method)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = c.Close()
	l.p.log.Warn("connection refused: too many connections", "client", c.RemoteAddr().String(), "host", oneLine(addr), "max_connections", l.max)
}

// limitedConn gives its slot back when closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite half-closes the connection, so that a tunnel can pass on the
// end of one direction.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// bodyWaits counts the requests whose body is still arriving from the
// client, up to Limits.MaxBodyWaits. Any goroutine may use it.
type bodyWaits struct {
	max int64
	n   atomic.Int64
}

// enter counts one more request with a body, if the bound allows it. leave
// ends the count, once, however often it is called.
func (w *bodyWaits) enter() (leave func(), ok bool) {
	if w.n.Add(1) > w.max {
		w.n.Add(-1)
		return nil, false
	}
	var left atomic.Bool
	return func() {
		if left.CompareAndSwap(false, true) {
			w.n.Add(-1)
		}
	}, true
}

// refusal is the engine's refusal of a request with a body beyond
// Limits.MaxBodyWaits (see Proxy.enterBody), and of one on the proxy
// listener.
func (w *bodyWaits) refusal() *h1.RequestError {
	return &h1.RequestError{Status: http.StatusServiceUnavailable, Reason: "too_many_body_waits", RetryAfter: time.Second,
		Message: fmt.Sprintf("the proxy is receiving as many request bodies at once as limits.max_body_waits allows (%d): retry later", w.max)}
}

// stallBody is a request body read from the proxy listener, whose
// connection net/http's server serves: its read deadline moves on with
// the body, as a bodyClock says, and is lifted at its end, so that the
// server's watch for a client that goes away, which reads on from there,
// has none.
type stallBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	clock h1.BodyClock
	leave func() // ends the body's count in bodyWaits
	// stalled is set by the reader when the deadline ended a read, which
	// also makes the server cancel the request's context: the transport
	// may report that instead.
	stalled atomic.Bool
}

func (b *stallBody) Read(p []byte) (int, error) {
	b.clock.Before(b.rc.SetReadDeadline)
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		_ = b.rc.SetReadDeadline(time.Time{})
		b.leave()
	}
	err = b.clock.After(err)
	if _, ok := err.(*h1.BodyStallError); ok {
		b.stalled.Store(true)
	}
	return n, err
}

// bodyStalled returns the stall that ended the round trip of r with err,
// if one did.
func bodyStalled(r *http.Request, err error) *h1.BodyStallError {
	var stall *h1.BodyStallError
	if errors.As(err, &stall) {
		return stall
	}
	if b, ok := r.Body.(*stallBody); ok && b.stalled.Load() {
		return &h1.BodyStallError{Timeout: b.clock.Timeout}
	}
	return nil
}
