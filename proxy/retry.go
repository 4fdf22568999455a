package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"syscall"
)

// The rule for sending a request again, net/http's (Transport's
// shouldRetryRequest), is here once, and attempt is the one routine that
// applies it, for the fast path and the general one alike. A request that
// fails is sent once more, on another connection, only if
//   - the connection had carried earlier exchanges: the upstream may have
//     closed it, idle, as the request went (a new connection that fails
//     is the upstream's answer);
//   - it failed as such a connection fails (see staleConn), before any
//     byte of an answer came (the upstream may have acted on it
//     otherwise);
//   - and the request may be sent twice (see replayable).
//
// That the whole of a request went upstream before its connection is
// reused (net/http's wroteRequest) is checked where an exchange gives its
// connection back: directBody.Close, through h1.BodySender.Sent.

// replayable reports whether a request may be sent twice, by net/http's
// rule (Request.isReplayable): without a body, and with a method that
// does not change anything (GET, HEAD, OPTIONS, TRACE) or an
// Idempotency-Key that lets the upstream tell a repeat.
func replayable(method string, h http.Header, hasBody bool) bool {
	if hasBody {
		return false
	}
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := h["Idempotency-Key"]
	_, xkey := h["X-Idempotency-Key"]
	return key || xkey
}

// staleConn reports whether err is how a request fails on a kept-alive
// connection that the upstream had already closed.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// shouldRetry reports whether a request that may be sent twice and failed
// with err on u, reused or new, goes once more on another connection.
func shouldRetry(u *upstreamConn, reused bool, err error) bool {
	return reused && !u.Answered && staleConn(err)
}

// attempt runs send on an upstream connection for t's exchange, from the
// pool or new (see Proxy.acquire), and, when send fails and the rule
// above allows, once more on another. It returns the connection that
// send succeeded on; a failed one has been closed.
func (p *Proxy) attempt(ctx context.Context, t *target, replay bool, send func(u *upstreamConn) error) (*upstreamConn, error) {
	for {
		u, reused, err := p.acquire(ctx, t)
		if err != nil {
			return nil, err
		}
		err = send(u)
		if err == nil {
			return u, nil
		}
		t.closeUpstream()
		if !replay || !shouldRetry(u, reused, err) || ctx.Err() != nil {
			return nil, err
		}
		p.obs.UpstreamClosed(closedUpstreamClosed)
	}
}
