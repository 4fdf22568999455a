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
