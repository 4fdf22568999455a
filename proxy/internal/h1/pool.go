package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// Integration scripts call their API one process at a time: each call is
// a new client connection, and the upstream is a WAN round trip away. An
// upstream connection is therefore not kept by the client connection
// that opened it but returned, after each cleanly ended exchange, to a
// Pool that every client connection draws from: a call then costs no TCP
// and TLS handshake with the upstream. What the pool guarantees:
//
//   - one exchange at a time: a connection is either idle in the pool,
//     owned by it, or held by the one exchange that took it, never both;
//   - only a connection whose last answer was read to its end, with
//     nothing after it, goes back (any doubt: it is closed);
//   - a connection on which anything arrived while it was idle (bytes the
//     upstream sent unasked, its close) is closed, never used: no byte
//     that no request asked for can reach a client as an answer;
//   - the pool is bounded: idle connections per route and in all, each
//     closed after the idle timeout (below that of the upstream's front
//     ends).
//
// The pool knows nothing of HTTP requests: it holds, checks and hands out
// connections by route.

// PoolLimits bounds the idle connections of a Pool. A zero field takes
// its default; see the proxy's configuration for what each means.
type PoolLimits struct {
	MaxIdlePerHost int           // per route; default 64
	MaxIdle        int           // in all; default 256
	IdleTimeout    time.Duration // default 50 s
	// KeepWarm: how long after the last request to a route the idle
	// timeout's close of its last connection is followed by a new one.
	// Zero keeps nothing warm.
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

// Why a kept connection was closed unused, for
// PoolObserver.UpstreamClosed.
const (
	ClosedUpstreamClosed = "upstream_closed" // the upstream closed it, or it broke
	ClosedUnsolicited    = "unsolicited"     // bytes arrived that no request asked for
	ClosedIdleTimeout    = "idle_timeout"
	ClosedPoolFull       = "pool_full"
)

// PoolObserver hears what the pool does, for metrics. Its methods are
// called from any goroutine.
type PoolObserver interface {
	// UpstreamPool: a request found an idle connection ("hit") or not
	// ("miss").
	UpstreamPool(result string)
	// UpstreamIdle adds delta to the number of idle connections.
	UpstreamIdle(delta int)
	// UpstreamClosed: a kept connection was closed rather than used, for
	// one of the Closed reasons.
	UpstreamClosed(reason string)
}

// Route is where a connection goes: Key names it in the pool (the
// address and the way there, such as a corporate proxy), Host and Addr
// are for the dial.
type Route struct {
	Key  string
	Host string // the name the upstream's certificate must hold
	Addr string // host:port
}

// A ReadAhead connection runs over another, NetConn, and may hold bytes
// it read ahead of it (a corporate proxy's tunnel, whose reply came with
// the upstream's first bytes). The pool sees through it to the socket.
type ReadAhead interface {
	NetConn() net.Conn
	// Buffered is how many bytes read ahead are still to be returned.
	Buffered() int
}

// Pool holds idle connections by route. Its methods may be called from
// any goroutine.
type Pool struct {
	limits PoolLimits
	obs    PoolObserver
	// warm opens a replacement for an expired connection (see
	// KeepWarm); nil keeps nothing warm. warmCtx ends with Close, which
	// waits for warmers.
	warm       func(ctx context.Context, r Route) (net.Conn, error)
	warmCtx    context.Context
	warmCancel context.CancelFunc
	warmers    sync.WaitGroup

	mu sync.Mutex
	// The fields below are guarded by mu. A connection in idle is owned
	// by the pool: no other goroutine reads, writes or closes it until
	// get hands it out.
	idle   map[string][]*Conn // by route, least recently used first
	n      int                // connections in idle, over all routes
	timer  *time.Timer        // closes expired connections; nil when idle is empty
	closed bool
	// For KeepWarm: when each route was last asked for a connection,
	// and the routes whose replacement is being opened.
	lastUsed map[string]time.Time
	warming  map[string]bool
}

// NewPool returns an empty pool. warm, if not nil, opens the connection
// that replaces one the idle timeout closed (see PoolLimits.KeepWarm); it
// fails when there is no reason to keep the route warm (no valid
// session, say).
func NewPool(limits PoolLimits, obs PoolObserver, warm func(ctx context.Context, r Route) (net.Conn, error)) *Pool {
	p := &Pool{limits: limits.withDefaults(), obs: obs, warm: warm, idle: make(map[string][]*Conn),
		lastUsed: make(map[string]time.Time), warming: make(map[string]bool)}
	p.warmCtx, p.warmCancel = context.WithCancel(context.Background())
	return p
}

// get takes the most recently used idle connection of route that is fit
// for a request, closing those that are not; nil if there is none. The
// caller owns the connection.
func (p *Pool) get(route string) *Conn {
	for {
		p.mu.Lock()
		if p.limits.KeepWarm > 0 {
			p.lastUsed[route] = time.Now()
		}
		list := p.idle[route]
		if len(list) == 0 {
			p.mu.Unlock()
			p.obs.UpstreamPool("miss")
			return nil
		}
		c := list[len(list)-1]
		list[len(list)-1] = nil
		// An emptied list is kept, for its room: the routes are few.
		p.idle[route] = list[:len(list)-1]
		p.n--
		p.mu.Unlock()
		p.obs.UpstreamIdle(-1)
		if reason := c.idleFault(time.Now(), p.limits.IdleTimeout); reason != "" {
			p.discard(c, reason)
			continue
		}
		p.obs.UpstreamPool("hit")
		return c
	}
}

// put takes back c, whose last exchange ended cleanly, as idle. When the
// pool is full, the least recently used connection of the route, or of
// all routes, makes room.
func (p *Pool) put(c *Conn) {
	c.idleAt = time.Now()
	key := c.route.Key
	var evicted *Conn
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.discard(c, "")
		return
	}
	// Room is made before c's route list is read again: the oldest
	// connection of all may be of c's route, and its removal shifts
	// that list.
	switch list := p.idle[key]; {
	case len(list) >= p.limits.MaxIdlePerHost:
		evicted = list[0]
		p.idle[key] = append(list[:0], list[1:]...)
		p.n--
	case p.n >= p.limits.MaxIdle:
		evicted = p.removeOldest()
	}
	p.idle[key] = append(p.idle[key], c)
	p.n++
	if p.timer == nil {
		p.timer = time.AfterFunc(p.limits.IdleTimeout, p.expire)
	}
	p.mu.Unlock()
	p.obs.UpstreamIdle(1)
	if evicted != nil {
		p.obs.UpstreamIdle(-1)
		p.discard(evicted, ClosedPoolFull)
	}
}

