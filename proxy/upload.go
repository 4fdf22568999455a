package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// sendGrace is how long a body sender that has not ended is waited for
// once the answer to its request is read, before its connection is taken
// as mid-request (see bodySender.sent).
const sendGrace = 100 * time.Millisecond

// writeFailGrace is how long an answer may still come after the request
// body could not be written: an upstream that answers early and closes
// makes the write fail, and its answer is the one to relay.
const writeFailGrace = 50 * time.Millisecond

// bodySender writes a request body upstream on its own goroutine while the
// handler's goroutine waits for the answer, as http.Transport does: an
// upstream that answers before it has read the whole body (a 401, a 413)
// is heard at once and cannot stall the upload.
type bodySender struct {
	u      *upstreamConn
	client bool // the body is read from the client connection, not memory
	done   chan struct{}

	mu        sync.Mutex
	finished  bool
	err       error     // the body's read error (a *bodyError) or the write's
	sentAt    time.Time // when the whole request was written
	answering bool      // the first byte of the answer has been read
}

// result reports whether the sender has ended and how.
func (s *bodySender) result() (finished bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finished, s.err
}

// sent reports whether the whole body went upstream, which the connection
// needs to carry another request. The answer to a request usually comes
// after its whole body, but can be read before the sender's goroutine has
// noted the end of its last write: a sender that has not ended is waited
// for, up to sendGrace.
func (s *bodySender) sent() bool {
	if !s.wait(sendGrace) {
		return false
	}
	_, err := s.result()
	return err == nil
}

// wait waits up to d for the sender to end and reports whether it has.
func (s *bodySender) wait(d time.Duration) bool {
	select {
	case <-s.done:
		return true
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.done:
		return true
	case <-t.C:
		return false
	}
}

// run copies body to s.u through buf (see copyRequestBody), after the head
// already buffered there. When it ends, it sets the read
// deadline of the connection so that the goroutine waiting for the answer
// learns of the end: wait after a whole body, at once after a failed read
// of the client's body, a moment later after a failed write.
func (s *bodySender) run(body io.Reader, n int64, buf []byte, wait, stall time.Duration, trailer func() http.Header) {
	err := copyRequestBody(s.u, body, n, buf, trailer, stall)
	now := time.Now()
	s.mu.Lock()
	s.finished, s.err, s.sentAt = true, err, now
	if !s.answering {
		wake := now.Add(wait)
		var be *bodyError
		switch {
		case errors.As(err, &be):
			wake = aLongTimeAgo
		case err != nil:
			wake = now.Add(writeFailGrace)
		}
		_ = s.u.conn.SetReadDeadline(wake)
	}
	s.mu.Unlock()
	close(s.done)
}

// copyRequestBody writes body to u's buffered writer and flushes it: as it
// is when it must hold exactly n bytes, chunked, with trailer after it,
// when n is negative (a length not known in advance). It reads to the
// body's end, so that a client body is seen to be complete; a failed read
// is a *bodyError.
//
// An upstream that takes none of the body for stall (it stopped reading
// without answering or closing) ends the copy with an error that says so;
// the write deadline that measures this moves on at most once a second.
func copyRequestBody(u *upstreamConn, body io.Reader, n int64, buf []byte, trailer func() http.Header, stall time.Duration) (err error) {
	var written int64
	var extended time.Time
	defer func() {
		_ = u.conn.SetWriteDeadline(time.Time{})
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			err = fmt.Errorf("the upstream took none of the request body for %v: %w", stall, err)
		}
	}()
	for {
		m, rerr := body.Read(buf)
		if m > 0 {
			written += int64(m)
			if n >= 0 && written > n {
				return &bodyError{fmt.Errorf("the body is longer than its Content-Length of %d bytes", n)}
			}
			if now := time.Now(); now.Sub(extended) > time.Second {
				_ = u.conn.SetWriteDeadline(now.Add(stall))
				extended = now
			}
			if n < 0 {
				_, _ = u.bw.Write(strconv.AppendInt(u.bw.AvailableBuffer(), int64(m), 16))
				_, _ = u.bw.WriteString("\r\n")
			}
			if _, err := u.bw.Write(buf[:m]); err != nil {
				return err
			}
			if n < 0 {
				_, _ = u.bw.WriteString("\r\n")
			}
		}
		switch {
		case rerr == io.EOF && n >= 0 && written < n:
			return &bodyError{io.ErrUnexpectedEOF}
		case rerr == io.EOF && n < 0:
			_, _ = u.bw.WriteString("0\r\n")
			// As net/http does: none for a client's request, whose
			// trailer outgoing drops.
			if err := h1.WriteFields(u.bw, trailer(), nil); err != nil {
				return err
			}
			_, _ = u.bw.WriteString("\r\n")
			return u.bw.Flush()
		case rerr == io.EOF:
			return u.bw.Flush()
		case rerr != nil:
			return &bodyError{rerr}
		}
	}
}

