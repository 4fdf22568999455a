package proxy

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// The plain API call, a GET without a body whose head holds nothing the
// proxy must act on, is forwarded from the bytes of its head: the request
// line and fields are copied upstream with the Host of the target and the
// proxy's Authorization, and a plain answer (a final status with a
// Content-Length and ordinary fields) is copied back the same way. No
// net/http request or response is built; on a small VM that work cost as
// much CPU as the TLS of the request. Anything else, before or after the
// request is sent, goes the general way (serveIntercepted and
// relayResponse), which TestFastPathMatchesGeneralPath compares it with.

// Bounds of a head the fast path takes.
const (
	maxFastHead   = 8 << 10
	maxFastFields = 64
)

// fastRequest is a request head the fast path takes, found in the read
// buffer.
type fastRequest struct {
	headLen int    // bytes of the head, with its empty line
	target  []byte // the request-target, origin-form
	path    []byte
}

// fastEligible reports whether the head at the start of buf may take the
// fast path, and where its parts are. It reads buf only.
func fastEligible(buf []byte, t *target) (fastRequest, bool) {
	var fr fastRequest
	end, _ := h1.HeadEnd(buf, 0)
	if end < 4 || end > maxFastHead || string(buf[end-4:end]) != "\r\n\r\n" {
		return fr, false
	}
	head := buf[:end-2]
	le := bytes.IndexByte(head, '\n')
	if le < 1 || head[le-1] != '\r' {
		return fr, false
	}
	method, target, proto, ok := h1.RequestLine(head[:le-1])
	if !ok || string(method) != http.MethodGet || string(proto) != "HTTP/1.1" || len(target) == 0 || target[0] != '/' {
		return fr, false
	}
	fr.target = target
	path, ok := plainTarget(fr.target)
	if !ok {
		return fr, false
	}
	fr.path = path
	hosts := 0
	var host []byte
	ok = h1.EachField(head[le+1:], maxFastFields, func(name, value []byte) bool {
		if h1.EqualFold(name, "host") {
			hosts++
			host = value
			return true
		}
		return !generalField(name)
	})
	// The Host that names the target as the proxy does needs no parsing.
	if !ok || hosts != 1 || string(host) != t.authority && !sameTarget(string(host), t) {
		return fr, false
	}
	fr.headLen = end
	return fr, true
}

// plainTarget checks an origin-form request-target that both ways of
// forwarding send unchanged: a path of unreserved characters and slashes,
// and a query without the separators and escapes that cleanQuery rewrites.
// It returns the path.
func plainTarget(target []byte) ([]byte, bool) {
	path, query, hasQuery := bytes.Cut(target, []byte("?"))
	for _, c := range path {
		if !isUnreserved(c) && c != '/' {
			return nil, false
		}
	}
	if !hasQuery {
		return path, true
	}
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case isUnreserved(c), bytes.IndexByte([]byte("=&+,:@/!$'()*"), c) >= 0:
		case c == '%' && i+2 < len(query) && isHex(query[i+1]) && isHex(query[i+2]):
			i += 2
		default:
			return nil, false
		}
	}
	return path, true
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// generalField reports whether a request field needs the general way: the
// proxy acts on it (the client's own Authorization, the hop-by-hop and
// forwarding fields, framing, expectations, names with an underscore),
// or net/http's parser would change it (Pragma).
func generalField(name []byte) bool {
	return h1.IsHopByHopName(name) || h1.EqualFoldAny(name, forwardedHeaders[:]) || bytes.IndexByte(name, '_') >= 0 ||
		h1.EqualFoldAny(name, generalFields[:])
}

// generalFields are the request fields other than the hop-by-hop and
// forwarding ones that send a request the general way.
var generalFields = [...]string{"authorization", "content-length", "expect", "pragma"}

