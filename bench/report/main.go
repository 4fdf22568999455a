// Command report turns the measurements of bench/run.sh into a Markdown
// table: the median of each figure over the rounds for direct, the bare TLS
// relay (the ceiling) and anaplan-proxy, its ratios to direct and to the
// ceiling, and whether the performance target on it holds.
//
// It reads tab-separated lines "round scenario mode metric value" from the
// file named by its argument (or standard input).
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The modes measured, in table order.
const (
	direct = "direct"
	relay  = "relay"
	proxy  = "proxy"
)

var modes = []string{direct, relay, proxy}

func main() {
	in := io.Reader(os.Stdin)
	if len(os.Args) > 1 {
		f, err := os.Open(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
		defer f.Close()
		in = f
	}
	m, err := parse(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	fmt.Print(render(m))
}

// key names one figure of one mode.
type key struct{ scenario, mode, metric string }

// measurements maps a figure to its value in each round, in round order.
type measurements map[key][]float64

func parse(r io.Reader) (measurements, error) {
	m := measurements{}
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Split(text, "\t")
		if len(f) != 5 {
			return nil, fmt.Errorf("line %d: want 5 tab-separated fields, got %d", line, len(f))
		}
		v, err := strconv.ParseFloat(f[4], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: value: %w", line, err)
		}
		k := key{f[1], f[2], f[3]}
		m[k] = append(m[k], v)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	if len(m) == 0 {
		return nil, errors.New("no measurements")
	}
	return m, nil
}

// median returns the median of the figure, or NaN if it was not measured.
func (m measurements) median(k key) float64 {
	vs := slices.Clone(m[k])
	if len(vs) == 0 {
		return math.NaN()
	}
	slices.Sort(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2]
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
}

// row is one line of the table. value gives the figure for a mode (NaN when
// not applicable); target, if set, judges the proxy's figure.
type row struct {
	label        string
	unit         string
	scenario     string
	metric       string
	value        func(m measurements, mode string) float64
	target       func(v map[string]float64) string
	noDirect     bool // the figure is about the proxy process; direct has none
	decimalDigit int
}

func (r row) values(m measurements) map[string]float64 {
	v := map[string]float64{}
	for _, mode := range modes {
		switch {
		case r.noDirect && mode == direct:
			v[mode] = math.NaN()
		case r.value != nil:
			v[mode] = r.value(m, mode)
		default:
			v[mode] = m.median(key{r.scenario, mode, r.metric})
		}
	}
	return v
}

// atLeast and atMost build ratio targets against the ceiling.
func atLeast(f float64) func(map[string]float64) string {
	return func(v map[string]float64) string {
		return judge(v[proxy]/v[relay] >= f, fmt.Sprintf("≥ %.2f × ceiling", f))
	}
}

func atMost(f float64) func(map[string]float64) string {
	return func(v map[string]float64) string {
		return judge(v[proxy]/v[relay] <= f, fmt.Sprintf("≤ %.2f × ceiling", f))
	}
}

func absMax(limit float64, unit string) func(map[string]float64) string {
	return func(v map[string]float64) string {
		return judge(v[proxy] <= limit, fmt.Sprintf("≤ %g %s", limit, unit))
	}
}

func judge(ok bool, what string) string {
	if ok {
		return what + ": met"
	}
	return what + ": **missed**"
}

// sumOver adds the per-scenario medians of a metric.
func sumOver(metric string, scenarios ...string) func(measurements, string) float64 {
	return func(m measurements, mode string) float64 {
		total := 0.0
		for _, s := range scenarios {
			total += m.median(key{s, mode, metric})
		}
		return total
	}
}

// perRequest is the median CPU time per request sent in a scenario, in µs.
func perRequest(scenario string) func(measurements, string) float64 {
	return perRequestOf(scenario, "cpu_s")
}

// perRequestOf is the median of a CPU metric (in seconds) per request sent
// in a scenario, in µs.
func perRequestOf(scenario, metric string) func(measurements, string) float64 {
	return func(m measurements, mode string) float64 {
		return m.median(key{scenario, mode, metric}) / m.median(key{scenario, mode, "sent"}) * 1e6
	}
}

// difference is a − b of two metrics of one scenario.
func difference(scenario, a, b string) func(measurements, string) float64 {
	return func(m measurements, mode string) float64 {
		return m.median(key{scenario, mode, a}) - m.median(key{scenario, mode, b})
	}
}

func rows() []row {
	scenarios := []string{"c1", "c50", "download", "upload"}
	rs := []row{
		{label: "small GET, c=1: mean latency", unit: "ms", scenario: "c1", metric: "mean_ms", decimalDigit: 3, target: atMost(1.2)},
		{label: "small GET, c=1: p50 latency", unit: "ms", scenario: "c1", metric: "p50_ms", decimalDigit: 3},
		{label: "small GET, c=1: p99 latency", unit: "ms", scenario: "c1", metric: "p99_ms", decimalDigit: 3},
		{label: "small GET, c=50: requests/s", unit: "req/s", scenario: "c50", metric: "rps", target: atLeast(0.9)},
		{label: "small GET, c=50: p99 latency", unit: "ms", scenario: "c50", metric: "p99_ms", decimalDigit: 2},
		{label: "download", unit: "MB/s", scenario: "download", metric: "mbps", target: atLeast(0.95)},
		{label: "upload", unit: "MB/s", scenario: "upload", metric: "mbps", target: atLeast(0.95)},
	}
	for _, s := range scenarios {
		r := row{label: "peak RSS during " + s, unit: "MiB", scenario: s, metric: "rss_mib", noDirect: true, decimalDigit: 1}
		if s == "download" || s == "upload" {
			r.target = absMax(32, "MiB")
		}
		rs = append(rs, r)
	}
	rs = append(rs, row{label: "peak RSS, download − upload body", unit: "MiB", noDirect: true, decimalDigit: 1,
		value: func(m measurements, mode string) float64 {
			return m.median(key{"download", mode, "rss_mib"}) - m.median(key{"upload", mode, "rss_mib"})
		}})
	for _, s := range scenarios {
		rs = append(rs, row{label: "CPU during " + s, unit: "s", scenario: s, metric: "cpu_s", noDirect: true, decimalDigit: 2})
	}
	rs = append(rs,
		row{label: "CPU per request, c=1", unit: "µs", noDirect: true, value: perRequest("c1"), decimalDigit: 1},
		row{label: "CPU per request, c=50", unit: "µs", noDirect: true, value: perRequest("c50"), decimalDigit: 1},
		// Where the difference lies: the system calls are the same four
		// TLS reads and writes for the relay and the proxy; user time is
		// the proxy's HTTP work and the scheduling around it.
		row{label: "CPU per request, c=50: user", unit: "µs", noDirect: true, value: perRequestOf("c50", "cpu_user_s"), decimalDigit: 1},
		row{label: "CPU per request, c=50: system", unit: "µs", noDirect: true, value: perRequestOf("c50", "cpu_sys_s"), decimalDigit: 1},
		row{label: "CPU, whole benchmark", unit: "s", noDirect: true, value: sumOver("cpu_s", scenarios...), decimalDigit: 2, target: atMost(1.1)},
		row{label: "first CONNECT after start: TLS ready", unit: "ms", scenario: "connect", metric: "cold_ms", decimalDigit: 2},
		row{label: "first CONNECT to another new host: TLS ready", unit: "ms", scenario: "connect", metric: "first_ms", decimalDigit: 2},
		row{label: "later CONNECTs to it: TLS ready (median)", unit: "ms", scenario: "connect", metric: "later_ms", decimalDigit: 2},
		row{label: "new host − later CONNECT (certificate work)", unit: "ms", decimalDigit: 2,
			value: difference("connect", "first_ms", "later_ms"), target: absMax(2, "ms")},
		row{label: "memory per idle client connection, above a fresh process", unit: "KiB", scenario: "idle", metric: "kib_per_conn",
			noDirect: true, decimalDigit: 1, target: absMax(64, "KiB")},
		row{label: "idle upstream connections kept meanwhile", unit: "connections", scenario: "idle", metric: "pool_idle",
			noDirect: true},
	)
	return rs
}

func render(m measurements) string {
	var b strings.Builder
	b.WriteString("| figure | direct | relay (ceiling) | anaplan-proxy | relay ÷ direct | proxy ÷ direct | proxy ÷ ceiling | target |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows() {
		v := r.values(m)
		if math.IsNaN(v[relay]) && math.IsNaN(v[proxy]) {
			continue
		}
		target := ""
		if r.target != nil && !math.IsNaN(v[proxy]) && !math.IsNaN(v[relay]) {
			target = r.target(v)
		}
		fmt.Fprintf(&b, "| %s (%s) | %s | %s | %s | %s | %s | %s | %s |\n", r.label, r.unit,
			num(v[direct], r.decimalDigit), num(v[relay], r.decimalDigit), num(v[proxy], r.decimalDigit),
			ratio(v[relay], v[direct]), ratio(v[proxy], v[direct]), ratio(v[proxy], v[relay]), target)
	}
	rounds := 0
	for _, vs := range m {
		rounds = max(rounds, len(vs))
	}
	if rounds > 1 {
		fmt.Fprintf(&b, "\nMedians of %d rounds. Every round, in order (direct / relay / proxy):\n\n", rounds)
		b.WriteString("| figure | direct | relay | anaplan-proxy |\n|---|---|---|---|\n")
		for _, r := range rows() {
			if r.value != nil {
				continue
			}
			fmt.Fprintf(&b, "| %s (%s) |", r.label, r.unit)
			for _, mode := range modes {
				vs := m[key{r.scenario, mode, r.metric}]
				if r.noDirect && mode == direct || len(vs) == 0 {
					b.WriteString(" — |")
					continue
				}
				parts := make([]string, len(vs))
				for i, x := range vs {
					parts[i] = num(x, r.decimalDigit)
				}
				fmt.Fprintf(&b, " %s |", strings.Join(parts, ", "))
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func num(v float64, digits int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return strconv.FormatFloat(v, 'f', digits, 64)
}

// ratio is a ÷ b, shown only when both are positive: a ratio of two
// differences that may be negative or zero says nothing.
func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || a <= 0 || b <= 0 {
		return "—"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64) + "×"
}
