package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// Integration scripts call Anaplan one process at a time: each call is a
// new client connection, and Anaplan is a WAN round trip away. An upstream
// connection is therefore not kept by the client connection that opened
// it but returned, after each cleanly ended exchange, to a pool that every
// client connection draws from: a call then costs the proxy no TCP and TLS
// handshake with the upstream. What the pool guarantees:
//
//   - one exchange at a time: a connection is either idle in the pool,
//     owned by it, or held by the one exchange that took it, never both;
//   - only a connection whose last answer was read to its end, with
//     nothing after it, goes back (any doubt: it is closed);
//   - a connection on which anything arrived while it was idle (bytes the
//     upstream sent unasked, its close) is closed, never used: no byte
//     that no request asked for can reach a client as an answer;
//   - the pool is bounded: idle connections per route and in all, each
//     closed after the idle timeout (below that of Anaplan's front ends).
//
// The pool knows nothing of HTTP requests: it holds, checks and hands out
// connections by route, so that it can move with the client side of the
// engine.

// PoolLimits bounds the idle upstream connections that intercepted
// requests share. A zero field takes its default.
type PoolLimits struct {
	// MaxIdlePerHost is how many idle connections are kept per upstream
	// host and route (direct or through the corporate proxy); default 64.
	// Between two requests of a busy client, its connection is idle in
	// the pool: the bound should exceed the requests to one host under
	// way at once, or connections are closed and opened again at that
	// rate.
	MaxIdlePerHost int
	// MaxIdle is how many idle connections are kept in all; default 256.
	MaxIdle int
	// IdleTimeout closes a connection that has been idle this long; it
	// must be below the upstream's own idle timeout, so that the proxy,
	// not the upstream, ends an idle connection. Default 50 s.
	IdleTimeout time.Duration
	// KeepWarm, when set, replaces the last idle connection to a host
	// that the idle timeout closes with a new one, for as long as the
	// host was last called within KeepWarm and the session is valid: the
	// first call after a quiet night then pays no handshake with the
	// upstream. It costs a TCP and TLS handshake (resumed) per host every
	// IdleTimeout. Zero (the default) keeps nothing warm.
	KeepWarm time.Duration
}

// Defaults of PoolLimits.
const (
	defaultMaxIdlePerHost = 64
	defaultMaxIdle        = 256
	defaultPoolIdle       = 50 * time.Second
)

func (l PoolLimits) withDefaults() PoolLimits {
	if l.MaxIdlePerHost <= 0 {
		l.MaxIdlePerHost = defaultMaxIdlePerHost
	}
	if l.MaxIdle <= 0 {
		l.MaxIdle = defaultMaxIdle
	}
	if l.MaxIdle < l.MaxIdlePerHost {
		l.MaxIdlePerHost = l.MaxIdle
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = defaultPoolIdle
	}
	return l
}

// Why an idle connection was closed, for Observer.UpstreamClosed.
const (
	closedUpstreamClosed = "upstream_closed" // the upstream closed it, or it broke
	closedUnsolicited    = "unsolicited"     // bytes arrived that no request asked for
	closedIdleTimeout    = "idle_timeout"
	closedPoolFull       = "pool_full"
)

// connPool holds idle upstream connections by route. Its methods may be
// called from any goroutine.
type connPool struct {
	limits PoolLimits
	obs    Observer

	mu sync.Mutex
	// The fields below are guarded by mu. A connection in idle is owned
	// by the pool: no other goroutine reads, writes or closes it until
	// get hands it out.
	idle   map[string][]*upstreamConn // by route, least recently used first
	n      int                        // connections in idle, over all routes
	timer  *time.Timer                // closes expired connections; nil when idle is empty
	closed bool
	// For KeepWarm: when each route was last asked for a connection,
	// and the routes whose replacement is being opened.
	lastUsed map[string]time.Time
	warming  map[string]bool

	// warm opens a replacement for an expired connection (see
	// KeepWarm); nil keeps nothing warm. It returns nil when the session
	// is not valid or the dial failed. warmCtx ends with close, which
	// waits for warmers.
	warm       func(ctx context.Context, old *upstreamConn) *upstreamConn
	warmCtx    context.Context
	warmCancel context.CancelFunc
	warmers    sync.WaitGroup
}

