package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
)

// The heads of upstream answers are read with http.ReadResponse, within
// the bounds below, and with the raw Connection field kept: the parser
// drops one that says close, and with it the names of the other
// hop-by-hop fields it lists (RFC 9110, section 7.6.1).

// Bounds of the answers an upstream gives to one request.
const (
	// maxResponseHead bounds the head of an answer, as the default of
	// Limits.MaxHeaderBytes bounds a client's request head.
	maxResponseHead = 64 << 10
	// maxInterim is how many informational (1xx) answers may come before
	// the final one.
	maxInterim = 5
)

var (
	errResponseHeadTooLarge = fmt.Errorf("the upstream's answer head is larger than %d KiB", maxResponseHead>>10)
	errTooManyInterim       = fmt.Errorf("the upstream sent more than %d informational (1xx) answers before its final one", maxInterim)
)

// headSource is what an upstream connection's read buffer reads from: the
// connection and, while an answer head that the buffer did not hold whole
// is read (see readResponse), a copy of its bytes, which also bounds it.
// Only the goroutine reading the answer uses it.
type headSource struct {
	conn   net.Conn
	teeing bool
	tee    []byte // the bytes of the head being read, and maybe more
}

func (s *headSource) Read(p []byte) (int, error) {
	if !s.teeing {
		return s.conn.Read(p)
	}
	room := maxResponseHead - len(s.tee)
	if room <= 0 {
		return 0, errResponseHeadTooLarge
	}
	if len(p) > room {
		p = p[:room]
	}
	n, err := s.conn.Read(p)
	s.tee = append(s.tee, p[:n]...)
	return n, err
}

// readResponse reads the head of the next answer on u with
// http.ReadResponse, bounded by maxResponseHead. The parser drops a
// Connection field that says close, and with it the names of the other
// hop-by-hop fields it lists (RFC 9110, section 7.6.1): its values, taken
// from the raw head, are put back for removeHopByHop.
func (u *upstreamConn) readResponse(req *http.Request) (*http.Response, error) {
	buf, _ := u.br.Peek(u.br.Buffered())
	end, conn := scanResponseHead(buf)
	if end < 0 {
		// The rest of the head is still to come: it is read through
		// the copy, which bounds it.
		u.src.tee = append(u.src.tee[:0], buf...)
		u.src.teeing = true
	}
	resp, err := http.ReadResponse(u.br, req)
	if u.src.teeing {
		u.src.teeing = false
		if err == nil {
			_, conn = scanResponseHead(u.src.tee)
		}
		u.src.tee = u.src.tee[:0]
		if cap(u.src.tee) > maxKeptHead {
			u.src.tee = nil
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

// scanResponseHead finds the end of the answer head at the start of b and
// the values of its Connection fields. It returns -1 when b does not hold
// the whole head.
func scanResponseHead(b []byte) (end int, conn []string) {
	end, _ = headEnd(b, 0)
	if end < 0 {
		return -1, nil
	}
	_, rest := cutLine(b[:end]) // the status line
	for len(rest) > 0 {
		var line []byte
		line, rest = cutLine(rest)
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && equalFoldASCII(name, "connection") {
			conn = append(conn, string(trimSpace(value)))
		}
	}
	return end, conn
}