// removeOldest removes the least recently used idle connection of all
// routes and returns it. Called with mu held and n > 0.
func (p *Pool) removeOldest() *Conn {
	var oldest string
	for key, list := range p.idle {
		if len(list) > 0 && (oldest == "" || list[0].idleAt.Before(p.idle[oldest][0].idleAt)) {
			oldest = key
		}
	}
	list := p.idle[oldest]
	c := list[0]
	p.idle[oldest] = append(list[:0], list[1:]...)
	p.n--
	return c
}

// expire closes the connections idle for longer than the idle timeout
// and sets the timer for the next one to expire.
func (p *Pool) expire() {
	now := time.Now()
	var expired []*Conn
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	next := time.Duration(-1)
	for key, list := range p.idle {
		keep := list[:0]
		for _, c := range list {
			if left := p.limits.IdleTimeout - now.Sub(c.idleAt); left > 0 {
				keep = append(keep, c)
				if next < 0 || left < next {
					next = left
				}
			} else {
				expired = append(expired, c)
			}
		}
		clear(list[len(keep):])
		p.idle[key] = keep
	}
	p.n -= len(expired)
	var rewarm []Route
	for _, c := range expired {
		key := c.route.Key
		if p.warm != nil && p.limits.KeepWarm > 0 && len(p.idle[key]) == 0 && !p.warming[key] &&
			now.Sub(p.lastUsed[key]) < p.limits.KeepWarm {
			p.warming[key] = true
			rewarm = append(rewarm, c.route)
		}
	}
	p.warmers.Add(len(rewarm))
	if next < 0 {
		p.timer = nil
	} else {
		p.timer.Reset(next)
	}
	p.mu.Unlock()
	for _, c := range expired {
		p.obs.UpstreamIdle(-1)
		p.discard(c, ClosedIdleTimeout)
	}
	for _, r := range rewarm {
		go p.rewarm(r)
	}
}

