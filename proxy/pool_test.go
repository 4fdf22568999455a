package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawUpstream is a TLS origin that answers with the bytes its test writes,
// so that a test can send what no well-behaved server would. Each accepted
// connection gets a number, from 1; answer is called with it and each
// request read on it, on the connection's goroutine.
type rawUpstream struct {
	ln       net.Listener
	hostport string
	answer   func(conn int, req *http.Request, w io.Writer) (keep bool)
	opened   atomic.Int32
	closed   atomic.Int32
	wg       sync.WaitGroup
}

func startRawUpstream(t *testing.T, pki *testPKI, answer func(conn int, req *http.Request, w io.Writer) bool) *rawUpstream {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pki.serverCert(t)}})
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln, answer: answer}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	u.hostport = "localhost:" + port
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(u.opened.Add(1))
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
					u.closed.Add(1)
				}()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if !u.answer(n, req, c) {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		u.wg.Wait()
	})
	return u
}

// writeAnswer writes a 200 answer with body and its Content-Length.
func writeAnswer(w io.Writer, body string) {
	fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// getOn sends a GET for path on an intercepted connection and returns the
// status and body of its answer.
func getOn(t *testing.T, c *rawConn, hostport, path string) (int, string) {
	t.Helper()
	c.send("GET " + path + " HTTP/1.1\r\nHost: " + hostport + "\r\n\r\n")
	resp, body := c.read(http.MethodGet)
	return resp.StatusCode, body
}

// TestPoolUnsolicitedBytesCloseIdleConnection: bytes that an upstream
// sends on a connection after a complete answer, before any request asks
// for them, never reach a client as an answer: not the next request of the
// same client connection, nor one of another client, on the fast path and
// the general way.
func TestPoolUnsolicitedBytesCloseIdleConnection(t *testing.T) {
	for _, general := range []bool{false, true} {
		t.Run(fmt.Sprintf("general=%v", general), func(t *testing.T) {
			pki := newTestPKI(t)
			speak, smuggled := make(chan struct{}), make(chan struct{})
			up := startRawUpstream(t, pki, func(conn int, req *http.Request, w io.Writer) bool {
				if conn == 1 && req.URL.Path == "/first" {
					writeAnswer(w, "ok")
					go func() {
						// The upstream speaks up on its own once the
						// answer has reached the client.
						<-speak
						_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED")
						close(smuggled)
					}()
					return true
				}
				writeAnswer(w, fmt.Sprintf("conn %d %s", conn, req.URL.Path))
				return true
			})
			h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
			h.p.generalOnly = general
			addr := h.srv.Listener.Addr().String()
			c := dialRaw(t, addr, h.ca, up.hostport)
			if code, body := getOn(t, c, up.hostport, "/first"); code != 200 || body != "ok" {
				t.Fatalf("first GET: %d %q", code, body)
			}
			close(speak)
			<-smuggled
			for _, path := range []string{"/second", "/third"} {
				code, body := getOn(t, c, up.hostport, path)
				if code != 200 || !strings.HasSuffix(body, " "+path) || strings.HasPrefix(body, "conn 1 ") {
					t.Errorf("GET %s on the same client connection: %d %q, want the answer to it from a new upstream connection", path, code, body)
				}
			}
			other := dialRaw(t, addr, h.ca, up.hostport)
			if code, body := getOn(t, other, up.hostport, "/other"); code != 200 || !strings.HasSuffix(body, " /other") {
				t.Errorf("GET /other on another client connection: %d %q", code, body)
			}
			eventually(t, 10*time.Second, "the upstream connection that spoke unasked to be closed", func() bool {
				return up.closed.Load() >= 1
			})
		})
	}
}
