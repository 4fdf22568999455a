package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The server side serves the decrypted HTTP/1.1 stream of a client
// connection itself, on the goroutine that calls ServerConn.Serve: it
// reads a request, has it served, writes the answer and reads the next,
// with no other goroutine involved while the client and the upstream keep
// pace. net/http's server would start a goroutine per request to notice a
// client that goes away and hand the connection between goroutines
// several times a request; on a small VM that costs more than the proxy's
// own work. What it gives is kept here: header and idle timeouts,
// 100-continue, keep-alive and pipelining, draining on shutdown, and the
// cancelling of a request whose client is gone (see watch).

// Sizes and waits of a served connection.
const (
	clientReadBuffer  = 4 << 10
	clientWriteBuffer = 4 << 10
	// maxDrain is how much of a request body that the handler left
	// unread is read and dropped to keep the connection; a longer rest
	// closes it.
	maxDrain = 256 << 10
	// WatchDelay is how long a request waits for the upstream's answer
	// before the server starts watching its client connection for a
	// close (see ServerConn.startWatch): the client side's first wait
	// (Waits.First) should be as long.
	WatchDelay = 500 * time.Millisecond
	// lingerTimeout is how long the rest of a request body is read and
	// dropped, after its answer, before the connection closes (see
	// ServerConn.close); net/http's server waits as long.
	lingerTimeout = 500 * time.Millisecond
	// refusalWriteTimeout bounds the write of the answer to a refused
	// request.
	refusalWriteTimeout = 5 * time.Second
)

// Server serves intercepted client connections: the TLS handshake, then
// HTTP/1.1 requests one after another, each by Handler unless the server
// refuses it first or Fast serves it. Set its fields before the first
// connection; they are only read after.
type Server struct {
	// Handler serves the requests that are neither refused nor served
	// by Fast. Its ResponseWriter also has FlushError and AdoptHeader
	// (see response).
	Handler http.Handler
	// TLSConfig is the server side of the handshake with the client.
	TLSConfig *tls.Config

	// ReadHeaderTimeout bounds the handshake and the reading of each
	// request head, IdleTimeout the wait for the next request on a kept
	// connection, BodyTimeout each wait for a byte of a request body.
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	BodyTimeout       time.Duration
	// MaxHeaderBytes bounds a request head; a larger one is refused
	// with 431.
	MaxHeaderBytes int

	// Fast, if set, is offered every request whose head is whole in the
	// read buffer before it is parsed (see FastExchange). It reports
	// served false, having read nothing, to let the server go on with
	// the request; keep says whether the connection may carry another.
	Fast func(x *FastExchange) (keep, served bool)
	// EnterBody, if set, admits a request whose body is to be read from
	// the client: it returns leave, which the server calls once when the
	// body has been read or given up, or the refusal of the request.
	EnterBody func() (leave func(), refusal *RequestError)
	// Refused writes the answer to a request the server refuses on w,
	// and records it; the connection then ends. ctx is the connection's.
	Refused func(ctx context.Context, w io.Writer, remote string, e *RequestError)
	// HandshakeFailed hears of a failed TLS handshake with the client.
	HandshakeFailed func(ctx context.Context, remote string, err error)
	// Panicked hears of a handler's panic, other than
	// http.ErrAbortHandler, with the goroutine's stack.
	Panicked func(ctx context.Context, v any, stack []byte)

	// stopping: Stop was called. Any goroutine reads it.
	stopping atomic.Bool
}

// Stop makes every connection end after its current answer, and answers
// from now on say so to the client (Connection: close). Connections that
// wait for a request are closed by whoever tracks them (CloseIfIdle).
func (s *Server) Stop() { s.stopping.Store(true) }

// Stopping reports whether Stop was called.
func (s *Server) Stopping() bool { return s.stopping.Load() }

