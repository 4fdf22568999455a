package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// Client sends requests upstream on connections from its Pool, or new
// ones it dials, with none of the hand-offs between goroutines that
// http.Transport makes for every round trip: the goroutine that calls
// RoundTrip writes the head (and a small body held in memory), waits for
// the answer and reads it; only a body of any other kind is written by
// one more (a BodySender). What the server side of an exchange needs to
// hear of it (a slow answer, a body no longer wanted) it hears through
// the ClientTrace in the request's context.
//
// The fields are set before the first request and only read after; a
// Client may be used from any goroutine.
type Client struct {
	// Pool keeps the connections between exchanges; required.
	Pool *Pool
	// Dial opens a connection to r (TLS verified, through whatever the
	// way to r needs); required.
	Dial func(ctx context.Context, r Route) (net.Conn, error)
	// Waits bounds the wait for each answer.
	Waits Waits
	// UploadStall is how long an upstream may take none of a request
	// body before its sending fails; zero means Waits.Head.
	UploadStall time.Duration
	// Buffers, if set, holds the *[]byte buffers that request bodies are
	// copied through; nil gives each body a buffer of its own.
	Buffers *sync.Pool
}

// The rule for sending a request again, net/http's (Transport's
// shouldRetryRequest), is here once, and RoundTrip and SendHead are the
// two routines that apply it, by the same loop. A request that fails is
// sent once more, on another connection, only if
//   - the connection had carried earlier exchanges: the upstream may have
//     closed it, idle, as the request went (a new connection that fails
//     is the upstream's answer);
//   - it failed as such a connection fails (see staleConn), before any
//     byte of an answer came (the upstream may have acted on it
//     otherwise);
//   - and the request may be sent twice (see replayable).
//
// That the whole of a request went upstream before its connection is
// reused (net/http's wroteRequest) is checked where an exchange gives its
// connection back: the answer body's Close, through BodySender.Sent.

// replayable reports whether a request may be sent twice, by net/http's
// rule (Request.isReplayable): without a body, and with a method that
// does not change anything (GET, HEAD, OPTIONS, TRACE) or an
// Idempotency-Key that lets the upstream tell a repeat.
func replayable(method string, h http.Header, hasBody bool) bool {
	if hasBody {
		return false
	}
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := h["Idempotency-Key"]
	_, xkey := h["X-Idempotency-Key"]
	return key || xkey
}

// staleConn reports whether err is how a request fails on a kept-alive
// connection that the upstream had already closed.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// shouldRetry reports whether a request that may be sent twice and failed
// with err on c, reused or new, goes once more on another connection.
func shouldRetry(c *Conn, reused bool, err error) bool {
	return reused && !c.Answered && staleConn(err)
}

// attempt runs send on a connection to route, from the pool or new (see
// acquire), and, when send fails and the rule above allows (replay says
// the request may be sent twice), once more on another. It returns the
// connection that send succeeded on; a failed one has been closed, and
// end (if not nil) called after.
func (cl *Client) attempt(ctx context.Context, route Route, replay bool, send func(c *Conn) error, end func()) (*Conn, error) {
	for {
		c, reused, err := cl.acquire(ctx, route)
		if err != nil {
			return nil, err
		}
		err = send(c)
		if err == nil {
			return c, nil
		}
		c.Release(false)
		if end != nil {
			end()
		}
		if !replay || !shouldRetry(c, reused, err) || ctx.Err() != nil {
			return nil, err
		}
		cl.Pool.obs.UpstreamClosed(ClosedUpstreamClosed)
	}
}

// acquire gives an exchange a connection to route: an idle one from the
// pool if there is one fit for a request, else a new one. reused says
// which, for the retry rule. Until the connection is released, the end
// of ctx ends its reads and writes.
func (cl *Client) acquire(ctx context.Context, route Route) (c *Conn, reused bool, err error) {
	if c = cl.Pool.get(route.Key); c == nil {
		nc, err := cl.Dial(ctx, route)
		if err != nil {
			return nil, false, err
		}
		c = NewConn(nc)
		c.pool, c.route = cl.Pool, route
	} else {
		reused = true
	}
	c.Answered = false
	c.hold(ctx)
	return c, reused, nil
}

