package metrics

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminConfig is what the admin listener serves. Every field is optional;
// the endpoint of a nil field answers as described on NewAdminHandler.
type AdminConfig struct {
	// Metrics is exported on /metrics.
	Metrics *Metrics
	// Status returns the value /status encodes as JSON. It must not hold
	// a token or other secret.
	Status func() any
	// Ready reports whether the proxy can serve requests (a usable session).
	Ready func() bool
	// ReadyReason optionally explains in one line why Ready is false.
	ReadyReason func() string
}

// NewAdminHandler returns the admin HTTP handler:
//
//   - GET /metrics: the Prometheus exposition of cfg.Metrics' registry
//     (404 when cfg.Metrics is nil);
//   - GET /healthz: 200 "ok" while the process serves HTTP (liveness);
//   - GET /readyz: 200 "ready" when cfg.Ready reports true, otherwise 503
//     with "not ready: <reason>" (a nil Ready is never ready, so a missing
//     check cannot report a session that does not exist);
//   - GET /status: cfg.Status() as application/json (404 when nil);
//
// HEAD is accepted wherever GET is; other methods get 405, other paths 404.
func NewAdminHandler(cfg AdminConfig) http.Handler {
	mux := http.NewServeMux()
	if cfg.Metrics != nil {
		reg := cfg.Metrics.reg
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			// Serve what can be gathered rather than nothing, and count
			// the failures on the same registry.
			ErrorHandling: promhttp.ContinueOnError,
			Registry:      reg,
		}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if cfg.Ready != nil && cfg.Ready() {
			writeText(w, http.StatusOK, "ready")
			return
		}
		reason := "no readiness check configured"
		if cfg.Ready != nil {
			reason = "no usable session"
		}
		if cfg.ReadyReason != nil {
			if r := oneLine(cfg.ReadyReason()); r != "" {
				reason = r
			}
		}
		writeText(w, http.StatusServiceUnavailable, "not ready: "+reason)
	})
	if cfg.Status != nil {
		mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetIndent("", "  ")
			if err := enc.Encode(cfg.Status()); err != nil {
				writeText(w, http.StatusInternalServerError, "status cannot be encoded as JSON")
				return
			}
			h := w.Header()
			h.Set("Content-Type", "application/json")
			h.Set("Cache-Control", "no-store")
			h.Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(buf.Bytes())
		})
	}
	return mux
}

// writeText answers with one line of plain text. Probes and people read the
// same answer, and nothing in it may be cached.
func writeText(w http.ResponseWriter, code int, line string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(line + "\n"))
}

// oneLine joins s onto a single trimmed line so that a reason cannot forge
// extra lines in the answer.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
