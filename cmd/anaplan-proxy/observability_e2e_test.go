package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// scrape reads the daemon's /metrics with the Prometheus text parser.
func (d *daemon) scrape(t *testing.T) scraped {
	t.Helper()
	resp, err := http.Get("http://" + d.adminAddr + "/metrics")
	if err != nil {
		t.Fatalf("scraping /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics answered %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse as the Prometheus text format: %v", err)
	}
	return fams
}

// scraped is one scrape, by family name.
type scraped map[string]*dto.MetricFamily

// value sums the series of family name whose labels include every
// "key=value" in labels: a counter's or gauge's value, a histogram's
// sample count. A missing family or series gives 0.
func (s scraped) value(name string, labels ...string) float64 {
	f := s[name]
	if f == nil {
		return 0
	}
	sum := 0.0
	for _, m := range f.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// series counts the anaplan_proxy_ series (a histogram counts once per
// label set).
func (s scraped) series() int {
	n := 0
	for name, f := range s {
		if strings.HasPrefix(name, "anaplan_proxy_") {
			n += len(f.GetMetric())
		}
	}
	return n
}

// state returns the session state whose one-hot series is 1, or "" when
// not exactly one is.
func (s scraped) state() string {
	on := []string{}
	for _, m := range s["anaplan_proxy_session_state"].GetMetric() {
		if m.GetGauge().GetValue() == 1 {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" {
					on = append(on, l.GetValue())
				}
			}
		}
	}
	if len(on) != 1 {
		return ""
	}
	return on[0]
}

// waitScrape scrapes until cond holds or the wait times out, and returns
// the last scrape.
func (d *daemon) waitScrape(t *testing.T, what string, cond func(scraped) bool) scraped {
	t.Helper()
	var last scraped
	if !waitFor(func() bool { last = d.scrape(t); return cond(last) }) {
		t.Fatalf("timed out waiting for %s; session state %q\nlogs:\n%s", what, last.state(), d.logs)
	}
	return last
}

// closedLoopbackPort returns a port on 127.0.0.1 where nothing listens.
func closedLoopbackPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	return port
}