// RoundTrip sends req to route and returns the head of the final answer,
// whose Body the caller must close. The exchange takes a connection from
// the pool, or dials one, and sends a request that may be sent twice once
// more on another connection when a reused one turns out stale. ctx, not
// req's context, ends the exchange: its end ends the connection's reads
// and writes. A small body held in memory (a MemoryBody) goes with the
// head; any other is sent by a BodySender on a goroutine of its own,
// while the answer is awaited, also before the body's end.
//
// Closing the Body after its end, when the whole exchange was cleanly
// framed (the request body sent whole, nothing after the answer, no
// "Connection: close"), gives the connection back to the pool; closing it
// at any other point closes the connection. A request body still being
// sent then is given up: the sender's reads of it are cut short through
// req.Body's Close and the trace's BodyAbandoned, and Close waits for the
// sender to end. On an error, RoundTrip has done the same.
func (cl *Client) RoundTrip(ctx context.Context, route Route, req *http.Request) (*http.Response, error) {
	trace := ContextClientTrace(ctx)
	hasBody := req.Body != nil && req.Body != http.NoBody
	var resp *http.Response
	var sender *BodySender
	end := func() {
		if sender != nil {
			endSender(sender, req.Body, trace)
			sender = nil
		}
	}
	_, err := cl.attempt(ctx, route, replayable(req.Method, req.Header, hasBody), func(c *Conn) (err error) {
		if hasBody && !smallInMemory(req) {
			if sender, err = cl.sendWithBody(ctx, c, req, trace); err != nil {
				return err
			}
		} else if err = c.WriteAndAwait(ctx, trace, cl.Waits, func(bw *bufio.Writer) error {
			if err := WriteRequestHead(bw, req); err != nil {
				return err
			}
			if !hasBody {
				return nil
			}
			_, err := io.Copy(bw, req.Body)
			return err
		}); err != nil {
			return err
		}
		resp, err = cl.readResponse(ctx, c, req, sender, trace)
		return err
	}, end)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// SendHead sends a request without a body, one that may be sent twice (a
// GET), whose head write writes, to route, by the same rule as
// RoundTrip's, and returns the connection with the first byte of the
// answer in its read buffer. The caller reads the answer from c.R, or
// has ReadResponse read it, and then releases c (see Conn.Release).
func (cl *Client) SendHead(ctx context.Context, route Route, write func(*bufio.Writer) error) (*Conn, error) {
	trace := ContextClientTrace(ctx)
	return cl.attempt(ctx, route, true, func(c *Conn) error {
		return c.WriteAndAwait(ctx, trace, cl.Waits, write)
	}, nil)
}

// ReadResponse reads the head of the final answer to req, sent on c by
// SendHead, and gives it a Body as RoundTrip's. On an error c is closed.
func (cl *Client) ReadResponse(ctx context.Context, c *Conn, req *http.Request) (*http.Response, error) {
	resp, err := cl.readResponse(ctx, c, req, nil, ContextClientTrace(ctx))
	if err != nil {
		c.Release(false)
		return nil, err
	}
	return resp, nil
}

// readResponse reads the head of the final answer to req from c (see
// Conn.ReadFinalHead) and gives it a body that frees c for the next
// request once read to its end.
func (cl *Client) readResponse(ctx context.Context, c *Conn, req *http.Request, sender *BodySender, trace *ClientTrace) (*http.Response, error) {
	resp, err := c.ReadFinalHead(ctx, req, sender, trace, cl.Waits)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err // the caller closes the connection
	}
	c.busy = true
	resp.Body = &body{ReadCloser: resp.Body, ctx: ctx, c: c, sender: sender, reqBody: req.Body, trace: trace, reuse: !resp.Close}
	return resp, nil
}

