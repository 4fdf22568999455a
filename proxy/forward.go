package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
	"golang.org/x/net/http/httpguts"
)

// exchange is the state of one intercepted request: everything the
// handler, the forwarding and the error answer share, in one allocation.
// It is the handler's goroutine's; upload counts the body's reads, on the
// goroutine that sends the body (an h1.BodySender), before the handler
// reads it (the answer's Body.Close, which the handler calls, waits for
// the sender, as a failed round trip does before it returns).
type exchange struct {
	start    time.Time
	target   *target
	inject   bool // add the proxy's Authorization header
	rec      recorder
	out      http.Request // the request sent upstream
	outURL   url.URL
	upload   byteCounter // request body bytes read from the client
	download byteCounter // response body bytes relayed to the client
	body     countingBody
	// trace tells the server side what the upstream side does; nil for a
	// plain-HTTP request served by net/http.
	trace *h1.ClientTrace
}

// serveIntercepted handles one request read from an intercepted connection.
func (p *Proxy) serveIntercepted(w http.ResponseWriter, r *http.Request) {
	p.handlers.add()
	defer p.handlers.done()
	p.obs.InFlight(1)
	defer p.obs.InFlight(-1)
	t := targetOf(r.Context())
	if t == nil {
		internalError("request without a CONNECT target").write(w)
		return
	}
	x := p.newExchange(w, r, t, time.Now())
	rec := &x.rec
	// Runs also when the forwarding aborts a response mid-body.
	defer p.finishIntercepted(r, x)

	if a, refused := refuseMethod(r.Method); refused {
		a.write(rec)
		return
	}
	if msg := checkHost(r, t); msg != "" {
		requestDenied(http.StatusForbidden, msg).write(rec)
		return
	}
	if t.compat {
		p.serveCompat(rec, r, t)
		return
	}
	x.inject = true
	// A placeholder from the classic authentication answers is the
	// proxy's own: it gets the access token whatever the mode.
	if _, sent := r.Header["Authorization"]; sent && !hasPlaceholder(r.Header) {
		switch p.clientAuth {
		case clientAuthReject:
			requestDenied(http.StatusForbidden, "the request carries its own Authorization header, which this proxy is configured to refuse (client_authorization: reject): remove it, the proxy adds the Anaplan token").write(rec)
			return
		case clientAuthKeep:
			x.inject = false
		}
	}
	p.forward(r, x)
}

// newExchange starts the exchange of request r to target t, answered on w.
func (p *Proxy) newExchange(w http.ResponseWriter, r *http.Request, t *target, start time.Time) *exchange {
	x := &exchange{start: start, rec: recorder{ResponseWriter: w}, target: t}
	x.trace = h1.ContextClientTrace(r.Context())
	x.upload = byteCounter{obs: p.obs, direction: directionUpload}
	x.download = byteCounter{obs: p.obs, direction: directionDownload}
	return x
}

// finishIntercepted reports the byte counts, the request metric and the
// access log line of a request a handler served.
func (p *Proxy) finishIntercepted(r *http.Request, x *exchange) {
	x.upload.flush()
	x.download.flush()
	t, rec := x.target, &x.rec
	p.record(r.Context(), &requestRecord{
		client: r.RemoteAddr, user: t.user, method: r.Method, host: t.hostport, pattern: t.pattern,
		path: r.URL.Path, status: rec.code(), bytes: rec.bytes, duration: time.Since(x.start),
		decision: t.decision(),
	})
}

// refuseMethod returns the answer to a request whose method is never
// sent upstream: TRACE, whose echo of the request would hand the injected
// Authorization to the client, and CONNECT, which would open a tunnel
// inside the intercepted one with the token's help.
func refuseMethod(method string) (answer, bool) {
	switch method {
	case http.MethodTrace:
		return requestDenied(http.StatusMethodNotAllowed, "TRACE is not forwarded: the upstream's echo of the request would show the Authorization header the proxy adds"), true
	case http.MethodConnect:
		return requestDenied(http.StatusMethodNotAllowed, "CONNECT is not forwarded inside an intercepted connection: send it to the proxy itself").closing(), true
	}
	return answer{}, false
}

