package pgstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/pgtest"
)

// waitVersion waits for watch signals until s loads a record at version
// want or later.
func waitVersion(t *testing.T, s *Store, ch <-chan struct{}, want int64) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				t.Fatal("the watch channel closed")
			}
			if rec, err := s.Load(context.Background()); err == nil && rec.Version >= want {
				return
			}
		case <-timeout:
			t.Fatalf("no signal for version %d within 10s", want)
		}
	}
}

// A write by another store is signalled; a write to another session name
// is not passed on as a change of this one.
func TestWatchSignalsAnotherStoresWrite(t *testing.T) {
	dsn := pg.Database(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := a.Watch(ctx)
	select {
	case <-ch: // listening
	case <-time.After(10 * time.Second):
		t.Fatal("no signal when the watch started listening")
	}
	rec := mustPut(t, b, session("watched"))
	waitVersion(t, a, ch, rec.Version)
	l := mustAcquire(t, b, "host-b")
	begun := mustBegin(t, b, l, rec.Version, time.Minute)
	waitVersion(t, a, ch, begun.Version)
	if f := mustLoad(t, a).Flight; f == nil || f.Holder != "host-b" {
		t.Fatalf("the watcher loads flight %+v", f)
	}
}

// The watch survives a database restart: it reconnects, signals that it
// did (changes may have been missed), and then passes on writes again.
func TestWatchAfterRestart(t *testing.T) {
	srv := pgtest.New(t)
	dsn := srv.CreateDatabase(t)
	var mu sync.Mutex
	var reconnects, failed int
	a := openStore(t, dsn, withTimeout(time.Second), withObserve(func(op string, d time.Duration, err error) {
		if op != "watch_reconnect" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		reconnects++
		if err != nil {
			failed++
		}
	}))
	b := openStore(t, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := a.Watch(ctx)
	<-ch
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	// While the database is down, operations fail within the timeout
	// instead of hanging.
	if _, err := a.Load(context.Background()); err == nil {
		t.Fatal("Load succeeded with the database stopped")
	}
	eventually(t, 10*time.Second, "the watch tries to reconnect", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return failed > 0
	})
	for len(ch) > 0 {
		<-ch
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(15 * time.Second):
		t.Fatal("no signal after the watch reconnected")
	}
	rec := mustPut(t, b, session("after-restart"))
	waitVersion(t, a, ch, rec.Version)
	mu.Lock()
	defer mu.Unlock()
	if reconnects <= failed {
		t.Fatalf("observed %d reconnect attempts, %d failed: no successful one", reconnects, failed)
	}
}

// The watch stops when its context is done, closing its channel: no
// goroutine is left behind, also while it is waiting to reconnect.
func TestWatchStops(t *testing.T) {
	dsn := pg.Database(t)
	s := openStore(t, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	ch := s.Watch(ctx)
	<-ch
	cancel()
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not stop")
	}

	// Unreachable database: the watch is in its backoff.
	r := pgtest.NewCutter(t, pg.Server(t).Addr())
	s2 := openStore(t, r.DSN(dsn))
	r.Close()
	ctx, cancel = context.WithCancel(context.Background())
	ch = s2.Watch(ctx)
	time.AfterFunc(200*time.Millisecond, cancel)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("the watch did not stop while reconnecting")
		}
	}
}
