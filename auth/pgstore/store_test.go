package pgstore

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
)

func TestLoadWithNothingStored(t *testing.T) {
	s := openStore(t, pg.Database(t))
	rec, err := s.Load(context.Background())
	if !errors.Is(err, auth.ErrNoSession) {
		t.Fatalf("Load on an empty database: %v, want ErrNoSession", err)
	}
	if rec.Session != nil || rec.Flight != nil {
		t.Fatalf("Load on an empty database returned %+v", rec)
	}
}

// A login is read back as stored by every store on the database; a
// logout leaves a record without a session; versions only grow through
// logout and login.
func TestPutLoadLogoutLogin(t *testing.T) {
	dsn := pg.Database(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	want := session("login1")
	r1 := mustPut(t, a, want)
	if !reflect.DeepEqual(r1.Session, want) {
		t.Fatalf("Put returned %+v, want %+v", r1.Session, want)
	}
	got := mustLoad(t, b)
	if !reflect.DeepEqual(got.Session, want) || got.Version != r1.Version || got.Flight != nil {
		t.Fatalf("Load by another store = %+v (v%d), want %+v (v%d)", got.Session, got.Version, want, r1.Version)
	}
	r2, err := a.Put(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := b.Load(context.Background())
	if !errors.Is(err, auth.ErrNoSession) || rec.Version != r2.Version {
		t.Fatalf("Load after logout = v%d, %v; want v%d and ErrNoSession", rec.Version, err, r2.Version)
	}
	r3 := mustPut(t, b, session("login2"))
	if !(r1.Version < r2.Version && r2.Version < r3.Version) {
		t.Fatalf("versions login %d, logout %d, login %d do not grow", r1.Version, r2.Version, r3.Version)
	}
	if got := mustLoad(t, a); got.Session.RefreshToken != session("login2").RefreshToken {
		t.Fatalf("Load after the second login has refresh token %q", got.Session.RefreshToken)
	}
}

// Session names share a database without seeing each other's records or
// leases.
func TestSessionNamesAreSeparate(t *testing.T) {
	dsn := pg.Database(t)
	a, b := openStore(t, dsn, withName("east")), openStore(t, dsn, withName("west"))
	mustPut(t, a, session("east"))
	if _, err := b.Load(context.Background()); !errors.Is(err, auth.ErrNoSession) {
		t.Fatalf("west sees east's session: %v", err)
	}
	mustAcquire(t, a, "host-a")
	mustAcquire(t, b, "host-b")
}

func TestPutRefusesUnusableSession(t *testing.T) {
	s := openStore(t, pg.Database(t))
	bad := session("bad")
	bad.AccessToken = ""
	if _, err := s.Put(context.Background(), bad); err == nil {
		t.Fatal("Put stored a session without an access token")
	}
	if _, err := s.Load(context.Background()); !errors.Is(err, auth.ErrNoSession) {
		t.Fatalf("after a refused Put: %v, want ErrNoSession", err)
	}
}

func TestAcquire(t *testing.T) {
	dsn := pg.Database(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx := context.Background()

	l1 := mustAcquire(t, a, "host-a")
	if l1.Fence == 0 || l1.Holder != "host-a" || l1.TTL != 10*time.Second {
		t.Fatalf("lease = %+v", l1)
	}
	// The holder renews: same fence.
	if l := mustAcquire(t, b, "host-a"); l.Fence != l1.Fence {
		t.Fatalf("renewal changed the fence %d → %d", l1.Fence, l.Fence)
	}
	// Another is refused, told who holds it and for how long.
	_, err := b.Acquire(ctx, "host-b")
	var held *auth.LeaseHeldError
	if !errors.As(err, &held) || held.Holder != "host-a" || held.Remaining <= 0 || held.Remaining > 10*time.Second {
		t.Fatalf("Acquire while held: %v (%+v)", err, held)
	}
	// Releasing a lease that is not the current one does nothing.
	if err := b.Release(ctx, auth.Lease{Fence: l1.Fence + 1000, Holder: "host-b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, "host-b"); !errors.As(err, &held) {
		t.Fatalf("a foreign Release freed the lease: %v", err)
	}
	// After a release, another takes it with a higher fence; the old
	// holder coming back gets a higher one still.
	if err := a.Release(ctx, l1); err != nil {
		t.Fatal(err)
	}
	l2 := mustAcquire(t, b, "host-b")
	if err := b.Release(ctx, l2); err != nil {
		t.Fatal(err)
	}
	l3 := mustAcquire(t, a, "host-a")
	if !(l1.Fence < l2.Fence && l2.Fence < l3.Fence) {
		t.Fatalf("fences %d, %d, %d do not grow", l1.Fence, l2.Fence, l3.Fence)
	}
}

// A lease lapses by the database's clock: a short lease held by one store
// passes to another once it has run out, never before, and the old
// holder's intent writes are fenced off from then on.
func TestLeaseLapsesByDatabaseClock(t *testing.T) {
	dsn := pg.Database(t)
	a, b := openStore(t, dsn, withLease(200*time.Millisecond)), openStore(t, dsn, withLease(200*time.Millisecond))
	rec := mustPut(t, a, session("lapse"))
	start := time.Now()
	la := mustAcquire(t, a, "host-a")
	_, err := b.Acquire(context.Background(), "host-b")
	var held *auth.LeaseHeldError
	switch {
	case errors.As(err, &held):
		if held.Holder != "host-a" || held.Remaining <= 0 || held.Remaining > 200*time.Millisecond {
			t.Fatalf("Acquire right after another's: %v", err)
		}
	case err == nil && time.Since(start) < 200*time.Millisecond:
		t.Fatal("another took the lease before it lapsed")
	case err != nil:
		t.Fatal(err)
	}
	var lb auth.Lease
	eventually(t, 10*time.Second, "host-b takes the lapsed lease", func() bool {
		lb, err = b.Acquire(context.Background(), "host-b")
		if err != nil && !errors.As(err, &held) {
			t.Fatal(err)
		}
		return err == nil
	})
	if lb.Fence <= la.Fence {
		t.Fatalf("the new lease's fence %d is not above the lapsed one's %d", lb.Fence, la.Fence)
	}
	if _, err := a.Begin(context.Background(), la, rec.Version, time.Second); !errors.Is(err, auth.ErrFenced) {
		t.Fatalf("Begin with the lapsed lease: %v, want ErrFenced", err)
	}
	// The lapsed holder asking again gets neither its old fence nor the
	// lease while b holds it.
	if _, err := a.Acquire(context.Background(), "host-a"); !errors.As(err, &held) || held.Holder != "host-b" {
		t.Fatalf("Acquire by the lapsed holder: %v", err)
	}
}

func TestBeginConditions(t *testing.T) {
	ctx := context.Background()
	type setup struct {
		s       *Store
		lease   auth.Lease
		version int64
	}
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, st *setup)
		want    error // nil: Begin succeeds
	}{
		{"current lease and version", func(t *testing.T, st *setup) {}, nil},
		{"stale version", func(t *testing.T, st *setup) {
			mustPut(t, st.s, session("newer"))
		}, auth.ErrConflict},
		{"already in flight", func(t *testing.T, st *setup) {
			rec := mustBegin(t, st.s, st.lease, st.version, time.Minute)
			st.version = rec.Version
		}, auth.ErrConflict},
		{"lease released and taken by another", func(t *testing.T, st *setup) {
			if err := st.s.Release(ctx, st.lease); err != nil {
				t.Fatal(err)
			}
			mustAcquire(t, st.s, "host-b")
		}, auth.ErrFenced},
		{"lease released", func(t *testing.T, st *setup) {
			if err := st.s.Release(ctx, st.lease); err != nil {
				t.Fatal(err)
			}
		}, auth.ErrFenced},
		{"logged out", func(t *testing.T, st *setup) {
			mustPut(t, st.s, nil)
		}, auth.ErrConflict},
		{"logged out, at the logout's version", func(t *testing.T, st *setup) {
			st.version = mustPut(t, st.s, nil).Version
		}, auth.ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, pg.Database(t))
			rec := mustPut(t, s, session("begin"))
			st := &setup{s: s, lease: mustAcquire(t, s, "host-a"), version: rec.Version}
			tc.prepare(t, st)
			before, _ := s.Load(ctx)
			got, err := s.Begin(ctx, st.lease, st.version, 30*time.Second)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("Begin: %v, want %v", err, tc.want)
				}
				after, _ := s.Load(ctx)
				if after.Version != before.Version {
					t.Fatalf("a refused Begin changed the record: v%d → v%d", before.Version, after.Version)
				}
				return
			}
			if err != nil {
				t.Fatalf("Begin: %v", err)
			}
			f := got.Flight
			if got.Version <= st.version || f == nil || f.Fence != st.lease.Fence || f.Holder != "host-a" || f.Version != got.Version || f.Uncertain {
				t.Fatalf("Begin returned v%d flight %+v (from v%d, fence %d)", got.Version, f, st.version, st.lease.Fence)
			}
			loaded := mustLoad(t, s)
			lf := loaded.Flight
			if loaded.Version != got.Version || lf == nil || lf.Fence != f.Fence || lf.Version != f.Version ||
				lf.Remaining <= 0 || lf.Remaining > 30*time.Second || !reflect.DeepEqual(loaded.Session, session("begin")) {
				t.Fatalf("Load after Begin: v%d flight %+v session %+v", loaded.Version, lf, loaded.Session)
			}
		})
	}
}