func TestMetricsFollowTheRun(t *testing.T) {
	requireCurl(t)
	const lifetime = 4 * time.Second
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: lifetime})
	// A second inject host where nothing listens, for upstream errors.
	deadHost := "localhost:" + closedLoopbackPort(t)
	t.Setenv("ANAPLAN_PROXY_INJECT_HOSTS", e.fake.APIHost()+","+deadHost)
	apiHost := "host=" + e.fake.APIHost()

	d := e.serve()
	s := d.scrape(t)
	if got := s.state(); got != "logged_out" {
		t.Errorf("session state before login = %q, want logged_out", got)
	}
	bi := s["anaplan_proxy_build_info"].GetMetric()
	if len(bi) != 1 || bi[0].GetGauge().GetValue() != 1 || !hasLabels(bi[0], []string{"goversion=" + runtime.Version()}) {
		t.Errorf("build_info = %v, want one series at 1 with the Go version", bi)
	}
	if v := s.value("anaplan_proxy_access_token_expiry_timestamp_seconds"); v != 0 {
		t.Errorf("access token expiry before login = %v, want 0", v)
	}

	e.login()
	loginAt := time.Now()
	s = d.waitScrape(t, "session state valid", func(s scraped) bool { return s.state() == "valid" })
	if exp := s.value("anaplan_proxy_access_token_expiry_timestamp_seconds"); exp < float64(loginAt.Unix()) {
		t.Errorf("access token expiry = %v, want after the login (%d)", exp, loginAt.Unix())
	}
	base := s

	// Traffic: a read, an upload and a streamed download.
	upload := filepath.Join(t.TempDir(), "chunk")
	const uploadSize, downloadSize = 200_000, 3_000_000
	if err := os.WriteFile(upload, make([]byte, uploadSize), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		url   string
		extra []string
	}{
		{e.fake.APIURL() + "/2/0/workspaces", nil},
		{e.fake.APIURL() + "/2/0/workspaces/w/models/m/files/1/chunks/0", []string{"-X", "PUT", "--data-binary", "@" + upload}},
		{fmt.Sprintf("%s/stream?bytes=%d", e.fake.APIURL(), downloadSize), nil},
	} {
		if exit, connect, code, body := e.curl(d, c.url, c.extra...); exit != 0 || connect != "200" || code != "200" {
			t.Fatalf("curl %s: exit %d, CONNECT %s, HTTP %s, body %.200q\nlogs:\n%s", c.url, exit, connect, code, body, d.logs)
		}
	}
	// An inject host that cannot be reached, and a host outside the policy.
	if _, connect, code, _ := e.curl(d, "https://"+deadHost+"/2/0/workspaces"); connect != "200" || code != "502" {
		t.Errorf("curl to an unreachable inject host: CONNECT %s, HTTP %s; want 200, 502", connect, code)
	}
	if _, connect, _, _ := e.curl(d, "https://denied.example.com/"); connect != "403" {
		t.Errorf("curl to a host outside the policy: CONNECT %s, want 403", connect)
	}

	s = d.scrape(t)
	moved := []struct {
		what   string
		name   string
		labels []string
		min    float64
	}{
		{"reads on the API host", "anaplan_proxy_requests_total", []string{apiHost, "method_class=read", "code=200"}, 2},
		{"writes on the API host", "anaplan_proxy_requests_total", []string{apiHost, "method_class=write", "code=200"}, 1},
		{"request durations on the API host", "anaplan_proxy_request_duration_seconds", []string{apiHost}, 3},
		{"inject decisions", "anaplan_proxy_connect_decisions_total", []string{"decision=inject"}, 4},
		{"deny decisions", "anaplan_proxy_connect_decisions_total", []string{"decision=deny"}, 1},
		{"denials by reason", "anaplan_proxy_denials_total", nil, 1},
		{"upstream errors", "anaplan_proxy_upstream_errors_total", nil, 1},
		{"uploaded bytes", "anaplan_proxy_bytes_total", []string{"direction=upload"}, uploadSize},
		{"downloaded bytes", "anaplan_proxy_bytes_total", []string{"direction=download"}, downloadSize},
		{"leaf certificate lookups", "anaplan_proxy_cert_cache_lookups_total", nil, 4},
		{"leaf certificate cache hits", "anaplan_proxy_cert_cache_lookups_total", []string{"result=hit"}, 1},
	}
	for _, m := range moved {
		if got := s.value(m.name, m.labels...) - base.value(m.name, m.labels...); got < m.min {
			t.Errorf("%s: %s%v grew by %v during the run, want at least %v", m.what, m.name, m.labels, got, m.min)
		}
	}
	if v := s.value("anaplan_proxy_in_flight_requests"); v != 0 {
		t.Errorf("in_flight_requests after every request finished = %v, want 0", v)
	}
	// The denied CONNECT is counted under "denied", never under the name asked for.
	for _, m := range s["anaplan_proxy_requests_total"].GetMetric() {
		if hasLabels(m, []string{"host=denied.example.com"}) || hasLabels(m, []string{"host=denied.example.com:443"}) {
			t.Errorf("requests_total has a series for a host name a client sent: %v", m.GetLabel())
		}
	}

	// A background refresh moves the refresh counter, its histogram and
	// the last-success timestamp.
	// The counter moves when the refresh returns, the timestamp once the
	// new session is published.
	s = d.waitScrape(t, "a successful refresh", func(s scraped) bool {
		return s.value("anaplan_proxy_token_refreshes_total", "result=success") > base.value("anaplan_proxy_token_refreshes_total", "result=success") &&
			s.value("anaplan_proxy_last_refresh_success_timestamp_seconds") > 0
	})
	if s.value("anaplan_proxy_token_refresh_duration_seconds") < 1 {
		t.Error("token_refresh_duration_seconds has no observation after a refresh")
	}
	if last := s.value("anaplan_proxy_last_refresh_success_timestamp_seconds"); last < float64(loginAt.Unix()) {
		t.Errorf("last_refresh_success_timestamp_seconds = %v, want after the login (%d)", last, loginAt.Unix())
	}

	// Anaplan rejects the refresh token: the state turns login_required.
	e.fake.RevokeAll()
	e.fake.ExpireAccessTokens()
	s = d.waitScrape(t, "session state login_required", func(s scraped) bool { return s.state() == "login_required" })
	if s.value("anaplan_proxy_token_refreshes_total", "result=rejected") < 1 {
		t.Error("token_refreshes_total{result=\"rejected\"} did not move when Anaplan rejected the refresh token")
	}
	if v := s.value("anaplan_proxy_access_token_expiry_timestamp_seconds"); v != 0 {
		t.Errorf("access token expiry with login required = %v, want 0", v)
	}

	// Every family of the issue exists with its type.
	families := map[string]dto.MetricType{
		"anaplan_proxy_requests_total":                         dto.MetricType_COUNTER,
		"anaplan_proxy_request_duration_seconds":               dto.MetricType_HISTOGRAM,
		"anaplan_proxy_upstream_errors_total":                  dto.MetricType_COUNTER,
		"anaplan_proxy_connect_decisions_total":                dto.MetricType_COUNTER,
		"anaplan_proxy_denials_total":                          dto.MetricType_COUNTER,
		"anaplan_proxy_token_refreshes_total":                  dto.MetricType_COUNTER,
		"anaplan_proxy_token_refresh_duration_seconds":         dto.MetricType_HISTOGRAM,
		"anaplan_proxy_access_token_expiry_timestamp_seconds":  dto.MetricType_GAUGE,
		"anaplan_proxy_last_refresh_success_timestamp_seconds": dto.MetricType_GAUGE,
		"anaplan_proxy_session_state":                          dto.MetricType_GAUGE,
		"anaplan_proxy_in_flight_requests":                     dto.MetricType_GAUGE,
		"anaplan_proxy_bytes_total":                            dto.MetricType_COUNTER,
		"anaplan_proxy_cert_cache_lookups_total":               dto.MetricType_COUNTER,
		"anaplan_proxy_proxy_auth_failures_total":              dto.MetricType_COUNTER,
		"anaplan_proxy_replays_total":                          dto.MetricType_COUNTER,
		"anaplan_proxy_build_info":                             dto.MetricType_GAUGE,
	}
	for name, typ := range families {
		f := s[name]
		switch {
		case f == nil:
			t.Errorf("%s is missing from /metrics", name)
		case f.GetType() != typ:
			t.Errorf("%s has type %s, want %s", name, f.GetType(), typ)
		}
	}
	for _, st := range []string{"logged_out", "valid", "refreshing", "degraded", "login_required"} {
		if len(s["anaplan_proxy_session_state"].GetMetric()) > 0 && !stateSeries(s, st) {
			t.Errorf("session_state has no series for state %q", st)
		}
	}
	d.stop(t)
	e.assertNoSecrets()
}