// sendWithBody writes req, which has a body, on c and waits for the first
// byte of the answer. The body goes on another goroutine; the answer is
// awaited here, also while the body is still being sent (see
// Conn.AwaitWhileSending), and at most Waits.Head from the end of the
// body. The sender is returned also with an error, once started.
func (cl *Client) sendWithBody(ctx context.Context, c *Conn, req *http.Request, trace *ClientTrace) (*BodySender, error) {
	if err := WriteRequestHead(c.W, req); err != nil {
		return nil, err
	}
	c.SentAt = time.Now()
	wait := cl.Waits.Head
	if trace != nil {
		wait = cl.Waits.First
	}
	stall := cl.Waits.Head
	if cl.UploadStall > 0 {
		stall = cl.UploadStall
	}
	c.SetReadDeadline(time.Time{})
	// A request cancelled before the deadline was lifted has had the
	// deadline that ends its reads overwritten.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	_, inMemory := req.Body.(MemoryBody)
	s := NewBodySender(c.Net, c.W, !inMemory)
	var bp *[]byte
	if cl.Buffers != nil {
		bp = cl.Buffers.Get().(*[]byte)
	} else {
		buf := make([]byte, 32<<10)
		bp = &buf
	}
	go func() {
		if cl.Buffers != nil {
			defer cl.Buffers.Put(bp)
		}
		s.Run(req.Body, req.ContentLength, *bp, wait, stall, func() http.Header { return req.Trailer })
	}()
	return s, c.AwaitWhileSending(ctx, s, trace, cl.Waits)
}

// endSender ends s, a sender whose connection has been closed, if it
// still runs after SendGrace, and waits for it: a read of the client's
// body in progress is cut short (reqBody's Close, the trace's
// BodyAbandoned). What is left of that body is for the server side to
// drain or to end the client connection on.
func endSender(s *BodySender, reqBody io.Closer, trace *ClientTrace) {
	if s.Wait(SendGrace) {
		return
	}
	if s.Client {
		_ = reqBody.Close()
		if trace != nil && trace.BodyAbandoned != nil {
			trace.BodyAbandoned()
		}
	}
	<-s.Done()
}

// maxInlineBody is the largest body held in memory that is written with
// the request head, without a goroutine of its own: head and body fit in
// the socket's send buffer (16 KiB by default on Linux) and in far less
// than the upstream's TCP receive window, so the write returns whether or
// not the upstream reads them, and the answer is awaited after it, as
// for a GET.
const maxInlineBody = 8 << 10

// smallInMemory reports whether req's body is a MemoryBody of at most
// maxInlineBody bytes.
func smallInMemory(req *http.Request) bool {
	_, ok := req.Body.(MemoryBody)
	return ok && req.ContentLength >= 0 && req.ContentLength <= maxInlineBody
}

// MemoryBody is a request body held in memory, such as the copy kept to
// send a request again: a small one goes with the request head, and none
// is the client connection's to cut short.
type MemoryBody struct{ *bytes.Reader }

// Close does nothing: the bytes stay for a replay.
func (MemoryBody) Close() error { return nil }

// body is the Body of an answer that RoundTrip or ReadResponse read on c.
// Closed after its end, with nothing after it, it gives the connection
// back to the pool; closed before, it closes the connection, whose stream
// is then mid-message. It is the goroutine's that reads the answer.
type body struct {
	io.ReadCloser
	c       *Conn
	sender  *BodySender     // the request body's, if it had one
	reqBody io.Closer       // the request body, closed if abandoned
	trace   *ClientTrace    // the request's, if any
	ctx     context.Context // the exchange's, whose end ends c's reads
	eof     bool
	reuse   bool
	done    bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *body) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	// Reads after the exchange's context ended ended with the deadline
	// that its end set: the connection is done for then.
	live := b.ctx.Err() == nil
	// A request body not sent to its end leaves the connection
	// mid-request.
	if live && b.eof && b.reuse && b.c.R.Buffered() == 0 && (b.sender == nil || b.sender.Sent()) {
		err := b.ReadCloser.Close()
		b.c.Release(true)
		return err
	}
	// Closing the body of a response read with http.ReadResponse reads
	// it to its end; with the connection closed first, that ends at once
	// instead of fetching the rest of a body nobody wants.
	b.c.Release(false)
	_ = b.ReadCloser.Close()
	if b.sender != nil {
		endSender(b.sender, b.reqBody, b.trace)
	}
	return nil
}