// serveFast serves the request at the head of the engine's read buffer
// on the fast path, if it may take it (the engine's Server.Fast). It
// reports served false, having read nothing, when it may not.
func (p *Proxy) serveFast(fx *h1.FastExchange) (keep, served bool) {
	ctx := fx.Context()
	t := targetOf(ctx)
	if p.generalOnly || t.compat || t.plain {
		return false, false
	}
	fr, ok := fastEligible(fx.Buffered(), t)
	if !ok {
		return false, false
	}
	token, err := p.tokens.AccessToken(ctx)
	if err != nil {
		return false, false // the general way answers it
	}
	start := time.Now()
	// The head is kept for the general way, should the answer need it.
	head := fx.Take(fr.headLen)
	fr.target = head[len("GET ") : len("GET ")+len(fr.target)]
	fr.path = fr.target[:len(fr.path)]

	p.handlers.add()
	defer p.handlers.done()
	p.obs.InFlight(1)
	defer p.obs.InFlight(-1)

	write := func(bw *bufio.Writer) error { return p.writeFastHead(bw, t, head, fr.target, token) }
	u, err := p.sendFast(ctx, t, write)
	if err != nil {
		return p.general(fx, t, start, token, nil, err), true
	}
	a, ok := simpleAnswer(u.R)
	if !ok {
		return p.general(fx, t, start, token, u, nil), true
	}
	if int64(u.R.Buffered()-a.headLen) < a.length {
		// More is to be read: without the wait's deadline. A body that
		// is all in the buffer needs no read, and the next request may
		// keep the deadline (see h1.Conn.AwaitFirstByte).
		u.SetReadDeadline(time.Time{})
	}
	if ctx.Err() != nil {
		u.Release(false)
		return false, true
	}
	keep, sent := p.relayFast(fx, t, u, a)
	p.record(ctx, &requestRecord{
		client: fx.RemoteAddr(), user: t.user, method: http.MethodGet, host: t.hostport, pattern: t.pattern,
		rawPath: fr.path, status: a.status, bytes: sent, duration: time.Since(start),
		decision: t.decision(),
	})
	return keep, true
}

// writeFastHead writes the upstream request head: the client's request
// line and fields, the target's Host and the proxy's Authorization.
func (p *Proxy) writeFastHead(bw *bufio.Writer, t *target, head, target []byte, token string) error {
	h1.WriteRequestLine(bw, http.MethodGet, target)
	_, _ = bw.WriteString("Host: ")
	_, _ = bw.WriteString(t.authority)
	_, _ = bw.WriteString("\r\n")
	le := bytes.IndexByte(head, '\n')
	// The lines go as they came (fastEligible checked each): their
	// whitespace around values is the client's, which every parser trims.
	h1.CopyFields(bw, head[le+1:len(head)-2], isHost)
	if err := h1.WriteField(bw, "Authorization", p.authorization(token)); err != nil {
		return err
	}
	_, err := bw.WriteString("\r\n")
	return err
}

func isHost(name []byte) bool { return h1.EqualFold(name, "host") }

// sendFast sends the request, a GET, on an upstream connection from the
// pool, or a new one, and once more on another when the retry rule allows
// (see h1.Client.SendHead). The answer's first byte is in the returned
// connection's buffer.
func (p *Proxy) sendFast(ctx context.Context, t *target, write func(*bufio.Writer) error) (*h1.Conn, error) {
	return p.client.SendHead(ctx, p.route(t), write)
}

// plainAnswer is an upstream answer the fast path relays.
type plainAnswer struct {
	status     int
	length     int64
	headLen    int
	head       []byte // in the upstream connection's buffer, until discarded
	hasDate    bool
	close      bool // the upstream closes the connection after it
	eventsFlow bool // text/event-stream: flushed as it comes
}

// simpleAnswer finds in br a whole answer head that the fast path relays:
// HTTP/1.1, a final status other than 204, 304 and 401 (which is
// replayed), exactly one Content-Length, ordinary fields, and a Connection
// field (if any) that says only keep-alive or close. It reads nothing.
func simpleAnswer(br *bufio.Reader) (plainAnswer, bool) {
	var a plainAnswer
	buf, _ := br.Peek(br.Buffered())
	end, _ := h1.HeadEnd(buf, 0)
	if end < 4 || end > maxFastHead || string(buf[end-4:end]) != "\r\n\r\n" {
		return a, false
	}
	head := buf[:end-2]
	proto, code, ok := h1.StatusLine(head)
	if !ok || string(proto) != "HTTP/1.1" {
		return a, false
	}
	a.status = code
	switch {
	case a.status < 200, a.status == http.StatusNoContent, a.status == http.StatusNotModified,
		a.status == http.StatusUnauthorized:
		return a, false
	}
	le := bytes.IndexByte(head, '\n')
	if head[le-1] != '\r' {
		return a, false
	}
	a.length = -1
	ok = h1.EachField(head[le+1:], maxFastFields, func(name, value []byte) bool {
		switch {
		case h1.EqualFold(name, "content-length"):
			n, ok := h1.ParseLength(value)
			if !ok || a.length >= 0 {
				return false
			}
			a.length = n
		case h1.EqualFold(name, "connection"):
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok = h1.TrimOWS(tok)
				switch {
				case h1.EqualFold(tok, "close"):
					a.close = true
				case h1.EqualFold(tok, "keep-alive"):
				default:
					return false
				}
			}
		case h1.EqualFold(name, "transfer-encoding"), h1.EqualFold(name, "trailer"),
			h1.EqualFold(name, "pragma"), h1.EqualFold(name, "upgrade"):
			return false
		case h1.EqualFold(name, "date"):
			a.hasDate = true
		case h1.EqualFold(name, "content-type"):
			a.eventsFlow = isEventStream(string(value))
		}
		return true
	})
	if !ok || a.length < 0 {
		return a, false
	}
	a.headLen = end
	a.head = head
	return a, true
}

