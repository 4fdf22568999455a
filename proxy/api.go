// Package proxy is the forward proxy: it decides per CONNECT whether to
// intercept TLS and inject the Anaplan token, tunnel untouched, or refuse
// with a reason; it streams bodies, verifies upstream TLS, and answers
// failures itself with a status, a one-line body and a Proxy-Status header.
package proxy

import (
	"context"
	"time"
)

// TokenSource gives the proxy the access token to inject. It is the only
// thing the proxy knows about the session.
type TokenSource interface {
	// AccessToken returns a currently valid access token. Errors may
	// implement LoginRequired() bool and RetryAfter() time.Duration.
	AccessToken(ctx context.Context) (string, error)
	// Rejected reports that an inject host answered 401 to a request that
	// carried token. It returns a newer token (refreshing if no other
	// refresh already replaced token) or an error as AccessToken does.
	Rejected(ctx context.Context, token string) (string, error)
}

// Observer receives events for metrics. Host is always a configured
// pattern or "denied", never client-controlled text. A nil Observer is fine.
type Observer interface {
	// Request is called once per proxied request on an inject host or per
	// proxy answer.
	Request(host, method string, code int, d time.Duration)
	// Connect is called once per CONNECT with decision "inject", "tunnel",
	// "compat" (answered locally, see Config.Compat) or "deny" and, for
	// deny, a short reason code.
	Connect(decision, reason string)
	// UpstreamError counts failed round trips by reason ("dns", "connect",
	// "tls", "timeout", "reset", "other", or "prohibited" for a destination
	// address the proxy may not connect to).
	UpstreamError(reason string)
	// Replay counts 401 replays by outcome ("success", "failed", "not_replayable").
	Replay(outcome string)
	// CertCache counts leaf certificate cache lookups ("hit" or "miss").
	CertCache(result string)
	// ProxyAuthFailure counts clients refused for missing or wrong proxy
	// credentials, or for too many such failures.
	ProxyAuthFailure()
	// InFlight adds delta (+1 or -1) to the number of requests on inject
	// hosts being served.
	InFlight(delta int)
	// Bytes counts n body bytes relayed on inject hosts in direction
	// "upload" (client to upstream) or "download" (upstream to client).
	// Long transfers report in steps while they stream.
	Bytes(direction string, n int64)
	// UpstreamPool counts the intercepted requests that found an idle
	// upstream connection in the pool ("hit") or had to open one
	// ("miss").
	UpstreamPool(result string)
	// UpstreamIdle adds delta to the number of idle upstream
	// connections in the pool.
	UpstreamIdle(delta int)
	// UpstreamClosed counts kept upstream connections closed rather than
	// used, by reason: "upstream_closed" (the upstream closed it, or it
	// broke, while idle), "unsolicited" (bytes that no request asked for
	// arrived on it), "idle_timeout", "pool_full".
	UpstreamClosed(reason string)
}
