package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"
)

// exchange is the per-request state shared by the handler, Rewrite, the
// injecting transport and the error handler.
type exchange struct {
	target   *target
	inject   bool         // add the proxy's Authorization header
	download *byteCounter // response body bytes relayed to the client
}

type exchangeKey struct{}

// serveIntercepted handles one request read from an intercepted connection.
func (p *Proxy) serveIntercepted(w http.ResponseWriter, r *http.Request) {
	p.handlers.add()
	defer p.handlers.done()
	p.obs.InFlight(1)
	defer p.obs.InFlight(-1)
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	t, _ := r.Context().Value(targetKey{}).(*target)
	if t == nil {
		answer{status: http.StatusInternalServerError, errType: "proxy_internal_error", message: "request without a CONNECT target"}.write(rec)
		return
	}
	defer func() {
		// Runs also when ReverseProxy aborts a response mid-body.
		d := time.Since(start)
		p.obs.Request(t.pattern, methodLabel(r.Method), rec.code(), d)
		p.log.LogAttrs(r.Context(), slog.LevelInfo, "request",
			slog.String("client", r.RemoteAddr),
			slog.String("user", t.user),
			slog.String("method", r.Method),
			slog.String("host", t.hostport),
			slog.String("path", r.URL.Path),
			slog.Int("status", rec.code()),
			slog.Int64("bytes", rec.bytes),
			slog.Int64("duration_ms", d.Milliseconds()),
			slog.String("decision", t.decision()),
		)
	}()

	if msg := checkHost(r, t); msg != "" {
		answer{status: http.StatusForbidden, errType: "http_request_denied", message: msg}.write(rec)
		return
	}
	if t.compat {
		p.serveCompat(rec, r, t)
		return
	}
	x := &exchange{target: t, inject: true}
	// A placeholder from the classic authentication answers is the
	// proxy's own: it gets the access token whatever the mode.
	if _, sent := r.Header["Authorization"]; sent && !hasPlaceholder(r.Header) {
		switch p.clientAuth {
		case clientAuthReject:
			answer{status: http.StatusForbidden, errType: "http_request_denied",
				message: "the request carries its own Authorization header, which this proxy is configured to refuse (client_authorization: reject): remove it, the proxy adds the Anaplan token"}.write(rec)
			return
		case clientAuthKeep:
			x.inject = false
		}
	}
	upload := &byteCounter{obs: p.obs, direction: directionUpload}
	x.download = &byteCounter{obs: p.obs, direction: directionDownload}
	defer upload.flush()
	defer x.download.flush()
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &countingBody{ReadCloser: r.Body, counter: upload}
	}
	p.reverse.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
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

// rewrite aims the outgoing request at the CONNECT target over TLS. It adds
// no X-Forwarded-* headers and drops the proxy's own headers.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
	pr.Out.URL.Scheme = "https"
	pr.Out.URL.Host = x.target.authority
	pr.Out.URL.User = nil
	pr.Out.Host = x.target.authority
	pr.Out.Header.Del("Proxy-Authorization")
	pr.Out.Header.Del("Proxy-Connection")
	if x.inject {
		pr.Out.Header.Del("Authorization")
	}
}

// tokenError carries a TokenSource error to the error handler.
type tokenError struct{ err error }

func (e *tokenError) Error() string { return "access token: " + e.err.Error() }
func (e *tokenError) Unwrap() error { return e.err }

// bodyError is a failure to read the client's request body.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// injector is the ReverseProxy's transport: it sets the Authorization
// header and, on a 401 from the upstream, asks for a newer token and
// replays the request once if its body can be sent again.
type injector struct{ p *Proxy }

func (in injector) RoundTrip(req *http.Request) (*http.Response, error) {
	p := in.p
	x, _ := req.Context().Value(exchangeKey{}).(*exchange)
	if x == nil || !x.inject {
		return p.transport.RoundTrip(req)
	}
	token, err := p.tokens.AccessToken(req.Context())
	if err != nil {
		return nil, &tokenError{err}
	}
	replayBody, replayable, err := bufferForReplay(req)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", p.scheme+" "+token)
	resp, err := p.transport.RoundTrip(req)
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
	discard(resp)
	retry := req.Clone(req.Context())
	retry.Body = http.NoBody
	if replayBody != nil {
		retry.Body = io.NopCloser(bytes.NewReader(replayBody))
	}
	retry.Header.Set("Authorization", p.scheme+" "+fresh)
	resp, err = p.transport.RoundTrip(retry)
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
	buf := make([]byte, req.ContentLength)
	if _, err := io.ReadFull(req.Body, buf); err != nil {
		return nil, false, &bodyError{err}
	}
	req.Body = io.NopCloser(bytes.NewReader(buf))
	return buf, true, nil
}

// discard drains a little of a response body, so that its connection can
// be reused, and closes it.
func discard(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}

// roundTripError answers a request whose round trip failed: token problems
// become 511 or 503, upstream failures 502 or 504, each with a reason.
func (p *Proxy) roundTripError(w http.ResponseWriter, r *http.Request, err error) {
	x, _ := r.Context().Value(exchangeKey{}).(*exchange)
	hostport := ""
	if x != nil {
		hostport = x.target.hostport
	}
	var te *tokenError
	if errors.As(err, &te) {
		a := tokenAnswer(te.err)
		p.log.Warn("no access token for request", "host", hostport, "status", a.status, "error", oneLine(te.err.Error()))
		a.write(w)
		return
	}
	if p.baseCtx.Err() != nil {
		answer{status: http.StatusServiceUnavailable, errType: "proxy_internal_error", message: "the proxy is shutting down", retryAfter: 5 * time.Second}.write(w)
		return
	}
	var be *bodyError
	if errors.As(err, &be) || r.Context().Err() != nil {
		// The client went away or broke its own request: nothing for
		// the upstream's error counters.
		p.log.Debug("request aborted by client", "host", hostport, "error", oneLine(err.Error()))
		answer{status: http.StatusBadRequest, errType: "http_request_error", message: "the request was aborted: " + err.Error()}.write(w)
		return
	}
	f := classifyUpstream(err)
	p.obs.UpstreamError(f.reason)
	p.log.Warn("upstream request failed", "host", hostport, "error_type", f.errType, "error", oneLine(f.cause))
	answer{status: f.status, errType: f.errType, message: fmt.Sprintf("cannot reach %s: %s", hostport, f.cause), receivedStatus: f.receivedStatus}.write(w)
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

// Unwrap lets http.ResponseController reach the connection (for upgrades).
func (rw *recorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

func (rw *recorder) code() int {
	if rw.status == 0 {
		return http.StatusOK
	}
	return rw.status
}

// bufferPool recycles the 32 KiB copy buffers of the reverse proxy.
type bufferPool struct{ pool sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{pool: sync.Pool{New: func() any {
		b := make([]byte, copyBufferSize)
		return &b
	}}}
}

func (bp *bufferPool) Get() []byte { return *(bp.pool.Get().(*[]byte)) }

func (bp *bufferPool) Put(b []byte) {
	if cap(b) != copyBufferSize {
		return
	}
	b = b[:copyBufferSize]
	bp.pool.Put(&b)
}