// RequestError is a request that the server refuses before any handler
// sees it: one whose framing the guard refuses (see guardConn), a
// malformed head, another protocol than HTTP/1.x, a missing Host, an
// expectation other than 100-continue, a body that EnterBody does not
// admit. Server.Refused turns it into an answer.
type RequestError struct {
	Status  int
	Message string // what is wrong, for a person to act on
	// Method is the refused request's, "" when not known.
	Method string
	// Reason names the refusal for the access log: "bad_request",
	// "bad_framing", or the one EnterBody gave.
	Reason string
	// RetryAfter, if set, is when the client may try again.
	RetryAfter time.Duration
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("request refused with %d: %s", e.Status, e.Message)
}

// States of a ServerConn, for CloseIfIdle.
const (
	connActive int32 = iota // reading or serving a request
	connIdle                // waiting for the next request
	connClosed              // closed by CloseIfIdle while idle
)

// ServerConn is one client connection that a Server serves.
type ServerConn struct {
	// Set by NewConn and Serve before the first request, and only read
	// after, by every goroutine below.
	s   *Server
	raw net.Conn // the connection under TLS
	// authority is the Host of a request without one (HTTP/1.0).
	authority string
	tc        *tls.Conn
	gc        *guardConn // tc, with the framing checks
	remote    string
	// ctx is the context of every request on the connection: it
	// carries what Serve was given and the trace, and ends when the
	// client goes away (see watch) or Serve returns.
	ctx    context.Context
	cancel context.CancelFunc
	// trace is what the client side of the connection's exchanges calls
	// (see ClientTrace), in every request's context.
	trace ClientTrace
	// upstream holds the upstream connection of the exchange under way,
	// for the client side, through ctx (see Holder); close closes one
	// that an exchange left. Set with ctx.
	upstream *Holder
	// w is the connection's ResponseWriter, reset for each request;
	// fast is the connection's offer to Server.Fast.
	w    *response
	fast FastExchange

	// br is read by one goroutine at a time: the serving goroutine for a
	// request head and the drain of a body, the goroutine that reads the
	// request body (the serving one, or a body sender's) through
	// reqBody, and the watch between startWatch and stopWatch, when
	// neither of the others reads.
	br *bufio.Reader
	// bw is the serving goroutine's, which runs the handler.
	bw *bufio.Writer
	// state is for CloseIfIdle, on another goroutine.
	state atomic.Int32

	// wmu orders a 100 Continue, written by whoever reads the request
	// body, before the response, written by the handler.
	wmu     sync.Mutex
	started bool // the response's head went into bw

	// The watch of the client connection while a request waits; see
	// startWatch. Guarded by watchMu.
	watchMu   sync.Mutex
	watchOff  bool // the request is done: no new watch
	watching  bool
	watchDone chan struct{}
	// gone and refusedAhead are set by the watch goroutine and read by
	// the serving goroutine after stopWatch.
	gone atomic.Bool // the watch saw the client close
	// refusedAhead: the watch met a pipelined request that the framing
	// checks refused; its answer follows the current one.
	refusedAhead atomic.Bool

	// bodyCut: the request's body is no longer to be read (see cutBody).
	// Set by the serving goroutine, read by the body's reader.
	bodyCut atomic.Bool

	// The fields below are the serving goroutine's. idleSince is also
	// set by startWatch run from a body's onEOF on the goroutine that
	// read the body (a transport), which the serving goroutine waits
	// for (reqBody.finish) before it reads it.

	// body is the body of the request being served, nil without one.
	body *reqBody
	head []byte // the head of a request Fast took, kept for ServeGeneral
	// idleSince is when the idle timeout now in force was set, zero once
	// another read deadline replaced it.
	idleSince time.Time
	// linger: the connection ends after an answer with the request body
	// still coming; see close.
	linger bool
}

// NewConn returns the connection of conn, to be served by Serve, whose
// requests are for authority (the Host of an HTTP/1.0 request that sends
// none). It is made before the handshake so that whoever tracks
// connections can close it from the start.
func (s *Server) NewConn(conn net.Conn, authority string) *ServerConn {
	return &ServerConn{s: s, raw: conn, authority: authority}
}

// setReadDeadline sets a read deadline other than the idle timeout's.
func (c *ServerConn) setReadDeadline(t time.Time) {
	_ = c.tc.SetReadDeadline(t)
	c.idleSince = time.Time{}
}

