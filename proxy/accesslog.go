package proxy

import (
	"context"
	"log/slog"
	"time"
)

// requestRecord is what the access log and the request metric say of one
// request, whichever way it was served or refused.
type requestRecord struct {
	client   string
	user     string
	method   string // as the client sent it; the metric keeps the standard ones
	host     string // host:port for the log
	pattern  string // the configured pattern for the metric, or "denied"
	path     string
	rawPath  []byte // the path while it is still bytes of a read buffer (the fast path): made a string only for the log
	status   int
	bytes    int64 // answer body bytes sent to the client
	duration time.Duration
	decision string
	reason   string // why the proxy refused the request; "" when served
}

// record writes the access-log line and counts the request metric of one
// request: the one place that does, for every path (fast, general,
// refused by the serving loop or the framing guard, denied before any
// interception). The line's attributes are only built when the logger
// wants them.
func (p *Proxy) record(ctx context.Context, r *requestRecord) {
	p.obs.Request(r.pattern, methodLabel(r.method), r.status, r.duration)
	if !p.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	path := r.path
	if r.rawPath != nil {
		path = string(r.rawPath)
	}
	attrs := [...]slog.Attr{
		slog.String("client", r.client),
		slog.String("user", r.user),
		slog.String("method", oneLine(r.method)),
		slog.String("host", oneLine(r.host)),
		slog.String("path", path),
		slog.Int("status", r.status),
		slog.Int64("bytes", r.bytes),
		slog.Int64("duration_ms", r.duration.Milliseconds()),
		slog.String("decision", r.decision),
		slog.String("reason", r.reason),
	}
	n := len(attrs)
	if r.reason == "" {
		n--
	}
	p.log.LogAttrs(ctx, slog.LevelInfo, "request", attrs[:n]...)
}

// logRefused records a request that the serving loop of an intercepted
// connection, or its framing guard, refused before serving it.
func (p *Proxy) logRefused(client string, t *target, method string, status int, reason string) {
	p.record(context.Background(), &requestRecord{
		client: client, user: t.user, method: method, host: t.hostport, pattern: t.pattern,
		status: status, decision: actionDeny.String(), reason: reason,
	})
}
