package metrics

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var testStates = []string{"logged_out", "valid", "refreshing", "degraded", "login_required"}

// scrape fetches /metrics through the admin handler, as Prometheus would,
// and parses the text exposition.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, body %q", rec.Code, rec.Body.String())
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// sample returns the value of the series of family name whose labels
// include want: the value of a counter or gauge, the sample count of a
// histogram. ok is false when no such series exists.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (v float64, typ dto.MetricType, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, 0, false
	}
	for _, m := range f.GetMetric() {
		if !hasLabels(m, want) {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue(), f.GetType(), true
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue(), f.GetType(), true
		case dto.MetricType_HISTOGRAM:
			return float64(m.GetHistogram().GetSampleCount()), f.GetType(), true
		}
	}
	return 0, f.GetType(), false
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == k && lp.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func TestFamiliesMove(t *testing.T) {
	tests := []struct {
		family string
		typ    dto.MetricType
		labels map[string]string
		do     func(m *Metrics)
		delta  float64
	}{
		{"anaplan_proxy_requests_total", dto.MetricType_COUNTER,
			map[string]string{"host": "api.anaplan.com", "method_class": "read", "code": "200"},
			func(m *Metrics) { m.Request("api.anaplan.com", "GET", 200, 30*time.Millisecond) }, 1},
		{"anaplan_proxy_requests_total", dto.MetricType_COUNTER,
			map[string]string{"host": "*.api.anaplan.com", "method_class": "write", "code": "429"},
			func(m *Metrics) { m.Request("*.api.anaplan.com", "PUT", 429, time.Second) }, 1},
		{"anaplan_proxy_requests_total", dto.MetricType_COUNTER,
			map[string]string{"host": "denied", "method_class": "connect", "code": "403"},
			func(m *Metrics) { m.Request("denied", "CONNECT", 403, 0) }, 1},
		{"anaplan_proxy_requests_total", dto.MetricType_COUNTER,
			map[string]string{"host": "api.anaplan.com", "method_class": "other", "code": "0"},
			func(m *Metrics) { m.Request("api.anaplan.com", "PROPFIND", 0, 0) }, 1},
		{"anaplan_proxy_request_duration_seconds", dto.MetricType_HISTOGRAM,
			map[string]string{"host": "api.anaplan.com"},
			func(m *Metrics) {
				m.Request("api.anaplan.com", "GET", 200, time.Millisecond)
				m.Request("api.anaplan.com", "POST", 500, time.Minute)
			}, 2},
		{"anaplan_proxy_connect_decisions_total", dto.MetricType_COUNTER,
			map[string]string{"decision": "tunnel"},
			func(m *Metrics) { m.Connect("tunnel", "") }, 1},
		{"anaplan_proxy_connect_decisions_total", dto.MetricType_COUNTER,
			map[string]string{"decision": "deny"},
			func(m *Metrics) { m.Connect("deny", "host_not_allowed") }, 1},
		{"anaplan_proxy_denials_total", dto.MetricType_COUNTER,
			map[string]string{"reason": "port_not_allowed"},
			func(m *Metrics) { m.Connect("deny", "port_not_allowed") }, 1},
		{"anaplan_proxy_upstream_errors_total", dto.MetricType_COUNTER,
			map[string]string{"reason": "tls"},
			func(m *Metrics) { m.UpstreamError("tls"); m.UpstreamError("tls") }, 2},
		{"anaplan_proxy_replays_total", dto.MetricType_COUNTER,
			map[string]string{"outcome": "success"},
			func(m *Metrics) { m.Replay("success") }, 1},
		{"anaplan_proxy_cert_cache_lookups_total", dto.MetricType_COUNTER,
			map[string]string{"result": "miss"},
			func(m *Metrics) { m.CertCache("miss") }, 1},
		{"anaplan_proxy_token_refreshes_total", dto.MetricType_COUNTER,
			map[string]string{"result": "rejected"},
			func(m *Metrics) { m.Refresh("rejected", 200*time.Millisecond) }, 1},
		{"anaplan_proxy_token_refresh_duration_seconds", dto.MetricType_HISTOGRAM, nil,
			func(m *Metrics) { m.Refresh("success", 200*time.Millisecond) }, 1},
		{"anaplan_proxy_in_flight_requests", dto.MetricType_GAUGE, nil,
			func(m *Metrics) { m.InFlight(1); m.InFlight(1); m.InFlight(-1) }, 1},
		{"anaplan_proxy_bytes_total", dto.MetricType_COUNTER,
			map[string]string{"direction": "upload"},
			func(m *Metrics) { m.Bytes("upload", 50<<20); m.Bytes("upload", 0); m.Bytes("upload", -5) }, 50 << 20},
		{"anaplan_proxy_bytes_total", dto.MetricType_COUNTER,
			map[string]string{"direction": "download"},
			func(m *Metrics) { m.Bytes("download", 1234) }, 1234},
		{"anaplan_proxy_proxy_auth_failures_total", dto.MetricType_COUNTER, nil,
			func(m *Metrics) { m.ProxyAuthFailure() }, 1},
		{"anaplan_proxy_upstream_pool_lookups_total", dto.MetricType_COUNTER,
			map[string]string{"result": "hit"},
			func(m *Metrics) { m.UpstreamPool("hit"); m.UpstreamPool("miss"); m.UpstreamPool("hit") }, 2},
		{"anaplan_proxy_upstream_idle_connections", dto.MetricType_GAUGE, nil,
			func(m *Metrics) { m.UpstreamIdle(1); m.UpstreamIdle(1); m.UpstreamIdle(-1) }, 1},
		{"anaplan_proxy_upstream_pool_closed_total", dto.MetricType_COUNTER,
			map[string]string{"reason": "unsolicited"},
			func(m *Metrics) { m.UpstreamClosed("unsolicited"); m.UpstreamClosed("idle_timeout") }, 1},
		{"anaplan_proxy_access_token_expiry_timestamp_seconds", dto.MetricType_GAUGE, nil,
			func(m *Metrics) { m.SetSession("valid", time.Unix(1000, 500e6), time.Time{}) }, 1000.5},
		{"anaplan_proxy_last_refresh_success_timestamp_seconds", dto.MetricType_GAUGE, nil,
			func(m *Metrics) { m.SetSession("valid", time.Time{}, time.Unix(42, 0)) }, 42},
	}
	for _, tc := range tests {
		t.Run(tc.family+"/"+labelString(tc.labels), func(t *testing.T) {
			m := New("test", testStates)
			h := NewAdminHandler(AdminConfig{Metrics: m})
			before, _, _ := sample(scrape(t, h), tc.family, tc.labels)
			tc.do(m)
			after, typ, ok := sample(scrape(t, h), tc.family, tc.labels)
			if !ok {
				t.Fatalf("%s%s not exported", tc.family, labelString(tc.labels))
			}
			if typ != tc.typ {
				t.Errorf("%s has type %v, want %v", tc.family, typ, tc.typ)
			}
			if got := after - before; got != tc.delta {
				t.Errorf("%s%s moved by %v, want %v", tc.family, labelString(tc.labels), got, tc.delta)
			}
		})
	}
}

