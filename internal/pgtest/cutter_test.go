package pgtest

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// cutterDB returns a Cutter in front of a database of its own holding
// table kv with the row ('a', 'before'), and the database's direct DSN.
func cutterDB(t *testing.T) (*Cutter, string) {
	t.Helper()
	dsn := shared.Database(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE TABLE kv (k text PRIMARY KEY, v text); INSERT INTO kv VALUES ('a', 'before')"); err != nil {
		t.Fatal(err)
	}
	return NewCutter(t, shared.Server(t).Addr()), dsn
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connecting through the cutter: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func valueOfA(t *testing.T, dsn string) string {
	t.Helper()
	v, err := query(t, dsn, "SELECT v FROM kv WHERE k = 'a'")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A statement cut before reaches no server: the row is unchanged. Cut
// after, the change is made (and committed) but the client only sees its
// connection break. This holds for a prepared statement run on its own,
// for one run in a transaction, and for a transaction's COMMIT.
func TestCutterBeforeAndAfter(t *testing.T) {
	update := "UPDATE kv SET v = $1 WHERE k = 'a'"
	for _, tc := range []struct {
		name  string
		point Point
		tx    bool
		want  string // the row after the cut
	}{
		{"update cut before", Point{"u", CutBefore, Containing("UPDATE kv")}, false, "before"},
		{"update cut after", Point{"u", CutAfter, Containing("UPDATE kv")}, false, "after"},
		{"update in a transaction cut after", Point{"u", CutAfter, Containing("UPDATE kv")}, true, "before"},
		{"commit cut before", Point{"c", CutBefore, Exactly("commit")}, true, "before"},
		{"commit cut after", Point{"c", CutAfter, Exactly("COMMIT;")}, true, "after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cut, dsn := cutterDB(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := connect(t, cut.DSN(dsn))
			// A statement before arming passes.
			if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			cut.Arm(tc.point)
			var err error
			if tc.tx {
				err = pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, update, "after")
					return err
				})
			} else {
				_, err = c.Exec(ctx, update, "after")
			}
			if err == nil {
				t.Fatal("the cut statement succeeded")
			}
			if !c.IsClosed() {
				t.Errorf("after %v the client's connection is still open", err)
			}
			if n := cut.Cuts(); n != 1 {
				t.Errorf("%d cuts, want 1", n)
			}
			if got := valueOfA(t, dsn); got != tc.want {
				t.Errorf("row is %q after the cut, want %q", got, tc.want)
			}
			// Armed once: a new connection goes through.
			c2 := connect(t, cut.DSN(dsn))
			if _, err := c2.Exec(ctx, update, "again"); err != nil {
				t.Fatalf("a statement after the one cut: %v", err)
			}
			if got := cut.Counts(); !maps.Equal(got, map[string]int{tc.point.Name: 1}) {
				t.Errorf("counts %v", got)
			}
		})
	}
}

// A point can look at the statements earlier in the same transaction and
// at their parameters: only the COMMIT of a transaction that wrote "x" is
// cut, and a statement run after a transaction ended sees none of it.
func TestCutterSeesTransaction(t *testing.T) {
	cut, dsn := cutterDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wroteX := func(s Statement) bool {
		return slices.ContainsFunc(s.Tx, func(e Statement) bool {
			return Containing("UPDATE kv")(e) && len(e.Params) == 1 && string(e.Params[0]) == "x"
		})
	}
	var mu sync.Mutex
	var seen []Statement // each statement matched against, guarded by mu
	cut.Arm(Point{"commit of x", CutBefore, func(s Statement) bool {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, s)
		return Exactly("commit")(s) && wroteX(s)
	}})
	c := connect(t, cut.DSN(dsn))
	write := func(v string) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "UPDATE kv SET v = $1 WHERE k = 'a'", v)
			return err
		})
	}
	if err := write("y"); err != nil {
		t.Fatalf("a transaction writing y: %v", err)
	}
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := write("x"); err == nil {
		t.Fatal("the transaction writing x was not cut")
	}
	if got := valueOfA(t, dsn); got != "y" {
		t.Errorf("row is %q, want y", got)
	}
	mu.Lock()
	defer mu.Unlock()
	// begin, update y, commit, SELECT 1, begin, update x, commit.
	if len(seen) != 7 {
		t.Fatalf("%d statements matched, want 7: %+v", len(seen), seen)
	}
	if tx := seen[3].Tx; len(tx) != 0 {
		t.Errorf("a statement outside a transaction saw %+v", tx)
	}
	if tx := seen[6].Tx; len(tx) != 2 || !Exactly("begin")(tx[0]) {
		t.Errorf("the COMMIT saw %+v, want begin and the update", tx)
	}
}

// Cycle cuts at its points in turn, over and over, only the point whose
// turn it is, and no two cuts within the gap.
func TestCutterCycle(t *testing.T) {
	cut, dsn := cutterDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	one := Point{"one", CutBefore, Exactly("SELECT 1")}
	two := Point{"two", CutAfter, Exactly("SELECT 2")}
	run := func(sql string) bool { // reports whether sql was cut
		t.Helper()
		c := connect(t, cut.DSN(dsn))
		_, err := c.Exec(ctx, sql)
		return err != nil
	}
	cut.Cycle(0, one, two)
	for i, step := range []struct {
		sql string
		cut bool
	}{
		{"SELECT 2", false}, // not its turn
		{"SELECT 1", true},
		{"SELECT 1", false},
		{"SELECT 2", true},
		{"SELECT 1", true}, // over again
	} {
		if got := run(step.sql); got != step.cut {
			t.Fatalf("step %d, %s: cut %v, want %v", i, step.sql, got, step.cut)
		}
	}
	if got := cut.Counts(); !maps.Equal(got, map[string]int{"one": 2, "two": 1}) {
		t.Errorf("counts %v", got)
	}

	cut.Cycle(time.Hour, one, two)
	if !run("SELECT 1") || run("SELECT 2") {
		t.Error("with an hour's gap, want the first point cut and the next one not")
	}
	if n := cut.Cuts(); n != 4 {
		t.Errorf("%d cuts, want 4", n)
	}
}

// A closed Cutter refuses connections and ends the open ones.
func TestCutterClose(t *testing.T) {
	cut, dsn := cutterDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := connect(t, cut.DSN(dsn))
	cut.Close()
	if _, err := c.Exec(ctx, "SELECT 1"); err == nil {
		t.Error("a connection open before Close still works")
	}
	if _, err := pgx.Connect(ctx, cut.DSN(dsn)); err == nil {
		t.Error("a closed cutter accepted a connection")
	}
	if cut.Cuts() != 0 {
		t.Errorf("Close counted %d cuts", cut.Cuts())
	}
}

// A client that asks for TLS if the server offers it is answered no by
// the Cutter and goes on in plain text.
func TestCutterDeclinesTLS(t *testing.T) {
	cut, dsn := cutterDB(t)
	prefer := strings.Replace(cut.DSN(dsn), "sslmode=disable", "sslmode=prefer", 1)
	if prefer == cut.DSN(dsn) {
		t.Fatalf("no sslmode in %s", dsn)
	}
	c := connect(t, prefer)
	var v string
	if err := c.QueryRow(context.Background(), "SELECT v FROM kv WHERE k = 'a'").Scan(&v); err != nil || v != "before" {
		t.Fatalf("through the cutter with sslmode=prefer: %q, %v", v, err)
	}
}
