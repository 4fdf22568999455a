package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

// Conn is one upstream connection: the connection, its buffers, and the
// state of the exchange under way on it. Between exchanges the Pool that
// keeps it idle owns it; an exchange takes it (see Client) and uses it on
// the goroutine that waits for the answer, with a request body written on
// one more (see BodySender), which writes W only; the exchange gives it
// back with Release.
type Conn struct {
	// Set by NewConn, then only read.
	Net net.Conn      // the connection (a *tls.Conn)
	R   *bufio.Reader // reads Net through src
	W   *bufio.Writer // writes Net
	src *HeadSource

	// Set when the connection is opened, then only read.
	pool  *Pool // where Release gives it back
	route Route

	// The fields below belong to the exchange that holds the
	// connection, and to the pool while it is idle.

	// inUse: an exchange holds the connection and has not released it.
	inUse bool
	// busy: the head of an answer has been read, its body not yet.
	busy bool
	// holder is the Holder of the client connection whose exchange
	// holds this one, if its context has one; stop, otherwise,
	// unregisters the context.AfterFunc that ends the connection's
	// reads and writes when the exchange's context ends, and reports
	// false once that has happened.
	holder *Holder
	stop   func() bool
	// idleAt is when the connection went back to the pool.
	idleAt time.Time
	// probe looks at the socket for bytes or a close while idle; made
	// on first use.
	probe *socketProbe
	// quiet: the look that took the connection from the pool found
	// nothing on its socket and nothing held by TLS or the read buffer
	// (see idleFault), and no request has been written since.
	quiet bool

	// Answered: a byte of the answer to the current request has been
	// read, so that the request may not be sent again.
	Answered bool
	// SentAt is when the last request was written on the connection.
	SentAt time.Time
	// waitSince is when the read deadline in force was set to end the
	// first, short wait for an answer (see AwaitFirstByte); zero once
	// another deadline replaced it.
	waitSince time.Time
}

// NewConn returns the Conn of c, with buffers of 4 KiB.
func NewConn(c net.Conn) *Conn {
	src := &HeadSource{R: c}
	return &Conn{
		Net: c,
		R:   bufio.NewReaderSize(src, 4<<10),
		W:   bufio.NewWriterSize(c, 4<<10),
		src: src,
	}
}

// AwaitFirstByte sets the read deadline that ends the first wait for an
// answer, wait after now. One set for an earlier request a moment ago (a
// tenth of wait at most) stands: on a busy connection that saves a timer
// update per request, for a first wait that much shorter.
func (c *Conn) AwaitFirstByte(now time.Time, wait time.Duration) {
	if c.waitSince.IsZero() || now.Sub(c.waitSince) > wait/10 {
		_ = c.Net.SetReadDeadline(now.Add(wait))
		c.waitSince = now
	}
}

// SetReadDeadline sets a read deadline other than the first wait's.
func (c *Conn) SetReadDeadline(t time.Time) {
	_ = c.Net.SetReadDeadline(t)
	c.waitSince = time.Time{}
}

// HeadBuffered reports whether the read buffer holds a whole answer head.
func (c *Conn) HeadBuffered() bool {
	b, _ := c.R.Peek(c.R.Buffered())
	end, _ := HeadEnd(b, 0)
	return end >= 0
}

// ReadResponseHead reads the head of the next answer to req (see the
// function ReadResponseHead).
func (c *Conn) ReadResponseHead(req *http.Request) (*http.Response, error) {
	return ReadResponseHead(c.R, c.src, req)
}

// Waits bounds the wait for the answer to a request.
type Waits struct {
	// First is how long the answer is awaited before the ClientTrace
	// (if any) hears that it is slow to come.
	First time.Duration
	// Head is how long its head may take in all.
	Head time.Duration
}

// WriteAndAwait writes a request head with write and waits for the first
// byte of the answer, within w.Head. When the answer is slow to come, it
// says so through trace (if any), so that the server side can watch its
// client, whose going away ends ctx and the wait. Without a trace it does
// not wait: whatever the answer brings, the request is not sent again.
func (c *Conn) WriteAndAwait(ctx context.Context, trace *ClientTrace, w Waits, write func(*bufio.Writer) error) error {
	now := time.Now()
	c.SentAt = now
	deadline := now.Add(w.Head)
	if trace != nil {
		// A first, short wait: answers that come quickly never need the
		// watch of the client connection.
		c.AwaitFirstByte(now, w.First)
	} else {
		c.SetReadDeadline(deadline)
	}
	sent := false
	if trace != nil && c.quiet {
		// Nothing can be read before the answer comes: the request is
		// written and the answer awaited parked, without the read
		// that would find nothing yet (see socketProbe.sendAndWait).
		var err error
		if sent, err = c.probe.sendAndWait(c.W, write); err != nil {
			return err
		}
	}
	c.quiet = false
	if !sent {
		if err := write(c.W); err != nil {
			return err
		}
		if err := c.W.Flush(); err != nil {
			return err
		}
	}
	if trace == nil {
		c.Answered = true
		return nil
	}
	// The wait ended, or there was none: a read now finds the answer's
	// first bytes, or meets what ended the wait.
	_, err := c.R.Peek(1)
	if err != nil && isTimeout(err) && ctx.Err() == nil {
		trace.AwaitingAnswer()
		c.SetReadDeadline(deadline)
		// A watch that saw the client go before the deadline was
		// lifted has had its deadline overwritten.
		if err = ctx.Err(); err == nil {
			_, err = c.R.Peek(1)
		}
	} else if err == nil && !c.HeadBuffered() {
		c.SetReadDeadline(deadline)
	}
	if err != nil {
		return HeadError(ctx, err)
	}
	c.Answered = true
	return nil
}