// cutBody ends a read of the request body in progress on another
// goroutine, and every later one. The body's reads move the deadline
// on themselves: one that does so after the deadline set here sees
// bodyCut and ends at once.
func (c *ServerConn) cutBody() {
	c.bodyCut.Store(true)
	c.setReadDeadline(ALongTimeAgo)
}

// Serve completes the TLS handshake and serves the connection's requests
// until the client closes it, a timeout or an error ends it, or the
// server stops; then it closes it. ctx is the base of every request's
// context.
func (c *ServerConn) Serve(ctx context.Context) {
	defer c.close()
	s := c.s
	c.remote = c.raw.RemoteAddr().String()
	// The handshake counts against the header timeout.
	_ = c.raw.SetDeadline(time.Now().Add(s.ReadHeaderTimeout))
	c.tc = tls.Server(c.raw, s.TLSConfig)
	if err := c.tc.Handshake(); err != nil {
		if s.HandshakeFailed != nil {
			s.HandshakeFailed(ctx, c.remote, err)
		}
		return
	}
	_ = c.raw.SetWriteDeadline(time.Time{})
	c.gc = &guardConn{Conn: c.tc, maxHead: s.MaxHeaderBytes}
	c.br = bufio.NewReaderSize(c.gc, clientReadBuffer)
	c.bw = bufio.NewWriterSize(c.tc, clientWriteBuffer)
	c.trace = ClientTrace{AwaitingAnswer: c.startWatch, AwaitingAfterBody: c.watchAfterBody, BodyAbandoned: c.cutBody}
	c.ctx, c.cancel = context.WithCancel(WithClientTrace(ctx, &c.trace))
	c.ctx, c.upstream = WithHolder(c.ctx)
	defer c.cancel()
	c.w = &response{c: c}
	c.fast.c = c
	for first := true; ; first = false {
		if !c.next(first) {
			return
		}
		if !c.serveOne() {
			return
		}
	}
}

// next waits for the first byte of the next request, within the header
// timeout for a new connection and the idle timeout for a kept-alive one.
// It reports false when the connection is to end instead.
func (c *ServerConn) next(first bool) bool {
	if c.br.Buffered() == 0 {
		wait := c.s.IdleTimeout
		if first {
			wait = c.s.ReadHeaderTimeout
		}
		// The deadline is set before the connection counts as idle, so
		// that CloseIfIdle's deadline, set after, is never overwritten.
		// An idle deadline set a moment ago (at most a second, or an
		// eighth of the timeout) stands: on a busy connection that saves
		// a timer update per request, for an idle timeout that much
		// shorter.
		now := time.Now()
		switch {
		case first:
			c.setReadDeadline(now.Add(wait))
		case c.idleSince.IsZero() || now.Sub(c.idleSince) > min(time.Second, wait/8):
			_ = c.tc.SetReadDeadline(now.Add(wait))
			c.idleSince = now
		}
		c.state.Store(connIdle)
		if c.s.stopping.Load() {
			return false
		}
		if _, err := c.br.Peek(1); err != nil {
			c.readFailed(err)
			return false
		}
	}
	if !c.state.CompareAndSwap(connIdle, connActive) && c.state.Load() == connClosed {
		return false
	}
	if c.gc.midHead() {
		c.setReadDeadline(time.Now().Add(c.s.ReadHeaderTimeout))
	}
	return true
}

// readFailed handles the end of reading a request head: a refused framing
// gets its answer; a close, a timeout or a broken connection end quietly.
func (c *ServerConn) readFailed(err error) {
	if errors.Is(err, errFramingRefused) {
		c.answerRefusal()
	}
}

// answerRefusal writes the answer to the request the framing guard
// refused, once.
func (c *ServerConn) answerRefusal() {
	if e := c.gc.takeRefusal(); e != nil {
		c.refuse(e)
	}
}