func newConnPool(limits PoolLimits, obs Observer) *connPool {
	cp := &connPool{limits: limits.withDefaults(), obs: obs, idle: make(map[string][]*upstreamConn),
		lastUsed: make(map[string]time.Time), warming: make(map[string]bool)}
	cp.warmCtx, cp.warmCancel = context.WithCancel(context.Background())
	return cp
}

// get takes the most recently used idle connection of route that is fit
// for a request, closing those that are not; nil if there is none. The
// caller owns the connection.
func (cp *connPool) get(route string) *upstreamConn {
	for {
		cp.mu.Lock()
		if cp.limits.KeepWarm > 0 {
			cp.lastUsed[route] = time.Now()
		}
		list := cp.idle[route]
		if len(list) == 0 {
			cp.mu.Unlock()
			cp.obs.UpstreamPool("miss")
			return nil
		}
		u := list[len(list)-1]
		list[len(list)-1] = nil
		cp.setList(route, list[:len(list)-1])
		cp.n--
		cp.mu.Unlock()
		cp.obs.UpstreamIdle(-1)
		if reason := u.idleFault(time.Now(), cp.limits.IdleTimeout); reason != "" {
			cp.discard(u, reason)
			continue
		}
		cp.obs.UpstreamPool("hit")
		return u
	}
}

// put takes back u, whose last exchange ended cleanly, as idle. When the
// pool is full, the least recently used connection of the route, or of
// all routes, makes room.
func (cp *connPool) put(u *upstreamConn) {
	u.idleAt = time.Now()
	var evicted *upstreamConn
	cp.mu.Lock()
	if cp.closed {
		cp.mu.Unlock()
		cp.discard(u, "")
		return
	}
	list := cp.idle[u.route]
	switch {
	case len(list) >= cp.limits.MaxIdlePerHost:
		evicted = list[0]
		list = append(list[:0], list[1:]...)
		cp.n--
	case cp.n >= cp.limits.MaxIdle:
		evicted = cp.removeOldest()
	}
	cp.idle[u.route] = append(list, u)
	cp.n++
	if cp.timer == nil {
		cp.timer = time.AfterFunc(cp.limits.IdleTimeout, cp.expire)
	}
	cp.mu.Unlock()
	cp.obs.UpstreamIdle(1)
	if evicted != nil {
		cp.obs.UpstreamIdle(-1)
		cp.discard(evicted, closedPoolFull)
	}
}

// setList stores the idle list of route. An empty one is kept, for its
// room: the routes are the inject hosts called, few. Called with mu held.
func (cp *connPool) setList(route string, list []*upstreamConn) {
	cp.idle[route] = list
}

// removeOldest removes the least recently used idle connection of all
// routes and returns it. Called with mu held and n > 0.
func (cp *connPool) removeOldest() *upstreamConn {
	var oldest string
	for route, list := range cp.idle {
		if len(list) > 0 && (oldest == "" || list[0].idleAt.Before(cp.idle[oldest][0].idleAt)) {
			oldest = route
		}
	}
	list := cp.idle[oldest]
	u := list[0]
	cp.setList(oldest, append(list[:0], list[1:]...))
	cp.n--
	return u
}

// expire closes the connections idle for longer than the idle timeout
// and sets the timer for the next one to expire.
func (cp *connPool) expire() {
	now := time.Now()
	var expired []*upstreamConn
	cp.mu.Lock()
	if cp.closed {
		cp.mu.Unlock()
		return
	}
	next := time.Duration(-1)
	for route, list := range cp.idle {
		keep := list[:0]
		for _, u := range list {
			if left := cp.limits.IdleTimeout - now.Sub(u.idleAt); left > 0 {
				keep = append(keep, u)
				if next < 0 || left < next {
					next = left
				}
			} else {
				expired = append(expired, u)
			}
		}
		clear(list[len(keep):])
		cp.setList(route, keep)
	}
	cp.n -= len(expired)
	var rewarm []*upstreamConn
	for _, u := range expired {
		if cp.warm != nil && cp.limits.KeepWarm > 0 && len(cp.idle[u.route]) == 0 && !cp.warming[u.route] &&
			now.Sub(cp.lastUsed[u.route]) < cp.limits.KeepWarm {
			cp.warming[u.route] = true
			rewarm = append(rewarm, u)
		}
	}
	cp.warmers.Add(len(rewarm))
	if next < 0 {
		cp.timer = nil
	} else {
		cp.timer.Reset(next)
	}
	cp.mu.Unlock()
	for _, u := range expired {
		cp.obs.UpstreamIdle(-1)
		cp.discard(u, closedIdleTimeout)
	}
	for _, old := range rewarm {
		go cp.rewarm(old)
	}
}

