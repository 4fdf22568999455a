package main

import (
	"math"
	"strings"
	"testing"
)

// lines builds report input from "round scenario mode metric value" rows
// written with spaces.
func lines(rows ...string) string {
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(strings.Join(strings.Fields(r), "\t"))
		b.WriteString("\n")
	}
	return b.String()
}

func TestParseRejectsBadInput(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"only comments", "# nothing\n\n"},
		{"four fields", "1\tc1\tdirect\trps\n"},
		{"value not a number", "1\tc1\tdirect\trps\tfast\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parse(strings.NewReader(tt.in)); err == nil {
				t.Error("parse succeeded")
			}
		})
	}
}

func TestMedianOverRounds(t *testing.T) {
	m, err := parse(strings.NewReader(lines(
		"1 c50 proxy rps 300",
		"2 c50 proxy rps 100",
		"3 c50 proxy rps 200",
		"1 c50 relay rps 10",
		"2 c50 relay rps 20",
	)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		k    key
		want float64
	}{
		{key{"c50", "proxy", "rps"}, 200},
		{key{"c50", "relay", "rps"}, 15},
	}
	for _, tt := range tests {
		if got := m.median(tt.k); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.k, got, tt.want)
		}
	}
	if got := m.median(key{"c50", "direct", "rps"}); !math.IsNaN(got) {
		t.Errorf("median of an unmeasured figure = %v, want NaN", got)
	}
}

// tableRow returns the cells of the rendered row whose label starts with
// prefix.
func tableRow(t *testing.T, table, prefix string) []string {
	t.Helper()
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, "| "+prefix) {
			cells := strings.Split(strings.Trim(line, "|"), "|")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			return cells
		}
	}
	t.Fatalf("no row %q in:\n%s", prefix, table)
	return nil
}

func TestRenderRatiosAndTargets(t *testing.T) {
	in := lines(
		"1 c50 direct rps 1000",
		"1 c50 relay rps 500",
		"1 c50 proxy rps 460",
		"1 download direct mbps 800",
		"1 download relay mbps 400",
		"1 download proxy mbps 200",
		"1 download relay rss_mib 18",
		"1 download proxy rss_mib 40",
		"1 c1 relay cpu_s 1", "1 c50 relay cpu_s 2", "1 download relay cpu_s 3", "1 upload relay cpu_s 4",
		"1 c1 proxy cpu_s 1", "1 c50 proxy cpu_s 2", "1 download proxy cpu_s 3", "1 upload proxy cpu_s 4",
		"1 connect proxy first_ms 3.5",
		"1 connect proxy later_ms 2",
		"1 connect relay first_ms 2",
		"1 connect relay later_ms 1.5",
	)
	m, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	table := render(m)
	tests := []struct {
		row  string
		want []string // direct, relay, proxy, relay÷direct, proxy÷direct, proxy÷ceiling, target
	}{
		{"small GET, c=50: requests/s", []string{"1000", "500", "460", "0.50×", "0.46×", "0.92×", "≥ 0.90 × ceiling: met"}},
		{"download (MB/s)", []string{"800", "400", "200", "0.50×", "0.25×", "0.50×", "≥ 0.95 × ceiling: **missed**"}},
		{"peak RSS during download", []string{"—", "18.0", "40.0", "—", "—", "2.22×", "≤ 32 MiB: **missed**"}},
		{"CPU, whole benchmark", []string{"—", "10.00", "10.00", "—", "—", "1.00×", "≤ 1.10 × ceiling: met"}},
		{"new host − later CONNECT", []string{"—", "0.50", "1.50", "—", "—", "3.00×", "≤ 2 ms: met"}},
	}
	for _, tt := range tests {
		got := tableRow(t, table, tt.row)[1:]
		if strings.Join(got, " | ") != strings.Join(tt.want, " | ") {
			t.Errorf("row %q:\n got %q\nwant %q", tt.row, got, tt.want)
		}
	}
	if strings.Contains(table, "upload (MB/s)") {
		t.Errorf("a figure measured for no mode has a row:\n%s", table)
	}
	if strings.Contains(table, "Medians of") {
		t.Errorf("a single round is described as medians:\n%s", table)
	}
}

func TestRenderListsEveryRound(t *testing.T) {
	m, err := parse(strings.NewReader(lines(
		"1 upload relay mbps 300",
		"2 upload relay mbps 310",
		"1 upload proxy mbps 290",
		"2 upload proxy mbps 280",
	)))
	if err != nil {
		t.Fatal(err)
	}
	table := render(m)
	if !strings.Contains(table, "Medians of 2 rounds") {
		t.Fatalf("no per-round section:\n%s", table)
	}
	var perRound []string
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, "| upload (MB/s)") {
			perRound = append(perRound, line)
		}
	}
	if len(perRound) != 2 || !strings.Contains(perRound[1], "| 300, 310 | 290, 280 |") {
		t.Errorf("per-round row for upload = %q, want one listing 300, 310 and 290, 280", perRound)
	}
}
