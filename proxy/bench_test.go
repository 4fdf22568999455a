package proxy

import (
	"io"
	"net/http"
	"testing"
)

func BenchmarkPolicyDecide(b *testing.B) {
	pl, err := newPolicy(
		[]string{"api.anaplan.com", "*.api.anaplan.com", "ca1a.api.anaplan.com", "api.au1a.app2.anaplan.com", "api.cloudworks.anaplan.com", "audit.anaplan.com"},
		[]string{"auth.anaplan.com", "*.auth.anaplan.com", "us1a.app.anaplan.com"},
	)
	if err != nil {
		b.Fatal(err)
	}
	hosts := []string{"api.anaplan.com", "eu1.api.anaplan.com", "auth.anaplan.com", "example.com"}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		pl.decide(hosts[i%len(hosts)], 443)
	}
}

func BenchmarkLeafCacheHit(b *testing.B) {
	ca, err := LoadOrCreateCA(b.TempDir(), []string{"*.api.anaplan.com"})
	if err != nil {
		b.Fatal(err)
	}
	c := newLeafCache(leafCacheSize, ca.signLeaf, nil)
	if _, err := c.get("eu1.api.anaplan.com"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.get("eu1.api.anaplan.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkLeafSign(b *testing.B) {
	ca, err := LoadOrCreateCA(b.TempDir(), []string{"*.api.anaplan.com"})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := ca.signLeaf("eu1.api.anaplan.com", ca.cert.NotBefore.Add(leafBackdate)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInjectedRequest measures a whole request through the proxy on
// a kept-alive intercepted connection: header checks, injection, the
// upstream round trip and the copy back, on the fast path and, for
// comparison, the general way alone (what the engine does without the
// fast path).
func BenchmarkInjectedRequest(b *testing.B) {
	for _, way := range []struct {
		name        string
		generalOnly bool
	}{{"fast", false}, {"general", true}} {
		b.Run(way.name, func(b *testing.B) {
			pki := newTestPKI(b)
			up := startUpstream(b, pki)
			h := startProxy(b, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
			h.p.generalOnly = way.generalOnly
			c := h.client(b)
			url := "https://" + up.hostport + "/2/0/workspaces"
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}
