package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// bodySender is the exchange's h1.BodySender and the upstream
// connection it writes on.
type bodySender struct {
	*h1.BodySender
	u *upstreamConn
}

// sendWithBody writes req, which has a body, on u and reads the head of
// the answer. The body goes on another goroutine; the answer is awaited
// here, also while the body is still being sent (see
// h1.Conn.AwaitWhileSending), and at most responseHeaderTimeout from the
// end of the body.
func (p *Proxy) sendWithBody(u *upstreamConn, req *http.Request, x *exchange) (*http.Response, error) {
	ctx := req.Context()
	if err := h1.WriteRequestHead(u.W, req); err != nil {
		return nil, err
	}
	u.SentAt = time.Now()
	wait := responseHeaderTimeout
	if x.trace != nil {
		wait = h1.WatchDelay
	}
	stall := responseHeaderTimeout
	if p.uploadStall > 0 {
		stall = p.uploadStall
	}
	u.SetReadDeadline(time.Time{})
	// A request cancelled before the deadline was lifted has had the
	// deadline that ends its reads overwritten.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &bodySender{BodySender: h1.NewBodySender(u.Net, u.W, req.Body != nil && !inMemory(req.Body)), u: u}
	x.sender = s
	bp := p.buffers.Get().(*[]byte)
	go func() {
		defer p.buffers.Put(bp)
		s.Run(req.Body, req.ContentLength, *bp, wait, stall, func() http.Header { return req.Trailer })
	}()

	if err := u.AwaitWhileSending(ctx, s.BodySender, x.trace, p.waits()); err != nil {
		return nil, err
	}
	return p.readDirectResponse(u, req, x)
}

// maxInlineBody is the largest body held in memory that is written with
// the request head, without a goroutine of its own: head and body fit in
// the socket's send buffer (16 KiB by default on Linux) and in far less
// than the upstream's TCP receive window, so the write returns whether or
// not the upstream reads them, and the answer is awaited after it, as
// for a GET.
const maxInlineBody = 8 << 10

// smallInMemory reports whether req's body is held in memory and at most
// maxInlineBody long.
func smallInMemory(req *http.Request) bool {
	return req.ContentLength >= 0 && req.ContentLength <= maxInlineBody && inMemory(req.Body)
}

// inMemory reports whether body is the in-memory copy kept for a replay.
func inMemory(body io.ReadCloser) bool {
	_, ok := body.(memoryBody)
	return ok
}

// endSend ends the exchange's body sender, if one still runs after
// h1.SendGrace, and waits for it. An answer that came before the whole body was sent leaves the
// upstream connection mid-request: it is closed, which fails the
// sender's write, and a read of the client's body in progress is cut
// short. What is left of that body is for the serving loop to drain or
// to end the connection on.
func (x *exchange) endSend() {
	s := x.sender
	if s == nil || s.Wait(h1.SendGrace) {
		return
	}
	x.target.closeConn(s.u)
	if s.Client {
		x.body.Close()
		if x.trace != nil {
			x.trace.BodyAbandoned()
		}
	}
	<-s.Done()
}

// closeConn closes u, which may be the upstream connection of the client
// connection's exchange or one it has replaced, mid-message.
func (t *target) closeConn(u *upstreamConn) {
	if t.upstream == u {
		t.upstream = nil
	}
	u.abort()
}

// memoryBody is the body of a request buffered for a replay.
type memoryBody struct{ *bytes.Reader }

func (memoryBody) Close() error { return nil }

// sendDirect sends req on an upstream connection from the pool, or a new
// one, and once more on another when the retry rule allows (see attempt).
func (p *Proxy) sendDirect(ctx context.Context, req *http.Request, x *exchange) (*http.Response, error) {
	var resp *http.Response
	replay := replayable(req.Method, req.Header, req.Body != nil && req.Body != http.NoBody)
	_, err := p.attempt(ctx, x.target, replay, func(u *upstreamConn) (err error) {
		resp, err = p.sendOn(u, req, x)
		return err
	})
	return resp, err
}
