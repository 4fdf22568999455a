package proxy

import (
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// TestRetryOfStaleConnection: a request that meets a reused upstream
// connection closed as it went (the upstream read it and closed without
// an answer) is sent once more on a new connection when net/http would
// send it twice: without a body, and GET, HEAD, OPTIONS or with an
// Idempotency-Key. Any other gets the proxy's 502: the upstream may have
// acted on it. The fast path (a plain GET) and the general way follow the
// same rule.
func TestRetryOfStaleConnection(t *testing.T) {
	tests := []struct {
		name      string
		method    string
		header    http.Header
		wantRetry bool
	}{
		{"plain GET (fast path)", http.MethodGet, nil, true},
		{"GET with a client Authorization (general way)", http.MethodGet, http.Header{"Authorization": {"Bearer own"}}, true},
		{"HEAD", http.MethodHead, nil, true},
		{"OPTIONS", http.MethodOptions, nil, true},
		{"DELETE", http.MethodDelete, nil, false},
		{"PUT without a body", http.MethodPut, nil, false},
		{"DELETE with an Idempotency-Key", http.MethodDelete, http.Header{"Idempotency-Key": {"k1"}}, true},
		{"POST with an X-Idempotency-Key", http.MethodPost, http.Header{"X-Idempotency-Key": {"k2"}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pki := newTestPKI(t)
			var mu sync.Mutex
			served := map[net.Conn]int{} // requests seen on each upstream connection
			opened := 0
			hostport := scriptedUpstream(t, pki, func(conn net.Conn, req *http.Request) bool {
				mu.Lock()
				if served[conn] == 0 {
					opened++
				}
				served[conn]++
				n := served[conn]
				mu.Unlock()
				if n > 1 {
					// Read, then closed without an answer.
					return false
				}
				_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				return true
			})
			h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool})
			c := h.client(t)
			url := "https://" + hostport + "/2/0/workspaces"
			resp, err := c.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != "ok" {
				t.Fatalf("first request: %d %q", resp.StatusCode, body)
			}
			eventually(t, 10*time.Second, "the connection to be idle in the pool", func() bool {
				return h.obs.snapshot().idle == 1
			})

			req, _ := http.NewRequest(tt.method, url, nil)
			for k, v := range tt.header {
				req.Header[k] = v
			}
			resp, err = c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			mu.Lock()
			n := opened
			mu.Unlock()
			if tt.wantRetry {
				if resp.StatusCode != http.StatusOK || n != 2 {
					t.Errorf("got %d %q after %d upstream connections, want 200 from a second one", resp.StatusCode, body, n)
				}
				if closed := h.obs.snapshot().poolClosed[h1.ClosedUpstreamClosed]; closed != 1 {
					t.Errorf("%d connections counted as closed by the upstream, want 1", closed)
				}
				return
			}
			if resp.StatusCode != http.StatusBadGateway || n != 1 {
				t.Errorf("got %d %q after %d upstream connections, want the proxy's 502 and no second attempt", resp.StatusCode, body, n)
			}
			checkOwnAnswer(t, resp, body, "")
		})
	}
}
