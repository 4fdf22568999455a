package pgstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/internal/pgtest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/testutil"
)

var pg pgtest.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	if err := pg.Close(); err != nil {
		println("pgstore tests:", err.Error())
	}
	os.Exit(code)
}

// testKey is the sealing key of the tests' stores.
var testKey = bytes.Repeat([]byte{0x5a}, KeySize)

type storeOpt func(*Options)

func withName(n string) storeOpt           { return func(o *Options) { o.SessionName = n } }
func withLease(d time.Duration) storeOpt   { return func(o *Options) { o.Lease = d } }
func withKey(k []byte) storeOpt            { return func(o *Options) { o.Key = k } }
func withTimeout(d time.Duration) storeOpt { return func(o *Options) { o.Timeout = d } }
func withLogs(w io.Writer) storeOpt {
	return func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(w, nil)) }
}
func withObserve(f func(string, time.Duration, error)) storeOpt {
	return func(o *Options) { o.Observe = f }
}

// openStore opens a Store on dsn, closed when t ends.
func openStore(t testing.TB, dsn string, opts ...storeOpt) *Store {
	t.Helper()
	o := Options{DSN: dsn, Key: testKey, Lease: 10 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// session returns a session whose tokens carry tag, so that each test's
// tokens are distinct and can be searched for.
func session(tag string) *auth.Session {
	now := time.Now().UTC().Truncate(time.Second)
	return &auth.Session{
		Version:              1,
		ClientID:             "client-" + tag,
		TokenURL:             "https://us1a.app.anaplan.com/oauth/token",
		AccessToken:          "access-token-" + tag + "-4f1c9e",
		TokenType:            "Bearer",
		Expiry:               now.Add(35 * time.Minute),
		RefreshToken:         "refresh-token-" + tag + "-8d2b7a",
		IDToken:              "id-token-" + tag + "-c35e10",
		LoggedInAt:           now,
		RefreshTokenIssuedAt: now,
	}
}

func mustPut(t testing.TB, s *Store, sess *auth.Session) auth.Record {
	t.Helper()
	rec, err := s.Put(context.Background(), sess)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return rec
}

func mustLoad(t testing.TB, s *Store) auth.Record {
	t.Helper()
	rec, err := s.Load(context.Background())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return rec
}

func mustAcquire(t testing.TB, s *Store, holder string) auth.Lease {
	t.Helper()
	l, err := s.Acquire(context.Background(), holder)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", holder, err)
	}
	return l
}

func mustBegin(t testing.TB, s *Store, l auth.Lease, version int64, timeout time.Duration) auth.Record {
	t.Helper()
	rec, err := s.Begin(context.Background(), l, version, timeout)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	return rec
}

// sqlConn is a plain connection for tests that tamper with rows.
func sqlConn(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func execSQL(t testing.TB, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// eventually polls cond every 10 ms until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logs is a capture of a store's log output.
func logs() *testutil.Buffer { return &testutil.Buffer{} }

// isConflictOrFenced reports the errors that promise nothing was written.
func isConflictOrFenced(err error) bool {
	return errors.Is(err, auth.ErrConflict) || errors.Is(err, auth.ErrFenced)
}