func labelString(l map[string]string) string {
	if len(l) == 0 {
		return ""
	}
	var parts []string
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// TestKnownSeriesStartAtZero: alerts on rate(...) need the series before the
// first event.
func TestKnownSeriesStartAtZero(t *testing.T) {
	fams := scrape(t, NewAdminHandler(AdminConfig{Metrics: New("test", testStates)}))
	for _, s := range []struct{ family, label, value string }{
		{"anaplan_proxy_connect_decisions_total", "decision", "deny"},
		{"anaplan_proxy_upstream_errors_total", "reason", "timeout"},
		{"anaplan_proxy_replays_total", "outcome", "failed"},
		{"anaplan_proxy_cert_cache_lookups_total", "result", "hit"},
		{"anaplan_proxy_token_refreshes_total", "result", "transient_error"},
		{"anaplan_proxy_bytes_total", "direction", "download"},
		{"anaplan_proxy_upstream_pool_lookups_total", "result", "miss"},
		{"anaplan_proxy_upstream_pool_closed_total", "reason", "upstream_closed"},
	} {
		v, _, ok := sample(fams, s.family, map[string]string{s.label: s.value})
		if !ok || v != 0 {
			t.Errorf("%s{%s=%q} = %v (present %v), want 0 from the start", s.family, s.label, s.value, v, ok)
		}
	}
}

func TestBuildInfoAndRuntimeCollectors(t *testing.T) {
	fams := scrape(t, NewAdminHandler(AdminConfig{Metrics: New("1.2.3", testStates)}))
	v, typ, ok := sample(fams, "anaplan_proxy_build_info",
		map[string]string{"version": "1.2.3", "goversion": runtime.Version()})
	if !ok || v != 1 || typ != dto.MetricType_GAUGE {
		t.Errorf("build_info = %v (present %v, type %v), want gauge 1 with version and goversion", v, ok, typ)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "process_open_fds"} {
		if fams[name] == nil {
			t.Errorf("%s missing: the Go and process collectors are not registered", name)
		}
	}
}

func TestNamingConventions(t *testing.T) {
	m := New("test", testStates)
	m.Request("api.anaplan.com", "GET", 200, time.Millisecond)
	m.Connect("deny", "host_not_allowed")
	m.SetSession("valid", time.Now(), time.Now())
	fams := scrape(t, NewAdminHandler(AdminConfig{Metrics: m}))
	var ours []*dto.MetricFamily
	for name, f := range fams {
		if strings.HasPrefix(name, "anaplan_proxy_") {
			ours = append(ours, f)
		}
	}
	if len(ours) < 15 {
		t.Fatalf("only %d anaplan_proxy_ families exported", len(ours))
	}
	problems, err := promlint.NewWithMetricFamilies(ours).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestOwnRegistry: nothing lands on the global default registry, and two
// instances coexist (registering twice on one registry would panic).
func TestOwnRegistry(t *testing.T) {
	a, b := New("a", testStates), New("b", testStates)
	if a.Registry() == b.Registry() || a.Registry() == prometheus.DefaultRegisterer {
		t.Fatal("instances share a registry")
	}
	a.ProxyAuthFailure()
	fams, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "anaplan_proxy_") {
			t.Errorf("%s is on the default registry", f.GetName())
		}
	}
	if v, _, _ := sample(scrape(t, NewAdminHandler(AdminConfig{Metrics: b})), "anaplan_proxy_proxy_auth_failures_total", nil); v != 0 {
		t.Errorf("an event on one instance shows on the other: %v", v)
	}
}

