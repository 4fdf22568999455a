package pgstore

import (
	"context"
	"testing"
	"time"
)

// BenchmarkRefreshCycle measures the store's side of one refresh: acquire
// (renew), load, intent write, result write.
func BenchmarkRefreshCycle(b *testing.B) {
	ctx := context.Background()
	s := openStore(b, pg.Database(b))
	rec := mustPut(b, s, session("bench"))
	sess := session("bench2")
	b.ResetTimer()
	for b.Loop() {
		l := mustAcquire(b, s, "host-a")
		if _, err := s.Load(ctx); err != nil {
			b.Fatal(err)
		}
		begun := mustBegin(b, s, l, rec.Version, time.Minute)
		var err error
		if rec, err = s.Finish(ctx, *begun.Flight, sess); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWatchLatency measures how long a write by one store takes to
// reach another store's watcher, from the start of the write (ns/op).
func BenchmarkWatchLatency(b *testing.B) {
	dsn := pg.Database(b)
	w, s := openStore(b, dsn), openStore(b, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := w.Watch(ctx)
	<-ch
	sess := session("watch")
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Put(ctx, sess); err != nil {
			b.Fatal(err)
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			b.Fatal("no signal within 10s")
		}
	}
}
