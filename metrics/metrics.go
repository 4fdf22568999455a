// Package metrics exports the proxy's Prometheus metrics on a registry of
// its own and serves the admin endpoints (/metrics, /healthz, /readyz,
// /status).
//
// Every metric is prefixed anaplan_proxy_. Label values come from small
// fixed sets chosen by the program (a configured host pattern or "denied",
// a method class, a status code, a reason code), never from text a client
// controls, so the number of series stays bounded.
//
// The recording methods sit on the request path: each resolves its labelled
// child once and caches it, so a call costs a map lookup and an atomic add.
package metrics

import (
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "anaplan_proxy"

// Bucket boundaries in seconds. Proxied calls range from sub-second
// metadata requests to 50 MB chunk uploads; token refreshes are single
// round trips that should finish within seconds.
var (
	requestBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	refreshBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
)

// Label values known in advance. They are created at start so that their
// series exist (at zero) before the first event, which keeps rate() and
// alerts on them well defined.
var (
	knownDecisions      = []string{"inject", "tunnel", "compat", "deny"}
	knownUpstreamErrors = []string{"dns", "connect", "tls", "timeout", "reset", "prohibited", "upstream_proxy", "other"}
	knownReplays        = []string{"success", "failed", "not_replayable"}
	knownCertCache      = []string{"hit", "miss"}
	knownRefreshResults = []string{"success", "transient_error", "rejected", "uncertain"}
	knownDirections     = []string{"upload", "download"}
	knownPoolLookups    = []string{"hit", "miss"}
	knownPoolClosed     = []string{"upstream_closed", "unsolicited", "idle_timeout", "pool_full"}
)

// Metrics records the proxy's events. Create it with New; all methods are
// safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	requests         *prometheus.CounterVec
	requestDuration  *prometheus.HistogramVec
	connectDecisions *prometheus.CounterVec
	denials          *prometheus.CounterVec
	upstreamErrors   *prometheus.CounterVec
	replays          *prometheus.CounterVec
	certCache        *prometheus.CounterVec
	refreshes        *prometheus.CounterVec
	refreshDuration  prometheus.Histogram
	inFlight         prometheus.Gauge
	bytes            *prometheus.CounterVec
	proxyAuthFails   prometheus.Counter
	poolLookups      *prometheus.CounterVec
	poolIdle         prometheus.Gauge
	poolClosed       *prometheus.CounterVec
	session          *sessionCollector
	sess             *sessionMetrics

	// Children resolved once per label tuple.
	requestChildren  childCache[requestKey, prometheus.Counter]
	durationChildren childCache[string, prometheus.Observer]
	decisionChildren childCache[string, prometheus.Counter]
	denialChildren   childCache[string, prometheus.Counter]
	upstreamChildren childCache[string, prometheus.Counter]
	replayChildren   childCache[string, prometheus.Counter]
	certChildren     childCache[string, prometheus.Counter]
	refreshChildren  childCache[string, prometheus.Counter]
	bytesChildren    childCache[string, prometheus.Counter]
	lookupChildren   childCache[string, prometheus.Counter]
	closedChildren   childCache[string, prometheus.Counter]
}

type requestKey struct {
	host, class, code string
}

