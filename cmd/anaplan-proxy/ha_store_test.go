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

// login, status and logout on a shared store: a login with instance 1's
// configuration is taken up by instance 0; with the daemons stopped,
// status reads the session from the store and names it (never with the
// database password); a logout logs both instances out.
func TestHALoginStatusLogoutOnSharedStore(t *testing.T) {
	t.Parallel()
	// The test server trusts every connection; the password is there to
	// be kept out of every output.
	const password = "pg-secret-7f3a"
	dsn := sharedPG.Database(t)
	if !strings.Contains(dsn, "//postgres@") {
		t.Fatalf("unexpected DSN %s", dsn)
	}
	dsn = strings.Replace(dsn, "//postgres@", "//postgres:"+password+"@", 1)
	h := newHAEnv(t, anaplantest.Options{}, 2, time.Second, dsn)
	ds := []*daemon{h.serveInstance(0), h.serveInstance(1)}
	for _, d := range ds {
		d.awaitStatus(t, 10*time.Second, "logged_out", func(st sessionStatus) bool { return st.State == "logged_out" })
	}

	h.configPath = h.configs[1]
	h.login()
	h.configPath = h.configs[0]
	h.writeCA()
	for _, d := range ds {
		d.awaitReady(t, 10*time.Second)
		h.awaitServesNewest(t, d, 10*time.Second)
		if st := d.haStatus(t); !strings.HasPrefix(st.Store, "postgres 127.0.0.1:") || strings.Contains(st.Store, password) {
			t.Errorf("/status names the store %q: want postgres, host and port, no password", st.Store)
		}
	}

	for _, d := range ds {
		d.stop(t)
	}
	code, out, errOut := h.command("status")
	srv := sharedPG.Server(t)
	for _, w := range []string{"state:               valid", "source:              store (postgres " + srv.Addr() + "/", `session "default"`} {
		if !strings.Contains(out, w) {
			t.Errorf("status with the daemons stopped lacks %q:\n%s", w, out)
		}
	}
	if code != statusUsable {
		t.Errorf("status with the daemons stopped: exit %d, want %d\n%s%s", code, statusUsable, out, errOut)
	}

	ds = []*daemon{h.serveInstance(0), h.serveInstance(1)}
	for _, d := range ds {
		d.awaitReady(t, 10*time.Second)
	}
	h.configPath = h.configs[1]
	if code, out, errOut := h.command("logout"); code != 0 {
		t.Fatalf("logout: exit %d\n%s%s", code, out, errOut)
	}
	h.configPath = h.configs[0]
	for i, d := range ds {
		d.awaitStatus(t, 10*time.Second, fmt.Sprintf("instance %d logged_out", i), func(st sessionStatus) bool { return st.State == "logged_out" })
	}
	if code, out, errOut := h.command("status"); code != statusLoginRequired {
		t.Errorf("status after logout: exit %d, want %d\n%s%s", code, statusLoginRequired, out, errOut)
	}
	for _, d := range ds {
		d.stop(t)
	}
	for i, l := range h.logs {
		if strings.Contains(l.String(), password) {
			t.Errorf("output %d holds the database password:\n%s", i, l)
		}
	}
	h.assertNoSecrets()
}
