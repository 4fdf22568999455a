package pgstore

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/internal/pgtest"
)

// A connection cut in the middle of a write yields either an error with
// the record untouched, or success with the record exactly as written
// (the COMMIT went through, its answer was lost): never a half-written
// record, and never ErrConflict or ErrFenced, which promise that nothing
// was written.
func TestConnectionCutMidTransaction(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		point   pgtest.Point
		written bool // whether the write must have happened
	}{
		{"cut at the update", pgtest.Point{Mode: pgtest.CutBefore, Match: pgtest.Containing("UPDATE anaplan_proxy_session SET")}, false},
		{"cut before COMMIT reaches the server", pgtest.Point{Mode: pgtest.CutBefore, Match: pgtest.Exactly("commit")}, false},
		{"cut after COMMIT, before its answer", pgtest.Point{Mode: pgtest.CutAfter, Match: pgtest.Exactly("commit")}, true},
	} {
		for _, op := range []string{"put", "begin", "finish"} {
			t.Run(tc.name+"/"+op, func(t *testing.T) {
				dsn := pg.Database(t)
				r := pgtest.NewCutter(t, pg.Server(t).Addr())
				out := logs()
				direct := openStore(t, dsn)
				s := openStore(t, r.DSN(dsn), withLogs(out))
				rec := mustPut(t, direct, session("before"))
				l := mustAcquire(t, direct, "host-a")
				var base auth.Flight
				if op == "finish" {
					begun := mustBegin(t, direct, l, rec.Version, time.Minute)
					base, rec = *begun.Flight, begun
				}
				before := mustLoad(t, direct)

				r.Arm(tc.point)
				var got auth.Record
				var err error
				switch op {
				case "put":
					got, err = s.Put(ctx, session("after"))
				case "begin":
					got, err = s.Begin(ctx, l, rec.Version, time.Minute)
				case "finish":
					got, err = s.Finish(ctx, base, session("after"))
				}
				if n := r.Cuts(); n != 1 {
					t.Fatalf("the relay made %d cuts, want 1 (no statement matched)", n)
				}
				if isConflictOrFenced(err) {
					t.Fatalf("%s after a cut: %v, which claims nothing was written", op, err)
				}
				after := mustLoad(t, direct)
				if tc.written {
					if err != nil {
						t.Fatalf("%s after a cut past COMMIT: %v; want the re-read to find it written", op, err)
					}
					if after.Version != got.Version || !reflect.DeepEqual(after.Session, got.Session) || (after.Flight == nil) != (got.Flight == nil) {
						t.Fatalf("%s returned v%d %+v, the store holds v%d %+v", op, got.Version, got.Flight, after.Version, after.Flight)
					}
					if !strings.Contains(out.String(), "store_commit_resolved") {
						t.Errorf("no log of the resolved commit:\n%s", out)
					}
					return
				}
				if err == nil {
					t.Fatalf("%s after a cut before COMMIT succeeded", op)
				}
				if !sameRecord(after, before) {
					t.Fatalf("the record changed after a failed %s: %+v → %+v", op, before, after)
				}
				// The store works again on a new connection.
				if _, err := s.Load(ctx); err != nil {
					t.Fatalf("Load after the cut: %v", err)
				}
			})
		}
	}
}

// sameRecord compares records but for the time left to a flight's
// deadline, which passes between loads.
func sameRecord(a, b auth.Record) bool {
	for _, r := range []*auth.Record{&a, &b} {
		if r.Flight != nil {
			f := *r.Flight
			f.Remaining = 0
			r.Flight = &f
		}
	}
	return reflect.DeepEqual(a, b)
}
