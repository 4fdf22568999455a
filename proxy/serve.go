package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
	"golang.org/x/net/http/httpguts"
)

// The proxy serves the decrypted HTTP/1.1 stream of an intercepted
// connection itself, on the goroutine that took over the CONNECT: it reads
// a request, forwards it, writes the answer and reads the next, with no
// other goroutine involved while the client and the upstream keep pace.
// net/http's server would start a goroutine per request to notice a client
// that goes away and hand the connection between goroutines several times
// a request; on a small VM that costs more than the proxy's own work. What
// it gives is kept here: header and idle timeouts,
// 100-continue, keep-alive and pipelining, draining on Shutdown, and the
// cancelling of a request whose client is gone (see watch).

// Sizes of an intercepted connection's buffers.
const (
	clientReadBuffer  = 4 << 10
	clientWriteBuffer = 4 << 10
	// maxDrain is how much of a request body that the handler left
	// unread is read and dropped to keep the connection; a longer rest
	// closes it.
	maxDrain = 256 << 10
	// clientWatchDelay is how long a request waits for the upstream's
	// answer before the proxy starts watching its client connection for
	// a close (see clientConn.startWatch).
	clientWatchDelay = 500 * time.Millisecond
	// lingerTimeout is how long the rest of a request body is read and
	// dropped, after its answer, before the connection closes (see
	// clientConn.close); net/http's server waits as long.
	lingerTimeout = 500 * time.Millisecond
)

// States of a clientConn for Shutdown.
const (
	connActive int32 = iota // reading or serving a request
	connIdle                // waiting for the next request
	connClosed              // closed by Shutdown while idle
)

// clientConn is one intercepted client connection.
type clientConn struct {
	// Set by serveInterceptedConn before the first request, and only
	// read after, by every goroutine below.
	p      *Proxy
	t      *target
	raw    net.Conn // the hijacked connection, under tc
	tc     *tls.Conn
	fc     *framingConn // tc, with the framing checks
	remote string
	// ctx is the context of every request on the connection: it carries
	// the target and the trace, and ends when the client goes away (see
	// watch) or the proxy stops.
	ctx    context.Context
	cancel context.CancelFunc
	// trace is what the upstream side of the connection's exchanges calls
	// (see h1.ClientTrace), in every request's context.
	trace h1.ClientTrace
	// upstream holds the upstream connection of the exchange under way,
	// in ctx, and closes it if the connection ends first (see
	// h1.Holder); nil before ctx is made.
	upstream *h1.Holder

	// br is read by one goroutine at a time: the serving goroutine for a
	// request head and the drain of a body, the goroutine that reads the
	// request body (the serving one, or an h1.BodySender's) through reqBody,
	// and the watch between startWatch and stopWatch, when neither of the
	// others reads.
	br *bufio.Reader
	// bw is the serving goroutine's, which runs the handler.
	bw *bufio.Writer
	// state is for Shutdown, on another goroutine (closeIfIdle).
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
	// read the body (shared transport), which the serving goroutine waits
	// for (reqBody.finish) before it reads it.

	// body is the body of the request being served, nil without one.
	body *reqBody
	head []byte // the head of a request on the fast path, kept for the general way
	// idleSince is when the idle timeout now in force was set, zero once
	// another read deadline replaced it.
	idleSince time.Time
	// linger: the connection ends after an answer with the request body
	// still coming; see close.
	linger bool
}

// setReadDeadline sets a read deadline other than the idle timeout's.
func (c *clientConn) setReadDeadline(t time.Time) {
	_ = c.tc.SetReadDeadline(t)
	c.idleSince = time.Time{}
}

// cutBody ends a read of the request body in progress on another
// goroutine, and every later one. The body's reads move the deadline
// on themselves: one that does so after the deadline set here sees
// bodyCut and ends at once.
func (c *clientConn) cutBody() {
	c.bodyCut.Store(true)
	c.setReadDeadline(h1.ALongTimeAgo)
}

