package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestEarlyAnswerDuringUpload: an upstream that refuses an upload without
// reading it is heard while the client is still sending, for a body held
// for a replay and for one streamed, whether the upstream then closes the
// connection or holds it without reading. The client gets the refusal,
// and the connection, mid-body, ends after it.
func TestEarlyAnswerDuringUpload(t *testing.T) {
	const answer = "HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\ntoo large"
	const big = 32 << 20 // far more than the socket buffers between client and upstream hold
	bodies := []struct {
		name   string
		fields string
		body   func() []byte
		// streamed: sent as it arrives, not held for a replay first.
		streamed bool
	}{
		{"held for a replay", fmt.Sprintf("Content-Length: %d\r\n", 200<<10), func() []byte { return patternBytes(200 << 10) }, false},
		{"streamed", fmt.Sprintf("Content-Length: %d\r\n", big), func() []byte { return patternBytes(big) }, true},
		{"chunked", "Transfer-Encoding: chunked\r\n", func() []byte { return []byte(encodeChunked(patternBytes(big), 64<<10)) }, true},
	}
	for _, holds := range []bool{false, true} {
		for _, tc := range bodies {
			t.Run(fmt.Sprintf("%s, upstream holds %v", tc.name, holds), func(t *testing.T) {
				pki := newTestPKI(t)
				hostport := refusingUpstream(t, pki, answer, holds)
				h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool})
				c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hostport)
				// A body held for a replay is read whole before it is sent.
				// One that streams is sent until the client's writes block,
				// while the client waits for the answer: a proxy that only
				// listens once the whole body is sent never answers.
				sent := upload(c, hostport, tc.fields, tc.body())
				resp, got := c.read(http.MethodPut)
				if resp.StatusCode != http.StatusRequestEntityTooLarge || got != "too large" {
					t.Fatalf("got %d %q, want the upstream's 413", resp.StatusCode, got)
				}
				if tc.streamed {
					c.expectEnd(true)
				}
				<-sent // ends with the connection, if not before
			})
		}
	}
}

// upload sends a PUT with the given framing fields and body on c, on
// another goroutine, and returns the outcome of the write.
func upload(c *rawConn, hostport, fields string, body []byte) <-chan error {
	sent := make(chan error, 1)
	go func() {
		_, err := fmt.Fprintf(c.conn, "PUT /2/0/files/1/chunks/0 HTTP/1.1\r\nHost: %s\r\n%s\r\n%s", hostport, fields, body)
		sent <- err
	}()
	return sent
}

// refusingUpstream is a TLS origin that answers every request with answer
// without reading its body, then closes the connection or, if holds, keeps
// it open without reading until the test ends. It reads through a small
// socket buffer, so that a sender that waits for it stalls soon.
func refusingUpstream(t *testing.T, pki *testPKI, answer string, holds bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(done)
		_ = ln.Close()
		wg.Wait()
	})
	cfg := &tls.Config{Certificates: []tls.Certificate{pki.serverCert(t)}}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			_ = raw.(*net.TCPConn).SetReadBuffer(4 << 10)
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn := tls.Server(raw, cfg)
				defer conn.Close()
				if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
					return
				}
				if _, err := io.WriteString(conn, answer); err != nil || !holds {
					return
				}
				<-done
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return "localhost:" + port
}

// TestUploadAvoidsAClosedUpstreamConnection: a request that may not be
// sent twice is not sent on a kept-alive upstream connection that the
// upstream has closed meanwhile, where it would fail; it goes on a new
// one, once.
func TestUploadAvoidsAClosedUpstreamConnection(t *testing.T) {
	pki := newTestPKI(t)
	var posts int
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodPost {
			posts++
		}
		fmt.Fprintf(w, "%s %d", r.Method, n)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.serverCert(t)}}
	// Kept-alive connections end after 100 ms without a request.
	srv.Config.IdleTimeout = 100 * time.Millisecond
	closed := make(chan struct{}, 8)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	hostport := "localhost:" + port

	h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool})
	c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hostport)
	for i, method := range []string{http.MethodGet, http.MethodPost, http.MethodPost} {
		if i > 0 {
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream kept its idle connection")
			}
		}
		body := strings.Repeat("b", 10*i)
		c.send(fmt.Sprintf("%s /2/0/imports/1/tasks HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s", method, hostport, len(body), body))
		resp, got := c.read(method)
		if want := fmt.Sprintf("%s %d", method, len(body)); resp.StatusCode != http.StatusOK || got != want {
			t.Fatalf("request %d: %d %q, want 200 %q", i+1, resp.StatusCode, got, want)
		}
	}
	if posts != 2 {
		t.Errorf("the upstream saw %d POSTs, want 2", posts)
	}
}

// TestStalledUploadEnds: an upstream that stops taking a request body,
// without answering or closing, does not hold the upload (and the client)
// forever: after the stall limit the client gets a 504 that says why.
func TestStalledUploadEnds(t *testing.T) {
	pki := newTestPKI(t)
	hostport := refusingUpstream(t, pki, "", true)
	h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool})
	h.p.client.UploadStall = 300 * time.Millisecond
	c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hostport)
	const size = 32 << 20
	sent := upload(c, hostport, fmt.Sprintf("Content-Length: %d\r\n", size), patternBytes(size))
	resp, body := c.read(http.MethodPut)
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(body, "the upstream took none of the request body for 300ms") {
		t.Fatalf("got %d %q, want a 504 that names the stalled upload", resp.StatusCode, body)
	}
	if ps := resp.Header.Get("Proxy-Status"); !strings.Contains(ps, "connection_timeout") {
		t.Errorf("Proxy-Status %q, want error=connection_timeout", ps)
	}
	c.expectEnd(true)
	<-sent
}

// TestShutdownDuringStalledUpload: Shutdown does not wait on an upload
// that an upstream has stopped taking, and leaves no goroutine behind.
func TestShutdownDuringStalledUpload(t *testing.T) {
	pki := newTestPKI(t)
	hostport := refusingUpstream(t, pki, "", true)
	h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool})
	before := runtime.NumGoroutine()
	c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hostport)
	const size = 32 << 20
	sent := upload(c, hostport, fmt.Sprintf("Content-Length: %d\r\n", size), patternBytes(size))
	eventually(t, 10*time.Second, "the upload to be under way", func() bool { return h.obs.snapshot().inFlight == 1 })
	h.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_ = h.p.Shutdown(ctx)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	_ = c.conn.Close()
	<-sent
	eventually(t, 10*time.Second, fmt.Sprintf("goroutines back to %d", before), func() bool {
		return runtime.NumGoroutine() <= before
	})
	if n := h.obs.snapshot().inFlight; n != 0 {
		t.Errorf("%d requests still in flight", n)
	}
}