func TestSessionStateOneHot(t *testing.T) {
	m := New("test", testStates)
	h := NewAdminHandler(AdminConfig{Metrics: m})
	refreshed := time.Unix(1_700_000_000, 0)
	steps := []struct {
		state       string
		expiry      time.Time
		lastRefresh time.Time
		wantOn      string // "" means every state series is 0
		wantExpiry  float64
		wantRefresh float64
	}{
		{"", time.Time{}, time.Time{}, "", 0, 0}, // before any SetSession
		{"logged_out", time.Time{}, time.Time{}, "logged_out", 0, 0},
		{"valid", time.Unix(1_700_002_100, 0), refreshed, "valid", 1_700_002_100, 1_700_000_000},
		{"refreshing", time.Unix(1_700_002_100, 0), time.Time{}, "refreshing", 1_700_002_100, 1_700_000_000},
		{"degraded", time.Unix(1_700_002_100, 0), time.Time{}, "degraded", 1_700_002_100, 1_700_000_000},
		{"login_required", time.Time{}, time.Time{}, "login_required", 0, 1_700_000_000},
		{"no_such_state", time.Time{}, time.Time{}, "", 0, 1_700_000_000},
	}
	for i, st := range steps {
		if i > 0 {
			m.SetSession(st.state, st.expiry, st.lastRefresh)
		}
		fams := scrape(t, h)
		if n := len(fams["anaplan_proxy_session_state"].GetMetric()); n != len(testStates) {
			t.Errorf("step %d (%s): %d session_state series, want %d", i, st.state, n, len(testStates))
		}
		for _, s := range testStates {
			want := 0.0
			if s == st.wantOn {
				want = 1
			}
			if v, _, ok := sample(fams, "anaplan_proxy_session_state", map[string]string{"state": s}); !ok || v != want {
				t.Errorf("step %d (%s): session_state{state=%q} = %v (present %v), want %v", i, st.state, s, v, ok, want)
			}
		}
		if v, _, _ := sample(fams, "anaplan_proxy_access_token_expiry_timestamp_seconds", nil); v != st.wantExpiry {
			t.Errorf("step %d (%s): access token expiry = %v, want %v", i, st.state, v, st.wantExpiry)
		}
		if v, _, _ := sample(fams, "anaplan_proxy_last_refresh_success_timestamp_seconds", nil); v != st.wantRefresh {
			t.Errorf("step %d (%s): last refresh = %v, want %v", i, st.state, v, st.wantRefresh)
		}
	}
}

