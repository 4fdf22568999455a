package h1

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// guardConn follows the HTTP/1.1 message framing of the decrypted client
// stream of a served connection and refuses, before they are parsed,
// requests whose length is ambiguous: Content-Length together with
// Transfer-Encoding, Content-Length values that differ, transfer codings
// other than chunked, folded header lines, protocol upgrades, and header
// blocks over the limit. net/http's parser alone would resolve some of these by
// dropping Content-Length and forward the request; a message that two
// parsers may frame differently is an attack (RFC 9112, section 11.2), so
// it is answered with 400 (431 for size) and nothing is forwarded.
//
// Its state is changed by Read, on whichever goroutine reads the client
// connection at the time (see ServerConn.br): one at a time. The refusal
// is written by the serving goroutine, which reads failed.
type guardConn struct {
	net.Conn // the *tls.Conn
	maxHead  int

	state     framingState
	buf       []byte // the incomplete head, or chunk-size or trailer line, being read
	lineStart int    // where the incomplete line of an incomplete head starts in buf
	remaining int64  // bytes left of a Content-Length body or chunk
	failed    bool

	refusal *RequestError // a refused request, not yet answered
}

type framingState int

const (
	stateHead framingState = iota
	stateBody
	stateChunkSize
	stateChunkData
	stateChunkEnd
	stateTrailer
)

// maxChunkLine bounds a chunk-size or trailer line.
const maxChunkLine = 4096

func (c *guardConn) Read(b []byte) (int, error) {
	if c.failed {
		return 0, errFramingRefused
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		if e, method := c.scan(b[:n]); e != nil {
			// None of this read reaches the server, not even a request
			// before the refused one in a pipelined batch: nothing of a
			// stream that mixes in a refused message is forwarded.
			e.Method, e.Reason = method, "bad_framing"
			c.failed, c.refusal = true, e
			return 0, errFramingRefused
		}
	}
	return n, err
}

// errFramingRefused ends the reading of a refused connection; the serving
// loop then has the refusal answered (ServerConn.answerRefusal) and closes
// it. The answer is given when the loop next reads a request head, so
// that it never lands in the middle of another answer; a refusal met
// while a request body is read ends that request instead.
var errFramingRefused = &net.OpError{Op: "read", Net: "tcp", Err: errors.New("request refused for its framing")}

// takeRefusal returns the refused request, once.
func (c *guardConn) takeRefusal() *RequestError {
	e := c.refusal
	c.refusal = nil
	return e
}

// badRequest is the 400 refusal of a request with method (if known).
func badRequest(method, format string, args ...any) *RequestError {
	return &RequestError{Status: http.StatusBadRequest, Method: method, Reason: "bad_request", Message: fmt.Sprintf(format, args...)}
}

// nextLine takes bytes of b up to a line feed. It returns the line (without
// CR LF), whether it is complete, and the rest of b. The line is only valid
// until the next call.
func (c *guardConn) nextLine(b []byte, limit int) (line []byte, complete bool, rest []byte, tooLong bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		c.buf = append(c.buf, b...)
		return nil, false, nil, len(c.buf) > limit
	}
	if len(c.buf) == 0 {
		line = b[:i]
	} else {
		c.buf = append(c.buf, b[:i]...)
		line = c.buf
		c.buf = c.buf[:0]
	}
	line = TrimCR(line)
	return line, true, b[i+1:], len(line) > limit
}

// scan advances the framing over b. It returns the refusal of a request
// to refuse, with the request's method if known. Heads are checked in
// place when a read holds the whole of one, as it nearly always does, and
// only an incomplete head is copied to wait for the rest.
func (c *guardConn) scan(b []byte) (*RequestError, string) {
	for len(b) > 0 {
		switch c.state {
		case stateHead:
			head, from := b, 0
			if len(c.buf) > 0 {
				c.buf = append(c.buf, b...)
				head, from = c.buf, c.lineStart
			}
			end, lineStart := HeadEnd(head, from)
			if end < 0 {
				if len(head) > c.maxHead {
					return c.tooLarge(), methodOf(head)
				}
				if len(c.buf) == 0 {
					c.buf = append(c.buf, b...)
				}
				c.lineStart = lineStart
				b = nil
				continue
			}
			if end > c.maxHead {
				return c.tooLarge(), methodOf(head)
			}
			// The bytes of b after the head's end belong to what follows.
			b = b[len(b)-(len(head)-end):]
			a := c.endHead(head[:end])
			if cap(c.buf) > MaxKeptHead {
				c.buf = nil
			}
			c.buf, c.lineStart = c.buf[:0], 0
			if a != nil {
				return a, methodOf(head)
			}
		case stateBody, stateChunkData:
			n := int64(len(b))
			if n > c.remaining {
				n = c.remaining
			}
			c.remaining -= n
			b = b[n:]
			if c.remaining == 0 {
				if c.state == stateBody {
					c.state = stateHead
				} else {
					c.state = stateChunkEnd
				}
			}
		case stateChunkSize, stateChunkEnd, stateTrailer:
			line, complete, rest, tooLong := c.nextLine(b, maxChunkLine)
			if tooLong {
				return badRequest("", "a chunk-size or trailer line is longer than %d bytes", maxChunkLine), ""
			}
			b = rest
			if !complete {
				continue
			}
			switch c.state {
			case stateChunkEnd:
				if len(line) != 0 {
					return badRequest("", "malformed chunked body: no line end after chunk data"), ""
				}
				c.state = stateChunkSize
			case stateTrailer:
				if len(line) == 0 {
					c.state = stateHead
				}
			default:
				size, ok := parseChunkSize(line)
				if !ok {
					return badRequest("", "malformed chunked body: bad chunk size"), ""
				}
				if size == 0 {
					c.state = stateTrailer
				} else {
					c.state, c.remaining = stateChunkData, size
				}
			}
		}
	}
	return nil, ""
}

