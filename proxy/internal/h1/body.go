package h1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// ALongTimeAgo is a deadline in the past, which ends blocked reads and
// writes at once.
var ALongTimeAgo = time.Unix(1, 0)

// SendGrace is how long a body sender that has not ended is waited for
// once the answer to its request is read, before its connection is taken
// as mid-request (see BodySender.Sent).
const SendGrace = 100 * time.Millisecond

// writeFailGrace is how long an answer may still come after the request
// body could not be written: an upstream that answers early and closes
// makes the write fail, and its answer is the one to relay.
const writeFailGrace = 50 * time.Millisecond

// BodyError is a failure to read a request body from its source (the
// client), not to send it.
type BodyError struct{ Err error }

func (e *BodyError) Error() string { return "reading the request body: " + e.Err.Error() }
func (e *BodyError) Unwrap() error { return e.Err }

// BodySender writes a request body upstream on its own goroutine while the
// goroutine that sent the head waits for the answer, as http.Transport
// does: an upstream that answers before it has read the whole body (a
// 401, a 413) is heard at once and cannot stall the upload.
type BodySender struct {
	// Set by NewBodySender, then only read.
	conn   net.Conn      // the upstream connection
	bw     *bufio.Writer // its buffered writer, the sender's while it runs
	Client bool          // the body is read from the client connection, not memory
	done   chan struct{} // closed when Run has ended

	// mu guards the fields below: Run sets them on the sender's
	// goroutine, the waiting goroutine reads them (State).
	mu        sync.Mutex
	finished  bool
	err       error     // the body's read error (a *BodyError) or the write's
	sentAt    time.Time // when the whole request was written
	answering bool      // the first byte of the answer has been read
}

// NewBodySender returns a sender of a body on conn, through bw.
func NewBodySender(conn net.Conn, bw *bufio.Writer, client bool) *BodySender {
	return &BodySender{conn: conn, bw: bw, Client: client, done: make(chan struct{})}
}

// Done is closed when the sender has ended.
func (s *BodySender) Done() <-chan struct{} { return s.done }

// Result reports whether the sender has ended and how.
func (s *BodySender) Result() (finished bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finished, s.err
}

// State is Result with the time the whole request was written, for the
// goroutine that waits for the answer; answering says that the answer's
// first byte has come, after which the sender no longer moves the read
// deadline.
func (s *BodySender) State(answering bool) (finished bool, err error, sentAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if answering {
		s.answering = true
	}
	return s.finished, s.err, s.sentAt
}

// rearm makes the sender wake the goroutine that waits for the answer
// when it ends (see Run), as it does until the answer's first byte has
// come: an informational answer came before the end of the body, and the
// final one is awaited anew. It reports false, and does nothing, once the
// sender has ended.
func (s *BodySender) rearm() (running bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return false
	}
	s.answering = false
	return true
}

// Sent reports whether the whole body went upstream, which the connection
// needs to carry another request. The answer to a request usually comes
// after its whole body, but can be read before the sender's goroutine has
// noted the end of its last write: a sender that has not ended is waited
// for, up to SendGrace.
func (s *BodySender) Sent() bool {
	if !s.Wait(SendGrace) {
		return false
	}
	_, err := s.Result()
	return err == nil
}

// Wait waits up to d for the sender to end and reports whether it has.
func (s *BodySender) Wait(d time.Duration) bool {
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

// Run copies body upstream through buf (see copyBody), after the head
// already buffered in the writer. When it ends, it sets the read deadline
// of the connection so that the goroutine waiting for the answer learns
// of the end: wait after a whole body, at once after a failed read of the
// client's body, a moment later after a failed write.
func (s *BodySender) Run(body io.Reader, n int64, buf []byte, wait, stall time.Duration, trailer func() http.Header) {
	err := s.copyBody(body, n, buf, trailer, stall)
	now := time.Now()
	s.mu.Lock()
	s.finished, s.err, s.sentAt = true, err, now
	if !s.answering {
		wake := now.Add(wait)
		var be *BodyError
		switch {
		case errors.As(err, &be):
			wake = ALongTimeAgo
		case err != nil:
			wake = now.Add(writeFailGrace)
		}
		_ = s.conn.SetReadDeadline(wake)
	}
	s.mu.Unlock()
	close(s.done)
}

// copyBody writes body to the buffered writer and flushes it: as it is
// when it must hold exactly n bytes, chunked, with trailer after it, when
// n is negative (a length not known in advance). It reads to the body's
// end, so that a client body is seen to be complete; a failed read is a
// *BodyError.
//
// An upstream that takes none of the body for stall (it stopped reading
// without answering or closing) ends the copy with an error that says so;
// the write deadline that measures this moves on at most once a second.
func (s *BodySender) copyBody(body io.Reader, n int64, buf []byte, trailer func() http.Header, stall time.Duration) (err error) {
	bw := s.bw
	var written int64
	var extended time.Time
	defer func() {
		_ = s.conn.SetWriteDeadline(time.Time{})
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			err = fmt.Errorf("the upstream took none of the request body for %v: %w", stall, err)
		}
	}()
	for {
		m, rerr := body.Read(buf)
		if m > 0 {
			written += int64(m)
			if n >= 0 && written > n {
				return &BodyError{fmt.Errorf("the body is longer than its Content-Length of %d bytes", n)}
			}
			if now := time.Now(); now.Sub(extended) > time.Second {
				_ = s.conn.SetWriteDeadline(now.Add(stall))
				extended = now
			}
			if n < 0 {
				_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(m), 16))
				_, _ = bw.WriteString("\r\n")
			}
			if _, err := bw.Write(buf[:m]); err != nil {
				return err
			}
			if n < 0 {
				_, _ = bw.WriteString("\r\n")
			}
		}
		switch {
		case rerr == io.EOF && n >= 0 && written < n:
			return &BodyError{io.ErrUnexpectedEOF}
		case rerr == io.EOF && n < 0:
			_, _ = bw.WriteString("0\r\n")
			// As net/http does: none for a client's request, whose
			// trailer the proxy drops.
			if err := WriteFields(bw, trailer(), nil); err != nil {
				return err
			}
			_, _ = bw.WriteString("\r\n")
			return bw.Flush()
		case rerr == io.EOF:
			return bw.Flush()
		case rerr != nil:
			return &BodyError{rerr}
		}
	}
}