// New returns Metrics registered on a new registry together with the Go
// runtime and process collectors and anaplan_proxy_build_info. states is
// the fixed list of session states that anaplan_proxy_session_state
// exports one-hot; version is the program's version string.
func New(version string, states []string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}

	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "requests_total",
		Help: "Requests on inject hosts and answers the proxy gave itself, by host pattern, method class (read, write, connect, other) and HTTP status code.",
	}, []string{"host", "method_class", "code"})
	m.requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "request_duration_seconds",
		Help:    "Time from receiving a request to the end of its answer, by host pattern.",
		Buckets: requestBuckets,
	}, []string{"host"})
	m.connectDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "connect_decisions_total",
		Help: "CONNECT requests by policy decision (inject, tunnel, compat, deny).",
	}, []string{"decision"})
	m.denials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "denials_total",
		Help: "Refused CONNECT requests by reason code.",
	}, []string{"reason"})
	m.upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_errors_total",
		Help: "Failed round trips to upstream hosts by reason (dns, connect, tls, timeout, reset, prohibited, upstream_proxy, other).",
	}, []string{"reason"})
	m.replays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "replays_total",
		Help: "Requests replayed after an upstream 401 by outcome (success, failed, not_replayable).",
	}, []string{"outcome"})
	m.certCache = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "cert_cache_lookups_total",
		Help: "Leaf certificate cache lookups by result (hit, miss).",
	}, []string{"result"})
	m.refreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "token_refreshes_total",
		Help: "Access token refresh attempts by result (success, transient_error, rejected, uncertain: sent without an answer, so never sent again).",
	}, []string{"result"})
	m.refreshDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "token_refresh_duration_seconds",
		Help:    "Duration of access token refresh attempts.",
		Buckets: refreshBuckets,
	})
	m.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "in_flight_requests",
		Help: "Requests currently being proxied.",
	})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "bytes_total",
		Help: "Body bytes relayed on inject hosts by direction (upload: client to Anaplan, download: Anaplan to client).",
	}, []string{"direction"})
	m.proxyAuthFails = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "proxy_auth_failures_total",
		Help: "Clients refused because their proxy credentials or address were not allowed.",
	})
	m.poolLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_pool_lookups_total",
		Help: "Intercepted requests by whether an idle upstream connection was there to take (hit) or one had to be opened (miss).",
	}, []string{"result"})
	m.poolIdle = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "upstream_idle_connections",
		Help: "Idle upstream connections kept warm for intercepted requests.",
	})
	m.poolClosed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_pool_closed_total",
		Help: "Kept upstream connections closed rather than used, by reason (upstream_closed, unsolicited, idle_timeout, pool_full).",
	}, []string{"reason"})
	m.session = newSessionCollector(states)
	m.sess = newSessionMetrics()
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1; the labels name the running build.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)

	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo,
		m.requests, m.requestDuration, m.connectDecisions, m.denials,
		m.upstreamErrors, m.replays, m.certCache, m.refreshes,
		m.refreshDuration, m.inFlight, m.bytes, m.proxyAuthFails,
		m.poolLookups, m.poolIdle, m.poolClosed, m.session,
	)
	m.reg.MustRegister(m.sess.collectors()...)

	m.requestChildren.init(func(k requestKey) prometheus.Counter {
		return m.requests.WithLabelValues(k.host, k.class, k.code)
	})
	m.durationChildren.init(func(host string) prometheus.Observer {
		return m.requestDuration.WithLabelValues(host)
	})
	m.decisionChildren.init(counterChild(m.connectDecisions))
	m.denialChildren.init(counterChild(m.denials))
	m.upstreamChildren.init(counterChild(m.upstreamErrors))
	m.replayChildren.init(counterChild(m.replays))
	m.certChildren.init(counterChild(m.certCache))
	m.refreshChildren.init(counterChild(m.refreshes))
	m.bytesChildren.init(counterChild(m.bytes))
	m.lookupChildren.init(counterChild(m.poolLookups))
	m.closedChildren.init(counterChild(m.poolClosed))

	for _, v := range knownDecisions {
		m.decisionChildren.get(v)
	}
	for _, v := range knownUpstreamErrors {
		m.upstreamChildren.get(v)
	}
	for _, v := range knownReplays {
		m.replayChildren.get(v)
	}
	for _, v := range knownCertCache {
		m.certChildren.get(v)
	}
	for _, v := range knownRefreshResults {
		m.refreshChildren.get(v)
	}
	for _, v := range knownDirections {
		m.bytesChildren.get(v)
	}
	for _, v := range knownPoolLookups {
		m.lookupChildren.get(v)
	}
	for _, v := range knownPoolClosed {
		m.closedChildren.get(v)
	}
	return m
}

// Registry returns the registry holding every metric of m. Callers may
// register more collectors on it; it is never the global default registry.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Request records one request on host (a configured host pattern or
// "denied") with its method, final status code and duration.
func (m *Metrics) Request(host, method string, code int, d time.Duration) {
	m.requestChildren.get(requestKey{host, methodClass(method), codeLabel(code)}).Inc()
	m.durationChildren.get(host).Observe(d.Seconds())
}

// Connect records one CONNECT decision ("inject", "tunnel" or "deny"); for
// "deny", reason is the short reason code counted in denials_total.
func (m *Metrics) Connect(decision, reason string) {
	m.decisionChildren.get(decision).Inc()
	if decision == "deny" {
		if reason == "" {
			reason = "other"
		}
		m.denialChildren.get(reason).Inc()
	}
}

// UpstreamError records one failed upstream round trip by reason code.
func (m *Metrics) UpstreamError(reason string) { m.upstreamChildren.get(reason).Inc() }

// Replay records the outcome of one replay after an upstream 401.
func (m *Metrics) Replay(outcome string) { m.replayChildren.get(outcome).Inc() }

// CertCache records one leaf certificate cache lookup ("hit" or "miss").
func (m *Metrics) CertCache(result string) { m.certChildren.get(result).Inc() }

// Refresh records one access token refresh attempt with its result
// ("success", "transient_error" or "rejected") and duration.
func (m *Metrics) Refresh(result string, d time.Duration) {
	m.refreshChildren.get(result).Inc()
	m.refreshDuration.Observe(d.Seconds())
}

// SetSession publishes the session state, one-hot over the states given to
// New, with the access token's expiry (zero time: none) and the time of the
// last successful refresh. A zero lastRefresh keeps the previous value, so
// a state change that knows nothing about refreshes does not erase it.
// A state outside the list sets every state series to 0.
func (m *Metrics) SetSession(state string, accessTokenExpiry, lastRefresh time.Time) {
	m.session.set(state, accessTokenExpiry, lastRefresh)
}

