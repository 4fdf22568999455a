package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// answer is a response the proxy gives itself instead of the upstream's:
// a status, a one-line body a person can act on, and an RFC 9209
// Proxy-Status header carrying the same text for programs.
type answer struct {
	status     int
	errType    string // RFC 9209 proxy error type
	message    string // without the "anaplan-proxy: " prefix
	retryAfter time.Duration
	extra      http.Header // further headers, such as Proxy-Authenticate
	// receivedStatus is the status a next-hop proxy answered, if any
	// (RFC 9209 received-status).
	receivedStatus int
}

// The proxy's answers are made by the constructors below, one for each
// RFC 9209 error type the proxy gives (tokenAnswer and
// upstreamFailure.answer make the others), and changed by the methods
// after them.

// requestError answers a request that cannot be served as it was sent
// (http_request_error).
func requestError(status int, message string) answer {
	return answer{status: status, errType: "http_request_error", message: message}
}

// requestDenied answers a request that the proxy's configuration or
// policy refuses (http_request_denied).
func requestDenied(status int, message string) answer {
	return answer{status: status, errType: "http_request_denied", message: message}
}

// internalError answers with 500 a request that failed inside the proxy
// (proxy_internal_error).
func internalError(message string) answer {
	return answer{status: http.StatusInternalServerError, errType: "proxy_internal_error", message: message}
}

// unavailable answers with 503 a request the proxy has no room for now,
// to be retried after retry (proxy_internal_error).
func unavailable(message string, retry time.Duration) answer {
	return answer{status: http.StatusServiceUnavailable, errType: "proxy_internal_error", message: message, retryAfter: retry}
}

// shuttingDown answers a request that comes while the proxy stops.
func shuttingDown() answer {
	return unavailable("the proxy is shutting down", 5*time.Second)
}

// retryIn says in Retry-After when the request may be sent again.
func (a answer) retryIn(d time.Duration) answer {
	a.retryAfter = d
	return a
}

// closing ends the connection after the answer, and says so.
func (a answer) closing() answer {
	return a.withHeader("Connection", "close")
}

// withHeader adds a header field to the answer.
func (a answer) withHeader(name, value string) answer {
	extra := make(http.Header, len(a.extra)+1)
	for k, v := range a.extra {
		extra[k] = v
	}
	extra[name] = []string{value}
	a.extra = extra
	return a
}

// maxMessage bounds the text the proxy echoes back in a body or header.
const maxMessage = 512

func (a answer) body() string {
	return "anaplan-proxy: " + oneLine(a.message) + "\n"
}

func (a answer) header() http.Header {
	h := make(http.Header)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	received := ""
	if a.receivedStatus > 0 {
		received = "; received-status=" + strconv.Itoa(a.receivedStatus)
	}
	h.Set("Proxy-Status", "anaplan-proxy; error="+a.errType+received+"; details="+sfString(a.message))
	if a.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(a.retryAfter.Seconds()))))
	}
	for k, v := range a.extra {
		h[k] = v
	}
	return h
}

// write sends the answer on a live ResponseWriter.
func (a answer) write(w http.ResponseWriter) {
	body := a.body()
	h := w.Header()
	for k := range h {
		delete(h, k)
	}
	for k, v := range a.header() {
		h[k] = v
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(a.status)
	_, _ = io.WriteString(w, body)
}

// writeOn writes the answer on a connection that closes after it (a
// refused request on a hijacked or intercepted connection), with h1's
// head writer; the answer to a HEAD request goes without its body.
func (a answer) writeOn(w io.Writer, method string) error {
	body := a.body()
	h := a.header()
	h["Connection"] = []string{"close"}
	h["Date"] = []string{time.Now().UTC().Format(http.TimeFormat)}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	bw := bufio.NewWriterSize(w, 1024)
	_ = h1.WriteResponseHead(bw, true, a.status, h, false)
	if method != http.MethodHead {
		_, _ = bw.WriteString(body)
	}
	return bw.Flush()
}

// response builds the answer as an *http.Response, for goproxy to write
// on a refused CONNECT; the connection is closed after it.
func (a answer) response(req *http.Request) *http.Response {
	body := a.body()
	h := a.header()
	h.Set("Connection", "close")
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	return &http.Response{
		StatusCode:    a.status,
		Status:        fmt.Sprintf("%d %s", a.status, http.StatusText(a.status)),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Close:         true,
		Request:       req,
	}
}

// oneLine folds s onto a single line of bounded length.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '\t' {
			return ' '
		}
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > maxMessage {
		s = s[:maxMessage] + "..."
	}
	return s
}

// sfString renders s as an RFC 8941 quoted string: printable ASCII only,
// with backslash and double quote escaped.
func sfString(s string) string {
	s = strings.ReplaceAll(oneLine(s), "…", "...")
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c >= 0x20 && c < 0x7f:
			b.WriteByte(c)
		default:
			b.WriteByte('?')
		}
	}
	b.WriteByte('"')
	return b.String()
}

// tokenAnswer turns a TokenSource error into the proxy's answer: 511 when
// only a new login helps, 503 with Retry-After when waiting may. The error
// text is written for operators and carries no token.
func tokenAnswer(err error) answer {
	var lr interface{ LoginRequired() bool }
	if errors.As(err, &lr) && lr.LoginRequired() {
		return answer{status: http.StatusNetworkAuthenticationRequired, errType: "proxy_configuration_error", message: err.Error()}
	}
	retry := 5 * time.Second
	var ra interface{ RetryAfter() time.Duration }
	if errors.As(err, &ra) {
		retry = ra.RetryAfter()
	}
	retry = max(retry, time.Second)
	return answer{status: http.StatusServiceUnavailable, errType: "proxy_internal_error", message: err.Error(), retryAfter: retry}
}