// midHead reports whether the bytes read so far end inside a request
// head, whose rest must still arrive.
func (c *guardConn) midHead() bool {
	return c.state == stateHead && len(c.buf) > 0
}

func (c *guardConn) tooLarge() *RequestError {
	return &RequestError{Status: http.StatusRequestHeaderFieldsTooLarge, Message: fmt.Sprintf("the request's header block is larger than %d bytes", c.maxHead)}
}

// methodOf is the method of the request head in b, if its first line is
// complete.
func methodOf(b []byte) string {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return ""
	}
	line := TrimCR(b[:i])
	if len(line) == 0 {
		return ""
	}
	m, _, _ := bytes.Cut(line, []byte(" "))
	return string(m)
}

// endHead checks a complete request head, ending with its empty line, and
// sets up the framing of its body. It reads the head in place: nothing of
// an accepted head is copied.
func (c *guardConn) endHead(head []byte) *RequestError {
	line, head := CutLine(head)
	if len(line) == 0 {
		return badRequest("", "malformed request: empty request line")
	}
	_, _, proto, ok := RequestLine(line)
	if !ok {
		return badRequest("", "malformed request line")
	}
	var (
		contentLength, transferEncoding   []byte // the first of each
		contentLengths, transferEncodings int
		lengthsDiffer                     bool
	)
	for {
		line, head = CutLine(head)
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return badRequest("", "folded header lines (obs-fold) are not accepted")
		}
		name, value, ok := SplitField(line)
		if !ok {
			return badRequest("", "malformed header line")
		}
		switch {
		case EqualFold(name, "content-length"):
			if contentLengths == 0 {
				contentLength = value
			} else if !bytes.Equal(value, contentLength) {
				lengthsDiffer = true
			}
			contentLengths++
		case EqualFold(name, "transfer-encoding"):
			if transferEncodings == 0 {
				transferEncoding = value
			}
			transferEncodings++
		case EqualFold(name, "upgrade"):
			return badRequest("", "protocol upgrades are not supported through this proxy")
		}
	}
	var length int64
	if contentLengths > 0 {
		n, ok := ParseLength(contentLength)
		if !ok {
			return badRequest("", "the request's Content-Length is not a number")
		}
		if lengthsDiffer {
			return badRequest("", "the request has several Content-Length headers that differ: refused as a request smuggling attempt")
		}
		length = n
	}
	if transferEncodings > 0 {
		if contentLengths > 0 {
			return badRequest("", "the request has both Content-Length and Transfer-Encoding: refused as a request smuggling attempt")
		}
		if string(proto) != "HTTP/1.1" {
			return badRequest("", "Transfer-Encoding is only accepted with HTTP/1.1")
		}
		if transferEncodings != 1 || !EqualFold(transferEncoding, "chunked") {
			return badRequest("", "only Transfer-Encoding: chunked is accepted")
		}
		c.state = stateChunkSize
		return nil
	}
	if length > 0 {
		c.state, c.remaining = stateBody, length
	}
	return nil
}

// parseChunkSize parses the hexadecimal size of a chunk-size line,
// ignoring chunk extensions.
func parseChunkSize(line []byte) (int64, bool) {
	// Whitespace before a chunk extension is allowed by RFC 9112 but
	// refused by net/http's chunked reader, which would then fail the
	// request midway as if the upstream had: it is refused up front.
	size, _, _ := bytes.Cut(line, []byte(";"))
	if len(size) == 0 || len(size) > 15 {
		return 0, false
	}
	var n int64
	for _, d := range size {
		switch {
		case '0' <= d && d <= '9':
			d -= '0'
		case 'a' <= d && d <= 'f':
			d -= 'a' - 10
		case 'A' <= d && d <= 'F':
			d -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	return n, true
}
