package h1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Bounds of the answers an upstream gives to one request.
const (
	// MaxResponseHead bounds the head of an answer, as the default
	// MaxHeaderBytes bounds a client's request head.
	MaxResponseHead = 64 << 10
	// MaxInterim is how many informational (1xx) answers may come before
	// the final one.
	MaxInterim = 5
	// MaxKeptHead is the largest head buffer kept for a connection's next
	// message; a larger one, from a rare large head, is left to the
	// collector.
	MaxKeptHead = 4 << 10
)

// The errors below end an exchange with an upstream for a reason of the
// wire format; the proxy maps each to its own answer (an RFC 9209 error
// type).
var (
	// ErrResponseHeaderTimeout ends a wait for an answer head that took
	// longer than the wait allowed.
	ErrResponseHeaderTimeout = errors.New("timeout awaiting response headers")
	// ErrResponseHeadTooLarge ends the read of an answer head over
	// MaxResponseHead.
	ErrResponseHeadTooLarge = fmt.Errorf("the upstream's answer head is larger than %d KiB", MaxResponseHead>>10)
	// ErrTooManyInterim ends the wait for a final answer after
	// MaxInterim informational ones.
	ErrTooManyInterim = fmt.Errorf("the upstream sent more than %d informational (1xx) answers before its final one", MaxInterim)
)

// HeadSource is what an upstream connection's read buffer reads from: the
// connection and, while an answer head that the buffer did not hold whole
// is read (see ReadResponseHead), a copy of its bytes, which also bounds
// it. Only the goroutine reading the answer uses it.
type HeadSource struct {
	R      io.Reader // the connection
	teeing bool
	tee    []byte // the bytes of the head being read, and maybe more
	// drained: the last read of R returned less than it asked for, so
	// that R (a *tls.Conn) then held no plaintext still to be read.
	drained bool
}

func (s *HeadSource) Read(p []byte) (int, error) {
	if !s.teeing {
		n, err := s.R.Read(p)
		s.drained = n < len(p)
		return n, err
	}
	room := MaxResponseHead - len(s.tee)
	if room <= 0 {
		return 0, ErrResponseHeadTooLarge
	}
	if len(p) > room {
		p = p[:room]
	}
	n, err := s.R.Read(p)
	s.drained = n < len(p)
	s.tee = append(s.tee, p[:n]...)
	return n, err
}

// ReadResponseHead reads the head of the next answer to req from br,
// which reads from src, with http.ReadResponse, bounded by
// MaxResponseHead. The parser drops a Connection field that says close,
// and with it the names of the other hop-by-hop fields it lists (RFC
// 9110, section 7.6.1): its values, taken from the raw head, are put back
// for the hop-by-hop removal.
func ReadResponseHead(br *bufio.Reader, src *HeadSource, req *http.Request) (*http.Response, error) {
	buf, _ := br.Peek(br.Buffered())
	end, _ := HeadEnd(buf, 0)
	raw := buf
	if end < 0 {
		// The rest of the head is still to come: it is read through
		// the copy, which bounds it.
		src.tee = append(src.tee[:0], buf...)
		src.teeing = true
	}
	var conn []string
	collect := func(b []byte) {
		FieldValues(b, "connection", func(v []byte) { conn = append(conn, string(v)) })
	}
	if end >= 0 {
		collect(raw[:end])
	}
	resp, err := http.ReadResponse(br, req)
	if src.teeing {
		src.teeing = false
		if err == nil {
			if e, _ := HeadEnd(src.tee, 0); e >= 0 {
				collect(src.tee[:e])
			}
		}
		src.tee = src.tee[:0]
		if cap(src.tee) > MaxKeptHead {
			src.tee = nil
		}
	}
	if err != nil {
		return nil, err
	}
	if _, ok := resp.Header["Connection"]; !ok && len(conn) > 0 {
		resp.Header["Connection"] = conn
	}
	return resp, nil
}

// ConnectionOfFinal returns the values of the Connection fields of the
// final answer's head in b, after any informational ones, or nil if b
// does not hold it.
func ConnectionOfFinal(b []byte) []string {
	for {
		end, _ := HeadEnd(b, 0)
		_, code, ok := StatusLine(b)
		if end < 0 || !ok {
			return nil
		}
		if !Interim(code) {
			var values []string
			FieldValues(b[:end], "connection", func(v []byte) { values = append(values, string(v)) })
			return values
		}
		b = b[end:]
	}
}

// FinalHeadEnd returns where the head of the final answer ends in b,
// after any informational ones, or -1 if b does not hold it whole.
func FinalHeadEnd(b []byte) int {
	at := 0
	for {
		end, _ := HeadEnd(b[at:], 0)
		if end < 0 {
			return -1
		}
		if _, code, ok := StatusLine(b[at:]); !ok || !Interim(code) {
			return at + end
		}
		at += end
	}
}