// checkHost returns why r may not be sent inside the CONNECT to t, or ""
// if it may: its Host, and its URL if absolute, must name the CONNECT
// target (host case-insensitively, port 443 when none is given).
func checkHost(r *http.Request, t *target) string {
	if r.URL.IsAbs() {
		if !t.schemeAllowed(r.URL.Scheme) {
			return fmt.Sprintf("request for %s://%s refused inside the CONNECT to %s: only https:// is allowed", r.URL.Scheme, r.URL.Host, t.hostport)
		}
		if !sameTarget(r.URL.Host, t) {
			return fmt.Sprintf("request for host %s refused: it differs from the CONNECT target %s", r.URL.Host, t.hostport)
		}
	}
	if !sameTarget(r.Host, t) {
		return fmt.Sprintf("request for host %s refused: it differs from the CONNECT target %s", r.Host, t.hostport)
	}
	return ""
}

func sameTarget(authority string, t *target) bool {
	host, port := authority, defaultPort
	if h, portText, err := net.SplitHostPort(authority); err == nil {
		n, err := strconv.Atoi(portText)
		if err != nil {
			return false
		}
		host, port = h, n
	} else if strings.HasPrefix(authority, "[") && strings.HasSuffix(authority, "]") {
		host = authority[1 : len(authority)-1]
	}
	h, _ := normalizeHost(host)
	return h != "" && h == t.host && port == t.port
}

// forwardedHeaders are request headers that describe earlier hops; the
// proxy adds none and passes none on.
var forwardedHeaders = [...]string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// dropUnderscored deletes the fields whose names hold an underscore, as
// nginx does by default: servers that read '_' as '-' would take
// Transfer_Encoding for Transfer-Encoding and frame the request
// differently from the proxy.
func dropUnderscored(h http.Header) {
	for k := range h {
		if strings.IndexByte(k, '_') >= 0 {
			delete(h, k)
		}
	}
}

// forward sends r to its CONNECT target over verified TLS and streams the
// answer back. The outgoing request is a copy of r aimed at the target,
// without X-Forwarded-* or hop-by-hop headers; it shares r's header map,
// which the server that read r no longer reads once the handler runs.
func (p *Proxy) forward(r *http.Request, x *exchange) {
	out := p.outgoing(r, x)
	switch {
	case r.ContentLength == 0:
		out.Body = nil // lets the transport retry on a stale connection
	case r.Body != nil && r.Body != http.NoBody:
		// The transport closes the body it is given, also on failure, and
		// may still read it after a failed round trip returns: the client's
		// body stays with the server, which drains or closes it after
		// the handler.
		x.body = countingBody{ReadCloser: r.Body, counter: &x.upload}
		out.Body = &x.body
		defer x.body.Close()
	}
	resp, err := p.roundTrip(out, x)
	p.answer(r, x, resp, err)
}

// outgoing makes x.out the request to send upstream for r: aimed at the
// target, without X-Forwarded-* or hop-by-hop headers (and without the
// client's Authorization when the proxy adds its own), and without a body;
// forward gives it r's.
func (p *Proxy) outgoing(r *http.Request, x *exchange) *http.Request {
	out := &x.out
	*out = *r
	x.outURL = *r.URL
	out.URL = &x.outURL
	out.URL.Scheme = "https"
	out.URL.Host = x.target.authority
	out.URL.User = nil
	out.URL.RawQuery = cleanQuery(out.URL.RawQuery)
	out.Host = x.target.authority
	out.RequestURI = ""
	out.Close = false
	out.Body = nil
	// No trailer field of a request is passed on: after the body, it
	// would escape every check made on the head (the client's own
	// Authorization, Proxy-Authorization, Host, the hop-by-hop fields),
	// and no Anaplan API reads one.
	out.Trailer = nil
	h := out.Header
	trailers := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	h1.RemoveHopByHop(h)
	dropUnderscored(h)
	for _, name := range forwardedHeaders {
		delete(h, name)
	}
	if trailers {
		h["Te"] = []string{"trailers"}
	}
	if x.inject {
		delete(h, "Authorization")
	}
	if _, ok := h["User-Agent"]; !ok {
		// Sent as the client sent it: without one, not with Go's.
		h["User-Agent"] = []string{""}
	}
	return out
}