func TestFinishConditions(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// prepare returns the base to finish on, after the intent write.
		prepare func(t *testing.T, s *Store, l auth.Lease, begun auth.Record) auth.Flight
		ok      bool
	}{
		{"in flight as begun", func(t *testing.T, s *Store, l auth.Lease, begun auth.Record) auth.Flight {
			return *begun.Flight
		}, true},
		{"marked uncertain since", func(t *testing.T, s *Store, l auth.Lease, begun auth.Record) auth.Flight {
			markWhenDue(t, s, l, *begun.Flight)
			return *begun.Flight
		}, true},
		{"lease lost since (a late holder rescues)", func(t *testing.T, s *Store, l auth.Lease, begun auth.Record) auth.Flight {
			if err := s.Release(ctx, l); err != nil {
				t.Fatal(err)
			}
			mustAcquire(t, s, "host-b")
			return *begun.Flight
		}, true},
		{"a login since", func(t *testing.T, s *Store, l auth.Lease, begun auth.Record) auth.Flight {
			mustPut(t, s, session("relogin"))
			return *begun.Flight
		}, false},
		{"a logout since", func(t *testing.T, s *Store, l auth.Lease, begun auth.Record) auth.Flight {
			mustPut(t, s, nil)
			return *begun.Flight
		}, false},
		{"another fence", func(t *testing.T, s *Store, l auth.Lease, begun auth.Record) auth.Flight {
			f := *begun.Flight
			f.Fence++
			return f
		}, false},
		{"another intent version", func(t *testing.T, s *Store, l auth.Lease, begun auth.Record) auth.Flight {
			f := *begun.Flight
			f.Version--
			return f
		}, false},
		{"no intent (fence 0) while in flight", func(t *testing.T, s *Store, l auth.Lease, begun auth.Record) auth.Flight {
			return auth.Flight{Version: begun.Version}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, pg.Database(t))
			rec := mustPut(t, s, session("before"))
			l := mustAcquire(t, s, "host-a")
			begun := mustBegin(t, s, l, rec.Version, 50*time.Millisecond)
			base := tc.prepare(t, s, l, begun)
			before, _ := s.Load(ctx)
			got, err := s.Finish(ctx, base, session("after"))
			if !tc.ok {
				if !errors.Is(err, auth.ErrConflict) {
					t.Fatalf("Finish: %v, want ErrConflict", err)
				}
				after, _ := s.Load(ctx)
				if after.Version != before.Version {
					t.Fatalf("a refused Finish changed the record: v%d → v%d", before.Version, after.Version)
				}
				return
			}
			if err != nil {
				t.Fatalf("Finish: %v", err)
			}
			loaded := mustLoad(t, s)
			if got.Flight != nil || loaded.Flight != nil || loaded.Version != got.Version || got.Version <= before.Version ||
				!reflect.DeepEqual(loaded.Session, session("after")) {
				t.Fatalf("after Finish: returned v%d %+v, loaded v%d %+v %+v", got.Version, got.Flight, loaded.Version, loaded.Flight, loaded.Session)
			}
		})
	}
}