// rewarm opens a connection to r, whose last idle one expired, and keeps
// it idle. Its goroutine is counted in warmers.
func (p *Pool) rewarm(r Route) {
	defer p.warmers.Done()
	nc, err := p.warm(p.warmCtx, r)
	p.mu.Lock()
	delete(p.warming, r.Key)
	p.mu.Unlock()
	if err == nil {
		c := NewConn(nc)
		c.pool, c.route = p, r
		p.put(c)
	}
}

// Close closes every idle connection, and those put back from now on.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	var all []*Conn
	for _, list := range p.idle {
		all = append(all, list...)
	}
	clear(p.idle)
	p.n = 0
	p.mu.Unlock()
	for _, c := range all {
		p.obs.UpstreamIdle(-1)
		p.discard(c, "")
	}
	p.warmCancel()
	p.warmers.Wait()
}

// discard closes an idle connection and counts why, if reason is set.
func (p *Pool) discard(c *Conn, reason string) {
	if reason != "" {
		p.obs.UpstreamClosed(reason)
	}
	c.closeIdle()
}

// idleFault says why c, idle since c.idleAt, may not carry a request at
// now, or "" if it may: it has been idle for the timeout, or anything
// arrived on it while it was idle. It looks at the socket without
// waiting, then lets TLS take what it had already read: a record that
// holds data, a close_notify, an error. Only when the socket holds bytes
// does TLS read them, for up to idleReadWait: a close_notify is the
// upstream's close, a late TLS session ticket is harmless, anything else
// is unsolicited. It leaves c without a read deadline in force.
func (c *Conn) idleFault(now time.Time, timeout time.Duration) string {
	c.quiet = false
	if now.Sub(c.idleAt) >= timeout {
		return ClosedIdleTimeout
	}
	if c.R.Buffered() > 0 {
		return ClosedUnsolicited
	}
	// With the deadline in the past, the read takes only what TLS
	// already holds, without a system call.
	deadline, fromSocket := ALongTimeAgo, false
	switch c.socketPending() {
	case socketIdle:
		if c.src.drained && c.probe.tlsDrained() {
			// TLS holds nothing either: no read needed.
			c.quiet = true
			return ""
		}
	case socketClosed:
		return ClosedUpstreamClosed
	case socketData:
		deadline, fromSocket = now.Add(idleReadWait), true
	default:
		// Nothing to look at: in doubt, the connection is not used.
		return ClosedUnsolicited
	}
	c.SetReadDeadline(deadline)
	_, err := c.R.Peek(1)
	switch {
	case err == nil:
		return ClosedUnsolicited
	case !isTimeout(err):
		return ClosedUpstreamClosed
	case fromSocket && (c.socketPending() != socketIdle || !c.probe.tlsAtRecordEnd()):
		// More than TLS took, or part of a record that TLS holds and
		// that the rest, still to come, would complete.
		return ClosedUnsolicited
	}
	return ""
}

// idleReadWait bounds the read of bytes found on an idle connection's
// socket: they are there, so TLS takes them at once, unless they end
// within a record.
const idleReadWait = 5 * time.Millisecond

// closeIdle closes an idle connection: with a TLS close_notify, which an
// idle connection has room to send.
func (c *Conn) closeIdle() {
	_ = c.Net.SetWriteDeadline(time.Now().Add(time.Second))
	_ = c.Net.Close()
}

// What a look at a connection's socket finds (see socketProbe).
type socketState int

const (
	socketIdle    socketState = iota // nothing to read: open and quiet
	socketData                       // bytes wait to be read
	socketClosed                     // the peer closed it, or it failed
	socketUnknown                    // the connection has no socket to look at
)

// socketPending looks at the socket under c's connection (through TLS and
// any ReadAhead) without reading from it or waiting.
func (c *Conn) socketPending() socketState {
	if c.probe == nil {
		c.probe = newSocketProbe(c.Net)
	}
	return c.probe.look()
}

