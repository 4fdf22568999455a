package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
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

// pgCutter relays TCP connections to PostgreSQL and cuts a connection in
// the middle of a write transaction, found by reading the protocol
// messages the client sends (the statements are prepared once per
// connection, so their text is seen only at Parse). It cuts at one point
// after another (cutPoints), one cut per gap.
type pgCutter struct {
	ln     net.Listener
	target string
	gap    time.Duration
	wg     sync.WaitGroup

	mu     sync.Mutex // guards the fields below
	conns  map[net.Conn]bool
	on     bool      // cutting; off until start
	next   int       // index into cutPoints of the next cut
	notTil time.Time // no cut before this
	cuts   map[string]int
}

// The points at which pgCutter cuts, in turn: right after the session
// row is locked (by any write), and before COMMIT reaches the server or
// after it, before its answer, of an intent write (begin) and of a result
// write (finish).
var cutPoints = []string{"row_locked", "before_commit/begin", "after_commit/begin", "before_commit/finish", "after_commit/finish"}

func newPGCutter(t *testing.T, target string, gap time.Duration) *pgCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &pgCutter{ln: ln, target: target, gap: gap, conns: map[net.Conn]bool{}, cuts: map[string]int{}}
	r.wg.Go(r.accept)
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// dsn rewrites a DSN of the test server to go through the relay.
func (r *pgCutter) dsn(dsn string) string {
	return strings.Replace(dsn, r.target, r.ln.Addr().String(), 1)
}

// start makes the relay cut from now on.
func (r *pgCutter) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = true
}

// counts returns the cuts made so far by point.
func (r *pgCutter) counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[string]int{}
	for k, v := range r.cuts {
		m[k] = v
	}
	return m
}

// take reports whether to cut at point now, and counts the cut.
func (r *pgCutter) take(point string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if !r.on || now.Before(r.notTil) || cutPoints[r.next%len(cutPoints)] != point {
		return false
	}
	r.next++
	r.notTil = now.Add(r.gap)
	r.cuts[point]++
	return true
}

func (r *pgCutter) track(c net.Conn, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.conns[c] = true
	} else {
		delete(r.conns, c)
	}
}

func (r *pgCutter) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		r.track(c, true)
		r.track(u, true)
		cut := func() {
			c.Close()
			u.Close()
			r.track(c, false)
			r.track(u, false)
		}
		r.wg.Go(func() {
			defer cut()
			io.Copy(c, u)
		})
		r.wg.Go(func() {
			defer cut()
			r.relay(c, u)
		})
	}
}

// relay forwards the client's messages one by one and returns where it
// cuts (or the connection ends).
func (r *pgCutter) relay(c, u net.Conn) {
	br := bufio.NewReader(c)
	prepared := map[string]string{} // statement name → what it does
	startup := true                 // before the startup message, messages have no type byte
	cutAtSync := false
	op := "" // the write whose update this connection last sent: begin or finish
	for {
		msg, err := readPGMessage(br, startup)
		if err != nil {
			return
		}
		if startup {
			// Protocol 3.0's startup message; SSL and GSS requests and
			// cancel requests come before it or alone.
			startup = binary.BigEndian.Uint32(msg[4:8]) != 3<<16
			if _, err := u.Write(msg); err != nil {
				return
			}
			continue
		}
		after := false
		switch body := msg[5:]; msg[0] {
		case 'P': // Parse: name, query
			name, rest := pgString(body)
			query, _ := pgString(rest)
			prepared[name] = statementKind(query)
		case 'B': // Bind: portal, statement, parameters
			_, rest := pgString(body)
			name, rest := pgString(rest)
			switch prepared[name] {
			case "lock":
				cutAtSync = r.take("row_locked")
				op = ""
			case "update":
				// The update's fourth parameter is the in-flight fence:
				// set by an intent write, NULL in a result write.
				op = "begin"
				if isNull(bindParam(rest, 3)) {
					op = "finish"
				}
			}
		case 'Q': // a simple query: pgx sends COMMIT so
			query, _ := pgString(body)
			if statementKind(query) == "commit" && op != "" {
				if r.take("before_commit/" + op) {
					return
				}
				after = r.take("after_commit/" + op)
			}
		case 'S': // Sync: the server runs what came before it
			after = cutAtSync
		}
		if _, err := u.Write(msg); err != nil {
			return
		}
		if after {
			return
		}
	}
}

// bindParam returns parameter i of a Bind message's rest after the
// statement name (nil for NULL), or an empty non-nil slice when the
// message is too short.
func bindParam(b []byte, i int) []byte {
	short := []byte{}
	if len(b) < 2 {
		return short
	}
	nf := int(binary.BigEndian.Uint16(b))
	b = b[2+2*nf:]
	if len(b) < 2 {
		return short
	}
	np := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for j := 0; j < np && len(b) >= 4; j++ {
		n := int(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		var p []byte
		if n >= 0 {
			if n > len(b) {
				return short
			}
			p, b = b[:n], b[n:]
		}
		if j == i {
			return p
		}
	}
	return short
}

func isNull(p []byte) bool { return p == nil }

// readPGMessage reads one frontend message: a type byte (none before
// startup) and a length that counts itself.
func readPGMessage(br *bufio.Reader, untyped bool) ([]byte, error) {
	head := 5
	if untyped {
		head = 4
	}
	msg := make([]byte, head)
	if _, err := io.ReadFull(br, msg); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(msg[head-4:]))
	if n < 4 || n > 64<<20 {
		return nil, fmt.Errorf("bad message length %d", n)
	}
	msg = append(msg, make([]byte, n-4)...)
	_, err := io.ReadFull(br, msg[head:])
	return msg, err
}

// pgString splits a NUL-terminated string off b.
func pgString(b []byte) (string, []byte) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return string(b), nil
	}
	return string(b[:i]), b[i+1:]
}

// statementKind names the statements the cutter looks for: the session
// row's lock and update, and COMMIT.
func statementKind(query string) string {
	switch {
	case strings.Contains(query, "FOR UPDATE"):
		return "lock"
	case strings.Contains(query, "UPDATE anaplan_proxy_session SET"):
		return "update"
	case strings.EqualFold(strings.TrimSpace(query), "commit"):
		return "commit"
	}
	return ""
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
	cutter := newPGCutter(t, srv.Addr(), 1200*time.Millisecond)
	dsn := cutter.dsn(sharedPG.Database(t))
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
	cutter.start()
	// A cut at each point.
	if !waitFor(func() bool {
		n := cutter.counts()
		for _, p := range cutPoints {
			if n[p] == 0 {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("the relay did not cut at each point (%v)\nlogs:\n%s", cutter.counts(), ds[0].logs)
	}
	for i, d := range ds {
		d.awaitStatus(t, 10*time.Second, fmt.Sprintf("instance %d valid", i), func(st sessionStatus) bool { return st.State == "valid" })
	}
	l.halt()
	t.Logf("cuts %v, %d refreshes, %d requests", cutter.counts(), h.fake.Refreshes()-before, l.ok.Load())
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
