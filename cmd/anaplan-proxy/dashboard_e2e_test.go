package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// dashboardQueries returns every PromQL expression in the Grafana dashboard,
// with the panel it belongs to.
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("../../deploy/grafana/anaplan-proxy.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("the dashboard is not valid JSON: %v", err)
	}
	out := map[string]string{}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s has no expression", p.Title, tg.RefID)
			}
			out[p.Title+" "+tg.RefID] = tg.Expr
		}
	}
	if len(out) < 15 {
		t.Fatalf("only %d queries in the dashboard", len(out))
	}
	return out
}

// freePort returns a loopback address nothing listens on at the moment.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestDashboardQueriesReturnData scrapes a proxy under test load with a real
// Prometheus and evaluates every expression of deploy/grafana/anaplan-proxy.json
// against it, as Grafana would: each must return data.
func TestDashboardQueriesReturnData(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus is not installed (Debian package prometheus): the dashboard's queries are not evaluated")
	}
	queries := dashboardQueries(t)

	// Short-lived tokens, so that the proxy refreshes while it is scraped, and
	// an inject host that nothing listens on, for upstream errors.
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: 4 * time.Second})
	closed := freePort(t)
	cfg, err := os.ReadFile(e.configPath)
	if err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf("hosts: [%q]", e.fake.APIHost())
	if !bytes.Contains(cfg, []byte(hosts)) {
		t.Fatalf("the config has no %s", hosts)
	}
	cfg = bytes.Replace(cfg, []byte(hosts), fmt.Appendf(nil, "hosts: [%q, %q]", e.fake.APIHost(), closed), 1)
	if err := os.WriteFile(e.configPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	e.login()
	d := e.serve()

	promAddr := freePort(t)
	promDir := t.TempDir()
	promConfig := filepath.Join(promDir, "prometheus.yml")
	if err := os.WriteFile(promConfig, fmt.Appendf(nil, `global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: anaplan-proxy
    static_configs:
      - targets: [%q]
`, d.adminAddr), 0o644); err != nil {
		t.Fatal(err)
	}
	promLogs := e.capture()
	prom := exec.Command(promBin, "--config.file="+promConfig, "--storage.tsdb.path="+filepath.Join(promDir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	prom.Stdout, prom.Stderr = promLogs, promLogs
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	promDone := make(chan error, 1)
	go func() { promDone <- prom.Wait() }()
	t.Cleanup(func() {
		prom.Process.Signal(os.Interrupt)
		select {
		case <-promDone:
		case <-time.After(20 * time.Second):
			prom.Process.Kill()
			<-promDone
		}
	})

	query := func(expr string) (int, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		u := "http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(expr)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var r struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			return 0, fmt.Errorf("%s: %s", resp.Status, body)
		}
		if r.Status != "success" {
			return 0, fmt.Errorf("%s", r.Error)
		}
		return len(r.Data.Result), nil
	}
	if !waitFor(func() bool { n, err := query(`up{job="anaplan-proxy"} == 1`); return err == nil && n == 1 }) {
		t.Fatalf("prometheus did not scrape the proxy:\n%s", promLogs)
	}

	// Test load through the proxy: successful calls, calls after the token
	// was revoked upstream (401, refresh, replay), calls to the unreachable
	// inject host and a CONNECT the policy denies.
	caPEM, err := os.ReadFile(filepath.Join(e.stateDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: d.proxyAddr}),
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}}
	defer client.CloseIdleConnections()
	get := func(u string) {
		resp, err := client.Get(u)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	deadline := time.Now().Add(8 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		get(e.fake.APIURL() + "/2/0/users/me")
		if i%10 == 0 {
			e.fake.ExpireAccessTokens()
			get(e.fake.APIURL() + "/2/0/users/me")
			get("https://" + closed + "/2/0/users/me")
			get("https://127.0.0.2:9/")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A query for a metric that does not exist finds nothing: the check
	// below can fail.
	if n, err := query("anaplan_proxy_no_such_metric"); err != nil || n != 0 {
		t.Fatalf("a query for a missing metric: %d series, error %v", n, err)
	}
	substitute := strings.NewReplacer(`$__rate_interval`, "15s", `$job`, "anaplan-proxy", `$instance`, ".*")
	// A rate needs two scrapes after the load: poll until every query has
	// data or 30 s pass.
	missing := map[string]string{}
	for name, expr := range queries {
		missing[name] = substitute.Replace(expr)
	}
	problems := map[string]string{}
	waitFor(func() bool {
		for name, q := range missing {
			n, err := query(q)
			switch {
			case err != nil:
				problems[name] = fmt.Sprintf("%s: %v", q, err)
			case n == 0:
				problems[name] = q + " returned no data"
			default:
				delete(missing, name)
				delete(problems, name)
			}
		}
		return len(missing) == 0
	})
	for name, p := range problems {
		t.Errorf("%s: %s", name, p)
	}
	d.stop(t)
	e.assertNoSecrets()
}