// serveOne reads one request, has it served and writes the answer. It
// reports whether the connection may carry another request.
func (c *ServerConn) serveOne() bool {
	c.watchMu.Lock()
	c.watchOff, c.watching = false, false
	c.watchMu.Unlock()
	c.started = false
	c.gone.Store(false)
	if c.s.Fast != nil {
		if keep, served := c.s.Fast(&c.fast); served {
			c.stopWatch()
			return c.endRequest(keep)
		}
	}
	req, err := http.ReadRequest(c.br)
	if err != nil {
		if errors.Is(err, errFramingRefused) || isTimeout(err) || errors.Is(err, io.EOF) ||
			errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
			c.readFailed(err)
			return false
		}
		c.refuse(badRequest("", "malformed request: the request line or a header line is not valid HTTP/1.1"))
		return false
	}
	if req.ProtoMajor != 1 {
		c.refuse(&RequestError{Status: http.StatusHTTPVersionNotSupported, Method: req.Method, Reason: "bad_request",
			Message: "only HTTP/1.x is served inside an intercepted connection"})
		return false
	}
	// As net/http's server: a Host is required from HTTP/1.1 on (several
	// are refused by the parser). Its value is req.Host.
	if req.Host == "" && req.ProtoAtLeast(1, 1) && req.Method != http.MethodConnect {
		c.refuse(badRequest(req.Method, "an HTTP/1.1 request needs a Host header"))
		return false
	}
	if req.Host == "" {
		// An HTTP/1.0 request may lack one: it is for the connection's
		// authority.
		req.Host = c.authority
	}
	var body *reqBody
	c.bodyCut.Store(false)
	if req.Body != nil && req.Body != http.NoBody {
		leave := func() {}
		if c.s.EnterBody != nil {
			var refusal *RequestError
			if leave, refusal = c.s.EnterBody(); refusal != nil {
				refusal.Method = req.Method
				c.refuse(refusal)
				return false
			}
			// At the body's end, or after the handler, whichever
			// comes first.
			leave = sync.OnceFunc(leave)
		}
		defer leave()
		body = &reqBody{rc: req.Body, c: c, remaining: req.ContentLength, clock: BodyClock{Timeout: c.s.BodyTimeout}, leave: leave}
		req.Body = body
		c.body = body
		defer func() { c.body = nil }()
		// Uploads take their time, but each read of the body may wait
		// only BodyTimeout (see reqBody.Read); the handler may start
		// reading later than that.
		c.setReadDeadline(time.Time{})
	}
	if expect, ok := req.Header["Expect"]; ok {
		if len(expect) != 1 || !strings.EqualFold(expect[0], "100-continue") {
			c.refuse(&RequestError{Status: http.StatusExpectationFailed, Method: req.Method, Reason: "bad_request",
				Message: "the only expectation served is Expect: 100-continue"})
			return false
		}
		if body != nil && req.ProtoAtLeast(1, 1) {
			body.wantsContinue = true
		}
	}
	req.RemoteAddr = c.remote
	req = req.WithContext(c.ctx)

	w := c.w
	w.reset(req, body)
	panicked := c.run(func() { c.s.Handler.ServeHTTP(w, req) })
	keep := !panicked
	if body != nil {
		// Waits for a read in progress on another goroutine (the
		// transport's), so that nothing reads the connection after this.
		body.finish()
	}
	c.stopWatch()
	if keep {
		keep = w.finish()
	}
	if keep && body != nil {
		keep = body.drain()
		c.linger = !keep
	}
	return c.endRequest(keep)
}

// endRequest reports whether the connection may carry another request
// after one whose answer is complete if keep: not if the client went away
// or the framing checks refused what follows, whose refusal then comes now.
func (c *ServerConn) endRequest(keep bool) bool {
	if keep && c.refusedAhead.Load() {
		c.answerRefusal()
		return false
	}
	return keep && !c.gone.Load() && !c.gc.failed
}

// run runs f as a handler. It reports whether f panicked, which ends the
// connection without completing the answer: a client then sees a
// truncated response, never a whole-looking one.
func (c *ServerConn) run(f func()) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			panicked = true
			if v != http.ErrAbortHandler && c.s.Panicked != nil {
				buf := make([]byte, 16<<10)
				c.s.Panicked(c.ctx, v, buf[:runtime.Stack(buf, false)])
			}
		}
	}()
	f()
	return false
}

