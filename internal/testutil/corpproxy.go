package testutil

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"
)

// Connect is one CONNECT request that a CorporateProxy received.
type Connect struct {
	Target string // host:port asked for
	Auth   string // the Proxy-Authorization header sent, "" for none
}

// CorporateProxy stands in for an organisation's outbound proxy: a CONNECT
// proxy on loopback that checks Basic credentials, records every CONNECT
// and relays the bytes, or answers every CONNECT with a fixed status.
type CorporateProxy struct {
	// URL is the proxy's URL with the credentials it requires, if any.
	URL string
	// Addr is its host:port.
	Addr string

	ln     net.Listener
	auth   string
	mu     sync.Mutex
	seen   []Connect
	answer int
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// StartCorporateProxy starts a proxy that requires user and pass (none when
// user is empty); with cert it speaks TLS (an https:// proxy). It stops when
// the test ends.
func StartCorporateProxy(t testing.TB, user, pass string, cert *tls.Certificate) *CorporateProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	scheme := "http"
	if cert != nil {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}})
		scheme = "https"
	}
	c := &CorporateProxy{ln: ln, Addr: ln.Addr().String(), conns: map[net.Conn]struct{}{}}
	c.URL = scheme + "://" + c.Addr
	if user != "" {
		c.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
		c.URL = scheme + "://" + url.UserPassword(user, pass).String() + "@" + c.Addr
	}
	c.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.track(conn, true)
			c.wg.Go(func() {
				defer c.track(conn, false)
				c.handle(conn)
			})
		}
	})
	t.Cleanup(c.Close)
	return c
}

// SetAnswer makes the proxy answer every later CONNECT with status instead
// of relaying it; 0 relays again.
func (c *CorporateProxy) SetAnswer(status int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.answer = status
}

// Connects returns the CONNECT requests received so far, in order.
func (c *CorporateProxy) Connects() []Connect {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Connect(nil), c.seen...)
}

// Close stops the proxy and every connection it relays. It may be called
// more than once.
func (c *CorporateProxy) Close() {
	c.ln.Close()
	c.mu.Lock()
	for conn := range c.conns {
		conn.Close()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

func (c *CorporateProxy) track(conn net.Conn, add bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if add {
		c.conns[conn] = struct{}{}
		return
	}
	delete(c.conns, conn)
	conn.Close()
}

func (c *CorporateProxy) handle(conn net.Conn) {
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if req.Method != http.MethodConnect {
		fmt.Fprint(conn, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
		return
	}
	got := req.Header.Get("Proxy-Authorization")
	c.mu.Lock()
	c.seen = append(c.seen, Connect{Target: req.Host, Auth: got})
	answer := c.answer
	c.mu.Unlock()
	if c.auth != "" && got != c.auth {
		fmt.Fprint(conn, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n")
		return
	}
	if answer != 0 {
		fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n", answer, http.StatusText(answer))
		return
	}
	dest, err := net.DialTimeout("tcp", req.Host, 10*time.Second)
	if err != nil {
		fmt.Fprint(conn, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	c.track(dest, true)
	defer c.track(dest, false)
	fmt.Fprint(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(dest, br)
		dest.Close()
	}()
	io.Copy(conn, dest)
	conn.Close()
	<-done
}