// sendWithBody writes req, which has a body, on u and reads
// the head of the answer. The body goes on another goroutine; the answer
// is awaited here, also while the body is still being sent. It waits
// without a deadline while the body is sent, then clientWatchDelay, then,
// watching the client connection, up to responseHeaderTimeout from the
// end of the body.
func (p *Proxy) sendWithBody(u *upstreamConn, req *http.Request, x *exchange) (*http.Response, error) {
	ctx := req.Context()
	if err := h1.WriteRequestHead(u.bw, req); err != nil {
		return nil, err
	}
	u.sentAt = time.Now()
	wait := responseHeaderTimeout
	if x.trace != nil {
		wait = clientWatchDelay
	}
	stall := responseHeaderTimeout
	if p.uploadStall > 0 {
		stall = p.uploadStall
	}
	u.setReadDeadline(time.Time{})
	// A request cancelled before the deadline was lifted has had the
	// deadline that ends its reads overwritten.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &bodySender{u: u, client: req.Body != nil && !inMemory(req.Body), done: make(chan struct{})}
	x.sender = s
	bp := p.buffers.Get().(*[]byte)
	go func() {
		defer p.buffers.Put(bp)
		s.run(req.Body, req.ContentLength, *bp, wait, stall, func() http.Header { return req.Trailer })
	}()

	watching := false
	for {
		_, err := u.br.Peek(1)
		s.mu.Lock()
		if err == nil {
			s.answering = true
			u.answered = true
		}
		finished, serr, sentAt := s.finished, s.err, s.sentAt
		s.mu.Unlock()
		if err == nil {
			break
		}
		var be *bodyError
		if finished && errors.As(serr, &be) {
			return nil, serr
		}
		if !isTimeout(err) || ctx.Err() != nil || !finished {
			if finished && serr != nil && !isTimeout(err) {
				return nil, fmt.Errorf("%w (after writing the request failed: %w)", err, serr)
			}
			return nil, headError(ctx, err)
		}
		if serr != nil {
			return nil, serr
		}
		if x.trace == nil || watching {
			return nil, headError(ctx, err)
		}
		watching = true
		x.trace.awaitingAnswer()
		u.setReadDeadline(sentAt.Add(responseHeaderTimeout))
		// A watch that saw the client go before the deadline was lifted
		// has had its deadline overwritten.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	if !headBuffered(u.br) {
		u.setReadDeadline(time.Now().Add(responseHeaderTimeout))
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
// sendGrace, and waits for it. An answer that came before the whole body was sent leaves the
// upstream connection mid-request: it is closed, which fails the
// sender's write, and a read of the client's body in progress is cut
// short. What is left of that body is for the serving loop to drain or
// to end the connection on.
func (x *exchange) endSend() {
	s := x.sender
	if s == nil || s.wait(sendGrace) {
		return
	}
	x.target.closeConn(s.u)
	if s.client {
		x.body.Close()
		if x.trace != nil {
			x.trace.bodyAbandoned()
		}
	}
	<-s.done
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