// answer relays the outcome of the round trip of r to the client: the
// upstream's answer, or the proxy's own when the round trip failed.
func (p *Proxy) answer(r *http.Request, x *exchange, resp *http.Response, err error) {
	if err == nil && bodyStalled(r, nil) != nil {
		// The client stopped sending the body and the upstream answered
		// what it got of it: net/http's transport can return an answer
		// that raced with the close of the connection it cut the body
		// off on. The client hears of the stall, as when no answer came.
		discard(resp)
		resp, err = nil, bodyStalled(r, nil)
	}
	if err != nil {
		p.roundTripError(&x.rec, r, x, err)
		return
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The proxy never forwards an Upgrade request.
		_ = resp.Body.Close()
		p.roundTripError(&x.rec, r, x, errors.New("the upstream switched protocols without being asked to"))
		return
	}
	p.relayResponse(r, x, resp)
}

// headerAdopter is a ResponseWriter that can make a relayed answer's
// header map its own, which saves copying it (see the engine's
// ResponseWriter, in h1/server.go).
type headerAdopter interface {
	AdoptHeader(h http.Header) bool
}

// relayResponse writes the upstream's answer to the client. The body is
// copied through a pooled buffer and flushed as it arrives when its
// length is unknown (a stream) or it is an event stream; otherwise the
// server's buffering joins header and body into as few TLS records as
// possible.
func (p *Proxy) relayResponse(r *http.Request, x *exchange, resp *http.Response) {
	w := &x.rec
	h1.RemoveHopByHop(resp.Header)
	var dst http.Header
	if rw, ok := w.ResponseWriter.(headerAdopter); ok && rw.AdoptHeader(resp.Header) {
		dst = resp.Header
	} else {
		dst = w.Header()
		for k, vv := range resp.Header {
			dst[k] = vv
		}
	}
	filterTrailer(resp.Trailer)
	announced := len(resp.Trailer)
	if announced > 0 {
		names := make([]string, 0, announced)
		for k := range resp.Trailer {
			names = append(names, k)
		}
		dst["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)
	stream := resp.ContentLength < 0 || isEventStream(resp.Header.Get("Content-Type"))
	if err := p.copyBody(w, resp.Body, &x.download, stream); err != nil {
		_ = resp.Body.Close()
		p.log.Debug("response body relay ended early", "host", x.target.hostport, "error", oneLine(err.Error()))
		// The client gets the head and what came of the body, as on
		// the fast path, then the end of the connection without the
		// body's terminator, so that it sees a truncated answer rather
		// than a whole one or none. The serving loop (and net/http's
		// server, for plain HTTP) recovers this panic silently.
		_ = w.FlushError()
		panic(http.ErrAbortHandler)
	}
	_ = resp.Body.Close() // fills resp.Trailer
	filterTrailer(resp.Trailer)
	if len(resp.Trailer) > 0 {
		// Chunked, so that the trailers can follow the body.
		w.Flush()
	}
	if len(resp.Trailer) == announced {
		for k, vv := range resp.Trailer {
			dst[k] = vv
		}
		return
	}
	for k, vv := range resp.Trailer {
		dst[http.TrailerPrefix+k] = vv
	}
}

// filterTrailer deletes from an answer's trailer the fields that a
// trailer may not carry or that the proxy never relays (RFC 9110,
// section 6.5.1): framing, routing, authentication, the controls and
// content metadata a client reads from the head, the hop-by-hop fields,
// and names with an underscore.
func filterTrailer(h http.Header) {
	for k := range h {
		if !trailerAllowed(k) {
			delete(h, k)
		}
	}
}

func trailerAllowed(name string) bool {
	switch name {
	case "Authorization", "Proxy-Authorization", "Www-Authenticate", "Authentication-Info",
		"Content-Length", "Content-Encoding", "Content-Range", "Content-Type",
		"Cache-Control", "Expires", "Age", "Date", "Vary", "Pragma", "Warning",
		"Host", "Location", "Retry-After", "Set-Cookie", "Expect", "Max-Forwards", "Range":
		return false
	}
	if h1.IsHopByHop(name) {
		return false
	}
	return httpguts.ValidHeaderFieldName(name) && strings.IndexByte(name, '_') < 0
}

// copyBody copies the response body to the client, counting the bytes.
func (p *Proxy) copyBody(w *recorder, body io.Reader, counter *byteCounter, flush bool) error {
	bp := p.buffers.Get().(*[]byte)
	defer p.buffers.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			counter.add(n)
			if flush {
				if err := w.FlushError(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// isEventStream reports whether a Content-Type is text/event-stream,
// whose events a client expects as they come.
func isEventStream(contentType string) bool {
	const es = "text/event-stream"
	ct := strings.TrimLeft(contentType, " \t")
	return len(ct) >= len(es) && strings.EqualFold(ct[:len(es)], es) &&
		(len(ct) == len(es) || ct[len(es)] == ';' || ct[len(es)] == ' ' || ct[len(es)] == '\t')
}

// cleanQuery drops the query parameters that a server could split
// differently from the proxy (a ';' separator, a bad %-escape) by
// re-encoding the query; a query without them passes unchanged.
func cleanQuery(q string) string {
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			return reencodeQuery(q)
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return reencodeQuery(q)
			}
			i += 3
		default:
			i++
		}
	}
	return q
}

func reencodeQuery(q string) string {
	v, _ := url.ParseQuery(q)
	return v.Encode()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// authValue is the Authorization header value for one access token.
type authValue struct {
	token string
	value []string
}

// authorization returns the Authorization header value for token. The
// value is built once per token and shared by the requests that use it:
// nothing changes a header value in place.
func (p *Proxy) authorization(token string) []string {
	if a := p.auth.Load(); a != nil && a.token == token {
		return a.value
	}
	a := &authValue{token: token, value: []string{p.scheme + " " + token}}
	p.auth.Store(a)
	return a.value
}

// tokenError carries a TokenSource error to the error handler.
type tokenError struct{ err error }

func (e *tokenError) Error() string { return "access token: " + e.err.Error() }
func (e *tokenError) Unwrap() error { return e.err }

// send sends req upstream: through p.client, on a pooled upstream
// connection, for an intercepted request; through the shared transport
// for plain HTTP. The client's exchange ends with the answer's Body: its
// Close gives the connection back to the pool or closes it.
func (p *Proxy) send(req *http.Request, x *exchange) (*http.Response, error) {
	t := x.target
	if t.plain || p.transportOnly {
		if x.trace != nil {
			// The shared transport gives no sign that it waits.
			x.trace.AwaitingAfterBody()
		}
		return p.roundTripShared(req)
	}
	return p.client.RoundTrip(req.Context(), p.route(t), req)
}

// roundTrip sends req upstream. For an inject request it sets the
// Authorization header and, on a 401 from the upstream, asks for a newer
// token and replays the request once if its body can be sent again.
func (p *Proxy) roundTrip(req *http.Request, x *exchange) (*http.Response, error) {
	if !x.inject {
		return p.send(req, x)
	}
	token, err := p.tokens.AccessToken(req.Context())
	if err != nil {
		return nil, &tokenError{err}
	}
	replayBody, replayable, err := bufferForReplay(req)
	if err != nil {
		return nil, err
	}
	req.Header["Authorization"] = p.authorization(token)
	resp, err := p.send(req, x)
	return p.afterFirstAttempt(req, x, resp, err, token, replayBody, replayable)
}

// afterFirstAttempt answers a 401 to the first attempt of an inject
// request sent with token: it asks for a newer token and, if there is one
// and the body can be sent again, replays the request once.
func (p *Proxy) afterFirstAttempt(req *http.Request, x *exchange, resp *http.Response, err error, token string, replayBody []byte, replayable bool) (*http.Response, error) {
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if !replayable {
		p.obs.Replay("not_replayable")
		return resp, nil
	}
	fresh, err := p.tokens.Rejected(req.Context(), token)
	if err != nil {
		p.obs.Replay("failed")
		discard(resp)
		return nil, &tokenError{err}
	}
	if fresh == token {
		p.obs.Replay("failed")
		return resp, nil
	}
	// The first attempt's body, if it was still being sent, is stopped
	// by the Close of the answer before the replay.
	discard(resp)
	retry := req.Clone(req.Context())
	retry.Body = http.NoBody
	if replayBody != nil {
		retry.Body = h1.MemoryBody{Reader: bytes.NewReader(replayBody)}
	}
	retry.Header.Set("Authorization", p.scheme+" "+fresh)
	resp, err = p.send(retry, x)
	switch {
	case err != nil:
		p.obs.Replay("failed")
	case resp.StatusCode == http.StatusUnauthorized:
		p.obs.Replay("failed")
	default:
		p.obs.Replay("success")
	}
	return resp, err
}

// bufferForReplay reads a small body into memory before the first attempt
// so that a 401 can be answered by a replay. Bodies without a length or
// longer than maxReplayBody stream and are not replayable.
func bufferForReplay(req *http.Request) (body []byte, replayable bool, err error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, true, nil
	}
	if req.ContentLength <= 0 || req.ContentLength > maxReplayBody {
		return nil, false, nil
	}
	buf, err := readGrowing(req.Body, req.ContentLength)
	if err != nil {
		return nil, false, &h1.BodyError{Err: err}
	}
	req.Body = h1.MemoryBody{Reader: bytes.NewReader(buf)}
	return buf, true, nil
}

// readGrowing reads the n bytes of a body into a buffer that grows with the
// bytes received, not with the length the client declared: a client
// that declares a megabyte and sends a byte holds a few kilobytes.
func readGrowing(r io.Reader, n int64) ([]byte, error) {
	buf := make([]byte, 0, min(n, 4<<10))
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			buf = append(make([]byte, 0, min(2*int64(cap(buf)), n)), buf...)
		}
		m, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		switch {
		case err == io.EOF && int64(len(buf)) < n:
			return nil, io.ErrUnexpectedEOF
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return nil, err
		}
	}
	return buf, nil
}