// refuse answers a request that is not served and has it recorded; the
// connection ends after it, lingering for what the client still sends.
func (c *ServerConn) refuse(e *RequestError) {
	_ = c.tc.SetWriteDeadline(time.Now().Add(refusalWriteTimeout))
	if c.s.Refused != nil {
		c.s.Refused(c.ctx, c.tc, c.remote, e)
	}
	c.linger = true
}

// close ends the connection. After an answer sent while the client may
// still be sending (an upstream that refused an upload early, a refused
// request), closing at once would make the client's system answer the
// rest of the body with a reset, which can erase the answer before the
// client reads it (RFC 9112, section 9.6): the connection is shut for
// writing and what the client still sends is read and dropped for up to
// lingerTimeout first.
func (c *ServerConn) close() {
	c.upstream.Close()
	if c.tc == nil {
		_ = c.raw.Close()
		return
	}
	if c.linger && !c.s.stopping.Load() {
		_ = c.tc.CloseWrite()
		if cw, ok := c.raw.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_ = c.raw.SetReadDeadline(time.Now().Add(lingerTimeout))
		_, _ = io.Copy(io.Discard, c.raw)
	}
	_ = c.tc.Close()
}

// CloseIfIdle closes the connection if it waits for a request; one
// serving a request closes itself after its answer once the server stops.
func (c *ServerConn) CloseIfIdle() {
	if c.state.CompareAndSwap(connIdle, connClosed) {
		_ = c.raw.SetReadDeadline(ALongTimeAgo)
	}
}

// Close cuts the connection, whatever it is doing.
func (c *ServerConn) Close() { _ = c.raw.Close() }

// RefusalPending reports whether a request that arrived while the
// current one was served has been refused by the framing checks: its
// answer follows the current one, and the connection ends.
func (c *ServerConn) RefusalPending() bool { return c.refusedAhead.Load() }

// startWatch watches the client connection for a close while the request
// waits for the upstream: a client that goes away then cancels the
// request's context, which ends the upstream request. Watching takes a
// goroutine and a read, so it starts only when a request has waited
// WatchDelay for its answer (or is on a transport that cannot say that it
// waits), and only once the request body has been read to its end, when
// nothing else reads the connection.
func (c *ServerConn) startWatch() {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if c.watchOff || c.watching {
		return
	}
	c.watching = true
	c.watchDone = make(chan struct{})
	c.setReadDeadline(time.Time{})
	go c.watch(c.watchDone)
}

// watchAfterBody starts the watch once the request body, if any, has been
// read to its end.
func (c *ServerConn) watchAfterBody() {
	if c.body != nil {
		c.body.setOnEOF(c.startWatch)
		return
	}
	c.startWatch()
}

func (c *ServerConn) watch(done chan struct{}) {
	defer close(done)
	// Bytes of a pipelined next request stay in the buffer for it.
	_, err := c.br.Peek(1)
	switch {
	case err == nil, isTimeout(err):
	case errors.Is(err, errFramingRefused):
		c.refusedAhead.Store(true)
	default:
		c.gone.Store(true)
		c.cancel()
	}
}

// stopWatch ends the watch, if one runs, and waits for it.
func (c *ServerConn) stopWatch() {
	c.watchMu.Lock()
	c.watchOff = true
	watching := c.watching
	c.watchMu.Unlock()
	if watching {
		c.setReadDeadline(ALongTimeAgo)
		<-c.watchDone
	}
}

// writeContinue sends the interim 100 Continue, unless the answer has
// begun.
func (c *ServerConn) writeContinue() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.started {
		return nil
	}
	return WriteContinue(c.tc)
}

// FastExchange is a request whose head is whole in the connection's read
// buffer, offered to Server.Fast before it is parsed: the hook may serve
// it from the bytes of its head, write the answer itself, or hand it back
// to the general way (ServeGeneral) at any point after taking it. It is
// the serving goroutine's, and valid only during the call to Fast.
type FastExchange struct {
	c *ServerConn
}

// Context is the request's context.
func (x *FastExchange) Context() context.Context { return x.c.ctx }

// RemoteAddr is the client's address.
func (x *FastExchange) RemoteAddr() string { return x.c.remote }