// rewarm opens a connection to the host of old, an expired one, and
// keeps it idle. Its goroutine is counted in warmers.
func (cp *connPool) rewarm(old *upstreamConn) {
	defer cp.warmers.Done()
	u := cp.warm(cp.warmCtx, old)
	cp.mu.Lock()
	delete(cp.warming, old.route)
	cp.mu.Unlock()
	if u != nil {
		cp.put(u)
	}
}

// close closes every idle connection, and those put back from now on.
func (cp *connPool) close() {
	cp.mu.Lock()
	cp.closed = true
	if cp.timer != nil {
		cp.timer.Stop()
		cp.timer = nil
	}
	var all []*upstreamConn
	for _, list := range cp.idle {
		all = append(all, list...)
	}
	clear(cp.idle)
	cp.n = 0
	cp.mu.Unlock()
	for _, u := range all {
		cp.obs.UpstreamIdle(-1)
		cp.discard(u, "")
	}
	cp.warmCancel()
	cp.warmers.Wait()
}

// discard closes an idle connection and counts why, if reason is set.
func (cp *connPool) discard(u *upstreamConn, reason string) {
	if reason != "" {
		cp.obs.UpstreamClosed(reason)
	}
	u.closeIdle()
}

// idleFault says why u, idle since u.idleAt, may not carry a request at
// now, or "" if it may: it has been idle for the timeout, or anything
// arrived on it while it was idle. It looks at the socket without
// waiting, then lets TLS take what it had already read: a record that
// holds data, a close_notify, an error. Only when the socket holds bytes
// does TLS read them, for up to idleReadWait: a close_notify is the
// upstream's close, a late TLS session ticket is harmless, anything else
// is unsolicited. It leaves u without a read deadline in force.
func (u *upstreamConn) idleFault(now time.Time, timeout time.Duration) string {
	if now.Sub(u.idleAt) >= timeout {
		return closedIdleTimeout
	}
	if u.R.Buffered() > 0 {
		return closedUnsolicited
	}
	// With the deadline in the past, the read takes only what TLS
	// already holds, without a system call.
	deadline, fromSocket := h1.ALongTimeAgo, false
	switch u.socketPending() {
	case socketIdle:
	case socketClosed:
		return closedUpstreamClosed
	case socketData:
		deadline, fromSocket = now.Add(idleReadWait), true
	default:
		// Nothing to look at: in doubt, the connection is not used.
		return closedUnsolicited
	}
	u.SetReadDeadline(deadline)
	_, err := u.R.Peek(1)
	switch {
	case err == nil:
		return closedUnsolicited
	case !isTimeout(err):
		return closedUpstreamClosed
	case fromSocket && u.socketPending() != socketIdle:
		// Part of a record, or more than TLS took.
		return closedUnsolicited
	}
	return ""
}

// idleReadWait bounds the read of bytes found on an idle connection's
// socket: they are there, so TLS takes them at once, unless they end
// within a record.
const idleReadWait = 5 * time.Millisecond

// closeIdle closes an idle connection: with a TLS close_notify, which an
// idle connection has room to send.
func (u *upstreamConn) closeIdle() {
	_ = u.Net.SetWriteDeadline(time.Now().Add(time.Second))
	_ = u.Net.Close()
}

// What a look at a connection's socket finds (see socketProbe).
type socketState int

const (
	socketIdle    socketState = iota // nothing to read: open and quiet
	socketData                       // bytes wait to be read
	socketClosed                     // the peer closed it, or it failed
	socketUnknown                    // the connection has no socket to look at
)