// InFlight adds delta (usually +1 or -1) to the number of requests in flight.
func (m *Metrics) InFlight(delta int) { m.inFlight.Add(float64(delta)) }

// Bytes adds n body bytes relayed in direction ("upload" or "download").
// Non-positive n is ignored.
func (m *Metrics) Bytes(direction string, n int64) {
	if n <= 0 {
		return
	}
	m.bytesChildren.get(direction).Add(float64(n))
}

// ProxyAuthFailure records one client refused by proxy access control.
func (m *Metrics) ProxyAuthFailure() { m.proxyAuthFails.Inc() }

// UpstreamPool records one lookup of an idle upstream connection ("hit"
// or "miss").
func (m *Metrics) UpstreamPool(result string) { m.lookupChildren.get(result).Inc() }

// UpstreamIdle adds delta to the number of idle upstream connections.
func (m *Metrics) UpstreamIdle(delta int) { m.poolIdle.Add(float64(delta)) }

// UpstreamClosed records one kept upstream connection closed rather than
// used, by reason.
func (m *Metrics) UpstreamClosed(reason string) { m.closedChildren.get(reason).Inc() }

// methodClass maps an HTTP method to a label value from a fixed set, so a
// client inventing methods cannot create series.
func methodClass(method string) string {
	switch method {
	case "GET", "HEAD", "OPTIONS":
		return "read"
	case "POST", "PUT", "PATCH", "DELETE":
		return "write"
	case "CONNECT":
		return "connect"
	default:
		return "other"
	}
}

// codeLabels holds the label strings of every valid status code, so the hot
// path does not allocate one per call.
var codeLabels = func() (l [600]string) {
	for c := 100; c < len(l); c++ {
		l[c] = strconv.Itoa(c)
	}
	return l
}()

// codeLabel returns code as a label value; codes outside 100–599 (an answer
// that never got a status) become "0".
func codeLabel(code int) string {
	if code < 100 || code >= len(codeLabels) {
		return "0"
	}
	return codeLabels[code]
}

// childCache resolves a metric child once per key. Reads after the first
// are a lock-free map lookup.
type childCache[K comparable, V any] struct {
	m    sync.Map // K → V
	make func(K) V
}

func (c *childCache[K, V]) init(make func(K) V) { c.make = make }

func (c *childCache[K, V]) get(k K) V {
	if v, ok := c.m.Load(k); ok {
		return v.(V)
	}
	v, _ := c.m.LoadOrStore(k, c.make(k))
	return v.(V)
}

func counterChild(vec *prometheus.CounterVec) func(string) prometheus.Counter {
	return func(v string) prometheus.Counter { return vec.WithLabelValues(v) }
}

// sessionCollector exports the session state, the access token expiry and
// the last successful refresh. It keeps them under one lock so that a scrape
// always sees exactly one state set, never a half-applied change.
type sessionCollector struct {
	stateDesc, expiryDesc, refreshDesc *prometheus.Desc
	states                             []string

	mu          sync.Mutex
	state       string
	expiry      time.Time
	lastRefresh time.Time
}

func newSessionCollector(states []string) *sessionCollector {
	var uniq []string
	for _, s := range states {
		if !slices.Contains(uniq, s) {
			uniq = append(uniq, s)
		}
	}
	return &sessionCollector{
		states: uniq,
		stateDesc: prometheus.NewDesc(namespace+"_session_state",
			"1 for the current session state, 0 for the others.", []string{"state"}, nil),
		expiryDesc: prometheus.NewDesc(namespace+"_access_token_expiry_timestamp_seconds",
			"When the current access token expires, in seconds since the Unix epoch; 0 when there is none.", nil, nil),
		refreshDesc: prometheus.NewDesc(namespace+"_last_refresh_success_timestamp_seconds",
			"When the access token was last refreshed successfully, in seconds since the Unix epoch; 0 if never.", nil, nil),
	}
}

func (c *sessionCollector) set(state string, expiry, lastRefresh time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state = state
	c.expiry = expiry
	if !lastRefresh.IsZero() {
		c.lastRefresh = lastRefresh
	}
}

func (c *sessionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.stateDesc
	ch <- c.expiryDesc
	ch <- c.refreshDesc
}

func (c *sessionCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	state, expiry, lastRefresh := c.state, c.expiry, c.lastRefresh
	c.mu.Unlock()
	for _, s := range c.states {
		v := 0.0
		if s == state {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.stateDesc, prometheus.GaugeValue, v, s)
	}
	ch <- prometheus.MustNewConstMetric(c.expiryDesc, prometheus.GaugeValue, unixSeconds(expiry))
	ch <- prometheus.MustNewConstMetric(c.refreshDesc, prometheus.GaugeValue, unixSeconds(lastRefresh))
}

// unixSeconds returns t as fractional seconds since the epoch, 0 for the
// zero time.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