// Buffered returns what the read buffer holds, from the start of the
// request head; valid until Take.
func (x *FastExchange) Buffered() []byte {
	b, _ := x.c.br.Peek(x.c.br.Buffered())
	return b
}

// Take consumes the first n bytes of the read buffer, the request head,
// and returns a copy, kept for ServeGeneral.
func (x *FastExchange) Take(n int) []byte {
	c := x.c
	b, _ := c.br.Peek(n)
	c.head = append(c.head[:0], b...)
	_, _ = c.br.Discard(n)
	return c.head
}

// Writer is the client connection's buffered writer, for the answer.
func (x *FastExchange) Writer() *bufio.Writer { return x.c.bw }

// Stopping reports whether the server stops: the answer should close the
// connection.
func (x *FastExchange) Stopping() bool { return x.c.s.stopping.Load() }

// ServeGeneral serves the request whose head Take kept the general way:
// parsed with http.ReadRequest and handed to h with the connection's
// ResponseWriter, as a handler. It reports whether the connection may
// carry another request, and false, without calling h, if the head does
// not parse.
func (x *FastExchange) ServeGeneral(h func(http.ResponseWriter, *http.Request)) (keep bool) {
	c := x.c
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(c.head)))
	if err != nil {
		return false
	}
	req.RemoteAddr = c.remote
	req = req.WithContext(c.ctx)
	w := c.w
	w.reset(req, nil)
	if c.run(func() { h(w, req) }) {
		return false
	}
	return w.finish()
}

// reqBody is the body of a request read from a served connection. It
// sends 100 Continue on the first read when the client asked for it,
// notes the body's end, and can be finished from the serving goroutine
// while a transport still reads it on another.
type reqBody struct {
	// Set when the body is made, then only read.
	rc io.ReadCloser
	c  *ServerConn

	// mu guards the fields below: the body is read on the goroutine that
	// sends it upstream, and finished or drained on the serving one.
	mu            sync.Mutex
	wantsContinue bool
	eof           bool
	done          bool
	remaining     int64 // bytes not yet read of a body with a length, or -1
	// onEOF, if set, runs once when the body has been read to its end.
	onEOF func()
	clock BodyClock
	// stalled: a read ended at the body's deadline; the rest is not
	// waited for.
	stalled bool
	leave   func() // ends the body's admission (Server.EnterBody)
}

// errBodyCut is what a read of a request body returns once the upstream
// takes no more of it.
var errBodyCut = errors.New("read of the request body after the upstream stopped taking it")

func (b *reqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.eof {
		return 0, io.EOF
	}
	if b.stalled {
		return 0, &BodyStallError{Timeout: b.clock.Timeout}
	}
	if b.wantsContinue {
		b.wantsContinue = false
		if err := b.c.writeContinue(); err != nil {
			return 0, err
		}
	}
	b.clock.Before(b.c.tc.SetReadDeadline)
	if b.c.bodyCut.Load() {
		return 0, errBodyCut
	}
	n, err := b.rc.Read(p)
	if b.remaining > 0 {
		b.remaining -= int64(n)
	}
	if err != nil && isTimeout(err) && !b.c.bodyCut.Load() {
		b.stalled = true
		err = b.clock.After(err)
	}
	if err == io.EOF {
		b.eof = true
		b.leave()
		if b.onEOF != nil {
			b.onEOF()
		}
	}
	return n, err
}

// Close is the handler's and the transport's: it only stops further reads.
// Whatever is left of the body is drained or the connection closed after
// the handler.
func (b *reqBody) Close() error {
	b.finish()
	return nil
}

func (b *reqBody) finish() {
	b.mu.Lock()
	b.done = true
	b.onEOF = nil
	b.mu.Unlock()
}

// setOnEOF arranges for f to run when the body has been read to its end,
// or now if it has been.
func (b *reqBody) setOnEOF(f func()) {
	b.mu.Lock()
	if b.eof {
		b.mu.Unlock()
		f()
		return
	}
	b.onEOF = f
	b.mu.Unlock()
}