// TestSessionStateNeverTorn scrapes while the state changes: every scrape
// must show exactly one state at 1.
func TestSessionStateNeverTorn(t *testing.T) {
	m := New("test", testStates)
	h := NewAdminHandler(AdminConfig{Metrics: m})
	m.SetSession("valid", time.Time{}, time.Time{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
				m.SetSession(testStates[i%len(testStates)], time.Time{}, time.Time{})
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait() })
	for range 200 {
		on := 0.0
		for _, mt := range scrape(t, h)["anaplan_proxy_session_state"].GetMetric() {
			on += mt.GetGauge().GetValue()
		}
		if on != 1 {
			t.Fatalf("a scrape saw %v states set at once", on)
		}
	}
}

func TestDuplicateStatesAreExportedOnce(t *testing.T) {
	m := New("test", []string{"valid", "valid", "logged_out"})
	m.SetSession("valid", time.Time{}, time.Time{})
	fams := scrape(t, NewAdminHandler(AdminConfig{Metrics: m}))
	if n := len(fams["anaplan_proxy_session_state"].GetMetric()); n != 2 {
		t.Errorf("%d session_state series, want 2", n)
	}
}

func TestMethodClass(t *testing.T) {
	for method, want := range map[string]string{
		"GET": "read", "HEAD": "read", "OPTIONS": "read",
		"POST": "write", "PUT": "write", "PATCH": "write", "DELETE": "write",
		"CONNECT": "connect", "TRACE": "other", "get": "other", "X-INVENTED": "other",
	} {
		if got := methodClass(method); got != want {
			t.Errorf("methodClass(%q) = %q, want %q", method, got, want)
		}
	}
}

func TestCodeLabel(t *testing.T) {
	for code, want := range map[int]string{-1: "0", 0: "0", 99: "0", 100: "100", 200: "200", 599: "599", 600: "0", 1 << 20: "0"} {
		if got := codeLabel(code); got != want {
			t.Errorf("codeLabel(%d) = %q, want %q", code, got, want)
		}
	}
}

// TestRequestSeriesAreBounded: methods and odd codes a client chooses
// collapse into the fixed label values.
func TestRequestSeriesAreBounded(t *testing.T) {
	m := New("test", testStates)
	for i := range 1000 {
		m.Request("api.anaplan.com", "M"+string(rune('A'+i%26))+string(rune('A'+i/26%26)), 1000+i, 0)
	}
	fams := scrape(t, NewAdminHandler(AdminConfig{Metrics: m}))
	if n := len(fams["anaplan_proxy_requests_total"].GetMetric()); n != 1 {
		t.Errorf("%d request series after 1000 invented methods and codes, want 1", n)
	}
}

func TestConcurrentRecording(t *testing.T) {
	m := New("test", testStates)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				m.Request("api.anaplan.com", "GET", 200, time.Millisecond)
				m.InFlight(1)
				m.InFlight(-1)
			}
		})
	}
	wg.Wait()
	fams := scrape(t, NewAdminHandler(AdminConfig{Metrics: m}))
	if v, _, _ := sample(fams, "anaplan_proxy_requests_total", map[string]string{"code": "200"}); v != 8000 {
		t.Errorf("requests_total = %v, want 8000", v)
	}
	if v, _, _ := sample(fams, "anaplan_proxy_in_flight_requests", nil); v != 0 {
		t.Errorf("in_flight_requests = %v, want 0", v)
	}
}

func get(t *testing.T, h http.Handler, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

func TestReadyz(t *testing.T) {
	var ready atomic.Bool
	var reason atomic.Value
	reason.Store("")
	h := NewAdminHandler(AdminConfig{
		Ready:       ready.Load,
		ReadyReason: func() string { return reason.Load().(string) },
	})
	steps := []struct {
		ready  bool
		reason string
		code   int
		body   string
	}{
		{false, "", 503, "not ready: no usable session\n"},
		{false, "session state login_required: run `anaplan-proxy login`", 503,
			"not ready: session state login_required: run `anaplan-proxy login`\n"},
		{false, "two\nlines\r\n", 503, "not ready: two lines\n"},
		{true, "ignored when ready", 200, "ready\n"},
		{false, "refresh failing", 503, "not ready: refresh failing\n"},
	}
	for i, st := range steps {
		ready.Store(st.ready)
		reason.Store(st.reason)
		rec := get(t, h, http.MethodGet, "/readyz")
		if rec.Code != st.code || rec.Body.String() != st.body {
			t.Errorf("step %d: /readyz = %d %q, want %d %q", i, rec.Code, rec.Body.String(), st.code, st.body)
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Errorf("step %d: Content-Type %q", i, ct)
		}
	}
}

func TestReadyzWithoutCheckIsNotReady(t *testing.T) {
	rec := get(t, NewAdminHandler(AdminConfig{}), http.MethodGet, "/readyz")
	if rec.Code != http.StatusServiceUnavailable || rec.Body.String() != "not ready: no readiness check configured\n" {
		t.Errorf("/readyz without Ready = %d %q", rec.Code, rec.Body.String())
	}
}

func TestStatus(t *testing.T) {
	type status struct {
		State             string    `json:"state"`
		AccessTokenExpiry time.Time `json:"access_token_expiry"`
		LastError         string    `json:"last_error"`
	}
	want := status{State: "degraded", AccessTokenExpiry: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), LastError: "token endpoint: 503"}
	h := NewAdminHandler(AdminConfig{Status: func() any { return want }})
	rec := get(t, h, http.MethodGet, "/status")
	if rec.Code != http.StatusOK {
		t.Fatalf("/status = %d %q", rec.Code, rec.Body.String())
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var got status
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("/status is not JSON: %v: %q", err, rec.Body.String())
	}
	if got != want {
		t.Errorf("/status = %+v, want %+v", got, want)
	}
}

