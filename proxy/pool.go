package proxy

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// Intercepted requests share a pool of idle upstream connections (see
// h1.Pool for what it guarantees) and go upstream through one h1.Client.
// The proxy supplies what the engine does not know: the dial (the guarded
// dialer, the corporate proxy, the upstream TLS configuration), the route
// of a target, the metrics (its Observer is an h1.PoolObserver), and
// whether a connection is worth keeping warm (a valid session).

// PoolLimits bounds the idle upstream connections that intercepted
// requests share. A zero field takes its default.
type PoolLimits struct {
	// MaxIdlePerHost is how many idle connections are kept per upstream
	// host and route (direct or through the corporate proxy); default 64.
	// Between two requests of a busy client, its connection is idle in
	// the pool: the bound should exceed the requests to one host under
	// way at once, or connections are closed and opened again at that
	// rate.
	MaxIdlePerHost int
	// MaxIdle is how many idle connections are kept in all; default 256.
	MaxIdle int
	// IdleTimeout closes a connection that has been idle this long; it
	// must be below the upstream's own idle timeout, so that the proxy,
	// not the upstream, ends an idle connection. Default 50 s.
	IdleTimeout time.Duration
	// KeepWarm, when set, replaces the last idle connection to a host
	// that the idle timeout closes with a new one, for as long as the
	// host was last called within KeepWarm and the session is valid: the
	// first call after a quiet night then pays no handshake with the
	// upstream. It costs a TCP and TLS handshake (resumed) per host every
	// IdleTimeout. Zero (the default) keeps nothing warm.
	KeepWarm time.Duration
}

// limits returns the pool's bounds as h1 takes them.
func (l PoolLimits) limits() h1.PoolLimits {
	return h1.PoolLimits{MaxIdlePerHost: l.MaxIdlePerHost, MaxIdle: l.MaxIdle, IdleTimeout: l.IdleTimeout, KeepWarm: l.KeepWarm}
}

// newClient returns the client that sends intercepted requests upstream,
// with its pool.
func (p *Proxy) newClient(limits PoolLimits) *h1.Client {
	return &h1.Client{
		Pool:    h1.NewPool(limits.limits(), p.obs, p.warm),
		Dial:    p.dialRoute,
		Waits:   h1.Waits{First: h1.WatchDelay, Head: responseHeaderTimeout},
		Buffers: p.buffers,
	}
}

// route is the pool key of t's upstream connections, with where to dial
// them: the host and port, and the corporate proxy that connections to
// them go through, if any.
func (p *Proxy) route(t *target) h1.Route {
	if t.route.Key == "" {
		t.route = h1.Route{Key: t.hostport, Host: t.host, Addr: t.hostport}
		if via := p.dialer.via; via != nil && !via.Bypass(t.host, t.port) {
			t.route.Key += " via " + via.String()
		}
	}
	return t.route
}

// dialRoute opens a verified TLS connection to r, through the same
// guarded dialer (and corporate proxy, if any) as the shared transport.
// TLS sessions are resumed from the cache that the transport shares.
func (p *Proxy) dialRoute(ctx context.Context, r h1.Route) (net.Conn, error) {
	return p.dialTLS(ctx, r.Addr, r.Host, true)
}

// warm opens a connection to r, whose last idle one expired, if the
// session is valid, for KeepWarm.
func (p *Proxy) warm(ctx context.Context, r h1.Route) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if _, err := p.tokens.AccessToken(ctx); err != nil {
		return nil, fmt.Errorf("no valid session to keep %s warm for: %w", r.Addr, err)
	}
	c, err := p.dialRoute(ctx, r)
	if err != nil {
		p.log.Debug("keeping a connection warm failed", "host", r.Addr, "error", oneLine(err.Error()))
		return nil, err
	}
	return c, nil
}