// relayFast writes a plain answer to the client and copies its body. It
// reports whether the client connection may carry another request, and
// the body bytes written.
func (p *Proxy) relayFast(fx *h1.FastExchange, t *target, u *h1.Conn, a plainAnswer) (keep bool, sent int64) {
	bw := fx.Writer()
	closing := fx.Stopping()
	h1.WriteStatusLine(bw, true, a.status)
	le := bytes.IndexByte(a.head, '\n')
	// As they came: simpleAnswer checked them.
	h1.CopyFields(bw, a.head[le+1:], h1.IsHopByHopName)
	if !a.hasDate {
		_, _ = bw.WriteString("Date: ")
		_, _ = bw.WriteString(time.Now().UTC().Format(http.TimeFormat))
		_, _ = bw.WriteString("\r\n")
	}
	if closing {
		_, _ = bw.WriteString("Connection: close\r\n")
	}
	_, _ = bw.WriteString("\r\n")
	_, _ = u.R.Discard(a.headLen)

	download := byteCounter{obs: p.obs, direction: directionDownload}
	defer download.flush()
	bp := p.buffers.Get().(*[]byte)
	defer p.buffers.Put(bp)
	buf := *bp
	for left := a.length; left > 0; {
		n := int64(len(buf))
		if n > left {
			n = left
		}
		m, err := u.R.Read(buf[:n])
		left -= int64(m)
		if m > 0 {
			if _, werr := bw.Write(buf[:m]); werr != nil {
				u.Release(false)
				return false, sent
			}
			sent += int64(m)
			download.add(m)
			if a.eventsFlow {
				if err := bw.Flush(); err != nil {
					u.Release(false)
					return false, sent
				}
			}
		}
		if err != nil && left > 0 {
			// The answer is cut short: so is the client's, which
			// sees a body shorter than its Content-Length.
			_ = bw.Flush()
			u.Release(false)
			return false, sent
		}
	}
	// The upstream's answer has been read to its end: its connection is
	// done with before the client has the last bytes.
	u.Release(!a.close && u.R.Buffered() == 0)
	if err := bw.Flush(); err != nil {
		return false, sent
	}
	return !closing, sent
}

// general serves the request whose head the fast path took the general
// way, after the fast path sent it: with the answer waiting in u, or with
// the error that sending met. It reports whether the connection may carry
// another request.
func (p *Proxy) general(fx *h1.FastExchange, t *target, start time.Time, token string, u *h1.Conn, sendErr error) (keep bool) {
	ran := false
	keep = fx.ServeGeneral(func(w http.ResponseWriter, req *http.Request) {
		ran = true
		x := p.newExchange(w, req, t, start)
		x.inject = true
		defer p.finishIntercepted(req, x)
		out := p.outgoing(req, x)
		out.Header["Authorization"] = p.authorization(token)
		var resp *http.Response
		err := sendErr
		if err == nil {
			resp, err = p.client.ReadResponse(req.Context(), u, out)
		}
		resp, err = p.afterFirstAttempt(out, x, resp, err, token, nil, true)
		p.answer(req, x, resp, err)
	})
	if !ran {
		// The head passed the fast path's checks, which are stricter
		// than the parser's: this does not happen.
		if u != nil {
			u.Release(false)
		}
	}
	return keep
}