// fieldAnswer answers a request whose head could not be written upstream
// because a field would have broken its framing (see h1.FieldError): the
// proxy's own Authorization, when it injects one, is the proxy's fault
// (a token with bytes no header may hold); any other field is the
// request's.
func fieldAnswer(fe *h1.FieldError, injected bool) answer {
	if injected && http.CanonicalHeaderKey(fe.Name) == "Authorization" {
		return internalError("the access token cannot be sent in an Authorization header (it holds bytes that a header field may not): run anaplan-proxy login to get a new session")
	}
	return requestError(http.StatusBadRequest, "the request cannot be forwarded: "+fe.Error())
}

// upstreamFailure describes a failed round trip or dial.
type upstreamFailure struct {
	status  int
	errType string // RFC 9209 error type
	reason  string // Observer.UpstreamError reason
	cause   string // short text naming the cause
	// receivedStatus is the corporate proxy's answer to a refused CONNECT.
	receivedStatus int
}

// answer is the proxy's answer to a request whose upstream, at hostport,
// failed so.
func (f upstreamFailure) answer(hostport string) answer {
	return answer{status: f.status, errType: f.errType, message: fmt.Sprintf("cannot reach %s: %s", hostport, f.cause), receivedStatus: f.receivedStatus}
}

// classifyUpstream maps a transport or dial error onto a status, an RFC 9209
// error type and a metrics reason. Error texts of the standard library name
// addresses and causes but never header values.
func classifyUpstream(err error) upstreamFailure {
	f := upstreamFailure{status: http.StatusBadGateway, errType: "destination_unavailable", reason: "other", cause: err.Error()}
	var viaProxy *upstreamProxyError
	if errors.As(err, &viaProxy) {
		// The corporate proxy, not the destination, failed: say so, and
		// count it apart from the destination's own failures.
		f.reason, f.cause, f.receivedStatus = "upstream_proxy", viaProxy.Error(), viaProxy.status
		switch {
		case viaProxy.status == http.StatusProxyAuthRequired:
			f.errType = "proxy_configuration_error"
		case viaProxy.status == 0 && viaProxy.err != nil:
			inner := classifyUpstream(viaProxy.err)
			f.status, f.errType = inner.status, inner.errType
		}
		return f
	}
	var prohibited *prohibitedError
	if errors.As(err, &prohibited) {
		return upstreamFailure{status: http.StatusForbidden, errType: "destination_ip_prohibited", reason: "prohibited", cause: prohibited.Error()}
	}
	switch {
	case errors.Is(err, h1.ErrResponseHeadTooLarge), strings.Contains(err.Error(), "server response headers exceeded"):
		// The second is net/http's Transport.MaxResponseHeaderBytes.
		f.errType, f.cause = "http_response_header_section_size", h1.ErrResponseHeadTooLarge.Error()
		return f
	case errors.Is(err, h1.ErrTooManyInterim):
		f.errType, f.cause = "http_protocol_error", h1.ErrTooManyInterim.Error()
		return f
	}
	var (
		dnsErr     *net.DNSError
		verifyErr  *tls.CertificateVerificationError
		unknownCA  x509.UnknownAuthorityError
		hostErr    x509.HostnameError
		invalidErr x509.CertificateInvalidError
		recordErr  tls.RecordHeaderError
		opErr      *net.OpError
		netErr     net.Error
	)
	switch {
	case errors.As(err, &dnsErr):
		f.reason, f.cause = "dns", dnsErr.Error()
		if dnsErr.IsTimeout {
			f.status, f.errType = http.StatusGatewayTimeout, "dns_timeout"
		} else {
			f.errType = "dns_error"
		}
	case errors.As(err, &verifyErr):
		f.errType, f.reason, f.cause = "tls_certificate_error", "tls", "tls: "+strings.TrimPrefix(verifyErr.Err.Error(), "x509: ")
	case errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &invalidErr):
		f.errType, f.reason = "tls_certificate_error", "tls"
	case errors.As(err, &recordErr):
		f.errType, f.reason, f.cause = "tls_protocol_error", "tls", "tls: the destination did not answer with TLS"
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		f.errType, f.reason = "tls_alert_received", "tls"
	case errors.Is(err, syscall.ECONNREFUSED):
		f.errType, f.reason, f.cause = "connection_refused", "connect", "connection refused"
	case errors.As(err, &netErr) && netErr.Timeout(), errors.Is(err, context.DeadlineExceeded):
		f.status, f.reason = http.StatusGatewayTimeout, "timeout"
		f.errType = "connection_timeout"
		// The second is net/http's Transport.ResponseHeaderTimeout.
		if errors.Is(err, h1.ErrResponseHeaderTimeout) || strings.Contains(err.Error(), "response headers") {
			f.errType = "http_response_timeout"
		}
	case errors.As(err, &opErr) && opErr.Op == "dial":
		f.errType, f.reason = "destination_unavailable", "connect"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		f.errType, f.reason = "connection_terminated", "reset"
	}
	return f
}
