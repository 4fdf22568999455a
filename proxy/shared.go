package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// Plain-HTTP mode sends its requests through net/http's Transport, not the
// engine's client: net/http's server serves those clients on goroutines of
// its own, and the mode is for the few tools that cannot trust a CA, whose
// calls do not need the engine's savings. The same
// Transport is the reference that the differential tests and fuzzers
// (TestDirectPathMatchesTransport, FuzzDirectPathMatchesTransport) compare
// the engine's client with.
//
// The shared transport (plain-HTTP requests) reads answers with
// http.ReadResponse on its own goroutines. What the direct path does
// while it reads a head is done here around it: informational answers
// are counted through a client trace, and the raw head is kept by the
// connection (recordingConn), so that the list of hop-by-hop fields in a
// Connection field that also says close, which the parser drops, is not
// lost.

// roundTripShared sends req through the shared transport: after at most
// h1.MaxInterim informational answers, and with the Connection field of the
// answer as the upstream sent it.
func (p *Proxy) roundTripShared(req *http.Request) (*http.Response, error) {
	interim := 0
	var conn *recordingConn
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			conn, _ = info.Conn.(*recordingConn)
		},
		Got1xxResponse: func(int, textproto.MIMEHeader) error {
			if interim++; interim > h1.MaxInterim {
				return h1.ErrTooManyInterim
			}
			return nil
		},
	}
	resp, err := p.transport.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if err != nil {
		return nil, err
	}
	if _, ok := resp.Header["Connection"]; !ok && resp.Close && conn != nil {
		if values := conn.connectionField(); len(values) > 0 {
			resp.Header["Connection"] = values
		}
	}
	return resp, nil
}

// dialShared is the shared transport's DialTLSContext: a verified TLS
// connection, as the direct path opens, that keeps the raw head of each
// answer.
func (p *Proxy) dialShared(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	host, _ = normalizeHost(host)
	tc, err := p.dialTLS(ctx, addr, host, false)
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: tc}, nil
}

// recordingConn is a connection of the shared transport that keeps a copy
// of the bytes read after each request was written, up to the end of the
// final answer's head (at most h1.MaxResponseHead bytes). The transport reads
// on one goroutine and writes on another; the handler reads the copy.
type recordingConn struct {
	*tls.Conn
	mu      sync.Mutex
	head    []byte // the answer's heads, informational ones first
	reading bool   // a read came after the last write
	done    bool   // head holds the final answer's head
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.reading {
		// The next request: its answer is recorded from its start.
		c.head, c.reading, c.done = c.head[:0], false, false
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reading = true
	if c.done || n == 0 {
		return n, err
	}
	room := h1.MaxResponseHead - len(c.head)
	c.head = append(c.head, b[:min(n, room)]...)
	if end := h1.FinalHeadEnd(c.head); end >= 0 || len(c.head) == h1.MaxResponseHead {
		c.done = true
		if end >= 0 {
			c.head = c.head[:end]
		}
		if cap(c.head) > h1.MaxKeptHead {
			c.head = append([]byte(nil), c.head...)
		}
	}
	return n, err
}

// connectionField returns the values of the Connection fields of the
// final answer's head recorded last.
func (c *recordingConn) connectionField() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return h1.ConnectionOfFinal(c.head)
}
