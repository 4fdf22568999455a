package main

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/bench/internal/benchtls"
)

func TestPercentileAndMean(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name          string
		lat           []time.Duration
		p50, p99, avg time.Duration
	}{
		{"none", nil, 0, 0, 0},
		{"one", ms(7), 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond},
		{"1..100", ms(hundred...), 50 * time.Millisecond, 99 * time.Millisecond, 50500 * time.Microsecond},
		{"outlier", ms(1, 1, 1, 100), time.Millisecond, 100 * time.Millisecond, 25750 * time.Microsecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := result{latencies: tt.lat}
			if got := r.percentile(50); got != tt.p50 {
				t.Errorf("p50 = %v, want %v", got, tt.p50)
			}
			if got := r.percentile(99); got != tt.p99 {
				t.Errorf("p99 = %v, want %v", got, tt.p99)
			}
			if got := r.mean(); got != tt.avg {
				t.Errorf("mean = %v, want %v", got, tt.avg)
			}
		})
	}
}

// tlsServer starts an HTTPS server with a benchtls leaf and returns its
// "localhost" URL and the CA file that verifies it.
func tlsServer(t *testing.T, h http.Handler) (string, string) {
	t.Helper()
	ca, err := benchtls.NewCA("load test")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := ca.WriteCert(caFile); err != nil {
		t.Fatal(err)
	}
	return strings.Replace(srv.URL, "127.0.0.1", "localhost", 1), caFile
}

func TestRunSendsExactlyTheRequestsAsked(t *testing.T) {
	var served atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Write([]byte("ok"))
	})
	url, caFile := tlsServer(t, h)
	tests := []struct {
		workers, n, warmup int
	}{
		{1, 50, 0},
		{4, 200, 40},
		{8, 3, 0}, // fewer requests than workers
	}
	for _, tt := range tests {
		served.Store(0)
		res, err := run(context.Background(), config{target: url, caFiles: []string{caFile},
			workers: tt.workers, n: tt.n, warmupN: tt.warmup, maxDuration: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if res.requests != tt.n || res.sent != tt.n+tt.warmup || res.errors != 0 {
			t.Errorf("c=%d n=%d warmup=%d: measured %d, sent %d, errors %d", tt.workers, tt.n, tt.warmup, res.requests, res.sent, res.errors)
		}
		if got := served.Load(); got != int64(tt.n+tt.warmup) {
			t.Errorf("c=%d: server saw %d requests, want %d", tt.workers, got, tt.n+tt.warmup)
		}
		if res.rps() <= 0 || res.percentile(50) <= 0 {
			t.Errorf("no rate or latency: %v", res)
		}
	}
}

func TestRunCountsFailures(t *testing.T) {
	url, caFile := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusForbidden)
	}))
	otherCA := filepath.Join(t.TempDir(), "other.pem")
	ca, _ := benchtls.NewCA("other")
	if err := ca.WriteCert(otherCA); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, caFile, wantErr string
	}{
		{"error status", caFile, "403"},
		{"untrusted server", otherCA, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := run(context.Background(), config{target: url, caFiles: []string{tt.caFile},
				workers: 2, n: 10, maxDuration: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			if res.errors != 10 || res.requests != 0 {
				t.Errorf("errors %d, measured %d; want 10 and 0", res.errors, res.requests)
			}
			if res.firstErr == nil || !strings.Contains(res.firstErr.Error(), tt.wantErr) {
				t.Errorf("first error %v, want one mentioning %q", res.firstErr, tt.wantErr)
			}
		})
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	good := config{target: "https://localhost:1/", workers: 1, n: 1, maxDuration: time.Second}
	tests := []struct {
		name string
		edit func(*config)
	}{
		{"no url", func(c *config) { c.target = "" }},
		{"no workers", func(c *config) { c.workers = 0 }},
		{"no requests", func(c *config) { c.n = 0 }},
		{"negative warm-up", func(c *config) { c.warmupN = -1 }},
		{"missing CA file", func(c *config) { c.caFiles = []string{filepath.Join(os.TempDir(), "does-not-exist.pem")} }},
		{"bad proxy", func(c *config) { c.proxy = "http://[::1" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.edit(&c)
			if _, err := run(context.Background(), c); err == nil {
				t.Error("run succeeded")
			}
		})
	}
}

func TestProbeHandshakes(t *testing.T) {
	url, caFile := tlsServer(t, http.NotFoundHandler())
	first, later, err := probeHandshakes(context.Background(), config{target: url, caFiles: []string{caFile}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if first <= 0 || later <= 0 {
		t.Errorf("first %v, later %v: want both positive", first, later)
	}

	// A proxy that refuses the CONNECT makes the probe fail, not report.
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "denied", http.StatusForbidden)
	}))
	t.Cleanup(refusing.Close)
	_, _, err = probeHandshakes(context.Background(), config{target: url, proxy: refusing.URL, caFiles: []string{caFile}}, 2)
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("through a refusing proxy: %v, want a 403 error", err)
	}
	if _, _, err := probeHandshakes(context.Background(), config{target: url}, 1); err == nil {
		t.Error("one handshake gives no 'later' figure, but the probe succeeded")
	}
}
