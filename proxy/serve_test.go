package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
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

// TestRefusedRequestPipelinedBehindAWaitingOne: a request that the framing
// checks refuse, pipelined behind one that waits for its answer, does not
// cut the waiting one short: it gets its answer, then the refusal follows
// and the connection ends.
func TestRefusedRequestPipelinedBehindAWaitingOne(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	release := make(chan struct{})
	up.holdPath(t, "/2/0/tasks/slow", nil, release)
	s := startServed(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	conn := intercepted(t, s.addr, s.ca, up.hostport)
	before := len(up.requests())
	// DELETE goes on the shared transport, whose requests the client
	// connection is watched for at once.
	if _, err := io.WriteString(conn, "DELETE /2/0/tasks/slow HTTP/1.1\r\nHost: "+up.hostport+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the upstream to get the first request", func() bool { return len(up.requests()) > before })
	// Sent while the first request waits, after it was read: the watch
	// of the client connection reads it.
	bad := "POST /x HTTP/1.1\r\nHost: " + up.hostport + "\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx"
	if _, err := io.WriteString(conn, bad); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the watch to meet the refused request", func() bool {
		s.p.mu.Lock()
		defer s.p.mu.Unlock()
		for c := range s.p.interceptConns {
			if c.RefusalPending() {
				return true
			}
		}
		return false
	})
	close(release)
	br := bufio.NewReader(conn)
	first, err := http.ReadResponse(br, &http.Request{Method: http.MethodDelete})
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, first); first.StatusCode != http.StatusOK || body != "done" {
		t.Fatalf("first answer %d %q, want 200 done", first.StatusCode, body)
	}
	second, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to the refused request: %v", err)
	}
	body := readBody(t, second)
	if second.StatusCode != http.StatusBadRequest {
		t.Fatalf("second answer %d %q, want 400", second.StatusCode, body)
	}
	mustContain(t, "body", body, "several Content-Length headers that differ")
	mustContain(t, "Proxy-Status", second.Header.Get("Proxy-Status"), "error=http_request_error")
	if _, err := br.ReadByte(); err == nil {
		t.Error("the connection stayed open after the refusal")
	}
}
