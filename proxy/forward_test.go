package proxy

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// TestForwardedHeaders checks which request headers reach the upstream and
// which response headers reach the client.
func TestForwardedHeaders(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	var mu sync.Mutex
	var got http.Header
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		mu.Lock()
		got = r.Header.Clone()
		mu.Unlock()
		w.Header().Set("Connection", "X-Hop-Response")
		w.Header().Set("X-Hop-Response", "hop")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-End-Response", "end")
		_, _ = io.WriteString(w, "ok")
		return true
	})
	c := h.client(t)
	req, _ := http.NewRequest(http.MethodGet, "https://"+up.hostport+"/2/0/workspaces", nil)
	req.Header.Set("Connection", "X-Hop-Request")
	req.Header.Set("X-Hop-Request", "hop")
	req.Header.Set("Te", "trailers, deflate")
	req.Header.Set("Forwarded", "for=192.0.2.1")
	req.Header.Set("X-Forwarded-Host", "evil.example")
	req.Header.Set("X-Forwarded-Proto", "http")
	req.Header.Set("X-End-Request", "end")
	req.Header.Set("User-Agent", "") // sends none
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); body != "ok" {
		t.Fatalf("body = %q", body)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, tc := range []struct {
		where  string
		header http.Header
		name   string
		want   string // "" means absent
	}{
		{"upstream", got, "X-Hop-Request", ""},
		{"upstream", got, "Forwarded", ""},
		{"upstream", got, "X-Forwarded-Host", ""},
		{"upstream", got, "X-Forwarded-Proto", ""},
		{"upstream", got, "X-Forwarded-For", ""},
		{"upstream", got, "Te", "trailers"},
		{"upstream", got, "User-Agent", ""},
		{"upstream", got, "X-End-Request", "end"},
		{"upstream", got, "Authorization", "AnaplanAuthToken tok-1"},
		{"client", resp.Header, "X-Hop-Response", ""},
		{"client", resp.Header, "Keep-Alive", ""},
		{"client", resp.Header, "X-End-Response", "end"},
	} {
		if v := strings.Join(tc.header.Values(tc.name), ","); v != tc.want {
			t.Errorf("%s saw %s %q, want %q", tc.where, tc.name, v, tc.want)
		}
	}
}

// TestTruncatedUpstreamBody checks that a response body the upstream cuts
// short reaches the client as an error, never as a complete answer.
func TestTruncatedUpstreamBody(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return true
		}
		defer conn.Close()
		head := "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
		if r.URL.Path == "/chunked" {
			head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
		}
		_, _ = brw.WriteString(head + "partial")
		_ = brw.Flush()
		return true
	})
	c := h.client(t)
	for _, path := range []string{"/length", "/chunked"} {
		t.Run(strings.TrimPrefix(path, "/"), func(t *testing.T) {
			resp, err := c.Get("https://" + up.hostport + path)
			if err != nil {
				return // cut before the head: an error as well
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("read %q and a clean end, want an error", b)
			}
		})
	}
}

// TestResponseTrailers checks that trailers the upstream sends after a
// body reach the client.
func TestResponseTrailers(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
		return true
	})
	resp, err := h.client(t).Get("https://" + up.hostport + "/2/0/files/1")
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); body != "body" {
		t.Fatalf("body = %q", body)
	}
	if v := resp.Trailer.Get("X-Checksum"); v != "abc" {
		t.Errorf("trailer X-Checksum = %q, want abc", v)
	}
}

// TestQueryPassedOrCleaned checks that a query reaches the upstream as
// sent unless parts of it could be split differently by the upstream.
func TestQueryPassedOrCleaned(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	c := h.client(t)
	for _, tc := range []struct{ query, want string }{
		{"limit=10&offset=20", "limit=10&offset=20"},
		{"q=a%20b&x=%2F", "q=a%20b&x=%2F"},
		{"a=1;b=2&c=3", "c=3"},
		{"a=%zz&c=3", "c=3"},
	} {
		resp, err := c.Get("https://" + up.hostport + "/2/0/tasks?" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		if s := decodeSeen(t, resp); s.Query != tc.want {
			t.Errorf("query %q reached the upstream as %q, want %q", tc.query, s.Query, tc.want)
		}
	}
}
