package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/bench/internal/benchtls"
)

// startRelay runs a relay in front of an HTTPS test server and returns the
// server's URL, the relay's address and a client that goes through it.
func startRelay(t *testing.T, h http.Handler) (upstreamURL, relayAddr string, client *http.Client, r *relay) {
	t.Helper()
	upCA, err := benchtls.NewCA("upstream")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := upCA.Leaf("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewUnstartedServer(h)
	up.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	up.StartTLS()
	t.Cleanup(up.Close)
	upURL, _ := url.Parse(up.URL)
	upstreamURL = "https://localhost:" + upURL.Port()

	roots, err := poolOf(upCA)
	if err != nil {
		t.Fatal(err)
	}
	relayCA, err := benchtls.NewCA("relay")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r = newRelay(relayCA, roots, slog.New(slog.DiscardHandler))
	served := make(chan error, 1)
	go func() { served <- r.serve(ln) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-served; err == nil {
			t.Error("serve returned nil after its listener closed")
		}
		r.closeAll()
	})

	clientRoots, err := poolOf(relayCA)
	if err != nil {
		t.Fatal(err)
	}
	proxyURL := &url.URL{Scheme: "http", Host: ln.Addr().String()}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: clientRoots}}
	t.Cleanup(tr.CloseIdleConnections)
	return upstreamURL, ln.Addr().String(), &http.Client{Transport: tr, Timeout: 10 * time.Second}, r
}

func poolOf(ca *benchtls.CA) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(ca.CertPEM()) {
		return nil, errors.New("CA PEM not accepted")
	}
	return p, nil
}

func TestRelayCarriesRequestsAndBodiesUnchanged(t *testing.T) {
	var gotAuth []string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = append(gotAuth, r.Header.Get("Authorization"))
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, n)
	})
	upstream, _, client, _ := startRelay(t, h)
	tests := []struct {
		method, path, body, want string
	}{
		{"GET", "/small", "", "GET /small 0"},
		{"PUT", "/upload", strings.Repeat("x", 1<<20), "PUT /upload 1048576"},
		{"GET", "/again", "", "GET /again 0"},
	}
	for _, tt := range tests {
		req, err := http.NewRequest(tt.method, upstream+tt.path, strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != tt.want {
			t.Errorf("%s %s: body %q, want %q", tt.method, tt.path, b, tt.want)
		}
	}
	for _, a := range gotAuth {
		if a != "" {
			t.Errorf("the relay added Authorization %q; it must not touch requests", a)
		}
	}
}

func TestRelayAnswersOnlyConnect(t *testing.T) {
	_, relayAddr, _, _ := startRelay(t, http.NotFoundHandler())
	tests := []struct {
		request string
		status  int
	}{
		{"GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\n\r\n", http.StatusMethodNotAllowed},
		{"CONNECT localhost HTTP/1.1\r\nHost: localhost\r\n\r\n", http.StatusBadRequest},
	}
	for _, tt := range tests {
		c, err := net.Dial("tcp", relayAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, tt.request)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatalf("%q: %v", tt.request, err)
		}
		if resp.StatusCode != tt.status {
			t.Errorf("%q: status %d, want %d", tt.request, resp.StatusCode, tt.status)
		}
	}
}

func TestRelaySignsOneLeafPerHost(t *testing.T) {
	ca, err := benchtls.NewCA("relay")
	if err != nil {
		t.Fatal(err)
	}
	r := newRelay(ca, x509.NewCertPool(), slog.New(slog.DiscardHandler))
	a, err := r.leaf("localhost")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := r.leaf("localhost")
	c, _ := r.leaf("127.0.0.1")
	if a != b {
		t.Error("a second handshake for the same host got a new leaf")
	}
	if a == c {
		t.Error("two hosts share one leaf")
	}
}

func TestCloseAllEndsOpenTunnels(t *testing.T) {
	upstream, relayAddr, _, r := startRelay(t, http.NotFoundHandler())
	u, _ := url.Parse(upstream)
	c, err := net.Dial("tcp", relayAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.Host, u.Host)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	// The tunnel now waits for a TLS handshake that never comes; shutting
	// the relay down must end it rather than wait.
	done := make(chan struct{})
	go func() {
		r.closeAll()
		close(done)
	}()
	_, err = br.ReadByte()
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("reading from a tunnel after closeAll: %v, want the connection closed", err)
	}
	<-done
}