// Release ends the exchange that holds c. With clean, the exchange's
// answer was read to its end with nothing after it, and the connection
// goes back to the pool, unless the exchange's context has ended (which
// moved its deadline into the past). Without clean, the connection is
// mid-message or in doubt, and is closed. A second Release does nothing.
func (c *Conn) Release(clean bool) {
	if !c.inUse {
		return
	}
	c.inUse, c.busy = false, false
	if live := c.unhold(); clean && live && c.pool != nil {
		c.pool.put(c)
		return
	}
	c.abort()
}

// abort closes c without a TLS close_notify. Writing one waits for room
// in the socket's send buffer, for up to 5 s, and an upstream that has
// stopped reading a request body leaves none.
func (c *Conn) abort() {
	if ra, ok := c.Net.(interface{ NetConn() net.Conn }); ok {
		_ = ra.NetConn().Close()
	}
	_ = c.Net.Close()
}

// hold makes c the connection of an exchange under ctx: the end of ctx
// ends its reads and writes until Release. A context that carries a
// Holder (see WithHolder) has it do this; any other gets a
// context.AfterFunc of its own.
func (c *Conn) hold(ctx context.Context) {
	c.inUse = true
	if h, _ := ctx.Value(holderKey{}).(*Holder); h != nil && h.ctx == ctx {
		c.holder = h
		h.take(c)
		return
	}
	conn := c.Net
	c.stop = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(ALongTimeAgo) })
}

// unhold undoes hold and reports whether the end of the exchange's
// context has left c alone.
func (c *Conn) unhold() (live bool) {
	if h := c.holder; h != nil {
		c.holder = nil
		return h.drop(c)
	}
	stop := c.stop
	c.stop = nil
	return stop == nil || stop()
}

// Holder holds the upstream connection of the exchange under way on one
// client connection, whose exchanges come one at a time. It ends that
// connection's reads and writes when the client connection's context
// ends (with one registration for all its exchanges, not one per
// exchange), and closes it when the client connection ends (Close): an
// exchange that did not end cleanly, by a panic or an early close of
// the client, leaves no upstream connection behind. An exchange that
// takes a connection while an earlier one is still held closes the
// earlier one.
type Holder struct {
	ctx  context.Context // set by WithHolder, then only read
	stop func() bool     // unregisters end; Close's

	mu sync.Mutex
	// Guarded by mu: the exchange's goroutine sets held, end (on the
	// goroutine that ctx's end starts) reads it.
	held  *Conn
	ended bool // ctx has ended: held's deadline is in the past
}

type holderKey struct{}

// WithHolder returns a context that carries a new Holder, and the Holder,
// which the client connection closes when it ends. Only exchanges under
// that very context (not one derived from it) use the Holder.
func WithHolder(ctx context.Context) (context.Context, *Holder) {
	h := &Holder{}
	h.ctx = context.WithValue(ctx, holderKey{}, h)
	h.stop = context.AfterFunc(h.ctx, h.end)
	return h.ctx, h
}

// end moves the deadline of the held connection into the past.
func (h *Holder) end() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ended = true
	if h.held != nil {
		_ = h.held.Net.SetDeadline(ALongTimeAgo)
	}
}

// take makes c the held connection, closing one an earlier exchange left.
func (h *Holder) take(c *Conn) {
	h.mu.Lock()
	left := h.held
	h.held = c
	if h.ended {
		_ = c.Net.SetDeadline(ALongTimeAgo)
	}
	h.mu.Unlock()
	if left != nil && left != c {
		left.holder = nil
		left.Release(false)
	}
}

// drop lets c go and reports whether ctx had not ended while it was held.
func (h *Holder) drop(c *Conn) (live bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == c {
		h.held = nil
	}
	return !h.ended
}

// Close closes the connection that an unfinished exchange still holds:
// with a TLS close_notify when no answer is being read, as TLS asks of a
// connection that ends. A cleanly ended exchange has given its connection
// back already. Close is called on the goroutine of the exchanges, once
// they are over. A nil Holder has nothing to close.
func (h *Holder) Close() {
	if h == nil {
		return
	}
	h.stop()
	h.mu.Lock()
	c := h.held
	h.held = nil
	h.mu.Unlock()
	if c == nil || !c.inUse {
		return
	}
	c.holder = nil
	if c.busy {
		c.Release(false)
		return
	}
	c.inUse = false
	_ = c.Net.Close()
}
