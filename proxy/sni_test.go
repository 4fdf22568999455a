package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"
)

// A client whose SNI names another host than its CONNECT target gets the
// target's certificate, never one for the SNI name, and a request for the
// SNI host inside that connection is refused without a token.
func TestSNIDifferentFromConnectTarget(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(h.ca.CertPEM())

	open := func(t *testing.T, cfg *tls.Config) (*tls.Conn, error) {
		t.Helper()
		conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", up.hostport, up.hostport)
		if resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		tc := tls.Client(conn, cfg)
		return tc, tc.Handshake()
	}

	t.Run("verifying client rejects the handshake", func(t *testing.T) {
		if _, err := open(t, &tls.Config{RootCAs: roots, ServerName: "evil.example.com"}); err == nil {
			t.Fatal("a certificate valid for evil.example.com was presented")
		}
	})
	t.Run("request for the SNI host is refused", func(t *testing.T) {
		before := len(up.requests())
		tc, err := open(t, &tls.Config{InsecureSkipVerify: true, ServerName: "evil.example.com"})
		if err != nil {
			t.Fatal(err)
		}
		leaf := tc.ConnectionState().PeerCertificates[0]
		if !slices.Equal(leaf.DNSNames, []string{"localhost"}) {
			t.Errorf("leaf names %v, want only the CONNECT target's", leaf.DNSNames)
		}
		fmt.Fprint(tc, "GET /2/0/users/me HTTP/1.1\r\nHost: evil.example.com\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d (%q), want 403", resp.StatusCode, body)
		}
		mustContain(t, "body", body, "differs from the CONNECT target")
		if n := len(up.requests()) - before; n != 0 {
			t.Errorf("the upstream saw %d requests", n)
		}
	})
}

// A 302 from an inject host to another host is handed to the client; a
// client that follows it reaches the other host only through a CONNECT of
// its own, which the policy refuses here: the other host sees nothing.
func TestClientFollowingRedirectCarriesNoToken(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	other := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		http.Redirect(w, r, "https://"+other.hostport+"/stolen", http.StatusFound)
		return true
	})
	t.Cleanup(func() { up.setHandler(nil) })
	c := h.client(t, pki.cert)
	c.CheckRedirect = nil // follow, as most clients do
	resp, err := c.Get("https://" + up.hostport + "/2/0/users/me")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("following the redirect succeeded with %d", resp.StatusCode)
	}
	mustContain(t, "error", err.Error(), "Forbidden")
	if n := len(other.requests()); n != 0 {
		t.Errorf("the other host saw %d requests", n)
	}
	if n := len(up.requests()); n != 1 {
		t.Errorf("the inject host saw %d requests, want 1 (the proxy does not follow)", n)
	}
}
