// Command load sends a fixed number of GET requests to a URL from a fixed
// number of workers, each with its own keep-alive connection, and prints
// requests per second and latency percentiles on one line:
//
//	requests=… errors=… sent=… seconds=… rps=… mean_ms=… p50_ms=… p99_ms=…
//
// With -handshakes it times fresh connections instead, and with -idle it
// opens connections, makes one call on each and holds them open, for the
// memory that idle clients cost a proxy.
//
// Unlike hey, it verifies the server against given CA files, so it can go
// through a TLS-intercepting proxy without switching verification off. It
// speaks HTTP/1.1 only, the protocol an intercepting proxy offers clients.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/bench/internal/benchtls"
)

func main() {
	target := flag.String("url", "", "`URL` to GET (or PUT, with -put)")
	proxy := flag.String("proxy", "", "HTTP proxy `URL`; empty: connect directly (the environment is ignored)")
	cacert := flag.String("cacert", "", "comma-separated PEM `files` of CAs to trust")
	workers := flag.Int("c", 1, "number of concurrent workers")
	n := flag.Int("n", 1000, "number of measured requests")
	warmupN := flag.Int("warmup-n", -1, "number of unmeasured requests sent first (default: 10 per worker)")
	maxDuration := flag.Duration("max-duration", time.Minute, "stop sending after this long, even if fewer than -n requests were made")
	handshakes := flag.Int("handshakes", 0, "instead of sending requests, open this many fresh connections one after another, "+
		"time CONNECT and TLS handshake of each, and print the first and the median of the others")
	idle := flag.Int("idle", 0, "instead of measuring, open this many connections (-c at a time), send one GET on each, "+
		"then hold them open and idle until signalled; -idle-ready names the file written once they are")
	idleReady := flag.String("idle-ready", "", "with -idle: the `file` to write once every connection is idle")
	put := flag.Int("put", 0, "send a PUT with a body of this many `bytes` instead of a GET (an API call that starts a task or sends a chunk)")
	flag.Parse()

	cfg := config{target: *target, proxy: *proxy, workers: *workers, n: *n, warmupN: *warmupN, maxDuration: *maxDuration}
	if *put > 0 {
		cfg.body = bytes.Repeat([]byte("x"), *put)
	}
	if cfg.warmupN < 0 {
		cfg.warmupN = 10 * cfg.workers
	}
	if *cacert != "" {
		cfg.caFiles = strings.Split(*cacert, ",")
	}
	if *idle > 0 {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if *idleReady == "" {
			fmt.Fprintln(os.Stderr, "load: -idle needs -idle-ready")
			os.Exit(1)
		}
		if err := holdIdle(ctx, cfg, *idle, *idleReady); err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			os.Exit(1)
		}
		return
	}
	if *handshakes > 0 {
		first, later, err := probeHandshakes(context.Background(), cfg, *handshakes)
		if err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			os.Exit(1)
		}
		fmt.Printf("first_ms=%.4f later_ms=%.4f\n", ms(first), ms(later))
		return
	}
	res, err := run(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	fmt.Println(res)
	if res.errors > 0 {
		fmt.Fprintln(os.Stderr, "load: first error:", res.firstErr)
		os.Exit(2)
	}
}

type config struct {
	target, proxy       string
	caFiles             []string
	workers, n, warmupN int
	maxDuration         time.Duration
	body                []byte // PUT this instead of a GET, if not nil
}

// result is what one run measured. Latencies cover the whole exchange, from
// sending the request to the last byte of the body.
type result struct {
	requests, errors int
	sent             int // every request made, warm-up included
	firstErr         error
	elapsed          time.Duration
	latencies        []time.Duration // sorted
}

func (r result) String() string {
	return fmt.Sprintf("requests=%d errors=%d sent=%d seconds=%.3f rps=%.1f mean_ms=%.4f p50_ms=%.4f p99_ms=%.4f",
		r.requests, r.errors, r.sent, r.elapsed.Seconds(), r.rps(),
		ms(r.mean()), ms(r.percentile(50)), ms(r.percentile(99)))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (r result) rps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.requests) / r.elapsed.Seconds()
}

func (r result) mean() time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	var sum time.Duration
	for _, l := range r.latencies {
		sum += l
	}
	return sum / time.Duration(len(r.latencies))
}

// percentile returns the nearest-rank percentile p (0 < p ≤ 100).
func (r result) percentile(p float64) time.Duration {
	n := len(r.latencies)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p/100*float64(n))) - 1
	return r.latencies[min(max(rank, 0), n-1)]
}

func run(ctx context.Context, cfg config) (result, error) {
	if cfg.target == "" {
		return result{}, errors.New("-url is required")
	}
	if cfg.workers < 1 || cfg.n < 1 || cfg.warmupN < 0 || cfg.maxDuration <= 0 {
		return result{}, errors.New("-c, -n and -max-duration must be positive, -warmup-n not negative")
	}
	tlsCfg := &tls.Config{}
	if len(cfg.caFiles) > 0 {
		pool, err := benchtls.LoadPool(cfg.caFiles...)
		if err != nil {
			return result{}, err
		}
		tlsCfg.RootCAs = pool
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsCfg,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
		MaxIdleConnsPerHost: cfg.workers,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	if cfg.proxy != "" {
		u, err := url.Parse(cfg.proxy)
		if err != nil {
			return result{}, fmt.Errorf("-proxy: %w", err)
		}
		tr.Proxy = http.ProxyURL(u)
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	// Tickets hand out requests: the first warmupN warm the connections and
	// are not measured, the next n are. Counting requests rather than time
	// makes every mode do the same work, so CPU seconds compare directly.
	var tickets atomic.Int64
	var measureStart atomic.Int64 // unix nanoseconds of the first measured ticket
	total := int64(cfg.warmupN + cfg.n)
	deadline := time.Now().Add(cfg.maxDuration)
	type workerResult struct {
		lat      []time.Duration
		errors   int
		sent     int
		firstErr error
	}
	results := make([]workerResult, cfg.workers)
	var wg sync.WaitGroup
	for i := range cfg.workers {
		wg.Go(func() {
			res := &results[i]
			res.lat = make([]time.Duration, 0, cfg.n/cfg.workers+1)
			for {
				t := tickets.Add(1)
				if t > total || time.Now().After(deadline) {
					return
				}
				measured := t > int64(cfg.warmupN)
				t0 := time.Now()
				if t == int64(cfg.warmupN)+1 {
					measureStart.Store(t0.UnixNano())
				}
				err := get(ctx, client, cfg.target, cfg.body)
				lat := time.Since(t0)
				res.sent++
				if err != nil {
					res.errors++
					if res.firstErr == nil {
						res.firstErr = err
					}
					continue
				}
				if measured {
					res.lat = append(res.lat, lat)
				}
			}
		})
	}
	wg.Wait()
	var elapsed time.Duration
	if ns := measureStart.Load(); ns != 0 {
		elapsed = time.Since(time.Unix(0, ns))
	}

	var out result
	out.elapsed = elapsed
	for _, r := range results {
		out.latencies = append(out.latencies, r.lat...)
		out.errors += r.errors
		out.sent += r.sent
		if out.firstErr == nil {
			out.firstErr = r.firstErr
		}
	}
	out.requests = len(out.latencies)
	slices.Sort(out.latencies)
	return out, nil
}

// get fetches u and reads the whole body, so the connection is reused. With
// a body, it PUTs that to u.
func get(ctx context.Context, client *http.Client, u string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if body != nil {
		req, err = http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(body))
	}
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("reading body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}