// A store whose lease cannot lapse writes no intent: Finish with fence 0
// stores the result while the record is still at the base version.
func TestFinishWithoutIntent(t *testing.T) {
	s := openStore(t, pg.Database(t))
	rec := mustPut(t, s, session("before"))
	got, err := s.Finish(context.Background(), auth.Flight{Version: rec.Version}, session("after"))
	if err != nil || got.Session.AccessToken != session("after").AccessToken {
		t.Fatalf("Finish without intent: %v", err)
	}
	if _, err := s.Finish(context.Background(), auth.Flight{Version: rec.Version}, session("again")); !errors.Is(err, auth.ErrConflict) {
		t.Fatalf("second Finish on the same base: %v, want ErrConflict", err)
	}
}

// markWhenDue marks f uncertain once its deadline has passed by the
// database clock, checking that it is refused before.
func markWhenDue(t *testing.T, s *Store, l auth.Lease, f auth.Flight) auth.Record {
	t.Helper()
	var rec auth.Record
	eventually(t, 10*time.Second, "the flight's deadline passes", func() bool {
		var err error
		rec, err = s.MarkUncertain(context.Background(), l, f)
		if err != nil && !errors.Is(err, auth.ErrConflict) {
			t.Fatal(err)
		}
		return err == nil
	})
	return rec
}

