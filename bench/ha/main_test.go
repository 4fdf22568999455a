package main

import (
	"testing"
	"time"
)

func TestPercentileIsNearestRank(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var ds []time.Duration
		for _, x := range v {
			ds = append(ds, time.Duration(x)*time.Millisecond)
		}
		return ds
	}
	tests := []struct {
		ds   []time.Duration
		p    int
		want string
	}{
		{nil, 50, "-"},
		{ms(7), 99, "7ms"},
		{ms(4, 1, 3, 2), 50, "2ms"},
		{ms(4, 1, 3, 2), 100, "4ms"},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, "10ms"},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, "9ms"},
	}
	for _, tt := range tests {
		if got := pct(tt.ds, tt.p); got != tt.want {
			t.Errorf("pct(%v, %d) = %s, want %s", tt.ds, tt.p, got, tt.want)
		}
	}
}
