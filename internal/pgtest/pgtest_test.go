package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var shared Shared

func TestMain(m *testing.M) {
	code := m.Run()
	if err := shared.Close(); err != nil {
		println("pgtest:", err.Error())
	}
	os.Exit(code)
}

func query(t *testing.T, dsn, sql string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	var s string
	err = c.QueryRow(ctx, sql).Scan(&s)
	return s, err
}

// Each test's database is its own: a table made in one is absent from
// another, and the server speaks on loopback with trust authentication.
func TestSharedDatabasesAreSeparate(t *testing.T) {
	a := shared.Database(t)
	b := shared.Database(t)
	if a == b {
		t.Fatalf("two databases got one DSN %s", a)
	}
	if !strings.Contains(a, "@127.0.0.1:") {
		t.Errorf("DSN %s is not on 127.0.0.1", a)
	}
	ctx := context.Background()
	c, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	if got, err := query(t, b, "SELECT coalesce(to_regclass('only_in_a')::text, 'absent')"); err != nil || got != "absent" {
		t.Fatalf("table of database a seen in database b: %q, %v", got, err)
	}
	if got, err := query(t, a, "SELECT current_setting('fsync')"); err != nil || got != "off" {
		t.Errorf("fsync = %q, %v; want off", got, err)
	}
}

// Stop makes the server refuse connections; Start brings it back on the
// same address with the data kept, and Restart does both.
func TestStopStartRestart(t *testing.T) {
	s := New(t)
	dsn := s.CreateDatabase(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE kept (x text); INSERT INTO kept VALUES ('before stop')"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := query(t, dsn, "SELECT 'up'"); err == nil {
		t.Fatal("a stopped server answered")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if got, err := query(t, dsn, "SELECT x FROM kept"); err != nil || got != "before stop" {
		t.Fatalf("after start: %q, %v", got, err)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if got, err := query(t, dsn, "SELECT x FROM kept"); err != nil || got != "before stop" {
		t.Fatalf("after restart: %q, %v", got, err)
	}
}

// Close removes everything the server wrote.
func TestCloseRemovesDirectory(t *testing.T) {
	s, err := Start()
	if err != nil {
		skipOrFail(t, err)
	}
	dir := s.dir
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after Close: %v", dir, err)
	}
	if _, err := query(t, s.DSN("postgres"), "SELECT 'up'"); err == nil {
		t.Fatal("a closed server answered")
	}
}

// recordTB notes what skipOrFail asks of a test.
type recordTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordTB) Helper()                        {}
func (r *recordTB) Skipf(format string, a ...any)  { r.skipped = fmt.Sprintf(format, a...) }
func (r *recordTB) Fatalf(format string, a ...any) { r.failed = fmt.Sprintf(format, a...) }

// Without PostgreSQL a developer's test is skipped with the reason, and a
// CI run fails; other start errors always fail.
func TestMissingBinariesSkipOrFail(t *testing.T) {
	missing := fmt.Errorf("%w on PATH", ErrNoBinaries)
	for _, tc := range []struct {
		ci       string
		err      error
		wantSkip bool
	}{
		{"", missing, true},
		{"true", missing, false},
		{"", fmt.Errorf("initdb: exit status 1"), false},
	} {
		t.Run(fmt.Sprintf("CI=%q/%v", tc.ci, tc.err), func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recordTB{TB: t}
			skipOrFail(r, tc.err)
			if tc.wantSkip {
				if r.skipped == "" || r.failed != "" || !strings.Contains(r.skipped, "no PostgreSQL") {
					t.Fatalf("skipped %q, failed %q", r.skipped, r.failed)
				}
				return
			}
			if r.failed == "" || r.skipped != "" {
				t.Fatalf("skipped %q, failed %q; want a failure", r.skipped, r.failed)
			}
		})
	}
}
