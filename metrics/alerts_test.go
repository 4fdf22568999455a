package metrics

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
)

// The shipped alerting rules and the README that explains them.
const (
	alertsFile = "../deploy/prometheus/alerts.yml"
	readmeFile = "../README.md"
)

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var (
	metricNameRE = regexp.MustCompile(`\banaplan_proxy_[a-zA-Z0-9_]*`)
	stateMatchRE = regexp.MustCompile(`\bstate\s*=~?\s*"([^"]*)"`)
)

// exportedNames returns every sample name a scrape of Metrics can contain,
// after one event of each kind so that every labelled family has a series.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	states := make([]string, len(auth.States))
	for i, s := range auth.States {
		states[i] = string(s)
	}
	m := New("test", states)
	m.Request("api.anaplan.com", "GET", 200, time.Millisecond)
	m.Request("denied", "CONNECT", 403, time.Millisecond)
	m.Connect("deny", "not_allowed")
	m.UpstreamError("dns")
	m.Replay("success")
	m.CertCache("hit")
	m.Refresh("success", time.Millisecond)
	m.SetSession("valid", time.Now().Add(time.Hour), time.Now())
	m.InFlight(1)
	m.Bytes("upload", 1)
	m.ProxyAuthFailure()

	names := map[string]bool{}
	for name, f := range scrape(t, NewAdminHandler(AdminConfig{Metrics: m})) {
		names[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				names[name+suffix] = true
			}
		}
	}
	return names
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	return rf
}

// TestAlertsUseExportedMetrics guards the shipped rules against a renamed
// metric or state: Prometheus would accept such a rule and never fire it.
func TestAlertsUseExportedMetrics(t *testing.T) {
	names := exportedNames(t)
	states := make([]string, len(auth.States))
	for i, s := range auth.States {
		states[i] = string(s)
	}
	rf := loadRules(t)
	readme, err := os.ReadFile(readmeFile)
	if err != nil {
		t.Fatal(err)
	}

	alerts := 0
	seen := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			t.Run(r.Alert, func(t *testing.T) {
				if seen[r.Alert] {
					t.Errorf("alert %s is defined twice", r.Alert)
				}
				seen[r.Alert] = true
				for _, name := range metricNameRE.FindAllString(r.Expr, -1) {
					if !names[name] {
						t.Errorf("expr uses %s, which the metrics package does not export", name)
					}
				}
				for _, m := range stateMatchRE.FindAllStringSubmatch(r.Expr, -1) {
					for _, s := range strings.Split(m[1], "|") {
						if !slices.Contains(states, s) {
							t.Errorf("expr matches session state %q, which is not one of %v", s, states)
						}
					}
				}
				if r.For == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
					t.Errorf("alert lacks for, labels.severity, or the summary and description annotations")
				}
				if !strings.Contains(string(readme), r.Alert) {
					t.Errorf("README.md has no runbook line for %s", r.Alert)
				}
			})
		}
	}
	if alerts == 0 {
		t.Fatalf("%s defines no alerts", alertsFile)
	}
}

// TestExportedNamesCatchTypos shows the check above can fail: a name that
// is not exported is reported.
func TestExportedNamesCatchTypos(t *testing.T) {
	names := exportedNames(t)
	for _, name := range []string{
		"anaplan_proxy_session_state",
		"anaplan_proxy_request_duration_seconds_bucket",
		"anaplan_proxy_token_refresh_duration_seconds_count",
		"anaplan_proxy_bytes_total",
		"anaplan_proxy_in_flight_requests",
	} {
		if !names[name] {
			t.Errorf("%s is not among the exported names", name)
		}
	}
	for _, name := range []string{"anaplan_proxy_session_states", "anaplan_proxy_requests", "anaplan_proxy_bytes_total_sum"} {
		if names[name] {
			t.Errorf("%s is among the exported names, but no such series exists", name)
		}
	}
}