// serveInterceptedConn serves the requests of an intercepted connection
// until the client closes it, a timeout or an error ends it, or the proxy
// shuts down. conn has been told "200 Connection established".
func (p *Proxy) serveInterceptedConn(conn net.Conn, t *target) {
	c := &clientConn{p: p, t: t, raw: conn}
	if !p.trackIntercepted(c) {
		_ = conn.Close()
		return
	}
	defer p.untrackIntercepted(c)
	defer c.close()

	// The handshake counts against the header timeout.
	_ = conn.SetDeadline(time.Now().Add(p.limits.ReadHeaderTimeout))
	c.tc = tls.Server(&targetConn{Conn: conn, target: t}, p.clientTLS)
	if err := c.tc.Handshake(); err != nil {
		c.handshakeFailed(err)
		return
	}
	_ = conn.SetWriteDeadline(time.Time{})
	c.fc = newFramingConn(c.tc, t, p)
	c.br = bufio.NewReaderSize(c.fc, clientReadBuffer)
	c.bw = bufio.NewWriterSize(c.tc, clientWriteBuffer)
	c.trace = h1.ClientTrace{AwaitingAnswer: c.startWatch, AwaitingAfterBody: c.watchAfterBody, BodyAbandoned: c.cutBody}
	c.ctx, c.cancel = context.WithCancel(h1.WithClientTrace(context.WithValue(p.baseCtx, targetKey{}, t), &c.trace))
	c.ctx, c.upstream = h1.WithHolder(c.ctx)
	defer c.cancel()
	c.remote = conn.RemoteAddr().String()
	w := &respWriter{c: c}
	for first := true; ; first = false {
		if !c.next(first) {
			return
		}
		if !c.serveOne(w) {
			return
		}
	}
}

// handshakeFailed logs a failed TLS handshake with the client. A client
// that refuses the proxy's certificate says so with an alert: that one is
// a warning with the fix, the others (a client that went away, a timeout)
// are not worth one.
func (c *clientConn) handshakeFailed(err error) {
	msg := oneLine(err.Error())
	client := c.raw.RemoteAddr().String()
	if strings.Contains(msg, "remote error: tls: ") {
		c.p.log.Warn("the client refused the proxy's certificate: make it trust the proxy's CA (the output of anaplan-proxy ca)",
			"client", client, "host", c.t.hostport, "error", msg)
		return
	}
	c.p.log.Debug("TLS handshake with client failed", "client", client, "host", c.t.hostport, "error", msg)
}

