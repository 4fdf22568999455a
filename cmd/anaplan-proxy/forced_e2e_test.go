package main

import (
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// A script cannot make the proxy refresh at will (an outside review found that six
// requests 1.2 s apart to a path that the API answers with 401 made six
// refreshes, each rotating and writing the refresh token). The first 401
// forces one refresh and a replay; the token that refresh brought is not
// refreshed again when it is refused too, and every 401 reaches curl.
func TestForcedRefreshCannotBeRepeatedByAClient(t *testing.T) {
	t.Parallel()
	requireCurl(t)
	e := newEnv(t, anaplantest.Options{AccessTokenLifetime: time.Hour})
	e.login()
	d := e.serve()
	d.awaitReady(t, 15*time.Second)
	before := e.fake.Refreshes()
	for i := range 6 {
		if i > 0 {
			<-time.After(1200 * time.Millisecond)
		}
		exit, connect, code, body := e.curl(d, e.fake.APIURL()+"/unauthorized")
		if exit != 0 || connect != "200" || code != "401" {
			t.Fatalf("request %d: exit %d, CONNECT %s, HTTP %s: %s", i+1, exit, connect, code, body)
		}
	}
	if n := e.fake.Refreshes() - before; n != 1 {
		t.Errorf("six 401s made %d refreshes, want 1", n)
	}
	_, metrics := d.admin(t, "/metrics")
	for _, want := range []string{`anaplan_proxy_forced_refreshes_total{result="refreshed"} 1`, `anaplan_proxy_forced_refreshes_total{result="suppressed"} 5`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// A request the API accepts still works with the current token.
	if exit, _, code, body := e.curl(d, e.fake.APIURL()+"/2/0/users/me"); exit != 0 || code != "200" {
		t.Errorf("a good request after the 401s: exit %d, HTTP %s: %s", exit, code, body)
	}
	d.stop(t)
	e.assertNoSecrets()
}
