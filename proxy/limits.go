package proxy

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
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
}

// Defaults of Limits.
const (
	DefaultMaxConnections = 1024
	defaultHeaderTimeout  = 30 * time.Second
	defaultIdleTimeout    = 2 * time.Minute
	defaultTunnelIdle     = 10 * time.Minute
	defaultMaxHeaderBytes = 64 << 10
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
	req, err := http.ReadRequest(bufio.NewReader(io.LimitReader(c, 16<<10)))
	if err != nil {
		req = nil
	}
	a := answer{status: http.StatusServiceUnavailable, errType: "proxy_internal_error",
		message: "the proxy serves its maximum number of connections (limits.max_connections): retry later", retryAfter: time.Second}
	_ = a.response(req).Write(c)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = c.Close()
	addr := ""
	if req != nil {
		addr = req.Host
	}
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