// socketProbe looks at the socket under a connection. It is made once per
// connection, so that a look allocates nothing.
type socketProbe struct {
	ahead []ReadAhead     // the connections between TLS and the socket that read ahead
	conn  net.Conn        // the connection that holds the socket
	raw   syscall.RawConn // nil: no socket to look at
	state socketState     // what the last look found
	peek  func(fd uintptr) bool
	// The request that sendAndWait writes, and how that went; park is
	// the function RawConn.Read calls, made once.
	send    func(*bufio.Writer) error
	sendTo  *bufio.Writer
	sent    bool
	sendErr error
	park    func(fd uintptr) bool
	// records follows the records read by the TLS connection on top, if
	// it runs over a recordConn; nil if not, or if another TLS
	// connection (a corporate proxy's) lies under it, which may hold
	// bytes the socket no longer shows.
	records *recordConn
}

func newSocketProbe(c net.Conn) *socketProbe {
	sp := &socketProbe{}
	tlsSeen := 0
	for {
		if tc, ok := c.(*tls.Conn); ok {
			c = tc.NetConn()
			if tlsSeen++; tlsSeen == 1 {
				sp.records, _ = c.(*recordConn)
			} else {
				sp.records = nil
			}
			continue
		}
		if rc, ok := c.(*recordConn); ok {
			c = rc.Conn
			continue
		}
		if ra, ok := c.(ReadAhead); ok {
			sp.ahead = append(sp.ahead, ra)
			c = ra.NetConn()
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
	sp.park = func(uintptr) bool {
		if sp.sent {
			return true // readable: the wait is over
		}
		sp.sent = true
		if sp.sendErr = sp.send(sp.sendTo); sp.sendErr == nil {
			sp.sendErr = sp.sendTo.Flush()
		}
		// Not readable yet: RawConn.Read waits until it is.
		return sp.sendErr != nil
	}
	return sp
}

// sendAndWait writes a request with send into w, which writes the TLS
// connection over the socket, flushes w, and then waits until the socket
// can be read, or the read deadline ends the wait, without reading. It
// reports whether it wrote, and the error of the write: it writes nothing
// when the deadline has already passed, or there is no socket to wait on.
//
// It serves a connection on which nothing can be read before the answer
// comes (see Conn.quiet): the read that a Read of TLS would make at once
// could only find nothing, and fail, before the goroutine parks. Go's
// poller forgets what it knew of the socket's readiness as RawConn.Read
// begins, so the request is written from within it, after that: the
// answer, which cannot come before the request is written, is then
// always seen.
func (sp *socketProbe) sendAndWait(w *bufio.Writer, send func(*bufio.Writer) error) (sent bool, err error) {
	if sp == nil || sp.raw == nil {
		return false, nil
	}
	sp.send, sp.sendTo, sp.sent, sp.sendErr = send, w, false, nil
	_ = sp.raw.Read(sp.park) // a read that follows meets whatever ended the wait
	sent, err = sp.sent, sp.sendErr
	sp.send, sp.sendTo = nil, nil
	return sent, err
}

// tlsDrained reports whether the TLS connection on top holds no raw
// bytes from the socket (see recordConn).
func (sp *socketProbe) tlsDrained() bool {
	return sp.records != nil && sp.records.drained()
}

// tlsAtRecordEnd reports whether the bytes TLS has read from the socket
// end with a whole record, so that TLS holds no part of one; false when
// there is no record watcher to tell.
func (sp *socketProbe) tlsAtRecordEnd() bool {
	return sp.records != nil && sp.records.atRecordEnd()
}

func (sp *socketProbe) look() socketState {
	for _, ra := range sp.ahead {
		if ra.Buffered() > 0 {
			return socketData
		}
	}
	if sp.raw == nil {
		return socketUnknown
	}
	err := sp.raw.Read(sp.peek)
	if isTimeout(err) {
		// A read deadline that passed while the connection was idle
		// (the first wait's, see AwaitFirstByte) stops RawConn.Read
		// before it looks.
		_ = sp.conn.SetReadDeadline(time.Time{})
		err = sp.raw.Read(sp.peek)
	}
	if err != nil {
		return socketClosed
	}
	return sp.state
}
