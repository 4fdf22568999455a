package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/pgtest"
)

// The database stops for 20 s while two instances serve a 30-second
// token, around the moment it is due for refresh. Requests go on with the
// valid token, both instances say degraded (and why) while they cannot
// refresh, and valid again once the database is back; no refresh token is
// sent twice.
func TestHADatabaseOutage(t *testing.T) {
	t.Parallel()
	const (
		lifetime = 30 * time.Second
		outage   = 20 * time.Second
	)
	srv := pgtest.New(t) // stopped and started by this test alone
	h := newHAEnv(t, anaplantest.Options{AccessTokenLifetime: lifetime}, 2, 500*time.Millisecond, srv.CreateDatabase(t))
	h.login()
	ds := []*daemon{h.serveInstance(0), h.serveInstance(1)}
	for _, d := range ds {
		d.awaitReady(t, 15*time.Second)
	}
	issued := ds[0].haStatus(t).AccessTokenExpiry.Add(-lifetime)
	h.writeCA()
	var cs []*http.Client
	for _, d := range ds {
		for range 3 {
			cs = append(cs, h.proxyClient(func() string { return d.proxyAddr }))
		}
	}
	l := startLoad(t, cs, apiTarget(h.env), 50*time.Millisecond)

	// From 4 s to 24 s of the token's life: the refresh due at about
	// 22.5 s finds no database; the token (handed out until about 29.4 s)
	// outlives the outage.
	<-time.After(time.Until(issued.Add(4 * time.Second)))
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	restart := issued.Add(4*time.Second + outage)
	t.Cleanup(func() { srv.Start() }) // a failed test leaves it running for its clean-up
	for i, d := range ds {
		st := d.awaitStatus(t, time.Until(restart), fmt.Sprintf("instance %d degraded", i), func(st sessionStatus) bool {
			return st.State == "degraded"
		})
		if !strings.Contains(st.LastError, srv.Addr()) {
			t.Errorf("instance %d: last_error %q does not name the database server %s", i, st.LastError, srv.Addr())
		}
		if !d.ready() {
			t.Errorf("instance %d: /readyz is not 200 while the access token is valid", i)
		}
	}
	<-time.After(time.Until(restart))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		d.awaitStatus(t, time.Until(issued.Add(lifetime)), fmt.Sprintf("instance %d valid once the database is back", i), func(st sessionStatus) bool {
			return st.State == "valid"
		})
	}
	l.halt()
	l.assertNoFailures(t)
	h.assertNoReplay("after the outage")
	if h.fake.Refreshes() < 1 {
		t.Error("no refresh after the outage")
	}
	for _, d := range ds {
		h.awaitServesNewest(t, d, 10*time.Second)
	}
	h.assertNoSecrets()
}

// cutPoints are where TestHADatabaseConnectionCuts cuts, in turn: right
// after the session row is locked (by any write), and before COMMIT
// reaches the server or after it, before its answer, of an intent write
// (begin) and of a result write (finish).
var cutPoints = []pgtest.Point{
	{Name: "row_locked", Mode: pgtest.CutAfter, Match: pgtest.Containing("FOR UPDATE")},
	commitOf("begin", pgtest.CutBefore),
	commitOf("begin", pgtest.CutAfter),
	commitOf("finish", pgtest.CutBefore),
	commitOf("finish", pgtest.CutAfter),
}

// commitOf is the COMMIT of a transaction that made an op write (begin or
// finish), cut before or after.
func commitOf(op string, mode pgtest.Mode) pgtest.Point {
	when := "before_commit/"
	if mode == pgtest.CutAfter {
		when = "after_commit/"
	}
	isCommit := pgtest.Exactly("commit")
	return pgtest.Point{Name: when + op, Mode: mode, Match: func(s pgtest.Statement) bool {
		return isCommit(s) && writeOf(s.Tx) == op
	}}
}

// writeOf names the write to the session row among a transaction's
// statements: begin for an intent write, whose update sets the in-flight
// fence (its fourth parameter), finish for a result write, whose update
// sets it NULL; "" for none.
func writeOf(tx []pgtest.Statement) string {
	op := ""
	for _, s := range tx {
		if strings.Contains(s.SQL, "UPDATE anaplan_proxy_session SET") && len(s.Params) > 3 {
			op = "begin"
			if s.Params[3] == nil {
				op = "finish"
			}
		}
	}
	return op
}

// Connections between the instances and PostgreSQL are cut in the middle
// of their refreshes' writes (with the row locked; before COMMIT and
// after COMMIT before its answer, of intent and of result writes), one cut
// every 1.2 s while 2-second tokens rotate. Requests never fail, no refresh token is sent twice, and each
// instance ends valid with the newest token.
func TestHADatabaseConnectionCuts(t *testing.T) {
	t.Parallel()
	const lifetime = 2 * time.Second
	srv := sharedPG.Server(t)
	cutter := pgtest.NewCutter(t, srv.Addr())
	dsn := cutter.DSN(sharedPG.Database(t))
	h := newHAEnv(t, anaplantest.Options{AccessTokenLifetime: lifetime}, 2, 500*time.Millisecond, dsn)
	h.login()
	ds := []*daemon{h.serveInstance(0), h.serveInstance(1)}
	for _, d := range ds {
		d.awaitReady(t, 15*time.Second)
	}
	h.writeCA()
	var cs []*http.Client
	for _, d := range ds {
		for range 3 {
			cs = append(cs, h.proxyClient(func() string { return d.proxyAddr }))
		}
	}
	l := startLoad(t, cs, apiTarget(h.env), 20*time.Millisecond)
	before := h.fake.Refreshes()
	cutter.Cycle(1200*time.Millisecond, cutPoints...)
	// A cut at each point.
	if !waitFor(func() bool {
		n := cutter.Counts()
		for _, p := range cutPoints {
			if n[p.Name] == 0 {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("the relay did not cut at each point (%v)\nlogs:\n%s", cutter.Counts(), ds[0].logs)
	}
	for i, d := range ds {
		d.awaitStatus(t, 10*time.Second, fmt.Sprintf("instance %d valid", i), func(st sessionStatus) bool { return st.State == "valid" })
	}
	l.halt()
	t.Logf("cuts %v, %d refreshes, %d requests", cutter.Counts(), h.fake.Refreshes()-before, l.ok.Load())
	l.assertNoFailures(t)
	h.assertNoReplay("after the cuts")
	if h.fake.Refreshes()-before < 3 {
		t.Errorf("%d refreshes during the cuts: the cuts did not meet refreshes", h.fake.Refreshes()-before)
	}
	// A COMMIT whose answer was lost was found written.
	resolved := false
	for _, d := range ds {
		resolved = resolved || strings.Contains(d.logs.String(), "store_commit_resolved")
	}
	if !resolved {
		t.Error("no instance logged store_commit_resolved after COMMIT answers were cut")
	}
	for _, d := range ds {
		h.awaitServesNewest(t, d, 10*time.Second)
	}
	h.assertNoSecrets()
}