func TestMarkUncertain(t *testing.T) {
	ctx := context.Background()
	dsn := pg.Database(t)
	s := openStore(t, dsn)
	rec := mustPut(t, s, session("mark"))
	l := mustAcquire(t, s, "host-a")

	// Not in flight.
	if _, err := s.MarkUncertain(ctx, l, auth.Flight{Fence: l.Fence, Version: rec.Version}); !errors.Is(err, auth.ErrConflict) {
		t.Fatalf("MarkUncertain with nothing in flight: %v", err)
	}
	begun := mustBegin(t, s, l, rec.Version, time.Hour)
	// Before the deadline.
	if _, err := s.MarkUncertain(ctx, l, *begun.Flight); !errors.Is(err, auth.ErrConflict) || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("MarkUncertain before the deadline: %v", err)
	}
	// Finish it and begin again with a short deadline.
	done, err := s.Finish(ctx, *begun.Flight, session("mark2"))
	if err != nil {
		t.Fatal(err)
	}
	begun = mustBegin(t, s, l, done.Version, 100*time.Millisecond)
	// A lease that is not the current one is fenced off, even once due.
	other := auth.Lease{Fence: l.Fence + 1000, Holder: "host-x"}
	eventually(t, 10*time.Second, "the deadline passes", func() bool { return mustLoad(t, s).Flight.Remaining < 0 })
	if _, err := s.MarkUncertain(ctx, other, *begun.Flight); !errors.Is(err, auth.ErrFenced) {
		t.Fatalf("MarkUncertain with a stale lease: %v, want ErrFenced", err)
	}
	marked, err := s.MarkUncertain(ctx, l, *begun.Flight)
	if err != nil {
		t.Fatalf("MarkUncertain after the deadline: %v", err)
	}
	loaded := mustLoad(t, s)
	f := loaded.Flight
	if marked.Version <= begun.Version || loaded.Version != marked.Version || f == nil || !f.Uncertain ||
		f.Version != begun.Flight.Version || f.Fence != l.Fence || f.Remaining >= 0 || loaded.Session.AccessToken != session("mark2").AccessToken {
		t.Fatalf("after MarkUncertain: v%d (begun v%d) flight %+v", loaded.Version, begun.Version, f)
	}
}