// socketPending looks at the socket under u's connection (through TLS and
// a corporate proxy's tunnel) without reading from it or waiting.
func (u *upstreamConn) socketPending() socketState {
	if u.probe == nil {
		u.probe = newSocketProbe(u.Net)
	}
	return u.probe.look()
}

// socketProbe looks at the socket under a connection. It is made once per
// connection, so that a look allocates nothing.
type socketProbe struct {
	prefix *prefixConn     // the corporate proxy's tunnel, if any
	conn   net.Conn        // the connection that holds the socket
	raw    syscall.RawConn // nil: no socket to look at
	state  socketState     // what the last look found
	peek   func(fd uintptr) bool
}

func newSocketProbe(c net.Conn) *socketProbe {
	sp := &socketProbe{}
	for {
		switch cc := c.(type) {
		case *tls.Conn:
			c = cc.NetConn()
			continue
		case *prefixConn:
			sp.prefix = cc
			c = cc.Conn
			continue
		}
		break
	}
	sp.conn = c
	if sc, ok := c.(syscall.Conn); ok {
		sp.raw, _ = sc.SyscallConn()
	}
	var b [1]byte
	sp.peek = func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			sp.state = socketData
		case err == nil:
			sp.state = socketClosed // n == 0: the peer's FIN
		case errors.Is(err, syscall.EAGAIN):
			sp.state = socketIdle // nothing to read: open and idle
		default:
			sp.state = socketClosed
		}
		return true
	}
	return sp
}

func (sp *socketProbe) look() socketState {
	if sp.prefix != nil && len(sp.prefix.prefix) > 0 {
		return socketData
	}
	if sp.raw == nil {
		return socketUnknown
	}
	err := sp.raw.Read(sp.peek)
	if isTimeout(err) {
		// A read deadline that passed while the connection was idle
		// (the first wait's, see awaitFirstByte) stops RawConn.Read
		// before it looks.
		_ = sp.conn.SetReadDeadline(time.Time{})
		err = sp.raw.Read(sp.peek)
	}
	if err != nil {
		return socketClosed
	}
	return sp.state
}

// route is the pool key of t's upstream connections: the host and port,
// and the corporate proxy that connections to them go through, if any.
func (p *Proxy) route(t *target) string {
	if t.route == "" {
		t.route = t.hostport
		if via := p.dialer.via; via != nil && !via.Bypass(t.host, t.port) {
			t.route += " via " + via.String()
		}
	}
	return t.route
}

// acquire gives the exchange of t an upstream connection: an idle one
// from the pool if there is one fit for a request, else a new one. reused
// says which, for the retry rule (see shouldRetry). Until the connection is
// released, the end of ctx ends its reads and writes.
func (p *Proxy) acquire(ctx context.Context, t *target) (u *upstreamConn, reused bool, err error) {
	if t.upstream != nil {
		// Left by an exchange that did not end cleanly.
		t.closeUpstream()
	}
	route := p.route(t)
	if u = p.pool.get(route); u == nil {
		if u, err = p.dialUpstream(ctx, t.host, t.hostport); err != nil {
			return nil, false, err
		}
		u.pool, u.route = p.pool, route
	} else {
		reused = true
	}
	u.Answered = false
	conn := u.Net
	u.stop = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(h1.ALongTimeAgo) })
	t.upstream = u
	return u, reused, nil
}

// recycle ends the exchange that holds t's upstream connection, whose
// answer was read to its end with nothing after it: the connection goes
// back to the pool. One whose exchange's context has ended has had its
// deadline moved into the past, and is closed instead.
func (t *target) recycle() {
	u := t.upstream
	t.upstream = nil
	u.busy = false
	if !u.stop() {
		u.abort()
		return
	}
	u.pool.put(u)
}

// warm opens a connection to the host of old, whose idle timeout passed,
// if the session is valid, for KeepWarm. It returns nil if not.
func (p *Proxy) warm(ctx context.Context, old *upstreamConn) *upstreamConn {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if _, err := p.tokens.AccessToken(ctx); err != nil {
		return nil
	}
	u, err := p.dialUpstream(ctx, old.host, old.hostport)
	if err != nil {
		p.log.Debug("keeping a connection warm failed", "host", old.hostport, "error", oneLine(err.Error()))
		return nil
	}
	u.pool, u.route = old.pool, old.route
	return u
}
