package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// sessionRow reads the stored session row's version and sealed session.
func (h *haEnv) sessionRow(conn *pgx.Conn) (version int64, sealed []byte) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.QueryRow(ctx, `SELECT version, sealed FROM anaplan_proxy_session WHERE name = 'default'`).Scan(&version, &sealed); err != nil {
		h.t.Fatalf("reading the session row: %v", err)
	}
	return version, sealed
}

// Sealing: the sealed session of an older version, copied into the
// current row (whose version is kept), is refused by `status` and by a
// serve starting on it, with an error that says to log in; its refresh
// token, long rotated, is never sent. A new login replaces it.
func TestHARowFromAnOlderVersionIsRefused(t *testing.T) {
	t.Parallel()
	h := newHAEnv(t, anaplantest.Options{AccessTokenLifetime: 2 * time.Second}, 1, 500*time.Millisecond, "")
	h.login()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	oldVersion, oldSealed := h.sessionRow(conn)

	d := h.serveInstance(0)
	if !waitFor(func() bool { return h.fake.Refreshes() >= 2 }) {
		t.Fatalf("no refreshes\nlogs:\n%s", d.logs)
	}
	d.stop(t)
	version, _ := h.sessionRow(conn)
	if version == oldVersion {
		t.Fatal("the row's version did not change with the refreshes: the test proves nothing")
	}
	if _, err := conn.Exec(ctx, `UPDATE anaplan_proxy_session SET sealed = $1 WHERE name = 'default'`, oldSealed); err != nil {
		t.Fatal(err)
	}
	refreshes := h.fake.Refreshes()

	want := []string{fmt.Sprintf("record version %d", version), "cannot be opened", "`anaplan-proxy login`"}
	code, out, errOut := h.command("status")
	if code != statusError {
		t.Errorf("status on the copied row: exit %d, want %d\n%s%s", code, statusError, out, errOut)
	}
	code, _, serveErr := h.command("serve")
	if code == 0 {
		t.Errorf("serve started on the copied row")
	}
	for what, msg := range map[string]string{"status": errOut, "serve": serveErr} {
		for _, w := range want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s on the copied row says %q: want %q in it", what, msg, w)
			}
		}
	}
	if n := h.fake.Refreshes(); n != refreshes {
		t.Errorf("%d refreshes after the row was copied, want none", n-refreshes)
	}
	h.assertNoReplay("after the copied row was read")

	h.login()
	if code, out, errOut := h.command("status"); code != statusUsable {
		t.Errorf("status after a new login: exit %d, want %d\n%s%s", code, statusUsable, out, errOut)
	}
	h.assertNoSecrets()
}