// next waits for the first byte of the next request, within the header
// timeout for a new connection and the idle timeout for a kept-alive one.
// It reports false when the connection is to end instead.
func (c *clientConn) next(first bool) bool {
	if c.br.Buffered() == 0 {
		wait := c.p.limits.IdleTimeout
		if first {
			wait = c.p.limits.ReadHeaderTimeout
		}
		// The deadline is set before the connection counts as idle, so
		// that Shutdown's deadline, set after, is never overwritten. An
		// idle deadline set a moment ago (at most a second, or an
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
		if c.p.stopping.Load() {
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
	if c.fc.midHead() {
		c.setReadDeadline(time.Now().Add(c.p.limits.ReadHeaderTimeout))
	}
	return true
}

// readFailed handles the end of reading a request head: a refused framing
// gets its answer; a close, a timeout or a broken connection end quietly.
func (c *clientConn) readFailed(err error) {
	if errors.Is(err, errFramingRefused) {
		c.fc.answerRefusal()
		c.linger = true
	}
}

// serveOne reads one request, has it served and writes the answer. It
// reports whether the connection may carry another request.
func (c *clientConn) serveOne(w *respWriter) bool {
	c.watchMu.Lock()
	c.watchOff, c.watching = false, false
	c.watchMu.Unlock()
	c.started = false
	c.gone.Store(false)
	if keep, served := c.serveFast(w); served {
		c.stopWatch()
		return c.endRequest(keep)
	}
	req, err := http.ReadRequest(c.br)
	if err != nil {
		if errors.Is(err, errFramingRefused) || isTimeout(err) || errors.Is(err, io.EOF) ||
			errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
			c.readFailed(err)
			return false
		}
		c.refuse(requestError(http.StatusBadRequest, "malformed request: the request line or a header line is not valid HTTP/1.1"), "")
		return false
	}
	if req.ProtoMajor != 1 {
		c.refuse(requestError(http.StatusHTTPVersionNotSupported, "only HTTP/1.x is served inside an intercepted connection"), req.Method)
		return false
	}
	// As net/http's server: a Host is required from HTTP/1.1 on (several
	// are refused by the parser). Its value is req.Host.
	if req.Host == "" && req.ProtoAtLeast(1, 1) && req.Method != http.MethodConnect {
		c.refuse(requestError(http.StatusBadRequest, "an HTTP/1.1 request needs a Host header"), req.Method)
		return false
	}
	if req.Host == "" {
		// An HTTP/1.0 request may lack one: it is for the CONNECT target.
		req.Host = c.t.authority
	}
	var body *reqBody
	c.bodyCut.Store(false)
	if req.Body != nil && req.Body != http.NoBody {
		leave, ok := c.p.bodyWaits.enter()
		if !ok {
			c.refuseFor(c.p.bodyWaits.busyWithBodies(), req.Method, reasonTooManyBodyWaits)
			return false
		}
		defer leave()
		body = &reqBody{rc: req.Body, c: c, remaining: req.ContentLength, clock: bodyClock{timeout: c.p.limits.BodyTimeout}, leave: leave}
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
			c.refuse(requestError(http.StatusExpectationFailed, "the only expectation served is Expect: 100-continue"), req.Method)
			return false
		}
		if body != nil && req.ProtoAtLeast(1, 1) {
			body.wantsContinue = true
		}
	}
	req.RemoteAddr = c.remote
	req = req.WithContext(c.ctx)

	w.reset(req, body)
	panicked := c.handle(w, req)
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
func (c *clientConn) endRequest(keep bool) bool {
	if keep && c.refusedAhead.Load() {
		c.fc.answerRefusal()
		c.linger = true
		return false
	}
	return keep && !c.gone.Load() && !c.fc.failed
}

// handle runs the handler. It reports whether it panicked, which ends the
// connection without completing the answer: a client then sees a
// truncated response, never a whole-looking one.
func (c *clientConn) handle(w *respWriter, req *http.Request) (panicked bool) {
	return c.run(func() { c.p.serveIntercepted(w, req) })
}

// logPanic logs a handler's panic; http.ErrAbortHandler is the handler's
// way to cut an answer short, not a fault.
func (c *clientConn) logPanic(v any) {
	if v == http.ErrAbortHandler {
		return
	}
	buf := make([]byte, 16<<10)
	buf = buf[:runtime.Stack(buf, false)]
	c.p.log.Error("panic serving an intercepted request", "host", c.t.hostport, "panic", oneLine(toString(v)), "stack", string(buf))
}

func toString(v any) string {
	if err, ok := v.(error); ok {
		return err.Error()
	}
	if s, ok := v.(string); ok {
		return s
	}
	return "non-error panic value"
}

// refuse answers a request that is not served and logs it; the
// connection ends after it, lingering for what the client still sends.
func (c *clientConn) refuse(a answer, method string) {
	c.refuseFor(a, method, "bad_request")
}

// refuseFor is refuse with the reason for the access log.
func (c *clientConn) refuseFor(a answer, method, reason string) {
	_ = c.tc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = a.writeOn(c.tc, method)
	c.p.logRefused(c.remote, c.t, method, a.status, reason)
	c.linger = true
}

// close ends the connection, and an upstream connection that an unfinished
// exchange still held (a finished one went back to the pool). After
// an answer sent while the client may still be sending (an upstream that
// refused an upload early, a refused request), closing at once would make the
// client's system answer the rest of the body with a reset, which can
// erase the answer before the client reads it (RFC 9112, section 9.6):
// the connection is shut for writing and what the client still sends is
// read and dropped for up to lingerTimeout first.
func (c *clientConn) close() {
	c.upstream.Close()
	if c.tc == nil {
		_ = c.raw.Close()
		return
	}
	if c.linger && !c.p.stopping.Load() {
		_ = c.tc.CloseWrite()
		if cw, ok := c.raw.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_ = c.raw.SetReadDeadline(time.Now().Add(lingerTimeout))
		_, _ = io.Copy(io.Discard, c.raw)
	}
	_ = c.tc.Close()
}

// closeIfIdle closes the connection if it waits for a request; one
// serving a request closes itself after its answer.
func (c *clientConn) closeIfIdle() {
	if c.state.CompareAndSwap(connIdle, connClosed) {
		_ = c.raw.SetReadDeadline(h1.ALongTimeAgo)
	}
}

// startWatch watches the client connection for a close while the request
// waits for the upstream: a client that goes away then cancels the
// request's context, which ends the upstream request. Watching takes a
// goroutine and a read, so it starts only when a request has waited
// clientWatchDelay for its answer (or is on the shared transport, which
// cannot say that it waits: only tests send intercepted requests there),
// and only once the request body has been read to its end, when nothing
// else reads the connection.
func (c *clientConn) startWatch() {
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
func (c *clientConn) watchAfterBody() {
	if c.body != nil {
		c.body.setOnEOF(c.startWatch)
		return
	}
	c.startWatch()
}

func (c *clientConn) watch(done chan struct{}) {
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
func (c *clientConn) stopWatch() {
	c.watchMu.Lock()
	c.watchOff = true
	watching := c.watching
	c.watchMu.Unlock()
	if watching {
		c.setReadDeadline(h1.ALongTimeAgo)
		<-c.watchDone
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// reqBody is the body of a request read from an intercepted connection. It
// sends 100 Continue on the first read when the client asked for it,
// notes the body's end, and can be finished from the serving goroutine
// while the transport still reads it on another.
type reqBody struct {
	// Set when the body is made, then only read.
	rc io.ReadCloser
	c  *clientConn

	// mu guards the fields below: the body is read on the goroutine that
	// sends it upstream, and finished or drained on the serving one.
	mu            sync.Mutex
	wantsContinue bool
	eof           bool
	done          bool
	remaining     int64 // bytes not yet read of a body with a length, or -1
	// onEOF, if set, runs once when the body has been read to its end.
	onEOF func()
	clock bodyClock
	// stalled: a read ended at the body's deadline; the rest is not
	// waited for.
	stalled bool
	leave   func() // ends the body's count in Proxy.bodyWaits
}

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
		return 0, &bodyStallError{timeout: b.clock.timeout}
	}
	if b.wantsContinue {
		b.wantsContinue = false
		if err := b.c.writeContinue(); err != nil {
			return 0, err
		}
	}
	b.clock.before(b.c.tc.SetReadDeadline)
	if b.c.bodyCut.Load() {
		return 0, errBodyClosed
	}
	n, err := b.rc.Read(p)
	if b.remaining > 0 {
		b.remaining -= int64(n)
	}
	if err != nil && isTimeout(err) && !b.c.bodyCut.Load() {
		b.stalled = true
		err = b.clock.after(err)
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
	b.c.setReadDeadline(time.Now().Add(b.c.p.limits.ReadHeaderTimeout))
	n, err := io.CopyN(io.Discard, b.rc, maxDrain+1)
	b.eof = errors.Is(err, io.EOF)
	return b.eof && n <= maxDrain
}

// writeContinue sends the interim 100 Continue, unless the answer has
// begun.
func (c *clientConn) writeContinue() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.started {
		return nil
	}
	return h1.WriteContinue(c.tc)
}

// respWriter is the http.ResponseWriter of an intercepted connection. It
// frames the answer as its headers say: with their Content-Length, or
// chunked (with trailers) when there is none, or delimited by the close
// for an HTTP/1.0 client; never with a body for HEAD, 204 and 304.
//
// All of it is the serving goroutine's, which runs the handler.
type respWriter struct {
	c       *clientConn
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

func (w *respWriter) reset(req *http.Request, body *reqBody) {
	h := w.header
	if h == nil || len(h) > 64 {
		h = make(http.Header, 16)
	} else {
		clear(h)
	}
	*w = respWriter{c: w.c, req: req, body: body, header: h, length: -1, scratch: w.scratch[:0]}
}

func (w *respWriter) Header() http.Header { return w.header }

// adoptHeader makes h, a relayed response's own header, the answer's
// header, which saves copying it field by field. It reports false, and
// does nothing, once a field has been set or the head written.
func (w *respWriter) adoptHeader(h http.Header) bool {
	if w.sent || len(w.header) != 0 {
		return false
	}
	w.header = h
	return true
}

// WriteHeader sets the status. Informational statuses are not passed on:
// the proxy sends the client's 100 Continue itself.
func (w *respWriter) WriteHeader(code int) {
	if w.status != 0 || code < 200 {
		return
	}
	w.status = code
}

func (w *respWriter) Write(b []byte) (int, error) {
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
func (w *respWriter) Flush() { _ = w.FlushError() }

// FlushError sends what is buffered and reports whether the client took it.
func (w *respWriter) FlushError() error {
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
func (w *respWriter) writeHead(final bool) {
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
	if req.Close || c.p.stopping.Load() || httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
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

	// A field that would break the framing is left out (see h1): the
	// answer's fields come from a parsed answer or from the proxy, so
	// none is expected.
	_ = h1.WriteResponseHead(c.bw, req.ProtoAtLeast(1, 1), code, h, w.chunked)
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
func (w *respWriter) finish() bool {
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
func (w *respWriter) writeTrailers(bw *bufio.Writer) {
	h := w.header
	for _, list := range h["Trailer"] {
		for name := range strings.SplitSeq(list, ",") {
			name = http.CanonicalHeaderKey(strings.TrimSpace(name))
			if vv, ok := h[name]; ok && name != "" {
				_ = h1.WriteField(bw, name, vv)
			}
		}
	}
	for k, vv := range h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			_ = h1.WriteField(bw, http.CanonicalHeaderKey(name), vv)
		}
	}
}

// trackIntercepted registers an intercepted connection for Shutdown; false
// once Shutdown has begun.
func (p *Proxy) trackIntercepted(c *clientConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.interceptConns[c] = struct{}{}
	p.intercepts.add()
	return true
}

func (p *Proxy) untrackIntercepted(c *clientConn) {
	p.mu.Lock()
	delete(p.interceptConns, c)
	p.mu.Unlock()
	p.intercepts.done()
}

// closeIdleIntercepted closes the intercepted connections that wait for a
// request; the others close after their current answer.
func (p *Proxy) closeIdleIntercepted() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.interceptConns {
		c.closeIfIdle()
	}
}

// closeIntercepted cuts every intercepted connection.
func (p *Proxy) closeIntercepted() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.interceptConns {
		_ = c.raw.Close()
	}
}
