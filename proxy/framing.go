package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// framingConn follows the HTTP/1.1 message framing of the decrypted client
// stream of an intercepted connection and refuses, before net/http parses
// them, requests whose length is ambiguous: Content-Length together with
// Transfer-Encoding, Content-Length values that differ, transfer codings
// other than chunked, folded header lines, protocol upgrades, and header
// blocks over the limit. net/http alone would resolve some of these by
// dropping Content-Length and forward the request; a message that two
// parsers may frame differently is an attack (RFC 9112, section 11.2), so
// it is answered with 400 (431 for size) and nothing is forwarded.
type framingConn struct {
	net.Conn // the *tls.Conn
	target   *target
	p        *Proxy
	maxHead  int

	state     framingState
	line      []byte   // the incomplete line being read
	lines     []string // the lines of the head being read
	headBytes int
	remaining int64 // bytes left of a Content-Length body or chunk
	failed    bool
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

func newFramingConn(c net.Conn, t *target, p *Proxy) *framingConn {
	return &framingConn{Conn: c, target: t, p: p, maxHead: p.limits.MaxHeaderBytes}
}

func (c *framingConn) Read(b []byte) (int, error) {
	if c.failed {
		return 0, errFramingRefused
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		if a, method := c.scan(b[:n]); a != nil {
			// None of this read reaches the server, not even a request
			// before the refused one in a pipelined batch: nothing of a
			// stream that mixes in a refused message is forwarded.
			c.refuse(*a, method)
			return 0, errFramingRefused
		}
	}
	return n, err
}

// errFramingRefused ends the internal server's reading of a refused
// connection. It is a read error of the kind net/http closes a connection
// on without answering, so that the proxy's own answer is the only one.
var errFramingRefused = &net.OpError{Op: "read", Net: "tcp", Err: errors.New("request refused for its framing")}

// refuse answers a request that will not be forwarded and ends the
// connection: after a framing error the stream cannot be trusted.
func (c *framingConn) refuse(a answer, method string) {
	c.failed = true
	start := time.Now()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = a.response(nil).Write(c.Conn)
	c.p.obs.Request(c.target.pattern, methodLabel(method), a.status, 0)
	c.p.log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("client", c.RemoteAddr().String()),
		slog.String("user", c.target.user),
		slog.String("method", oneLine(method)),
		slog.String("host", c.target.hostport),
		slog.String("path", ""),
		slog.Int("status", a.status),
		slog.Int64("bytes", 0),
		slog.Int64("duration_ms", time.Since(start).Milliseconds()),
		slog.String("decision", actionDeny.String()),
		slog.String("reason", "bad_framing"),
	)
}

func badRequest(format string, args ...any) *answer {
	return &answer{status: http.StatusBadRequest, errType: "http_request_error", message: fmt.Sprintf(format, args...)}
}

// nextLine takes bytes of b up to a line feed. It returns the line (without
// CR LF), whether it is complete, and the rest of b.
func (c *framingConn) nextLine(b []byte, limit int) (line string, complete bool, rest []byte, tooLong bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		c.line = append(c.line, b...)
		return "", false, nil, len(c.line) > limit
	}
	c.line = append(c.line, b[:i]...)
	line = strings.TrimSuffix(string(c.line), "\r")
	c.line = c.line[:0]
	return line, true, b[i+1:], len(line) > limit
}

// scan advances the framing over b. It returns the answer for a request
// to refuse, with the request's method if known.
func (c *framingConn) scan(b []byte) (*answer, string) {
	for len(b) > 0 {
		switch c.state {
		case stateHead:
			line, complete, rest, _ := c.nextLine(b, c.maxHead)
			c.headBytes += len(b) - len(rest)
			if c.headBytes > c.maxHead {
				return &answer{status: http.StatusRequestHeaderFieldsTooLarge, errType: "http_request_error",
					message: fmt.Sprintf("the request's header block is larger than %d bytes", c.maxHead)}, c.method()
			}
			b = rest
			if !complete {
				continue
			}
			if line != "" {
				c.lines = append(c.lines, line)
				continue
			}
			if a := c.endHead(); a != nil {
				return a, c.method()
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
				return badRequest("a chunk-size or trailer line is longer than %d bytes", maxChunkLine), ""
			}
			b = rest
			if !complete {
				continue
			}
			switch c.state {
			case stateChunkEnd:
				if line != "" {
					return badRequest("malformed chunked body: no line end after chunk data"), ""
				}
				c.state = stateChunkSize
			case stateTrailer:
				if line == "" {
					c.state = stateHead
				}
			default:
				size, ok := parseChunkSize(line)
				if !ok {
					return badRequest("malformed chunked body: bad chunk size"), ""
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

// method is the method of the head being read, if its line is complete.
func (c *framingConn) method() string {
	if len(c.lines) == 0 {
		return ""
	}
	m, _, _ := strings.Cut(c.lines[0], " ")
	return m
}

// endHead checks a complete request head and sets up the framing of its
// body.
func (c *framingConn) endHead() *answer {
	lines := c.lines
	c.lines, c.headBytes = c.lines[:0], 0
	if len(lines) == 0 {
		return badRequest("malformed request: empty request line")
	}
	parts := strings.Split(lines[0], " ")
	if len(parts) != 3 {
		return badRequest("malformed request line")
	}
	proto := parts[2]
	var contentLengths, transferEncodings []string
	for _, l := range lines[1:] {
		if l[0] == ' ' || l[0] == '\t' {
			return badRequest("folded header lines (obs-fold) are not accepted")
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return badRequest("malformed header line")
		}
		value = strings.Trim(value, " \t")
		switch strings.ToLower(name) {
		case "content-length":
			contentLengths = append(contentLengths, value)
		case "transfer-encoding":
			transferEncodings = append(transferEncodings, value)
		case "upgrade":
			return badRequest("protocol upgrades are not supported through this proxy")
		}
	}
	var length int64
	for i, v := range contentLengths {
		if v != contentLengths[0] {
			return badRequest("the request has several Content-Length headers that differ: refused as a request smuggling attempt")
		}
		if i > 0 {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || v == "" || v[0] == '+' {
			return badRequest("the request's Content-Length is not a number")
		}
		length = n
	}
	if len(transferEncodings) > 0 {
		if len(contentLengths) > 0 {
			return badRequest("the request has both Content-Length and Transfer-Encoding: refused as a request smuggling attempt")
		}
		if proto != "HTTP/1.1" {
			return badRequest("Transfer-Encoding is only accepted with HTTP/1.1")
		}
		if len(transferEncodings) != 1 || !strings.EqualFold(transferEncodings[0], "chunked") {
			return badRequest("only Transfer-Encoding: chunked is accepted")
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
func parseChunkSize(line string) (int64, bool) {
	size, _, _ := strings.Cut(line, ";")
	size = strings.TrimRight(size, " \t")
	if size == "" || len(size) > 15 {
		return 0, false
	}
	n, err := strconv.ParseInt(size, 16, 64)
	if err != nil || n < 0 || size[0] == '+' || size[0] == '-' {
		return 0, false
	}
	return n, true
}