// HeadError names a wait for an answer head that ended at its deadline
// (while ctx goes on) as ErrResponseHeaderTimeout.
func HeadError(ctx context.Context, err error) error {
	if ne, ok := err.(net.Error); ok && ne.Timeout() && ctx.Err() == nil {
		return fmt.Errorf("%w: %w", ErrResponseHeaderTimeout, err)
	}
	return err
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// ReadFinalHead reads the head of the final answer to req, after up to
// MaxInterim informational ones (100 Continue, 103 Early Hints); 101
// counts as final, for the caller to refuse. After an informational
// answer the final one may take w.Head, not just the first, short wait
// (see AwaitFirstByte), and trace (if any) hears that it is slow to come.
// While sender (if any) is still sending a client's body, the final answer
// is awaited as the first byte was (AwaitWhileSending): bounded from the
// end of the body, and with the client watched only once its body has been
// read to its end, since until then the sender's goroutine reads the
// client connection. The read deadline is lifted once the head is read.
func (c *Conn) ReadFinalHead(ctx context.Context, req *http.Request, sender *BodySender, trace *ClientTrace, w Waits) (*http.Response, error) {
	for interim := 0; ; interim++ {
		if interim > MaxInterim {
			return nil, ErrTooManyInterim
		}
		resp, err := c.ReadResponseHead(req)
		if err != nil {
			return nil, HeadError(ctx, err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			c.SetReadDeadline(time.Time{})
			return resp, nil
		}
		watch := trace != nil
		if sender != nil && sender.Client {
			// No deadline while the body is still being sent; the
			// sender sets one when it ends (after rearm, never before
			// it). A context that ended before the deadline was lifted
			// has had its own deadline overwritten.
			c.SetReadDeadline(time.Time{})
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if sender.rearm() {
				if err := c.AwaitWhileSending(ctx, sender, trace, w); err != nil {
					return nil, err
				}
				continue
			}
			// A body that could not be read from the client ends the
			// wait, as in AwaitWhileSending; after a failed write the
			// final answer may still come, but the client's body was
			// not read to its end: its connection is not watched.
			_, serr := sender.Result()
			var be *BodyError
			if errors.As(serr, &be) {
				return nil, serr
			}
			watch = watch && serr == nil
		}
		if watch {
			trace.AwaitingAnswer()
		}
		c.SetReadDeadline(time.Now().Add(w.Head))
		// A watch that saw the client go before the deadline was set
		// has had its deadline overwritten.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// AwaitWhileSending waits for the first byte of the answer to a request
// whose body s sends, also while it is still being sent. The wait has no
// deadline while the body is sent, then the one s set (w.First with a
// trace, w.Head without), then, with trace told that the answer is slow,
// up to w.Head from the end of the body. A body that could not be read
// from the client ends the wait with its *BodyError; one that could not
// be written, with the write's error unless an answer came meanwhile.
func (c *Conn) AwaitWhileSending(ctx context.Context, s *BodySender, trace *ClientTrace, w Waits) error {
	watching := false
	for {
		_, err := c.R.Peek(1)
		finished, serr, sentAt := s.State(err == nil)
		if err == nil {
			c.Answered = true
			break
		}
		var be *BodyError
		if finished && errors.As(serr, &be) {
			return serr
		}
		if !isTimeout(err) || ctx.Err() != nil || !finished {
			if finished && serr != nil && !isTimeout(err) {
				return fmt.Errorf("%w (after writing the request failed: %w)", err, serr)
			}
			return HeadError(ctx, err)
		}
		if serr != nil {
			return serr
		}
		if trace == nil || watching {
			return HeadError(ctx, err)
		}
		watching = true
		trace.AwaitingAnswer()
		c.SetReadDeadline(sentAt.Add(w.Head))
		// A watch that saw the client go before the deadline was lifted
		// has had its deadline overwritten.
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if !c.HeadBuffered() {
		c.SetReadDeadline(time.Now().Add(w.Head))
	}
	return nil
}
