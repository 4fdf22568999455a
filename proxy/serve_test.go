package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestClientRefusingTheCAIsExplained: a client that does not trust the
// proxy's CA fails its handshake; the proxy's log says what to do about it.
func TestClientRefusingTheCAIsExplained(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	s := startServed(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", up.hostport, up.hostport)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	host, _, _ := net.SplitHostPort(up.hostport)
	// Trusts the upstream's root, not the proxy's CA.
	tc := tls.Client(conn, &tls.Config{RootCAs: x509.NewCertPool(), ServerName: host})
	if err := tc.Handshake(); err == nil {
		t.Fatal("the handshake succeeded without trusting the proxy's CA")
	}
	want := "the client refused the proxy's certificate: make it trust the proxy's CA"
	eventually(t, 5*time.Second, "the warning in the log", func() bool {
		return strings.Contains(s.logs.String(), want)
	})
	line := ""
	for l := range strings.SplitSeq(s.logs.String(), "\n") {
		if strings.Contains(l, want) {
			line = l
		}
	}
	mustContain(t, "log line", line, `"level":"WARN"`)
	mustContain(t, "log line", line, up.hostport)
}