// Two stores on one database, each with the same lease in hand (a paused
// holder and its successor both believe they may refresh), race the intent
// write at one version: exactly one wins, every round.
func TestRacingBeginOneWins(t *testing.T) {
	ctx := context.Background()
	dsn := pg.Database(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	rec := mustPut(t, a, session("race"))
	version := rec.Version
	for round := range 50 {
		l := mustAcquire(t, a, "host-a")
		var wg sync.WaitGroup
		results := make([]auth.Record, 2)
		errs := make([]error, 2)
		for i, s := range []*Store{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i], errs[i] = s.Begin(ctx, l, version, time.Minute)
			}()
		}
		wg.Wait()
		wins := 0
		var won auth.Record
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
				won = results[i]
			case !errors.Is(err, auth.ErrConflict):
				t.Fatalf("round %d: Begin: %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d Begins won", round, wins)
		}
		done, err := b.Finish(ctx, *won.Flight, session(fmt.Sprint("race", round)))
		if err != nil {
			t.Fatalf("round %d: Finish: %v", round, err)
		}
		version = done.Version
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"short key", Options{DSN: "postgres://127.0.0.1/x", Key: make([]byte, 16)}, "32"},
		{"no key", Options{DSN: "postgres://127.0.0.1/x"}, "openssl rand"},
		{"bad DSN", Options{DSN: "postgres://u:hunter2@[::1", Key: testKey}, "DSN"},
		{"negative lease", Options{DSN: "postgres://127.0.0.1/x", Key: testKey, Lease: -time.Second}, "lease"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(context.Background(), tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %v, want an error mentioning %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
}

func TestStringHidesPassword(t *testing.T) {
	s := openStore(t, pg.Database(t), withName("prod"))
	// The test server trusts loopback, so any password is accepted.
	withPW := strings.Replace(s.pool.Config().ConnString(), "postgres@", "postgres:hunter2@", 1)
	s2 := openStore(t, withPW, withName("prod"))
	for _, st := range []*Store{s, s2} {
		got := st.String()
		if !strings.HasPrefix(got, "postgres 127.0.0.1:") || !strings.HasSuffix(got, `session "prod"`) || strings.Contains(got, "hunter2") {
			t.Errorf("String() = %q", got)
		}
	}
}

// A second Open on an existing database neither fails nor recreates the
// tables; two at once both succeed.
func TestOpenTwiceAtOnce(t *testing.T) {
	dsn := pg.Database(t)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(context.Background(), Options{DSN: dsn, Key: testKey})
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	if err := Migrate(context.Background(), dsn); err != nil {
		t.Fatalf("Migrate on a migrated database: %v", err)
	}
}

// A role that may not create tables gets an error that says what to do;
// once the tables exist (store init), it works.
func TestOpenWithoutCreatePrivilege(t *testing.T) {
	dsn := pg.Database(t)
	c := sqlConn(t, dsn)
	execSQL(t, c, `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'proxy_user') THEN CREATE ROLE proxy_user LOGIN; END IF;
	END $$`)
	execSQL(t, c, `REVOKE CREATE ON SCHEMA public FROM PUBLIC`)
	userDSN := strings.Replace(dsn, "postgres@", "proxy_user@", 1)
	_, err := Open(context.Background(), Options{DSN: userDSN, Key: testKey})
	if err == nil || !strings.Contains(err.Error(), "anaplan-proxy store-init") {
		t.Fatalf("Open without CREATE: %v", err)
	}
	if err := Migrate(context.Background(), dsn); err != nil {
		t.Fatal(err)
	}
	execSQL(t, c, `GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO proxy_user`)
	execSQL(t, c, `GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO proxy_user`)
	s := openStore(t, userDSN)
	mustPut(t, s, session("user"))
	l := mustAcquire(t, s, "host-a")
	mustBegin(t, s, l, mustLoad(t, s).Version, time.Minute)
}

func TestObserve(t *testing.T) {
	var mu sync.Mutex
	var ops []string
	s := openStore(t, pg.Database(t), withObserve(func(op string, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		ops = append(ops, fmt.Sprintf("%s:%v", op, err != nil))
	}))
	ctx := context.Background()
	rec := mustPut(t, s, session("obs"))
	l := mustAcquire(t, s, "host-a")
	begun := mustBegin(t, s, l, rec.Version, time.Hour)
	s.MarkUncertain(ctx, l, *begun.Flight)
	s.Finish(ctx, *begun.Flight, session("obs2"))
	s.Load(ctx)
	s.Release(ctx, l)
	mu.Lock()
	defer mu.Unlock()
	want := []string{"put:false", "acquire:false", "begin:false", "mark_uncertain:true", "finish:false", "load:false", "release:false"}
	if !reflect.DeepEqual(ops, want) {
		t.Fatalf("observed %v, want %v", ops, want)
	}
}