func TestStatusUnencodable(t *testing.T) {
	h := NewAdminHandler(AdminConfig{Status: func() any { return func() {} }})
	rec := get(t, h, http.MethodGet, "/status")
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Header().Get("Content-Type"), "json") {
		t.Errorf("/status with an unencodable value = %d %q (%s)", rec.Code, rec.Body.String(), rec.Header().Get("Content-Type"))
	}
}

func TestRoutes(t *testing.T) {
	full := NewAdminHandler(AdminConfig{
		Metrics: New("test", testStates),
		Status:  func() any { return map[string]string{"state": "valid"} },
		Ready:   func() bool { return true },
	})
	empty := NewAdminHandler(AdminConfig{})
	tests := []struct {
		name   string
		h      http.Handler
		method string
		path   string
		code   int
		body   string // prefix; "" skips
	}{
		{"healthz", full, "GET", "/healthz", 200, "ok\n"},
		{"healthz head", full, "HEAD", "/healthz", 200, ""},
		{"healthz without anything configured", empty, "GET", "/healthz", 200, "ok\n"},
		{"metrics", full, "GET", "/metrics", 200, "# HELP"},
		{"metrics head", full, "HEAD", "/metrics", 200, ""},
		{"readyz", full, "GET", "/readyz", 200, "ready\n"},
		{"status", full, "GET", "/status", 200, "{"},
		{"post healthz", full, "POST", "/healthz", 405, ""},
		{"delete status", full, "DELETE", "/status", 405, ""},
		{"root", full, "GET", "/", 404, ""},
		{"unknown", full, "GET", "/debug/pprof/", 404, ""},
		{"trailing slash", full, "GET", "/metrics/", 404, ""},
		{"no metrics configured", empty, "GET", "/metrics", 404, ""},
		{"no status configured", empty, "GET", "/status", 404, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := get(t, tc.h, tc.method, tc.path)
			if rec.Code != tc.code {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.path, rec.Code, tc.code)
			}
			if tc.body != "" && !strings.HasPrefix(rec.Body.String(), tc.body) {
				t.Errorf("%s %s body %q, want prefix %q", tc.method, tc.path, rec.Body.String(), tc.body)
			}
		})
	}
}

// BenchmarkRequest measures the hot-path cost of recording one proxied
// request from many goroutines.
func BenchmarkRequest(b *testing.B) {
	m := New("bench", testStates)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.InFlight(1)
			m.Request("api.anaplan.com", "GET", 200, 25*time.Millisecond)
			m.Bytes("download", 4096)
			m.InFlight(-1)
		}
	})
}

// BenchmarkRequestUncached is the same work resolving children through
// the vectors on every call, for comparison with BenchmarkRequest.
func BenchmarkRequestUncached(b *testing.B) {
	m := New("bench", testStates)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.inFlight.Add(1)
			m.requests.WithLabelValues("api.anaplan.com", methodClass("GET"), strconv200).Inc()
			m.requestDuration.WithLabelValues("api.anaplan.com").Observe(0.025)
			m.bytes.WithLabelValues("download").Add(4096)
			m.inFlight.Add(-1)
		}
	})
}

const strconv200 = "200"

func BenchmarkConnect(b *testing.B) {
	m := New("bench", testStates)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Connect("inject", "")
			m.CertCache("hit")
		}
	})
}
