package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values of the shared-session metrics, created at start.
var (
	knownForced       = []string{"refreshed", "suppressed"}
	knownEvents       = []string{"lease_busy", "refresh_in_flight", "fenced", "uncertain", "adopted"}
	knownStoreOps     = []string{"load", "acquire", "release", "begin", "finish", "mark_uncertain", "put"}
	knownStoreResults = []string{"ok", "error"}
	storeBuckets      = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	handoverBuckets   = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60}
)

// sessionMetrics are the metrics of the refresh protocol and its store:
// what instances of one shared session see of each other.
type sessionMetrics struct {
	forced        *prometheus.CounterVec
	events        *prometheus.CounterVec
	handover      prometheus.Histogram
	storeOps      *prometheus.CounterVec
	storeDuration *prometheus.HistogramVec
	storeInfo     *prometheus.GaugeVec
}

func newSessionMetrics() *sessionMetrics {
	s := &sessionMetrics{
		forced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "forced_refreshes_total",
			Help: "Upstream 401s for the current token by what followed: a forced refresh, or none (suppressed: within the forced-refresh interval, or for a token under a second old).",
		}, []string{"result"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "session_events_total",
			Help: "Events of the shared refresh protocol: lease_busy (another instance held the lease), refresh_in_flight (another instance was refreshing), fenced (a write refused because the lease or record had passed on), uncertain (a refresh that never finished was marked; login needed), adopted (a token refreshed by another instance was taken).",
		}, []string{"event"}),
		handover: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "token_handover_delay_seconds",
			Help:    "How long after this instance's planned refresh time each new access token arrived (0 when on time); after a failover, how long the takeover took.",
			Buckets: handoverBuckets,
		}),
		storeOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "store_operations_total",
			Help: "Operations on the session store by operation and result (ok, error). A conflict or fence loss counts as ok: the store answered.",
		}, []string{"op", "result"}),
		storeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "store_operation_duration_seconds",
			Help:    "Latency of session store operations by operation.",
			Buckets: storeBuckets,
		}, []string{"op"}),
		storeInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "store_info",
			Help: "Always 1; type names the session store (file, postgres).",
		}, []string{"type"}),
	}
	for _, v := range knownForced {
		s.forced.WithLabelValues(v)
	}
	for _, v := range knownEvents {
		s.events.WithLabelValues(v)
	}
	for _, op := range knownStoreOps {
		for _, r := range knownStoreResults {
			s.storeOps.WithLabelValues(op, r)
		}
	}
	return s
}

func (s *sessionMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{s.forced, s.events, s.handover, s.storeOps, s.storeDuration, s.storeInfo}
}

// ForcedRefresh counts an upstream 401 for the current token by result
// ("refreshed" or "suppressed").
func (m *Metrics) ForcedRefresh(result string) { m.sess.forced.WithLabelValues(result).Inc() }

// SessionEvent counts an event of the shared refresh protocol.
func (m *Metrics) SessionEvent(event string) { m.sess.events.WithLabelValues(event).Inc() }

// TokenHandover records how late a new access token arrived.
func (m *Metrics) TokenHandover(late time.Duration) { m.sess.handover.Observe(late.Seconds()) }

// StoreOp records one operation on the session store. op is one of a
// fixed set of names; err only decides the result label.
func (m *Metrics) StoreOp(op string, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.sess.storeOps.WithLabelValues(op, result).Inc()
	m.sess.storeDuration.WithLabelValues(op).Observe(d.Seconds())
}

// SetStore names the session store's type in anaplan_proxy_store_info.
func (m *Metrics) SetStore(typ string) {
	m.sess.storeInfo.Reset()
	m.sess.storeInfo.WithLabelValues(typ).Set(1)
}