// drain reads and drops the rest of a body the handler did not read, so
// that the connection can carry the next request, and ends further reads.
// It reports whether it got to the end; a rest over maxDrain is not read,
// and a client still waiting for 100 Continue never sent its body: the
// connection must end then. It waits for a read in progress on another
// goroutine to return.
func (b *reqBody) drain() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	b.onEOF = nil
	if b.eof {
		return true
	}
	if b.wantsContinue || b.stalled || b.remaining > maxDrain {
		return false
	}
	b.c.setReadDeadline(time.Now().Add(b.c.s.ReadHeaderTimeout))
	n, err := io.CopyN(io.Discard, b.rc, maxDrain+1)
	b.eof = errors.Is(err, io.EOF)
	return b.eof && n <= maxDrain
}

// BodyClock moves the read deadline of a connection on while a request
// body arrives: each read may wait Timeout for its first byte. The
// deadline moves at most once in step, which saves a timer update per
// read of a fast upload for a timeout that much shorter. Only the
// goroutine reading the body uses it.
type BodyClock struct {
	Timeout  time.Duration
	extended time.Time
}

// Before is called before each read of the body: it sets the deadline
// with set if the last one is more than a step old.
func (k *BodyClock) Before(set func(time.Time) error) {
	now := time.Now()
	if now.Sub(k.extended) > min(time.Second, k.Timeout/8) {
		_ = set(now.Add(k.Timeout))
		k.extended = now
	}
}

// After names a read that ended at the deadline: the client stalled.
func (k *BodyClock) After(err error) error {
	if err != nil && isTimeout(err) {
		return &BodyStallError{Timeout: k.Timeout}
	}
	return err
}

// BodyStallError ends a request body that made no progress for its
// BodyClock's timeout.
type BodyStallError struct{ Timeout time.Duration }

func (e *BodyStallError) Error() string {
	return fmt.Sprintf("the client sent no byte of the request body for %v (limits.body_timeout)", e.Timeout)
}

// response is the http.ResponseWriter of a served connection. It frames
// the answer as its headers say: with their Content-Length, or chunked
// (with trailers) when there is none, or delimited by the close for an
// HTTP/1.0 client; never with a body for HEAD, 204 and 304.
//
// All of it is the serving goroutine's, which runs the handler.
type response struct {
	c       *ServerConn
	req     *http.Request
	body    *reqBody // nil without a body
	header  http.Header
	status  int
	sent    bool // the head is written
	chunked bool
	noBody  bool
	length  int64 // the declared Content-Length, or -1
	written int64
	close   bool // end the connection after this answer
	err     error
	scratch []byte
}

func (w *response) reset(req *http.Request, body *reqBody) {
	h := w.header
	if h == nil || len(h) > 64 {
		h = make(http.Header, 16)
	} else {
		clear(h)
	}
	*w = response{c: w.c, req: req, body: body, header: h, length: -1, scratch: w.scratch[:0]}
}

func (w *response) Header() http.Header { return w.header }

// AdoptHeader makes h, a relayed response's own header, the answer's
// header, which saves copying it field by field. It reports false, and
// does nothing, once a field has been set or the head written.
func (w *response) AdoptHeader(h http.Header) bool {
	if w.sent || len(w.header) != 0 {
		return false
	}
	w.header = h
	return true
}

// WriteHeader sets the status. Informational statuses are not passed on:
// the server sends the client's 100 Continue itself.
func (w *response) WriteHeader(code int) {
	if w.status != 0 || code < 200 {
		return
	}
	w.status = code
}

func (w *response) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.sent {
		w.writeHead(false)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			return len(b), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	var tooLong bool
	if w.length >= 0 && w.written+int64(len(b)) > w.length {
		b, tooLong = b[:w.length-w.written], true
	}
	if len(b) == 0 {
		if tooLong {
			return 0, http.ErrContentLength
		}
		return 0, nil
	}
	bw := w.c.bw
	if w.chunked {
		w.scratch = strconv.AppendInt(w.scratch[:0], int64(len(b)), 16)
		w.scratch = append(w.scratch, '\r', '\n')
		_, _ = bw.Write(w.scratch)
	}
	n, err := bw.Write(b)
	if w.chunked && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	w.written += int64(n)
	if err != nil {
		w.err = err
		return n, err
	}
	if tooLong {
		return n, http.ErrContentLength
	}
	return n, nil
}

