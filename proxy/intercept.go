package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// An intercepted connection is served by the HTTP/1.1 engine's server
// side (h1.Server): the TLS handshake with a leaf from the local CA, the
// framing guard, the connection loop, request bodies and the answer's
// framing are h1's. What is the proxy's is wired here: the handler
// (serveIntercepted), the fast path (serveFast), the bound on request
// bodies still arriving, and the answer and access-log line of a request
// the engine refuses.

// newEngine returns the server side that serves intercepted connections.
func (p *Proxy) newEngine() *h1.Server {
	return &h1.Server{
		Handler:           http.HandlerFunc(p.serveIntercepted),
		TLSConfig:         p.clientTLS,
		ReadHeaderTimeout: p.limits.ReadHeaderTimeout,
		IdleTimeout:       p.limits.IdleTimeout,
		BodyTimeout:       p.limits.BodyTimeout,
		MaxHeaderBytes:    p.limits.MaxHeaderBytes,
		Fast:              p.serveFast,
		EnterBody:         p.enterBody,
		Refused:           p.refused,
		HandshakeFailed:   p.handshakeFailed,
		Panicked:          p.panicked,
	}
}

// serveInterceptedConn serves the requests of an intercepted connection
// until the client closes it, a timeout or an error ends it, or the proxy
// shuts down. conn has been told "200 Connection established".
func (p *Proxy) serveInterceptedConn(conn net.Conn, t *target) {
	c := p.engine.NewConn(&targetConn{Conn: conn, target: t}, t.authority)
	if !p.trackIntercepted(c) {
		_ = conn.Close()
		return
	}
	defer p.untrackIntercepted(c)
	c.Serve(context.WithValue(p.baseCtx, targetKey{}, t))
}

// targetOf returns the CONNECT target that ctx, an intercepted
// connection's, carries.
func targetOf(ctx context.Context) *target {
	t, _ := ctx.Value(targetKey{}).(*target)
	return t
}

// enterBody admits a request whose body is still to come from the client,
// up to Limits.MaxBodyWaits.
func (p *Proxy) enterBody() (leave func(), refusal *h1.RequestError) {
	leave, ok := p.bodyWaits.enter()
	if !ok {
		return nil, p.bodyWaits.refusal()
	}
	return leave, nil
}

// refused answers a request that the engine refused, on a connection that
// then closes, and records it.
func (p *Proxy) refused(ctx context.Context, w io.Writer, remote string, e *h1.RequestError) {
	_ = refusalAnswer(e).writeOn(w, e.Method)
	p.logRefused(remote, targetOf(ctx), e.Method, e.Status, e.Reason)
}

// refusalAnswer is the proxy's answer to a request the engine refused.
func refusalAnswer(e *h1.RequestError) answer {
	if e.Status == http.StatusServiceUnavailable {
		return unavailable(e.Message, e.RetryAfter)
	}
	return requestError(e.Status, e.Message)
}

// handshakeFailed logs a failed TLS handshake with the client. A client
// that refuses the proxy's certificate says so with an alert: that one is
// a warning with the fix, the others (a client that went away, a timeout)
// are not worth one.
func (p *Proxy) handshakeFailed(ctx context.Context, client string, err error) {
	msg := oneLine(err.Error())
	t := targetOf(ctx)
	if strings.Contains(msg, "remote error: tls: ") {
		p.log.Warn("the client refused the proxy's certificate: make it trust the proxy's CA (the output of anaplan-proxy ca)",
			"client", client, "host", t.hostport, "error", msg)
		return
	}
	p.log.Debug("TLS handshake with client failed", "client", client, "host", t.hostport, "error", msg)
}

// panicked logs a handler's panic.
func (p *Proxy) panicked(ctx context.Context, v any, stack []byte) {
	p.log.Error("panic serving an intercepted request", "host", targetOf(ctx).hostport, "panic", oneLine(toString(v)), "stack", string(stack))
}

func toString(v any) string {
	if err, ok := v.(error); ok {
		return err.Error()
	}
	if s, ok := v.(string); ok {
		return s
	}
	return "non-error panic value"
}

// trackIntercepted registers an intercepted connection for Shutdown; false
// once Shutdown has begun.
func (p *Proxy) trackIntercepted(c *h1.ServerConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.interceptConns[c] = struct{}{}
	p.intercepts.add()
	return true
}

func (p *Proxy) untrackIntercepted(c *h1.ServerConn) {
	p.mu.Lock()
	delete(p.interceptConns, c)
	p.mu.Unlock()
	p.intercepts.done()
}

// closeIdleIntercepted closes the intercepted connections that wait for a
// request; the others close after their current answer.
func (p *Proxy) closeIdleIntercepted() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.interceptConns {
		c.CloseIfIdle()
	}
}

// closeIntercepted cuts every intercepted connection.
func (p *Proxy) closeIntercepted() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.interceptConns {
		c.Close()
	}
}
