package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// upstreamConn is an upstream connection of intercepted requests. Between
// exchanges it is idle in the pool (see connPool), which owns it then; an
// exchange takes it (see acquire) and uses it on the goroutine that serves
// the client connection, with a request body written on one more, with
// none of the hand-offs between goroutines that http.Transport makes for
// every round trip; a cleanly ended exchange gives it back (see recycle).
// Only plain-HTTP requests go through the shared transport.
type upstreamConn struct {
	*h1.Conn // the wire side

	// The fields up to hostport are set when the connection is opened,
	// and only read after.
	pool     *connPool
	route    string // the pool's key (see Proxy.route)
	host     string // the upstream's name, for TLS
	hostport string // and its address

	// The fields below belong to the exchange that holds the connection,
	// and to the pool while it is idle.

	busy bool // a response body is still being read
	// idleAt is when the connection went back to the pool.
	idleAt time.Time
	// probe looks at the socket for bytes or a close while idle; made
	// on first use.
	probe *socketProbe
	// stop unregisters the context.AfterFunc that ends the connection's
	// reads and writes when the context of the exchange that holds it
	// ends (the client went away, or the proxy shuts down); it reports
	// false once that has happened.
	stop func() bool
}

// send sends req upstream: on a pooled upstream connection for an
// intercepted request, through the shared transport for plain HTTP.
func (p *Proxy) send(req *http.Request, x *exchange) (*http.Response, error) {
	t := x.target
	if t.plain || p.transportOnly {
		if x.trace != nil {
			// The shared transport gives no sign that it waits.
			x.trace.AwaitingAfterBody()
		}
		return p.roundTripShared(req)
	}
	return p.sendDirect(req.Context(), req, x)
}

// dialUpstream opens a verified TLS connection to host (at hostport),
// through the same guarded dialer (and corporate proxy, if any) as the
// transport. TLS sessions are resumed from the cache that the transport
// shares.
func (p *Proxy) dialUpstream(ctx context.Context, host, hostport string) (*upstreamConn, error) {
	tc, err := p.dialTLS(ctx, hostport, host)
	if err != nil {
		return nil, err
	}
	return &upstreamConn{Conn: h1.NewConn(tc), host: host, hostport: hostport}, nil
}

// waits are the bounds of the wait for an answer: h1.WatchDelay before
// the client connection is watched, responseHeaderTimeout in all.
func (p *Proxy) waits() h1.Waits {
	return h1.Waits{First: h1.WatchDelay, Head: responseHeaderTimeout}
}

// sendOn writes req on u and reads the head of the answer. A small body
// held in memory goes with the head, on this goroutine; any other body is
// sent by sendWithBody. The answer's body is read by the caller; u may
// carry the next request once it has been read to its end.
func (p *Proxy) sendOn(u *upstreamConn, req *http.Request, x *exchange) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody && !smallInMemory(req) {
		return p.sendWithBody(u, req, x)
	}
	err := u.WriteAndAwait(req.Context(), x.trace, p.waits(), func(bw *bufio.Writer) error {
		if err := h1.WriteRequestHead(bw, req); err != nil {
			return err
		}
		if req.Body == nil || req.Body == http.NoBody {
			return nil
		}
		_, err := io.Copy(bw, req.Body)
		return err
	})
	if err != nil {
		return nil, err
	}
	return p.readDirectResponse(u, req, x)
}

// readDirectResponse reads the head of the final answer to req from u
// (see h1.Conn.ReadFinalHead) and gives it a body that frees u for the
// next request once read to its end.
func (p *Proxy) readDirectResponse(u *upstreamConn, req *http.Request, x *exchange) (*http.Response, error) {
	ctx := req.Context()
	var sender *h1.BodySender
	if x.sender != nil {
		sender = x.sender.BodySender
	}
	resp, err := u.ReadFinalHead(ctx, req, sender, x.trace, p.waits())
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err // the caller closes the connection
	}
	u.busy = true
	var s *bodySender
	if x.sender != nil && x.sender.u == u {
		s = x.sender
	}
	resp.Body = &directBody{ReadCloser: resp.Body, ctx: ctx, t: x.target, u: u, s: s, reuse: !resp.Close}
	return resp, nil
}

// directBody is the body of an answer read on a pooled upstream
// connection. Closed after its end, with nothing after it, it gives the
// connection back to the pool; closed before, it closes the connection,
// whose stream is then mid-message.
type directBody struct {
	io.ReadCloser
	t     *target
	u     *upstreamConn
	s     *bodySender     // the request body's, if it had one
	ctx   context.Context // the request's, whose end ends u's reads
	eof   bool
	reuse bool
	done  bool
}

func (b *directBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *directBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	// Reads after the client went away ended with the deadline that
	// the end of the context set: the connection is done for then.
	live := b.ctx.Err() == nil
	own := b.t.upstream == b.u
	// A request body not sent to its end leaves the connection
	// mid-request.
	if own && live && b.eof && b.reuse && b.u.R.Buffered() == 0 && (b.s == nil || b.s.Sent()) {
		err := b.ReadCloser.Close()
		b.t.recycle()
		return err
	}
	// Closing the body of a response read with http.ReadResponse reads
	// it to its end; with the connection closed first, that ends at once
	// instead of fetching the rest of a body nobody wants.
	b.t.closeConn(b.u)
	_ = b.ReadCloser.Close()
	return nil
}

// closeUpstream closes the upstream connection of the client connection's
// exchange, which is mid-message or not to be used again (see
// upstreamConn.abort).
func (t *target) closeUpstream() {
	if t.upstream != nil {
		t.upstream.abort()
		t.upstream = nil
	}
}

// releaseUpstream closes the upstream connection that an exchange of the
// client connection still held when the client's ended: with a TLS
// close_notify when no answer is being read, as TLS asks of a connection
// that ends. A cleanly ended exchange has given its connection back to
// the pool already.
func (t *target) releaseUpstream() {
	u := t.upstream
	if u == nil {
		return
	}
	t.upstream = nil
	if u.busy {
		u.abort()
		return
	}
	u.stop()
	_ = u.Net.Close()
}

// abort closes u without a TLS close_notify. Writing one waits for room
// in the socket's send buffer, for up to 5 s, and an upstream that has
// stopped reading a request body leaves none.
func (u *upstreamConn) abort() {
	u.stop()
	if tc, ok := u.Net.(*tls.Conn); ok {
		_ = tc.NetConn().Close()
	}
	_ = u.Net.Close()
}