// Flush sends what is buffered to the client.
func (w *response) Flush() { _ = w.FlushError() }

// FlushError sends what is buffered and reports whether the client took it.
func (w *response) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.sent {
		w.writeHead(false)
	}
	if w.err != nil {
		return w.err
	}
	if err := w.c.bw.Flush(); err != nil {
		w.err = err
	}
	return w.err
}

// writeHead writes the status line and header fields into the buffer.
// final says the handler is done, so that a body never written has length
// zero.
func (w *response) writeHead(final bool) {
	c := w.c
	c.wmu.Lock()
	c.started = true
	c.wmu.Unlock()
	w.sent = true
	h := w.header
	req := w.req
	code := w.status
	w.noBody = req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	delete(h, "Transfer-Encoding")
	if code == http.StatusNoContent {
		delete(h, "Content-Length")
	}
	if v, ok := h["Content-Length"]; ok {
		// For HEAD and 304 it describes the representation, and is
		// passed on; it bounds the body of every other answer.
		n, err := strconv.ParseInt(strings.TrimSpace(firstValue(v)), 10, 64)
		if err != nil || n < 0 || len(v) != 1 {
			delete(h, "Content-Length")
		} else if !w.noBody {
			w.length = n
		}
	}
	if !w.noBody && w.length < 0 {
		switch {
		case final && w.written == 0:
			w.length = 0
			h["Content-Length"] = []string{"0"}
		case req.ProtoAtLeast(1, 1):
			w.chunked = true
		default:
			w.close = true // the end of the body is the close
		}
	}
	if req.Close || c.s.stopping.Load() || httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		w.close = true
	}
	// A body the handler left unread is dropped before the answer, as
	// clients that send all of a request before reading the answer
	// expect; one too large to drop, or withheld for a 100 Continue
	// never sent, ends the connection.
	if w.body != nil && !w.close && !w.body.drain() {
		w.close = true
	}
	// HTTP/1.1 keeps a connection unless told; HTTP/1.0 closes it.
	delete(h, "Connection")
	switch is11 := req.ProtoAtLeast(1, 1); {
	case w.close && is11:
		h["Connection"] = []string{"close"}
	case !w.close && !is11:
		h["Connection"] = []string{"keep-alive"}
	}
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{time.Now().UTC().Format(http.TimeFormat)}
	}

	// A field that would break the framing is left out (see
	// WriteResponseHead): the answer's fields come from a parsed answer
	// or from the handler, so none is expected.
	_ = WriteResponseHead(c.bw, req.ProtoAtLeast(1, 1), code, h, w.chunked)
}

func firstValue(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// finish completes the answer after the handler: the head if not yet
// written, the last chunk and trailers, and a flush. It reports whether
// the connection may carry another request.
func (w *response) finish() bool {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.sent {
		w.writeHead(true)
	}
	if w.err != nil {
		return false
	}
	bw := w.c.bw
	if w.chunked {
		_, _ = bw.WriteString("0\r\n")
		w.writeTrailers(bw)
		_, _ = bw.WriteString("\r\n")
	}
	if err := bw.Flush(); err != nil {
		return false
	}
	if !w.noBody && w.length >= 0 && w.written < w.length {
		// The body fell short of its Content-Length: only the close
		// tells the client so.
		return false
	}
	return !w.close
}

// writeTrailers writes the trailer fields: those the Trailer header
// announced, and those set with http.TrailerPrefix.
func (w *response) writeTrailers(bw *bufio.Writer) {
	h := w.header
	for _, list := range h["Trailer"] {
		for name := range strings.SplitSeq(list, ",") {
			name = http.CanonicalHeaderKey(strings.TrimSpace(name))
			if vv, ok := h[name]; ok && name != "" {
				_ = WriteField(bw, name, vv)
			}
		}
	}
	for k, vv := range h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			_ = WriteField(bw, http.CanonicalHeaderKey(name), vv)
		}
	}
}
