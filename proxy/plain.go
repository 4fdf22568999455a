package proxy

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// Reason codes of refused plain-HTTP requests, for the access log.
const (
	reasonPlainHTTPOff         = "plain_http_off"
	reasonPlainHTTPNotLoopback = "plain_http_not_loopback"
	reasonPlainHTTPNotInject   = "plain_http_not_inject"
)

// servePlain handles an absolute-form plain-HTTP request sent to the proxy
// (curl -x http://127.0.0.1:3128 http://api.anaplan.com/...). With
// Config.PlainHTTP on, a loopback client's request for an inject host is
// sent on over verified HTTPS with the token, by the same code as a request
// inside an intercepted CONNECT: this is the one case where a request that
// arrived without TLS gets the token, because its hop to the proxy never
// leaves the machine. Everything else is refused with the reason.
func (p *Proxy) servePlain(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	deny := func(a answer, reason string) {
		a.write(w)
		p.finishDenied(r, r.URL.Host, a.status, start, reason)
	}
	host, port := r.URL.Hostname(), defaultPort
	if text := r.URL.Port(); text != "" {
		n, err := strconv.Atoi(text)
		if err != nil {
			port = 0 // refused by the policy below
		} else {
			port = n
		}
	}
	v := p.policy.decide(host, port)
	if v.action != actionInject {
		detail, reason := v.detail, v.reason
		if v.action != actionDeny {
			detail = "plain HTTP is only for inject hosts: request https:// through the proxy"
			reason = reasonPlainHTTPNotInject
		}
		deny(requestDenied(http.StatusForbidden, fmt.Sprintf("plain-HTTP request to %s refused: %s", r.URL.Host, detail)), reason)
		return
	}
	if !p.plainHTTP {
		deny(requestDenied(http.StatusForbidden, fmt.Sprintf("plain-HTTP request to %s refused: use https:// through the proxy (HTTPS_PROXY); "+
			"for a tool that cannot trust the proxy's CA, set inject.plain_http: true, which serves loopback clients only "+
			"and lets any local process that reaches the proxy use the token, as https:// through it already does", r.URL.Host)),
			reasonPlainHTTPOff)
		return
	}
	if addr, err := clientAddr(r.RemoteAddr); err != nil || !addr.IsLoopback() {
		deny(requestDenied(http.StatusForbidden, fmt.Sprintf("plain-HTTP request to %s refused: inject.plain_http serves loopback clients only, "+
			"because from another machine the request and the answer would cross the network unencrypted; request https:// through the proxy", r.URL.Host)),
			reasonPlainHTTPNotLoopback)
		return
	}
	if _, upgrade := r.Header["Upgrade"]; upgrade {
		deny(requestError(http.StatusBadRequest, "protocol upgrades are not supported through this proxy"), "bad_framing")
		return
	}
	if p.isClosing() {
		deny(shuttingDown(), reasonShuttingDown)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		leave, ok := p.bodyWaits.enter()
		if !ok {
			e := p.bodyWaits.refusal()
			deny(refusalAnswer(e).closing(), e.Reason)
			return
		}
		defer leave()
		r.Body = &stallBody{ReadCloser: r.Body, rc: http.NewResponseController(w), clock: h1.BodyClock{Timeout: p.limits.BodyTimeout}, leave: leave}
	}
	t := newTarget(host, port, v.pattern)
	t.user, _ = r.Context().Value(userKey{}).(string)
	t.plain = true
	p.serveIntercepted(w, r.WithContext(context.WithValue(r.Context(), targetKey{}, t)))
}

// decision names how t's requests are handled, for the access log.
func (t *target) decision() string {
	if t.plain {
		return "inject_plain_http"
	}
	return t.action().String()
}

// schemeAllowed reports whether an absolute request URL's scheme may be
// sent for t: https inside a CONNECT, http for a plain-HTTP request.
func (t *target) schemeAllowed(scheme string) bool {
	if t.plain {
		return strings.EqualFold(scheme, "http")
	}
	return strings.EqualFold(scheme, "https")
}
