package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countedUpstream is a TLS origin that counts the connections it accepts
// and closes and notes the client address of every request.
type countedUpstream struct {
	srv      *httptest.Server
	hostport string
	opened   atomic.Int32
	closed   atomic.Int32
	mu       sync.Mutex
	addrs    map[string]int
}

func startCountedUpstream(t *testing.T, pki *testPKI, handler http.HandlerFunc) *countedUpstream {
	t.Helper()
	u := &countedUpstream{addrs: map[string]int{}}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.addrs[r.RemoteAddr]++
		u.mu.Unlock()
		handler(w, r)
	}))
	u.srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.serverCert(t)}}
	u.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			u.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			u.closed.Add(1)
		}
	}
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	_, port, _ := net.SplitHostPort(u.srv.Listener.Addr().String())
	u.hostport = "localhost:" + port
	return u
}

func (u *countedUpstream) connections() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.addrs)
}

// TestOwnUpstreamConnection checks that the requests of one client
// connection, with and without a body, share one upstream connection,
// that one the upstream has closed meanwhile costs the client nothing,
// that the upstream connection outlives the client's, idle in the pool,
// for the next client connection, and that Shutdown closes it.
func TestOwnUpstreamConnection(t *testing.T) {
	pki := newTestPKI(t)
	up := startCountedUpstream(t, pki, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2")
		_, _ = io.WriteString(w, "ok")
	})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
	c := h.client(t)
	url := "https://" + up.hostport + "/2/0/tasks/1"
	get := func(method string) {
		t.Helper()
		var body io.Reader
		switch method {
		case http.MethodPut:
			body = strings.NewReader(strings.Repeat("chunk", 1000))
		case http.MethodPost:
			body = strings.NewReader(`{"localeName":"en_US"}`)
		}
		req, _ := http.NewRequest(method, url, body)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got := readBody(t, resp)
		if resp.StatusCode != http.StatusOK || (method == http.MethodGet && got != "ok") {
			t.Fatalf("%s: status %d, body %q", method, resp.StatusCode, got)
		}
	}
	methods := []string{"GET", "HEAD", "PUT", "GET", "OPTIONS", "POST", "PUT", "DELETE", "POST", "GET"}
	for _, m := range methods {
		get(m)
	}
	if n := up.connections(); n != 1 {
		t.Errorf("%d requests on one client connection reached the upstream on %d connections, want 1", len(methods), n)
	}

	up.srv.CloseClientConnections()
	eventually(t, 10*time.Second, "the upstream to close its connections", func() bool {
		return up.closed.Load() == up.opened.Load()
	})
	get("GET")
	if n := up.connections(); n != 2 {
		t.Errorf("after the upstream closed the connection: %d upstream connections, want 2", n)
	}

	c.Transport.(*http.Transport).CloseIdleConnections()
	eventually(t, 10*time.Second, "the client connection's end to be seen", func() bool {
		h.p.mu.Lock()
		defer h.p.mu.Unlock()
		return len(h.p.interceptConns) == 0
	})
	if open := up.opened.Load() - up.closed.Load(); open != 1 {
		t.Errorf("after the client connection ended: %d upstream connections open, want 1 kept idle", open)
	}
	c = h.client(t)
	get("GET")
	if n := up.connections(); n != 2 {
		t.Errorf("a new client connection: %d upstream connections in all, want the idle one (2)", n)
	}
	c.Transport.(*http.Transport).CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "Shutdown to close the idle upstream connection", func() bool {
		return up.closed.Load() == up.opened.Load()
	})
}

// TestClientGoneEndsUpstreamWait checks that a client that gives up while
// the upstream is slow to answer does not leave the proxy waiting on it.
// TestClientGoneEndsUpstreamWait: a client that gives up while the upstream
// is slow to answer ends the upstream request, on the connection's own
// upstream connection (GET) and on the shared transport (with and without
// a body).
func TestClientGoneEndsUpstreamWait(t *testing.T) {
	pki := newTestPKI(t)
	arrived := make(chan struct{}, 1)
	ended := make(chan error, 1)
	up := startCountedUpstream(t, pki, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
			ended <- nil
		case <-time.After(30 * time.Second):
			ended <- errors.New("the upstream request was still open after 30 s")
		}
	})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
	tests := []struct {
		method string
		body   string
	}{
		{http.MethodGet, ""},
		{http.MethodPost, `{"localeName":"en_US"}`},
		{http.MethodDelete, ""},
	}
	for _, tc := range tests {
		t.Run(tc.method, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequestWithContext(ctx, tc.method, "https://"+up.hostport+"/2/0/tasks/slow", body)
			c := h.client(t)
			done := make(chan struct{})
			go func() {
				defer close(done)
				resp, err := c.Do(req)
				if err == nil {
					resp.Body.Close()
				}
			}()
			<-arrived
			cancel()
			<-done
			if err := <-ended; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAbandonedDownloadEndsUpstream checks that when a client stops
// reading a download, the proxy stops fetching it from the upstream
// rather than reading the rest of it for nobody.
func TestAbandonedDownloadEndsUpstream(t *testing.T) {
	pki := newTestPKI(t)
	ended := make(chan struct{})
	up := startCountedUpstream(t, pki, func(w http.ResponseWriter, r *http.Request) {
		defer close(ended)
		chunk := make([]byte, 64<<10)
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
		t.Error("the upstream was still sending after 30 s")
	})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
	resp, err := h.client(t).Get("https://" + up.hostport + "/2/0/files/1/chunks/0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-ended
}