func stateSeries(s scraped, state string) bool {
	for _, m := range s["anaplan_proxy_session_state"].GetMetric() {
		if hasLabels(m, []string{"state=" + state}) {
			return true
		}
	}
	return false
}

// connect sends one CONNECT for target and returns the proxy's status.
func connect(addr, target string) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func TestRandomHostsDoNotGrowSeries(t *testing.T) {
	e := newEnv(t, anaplantest.Options{})
	d := e.serve()

	// One denied CONNECT creates the series every later one shares.
	if code, err := connect(d.proxyAddr, "warm-up.example.com:443"); err != nil || code != http.StatusForbidden {
		t.Fatalf("CONNECT warm-up.example.com: %d %v, want 403", code, err)
	}
	before := d.scrape(t)

	const n, workers = 1000, 4
	targets := make(chan string)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for target := range targets {
				code, err := connect(d.proxyAddr, target)
				if err == nil && code != http.StatusForbidden {
					err = fmt.Errorf("CONNECT %s answered %d, want 403", target, code)
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range n {
		targets <- randomTarget(i)
	}
	close(targets)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	after := d.scrape(t)
	denied := after.value("anaplan_proxy_connect_decisions_total", "decision=deny") - before.value("anaplan_proxy_connect_decisions_total", "decision=deny")
	if denied != n {
		t.Fatalf("deny decisions grew by %v, want %d: the CONNECTs did not all reach the proxy", denied, n)
	}
	if b, a := before.series(), after.series(); a != b {
		t.Errorf("anaplan_proxy_ series: %d before %d CONNECTs to random hosts, %d after; want no growth", b, n, a)
		for name, f := range after {
			if g := len(f.GetMetric()) - len(before[name].GetMetric()); g != 0 && strings.HasPrefix(name, "anaplan_proxy_") {
				t.Errorf("%s grew by %d series", name, g)
			}
		}
	}
}

// randomTarget returns a CONNECT target no policy allows, varying name,
// form and port.
func randomTarget(i int) string {
	label := strings.ToLower(rand.Text()[:12])
	switch i % 4 {
	case 0:
		return label + ".example.com:443"
	case 1:
		return label + ".api.anaplan.com.evil.test:443"
	case 2:
		return fmt.Sprintf("%s.example.net:%d", label, 1024+i)
	default:
		b := make([]byte, 2)
		rand.Read(b)
		return fmt.Sprintf("203.0.%d.%d:443", b[0], b[1])
	}
}

func TestStatusExitCodeForEachState(t *testing.T) {
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: 3 * time.Second})
	d := e.serve()
	// The config says port 0; status must ask the daemon where it listens.
	status := func(t *testing.T, want int, wantText ...string) {
		t.Helper()
		code, out, errOut := e.command("status", "--admin-listen", d.adminAddr)
		if code != want {
			t.Fatalf("status: exit %d, want %d\n%s%s", code, want, out, errOut)
		}
		for _, w := range wantText {
			if !strings.Contains(out, w) {
				t.Errorf("status output lacks %q:\n%s", w, out)
			}
		}
	}
	stateIs := func(state string) func(scraped) bool {
		return func(s scraped) bool { return s.state() == state }
	}

	t.Run("logged out, daemon running", func(t *testing.T) {
		status(t, statusLoginRequired, "state:               logged_out", "source:              daemon", "anaplan-proxy login --config", "inject hosts:        "+e.fake.APIHost(), "tunnel hosts:        (none)")
	})
	t.Run("valid", func(t *testing.T) {
		e.login()
		d.waitScrape(t, "session state valid", stateIs("valid"))
		status(t, statusUsable, "state:               valid", "since:", "access token expiry:", "refresh token age:", "CA fingerprint:")
	})
	t.Run("degraded", func(t *testing.T) {
		e.fake.SetTokenOutage(http.StatusServiceUnavailable)
		t.Cleanup(func() { e.fake.SetTokenOutage(0) })
		d.waitScrape(t, "session state degraded", stateIs("degraded"))
		status(t, statusDegraded, "state:               degraded", "last error:", "action:")
	})
	t.Run("login required", func(t *testing.T) {
		e.fake.SetTokenOutage(0)
		e.fake.RevokeAll()
		e.fake.ExpireAccessTokens()
		d.waitScrape(t, "session state login_required", stateIs("login_required"))
		status(t, statusLoginRequired, "state:               login_required", "action:              run `anaplan-proxy login --config")
	})
	t.Run("not configured", func(t *testing.T) {
		if err := os.WriteFile(e.configPath, []byte("listen: [not, a, string]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		status(t, statusError)
		e.configPath = filepath.Join(e.dir, "missing.yaml")
		status(t, statusError)
	})
	d.stop(t)
	e.assertNoSecrets()
}

func TestStatusWithoutDaemonShowsTheSetup(t *testing.T) {
	e := newEnv(t, anaplantest.Options{})
	e.login()
	// serve creates the CA on its first start.
	d := e.serve()
	_, doc := d.admin(t, "/status")
	d.stop(t)
	var live statusDoc
	if err := json.Unmarshal([]byte(doc), &live); err != nil {
		t.Fatalf("/status: %v", err)
	}
	code, out, errOut := e.command("status")
	if code != statusUsable {
		t.Fatalf("status: exit %d, want %d\n%s%s", code, statusUsable, out, errOut)
	}
	for _, want := range []string{"source:              store", "CA fingerprint:      " + live.CAFingerprint, "inject hosts:        " + e.fake.APIHost(), "refresh token age:"} {
		if !strings.Contains(out, want) {
			t.Errorf("status with the daemon stopped lacks %q:\n%s", want, out)
		}
	}
	e.assertNoSecrets()
}

// loginJSON runs `login --json`, hands the issued user code to decide (nil:
// let it expire) and returns the events it printed and its exit code.
func (e *env) loginJSON(decide func(userCode string) error) (events []map[string]any, exit int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, errb := e.capture(), e.capture()
	cmd := exec.CommandContext(ctx, binPath, "login", "--json", "--config", e.configPath)
	cmd.Stdout, cmd.Stderr = out, errb
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	parse := func() []map[string]any {
		var evs []map[string]any
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		for sc.Scan() {
			var ev map[string]any
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				e.t.Errorf("login --json printed a line that is not JSON: %q", sc.Text())
				continue
			}
			evs = append(evs, ev)
		}
		return evs
	}
	if !waitFor(func() bool { return strings.Contains(out.String(), "\n") }) {
		e.t.Fatalf("login --json printed no event:\nstdout: %s\nstderr: %s", out, errb)
	}
	first := parse()
	if len(first) == 0 || first[0]["event"] != "code_issued" {
		e.t.Fatalf("first event = %v, want code_issued", first)
	}
	if decide != nil {
		code, _ := first[0]["user_code"].(string)
		if err := decide(code); err != nil {
			e.t.Fatal(err)
		}
	}
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); ok {
		exit = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	return parse(), exit
}

func TestLoginJSONEvents(t *testing.T) {
	tests := []struct {
		name      string
		opts      anaplantest.Options
		decide    func(fake *anaplantest.Server) func(string) error
		wantEvent string
		wantExit  int
		wantField map[string]func(any) bool
	}{
		{
			name:      "approved",
			decide:    func(f *anaplantest.Server) func(string) error { return f.Approve },
			wantEvent: "approved",
			wantField: map[string]func(any) bool{
				"user":                func(v any) bool { return v == "integration.user@example.com" },
				"access_token_expiry": nil, // set per run
			},
		},
		{
			name:      "denied",
			decide:    func(f *anaplantest.Server) func(string) error { return f.Deny },
			wantEvent: "denied",
			wantExit:  exitError,
			wantField: map[string]func(any) bool{"error": mentions("denied", "anaplan-proxy login")},
		},
		{
			name:      "expired",
			opts:      anaplantest.Options{DeviceCodeLifetime: 2 * time.Second},
			decide:    func(*anaplantest.Server) func(string) error { return nil },
			wantEvent: "expired",
			wantExit:  exitError,
			wantField: map[string]func(any) bool{"error": mentions("expired", "anaplan-proxy login")},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Times are printed in whole seconds.
			start := time.Now().Add(-time.Second)
			futureTime := func(v any) bool { return isTimeAfter(v, start) }
			tc.wantField = maps.Clone(tc.wantField)
			if _, ok := tc.wantField["access_token_expiry"]; ok {
				tc.wantField["access_token_expiry"] = futureTime
			}
			e := newEnv(t, tc.opts)
			events, exit := e.loginJSON(tc.decide(e.fake))
			if exit != tc.wantExit {
				t.Errorf("exit %d, want %d", exit, tc.wantExit)
			}
			if len(events) != 2 {
				t.Fatalf("events = %v, want code_issued then %s", events, tc.wantEvent)
			}
			issued := events[0]
			for _, k := range []string{"user_code", "verification_uri", "verification_uri_complete"} {
				if s, _ := issued[k].(string); s == "" {
					t.Errorf("code_issued lacks %s: %v", k, issued)
				}
			}
			if !futureTime(issued["expires_at"]) {
				t.Errorf("code_issued expires_at = %v, want an RFC 3339 time in the future", issued["expires_at"])
			}
			last := events[1]
			if last["event"] != tc.wantEvent {
				t.Fatalf("second event = %v, want %s", last, tc.wantEvent)
			}
			for k, ok := range tc.wantField {
				if !ok(last[k]) {
					t.Errorf("%s event field %s = %v", tc.wantEvent, k, last[k])
				}
			}
			if tc.wantEvent == "approved" {
				if code, out, _ := e.command("status"); code != statusUsable {
					t.Errorf("status after login --json: exit %d\n%s", code, out)
				}
				e.assertNoSecrets()
			}
		})
	}
}

// isTimeAfter reports whether v is an RFC 3339 time after t.
func isTimeAfter(v any, t time.Time) bool {
	s, _ := v.(string)
	ts, err := time.Parse(time.RFC3339, s)
	return err == nil && ts.After(t)
}

func mentions(words ...string) func(any) bool {
	return func(v any) bool {
		s, _ := v.(string)
		for _, w := range words {
			if !strings.Contains(s, w) {
				return false
			}
		}
		return s != ""
	}
}