// discard drains a little of a response body, so that its connection can
// be reused, and closes it.
func discard(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}

// roundTripError answers a request whose round trip failed: token problems
// become 511 or 503, upstream failures 502 or 504, each with a reason.
func (p *Proxy) roundTripError(w http.ResponseWriter, r *http.Request, x *exchange, err error) {
	hostport := x.target.hostport
	var te *tokenError
	if errors.As(err, &te) {
		a := tokenAnswer(te.err)
		p.log.Warn("no access token for request", "host", hostport, "status", a.status, "error", oneLine(te.err.Error()))
		a.write(w)
		return
	}
	if p.baseCtx.Err() != nil {
		shuttingDown().write(w)
		return
	}
	if stall := bodyStalled(r, err); stall != nil {
		p.log.Info("request body stalled", "host", hostport, "error", stall.Error())
		requestError(http.StatusRequestTimeout, "the request was cut off: "+stall.Error()).closing().write(w)
		return
	}
	var be *h1.BodyError
	if errors.As(err, &be) || r.Context().Err() != nil {
		// The client went away or broke its own request: nothing for
		// the upstream's error counters.
		p.log.Debug("request aborted by client", "host", hostport, "error", oneLine(err.Error()))
		requestError(http.StatusBadRequest, "the request was aborted: "+err.Error()).write(w)
		return
	}
	var fe *h1.FieldError
	if errors.As(err, &fe) {
		// Nothing was sent: the head writer refused the field before the
		// request went.
		a := fieldAnswer(fe, x.inject)
		p.log.Warn("request head not sent", "host", hostport, "error", fe.Error())
		a.write(w)
		return
	}
	f := classifyUpstream(err)
	p.obs.UpstreamError(f.reason)
	p.log.Warn("upstream request failed", "host", hostport, "error_type", f.errType, "error", oneLine(f.cause))
	f.answer(hostport).write(w)
}

// recorder notes the status and the number of body bytes sent.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (rw *recorder) WriteHeader(code int) {
	if rw.status == 0 && code >= 200 {
		rw.status = code
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *recorder) Write(b []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	n, err := rw.ResponseWriter.Write(b)
	rw.bytes += int64(n)
	return n, err
}

func (rw *recorder) Flush() {
	if f, ok := rw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// FlushError flushes and reports whether the client took the bytes.
func (rw *recorder) FlushError() error {
	if f, ok := rw.ResponseWriter.(interface{ FlushError() error }); ok {
		return f.FlushError()
	}
	return http.NewResponseController(rw.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection (for upgrades).
func (rw *recorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

func (rw *recorder) code() int {
	if rw.status == 0 {
		return http.StatusOK
	}
	return rw.status
}

// newBufferPool returns a pool of the 32 KiB buffers that response bodies
// are copied through.
func newBufferPool() *sync.Pool {
	return &sync.Pool{New: func() any {
		b := make([]byte, copyBufferSize)
		return &b
	}}
}
