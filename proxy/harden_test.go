package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// The tests in this file send the exact bytes of hostile requests and
// answers and check what comes out of the proxy, on intercepted
// connections and, where it applies, on the plain-HTTP path.

// scriptedUpstream is a TLS origin that reads each request (head and
// body) and lets script write the raw bytes of the answer. script
// returns false to close the connection after its answer.
func scriptedUpstream(t *testing.T, pki *testPKI, script func(conn net.Conn, req *http.Request) bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
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
			mu.Lock()
			conns[raw] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn := tls.Server(raw, cfg)
				defer conn.Close()
				br := bufio.NewReader(conn)
				for {
					_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if !script(conn, req) {
						return
					}
				}
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return "localhost:" + port
}

// plainRaw sends raw bytes to the proxy listener, as a plain-HTTP client
// does, and reads one answer with its body.
func plainRaw(t *testing.T, h *harness, raw string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(raw, " ")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// trailerEcho makes up answer every request with the trailer fields and
// the Authorization that arrived, as JSON.
func trailerEcho(up *upstream) {
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		if r.URL.Path != "/echo" {
			return false
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"trailer": r.Trailer, "authorization": s.Authorization, "host": r.Host})
		return true
	})
}

// TestRequestTrailersAreNotForwarded: trailer fields a client sends after
// a chunked body are dropped, whatever it declared: they could carry the
// client's own Authorization past client_authorization, the proxy
// password, or a Host and Connection for the upstream to act on.
func TestRequestTrailersAreNotForwarded(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	trailerEcho(up)
	const fields = "Trailer: Authorization, Proxy-Authorization, Host, Connection\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5\r\nhello\r\n0\r\nAuthorization: Basic Y2xpZW50OnNlY3JldA==\r\nProxy-Authorization: Basic cHJveHk6cGFzc3dvcmQ=\r\n" +
		"Host: evil.example\r\nConnection: close\r\n\r\n"
	for _, mode := range []string{"replace", "reject"} {
		h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots, PlainHTTP: true, ClientAuthorization: mode})
		check := func(t *testing.T, resp *http.Response, body string) {
			t.Helper()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d %q, want 200", resp.StatusCode, body)
			}
			var got struct {
				Trailer       http.Header `json:"trailer"`
				Authorization string      `json:"authorization"`
				Host          string      `json:"host"`
			}
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("decoding %q: %v", body, err)
			}
			if len(got.Trailer) != 0 || got.Authorization != "AnaplanAuthToken tok-1" || got.Host != up.hostport {
				t.Errorf("the upstream saw trailer %v, Authorization %q, Host %q; want no trailer, the proxy's token, the target", got.Trailer, got.Authorization, got.Host)
			}
		}
		t.Run(mode+"/intercepted", func(t *testing.T) {
			c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, up.hostport)
			c.send("POST /echo HTTP/1.1\r\nHost: " + up.hostport + "\r\n" + fields)
			resp, body := c.read(http.MethodPost)
			check(t, resp, body)
			c.expectServesNext(up.hostport)
		})
		t.Run(mode+"/plain HTTP", func(t *testing.T) {
			resp, body := plainRaw(t, h, "POST http://"+up.hostport+"/echo HTTP/1.1\r\nHost: "+up.hostport+"\r\n"+fields)
			check(t, resp, body)
		})
	}
}

// TestTraceAndConnectRefused: TRACE and CONNECT inside an intercepted
// connection, and TRACE as plain HTTP, get 405 from the proxy and send
// nothing upstream: an upstream that echoes TRACE would hand the token
// to the client.
func TestTraceAndConnectRefused(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots, PlainHTTP: true})
	hp := up.hostport
	tests := []struct {
		name, raw string
		plain     bool
		keptOpen  bool
		reason    string
	}{
		{"TRACE", "TRACE /2/0/users/me HTTP/1.1\r\nHost: " + hp + "\r\n\r\n", false, true, "TRACE is not forwarded"},
		{"CONNECT", "CONNECT " + hp + " HTTP/1.1\r\nHost: " + hp + "\r\n\r\n", false, false, "CONNECT is not forwarded"},
		{"TRACE as plain HTTP", "TRACE http://" + hp + "/2/0/users/me HTTP/1.1\r\nHost: " + hp + "\r\n\r\n", true, false, "TRACE is not forwarded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.requests())
			var resp *http.Response
			var body string
			var c *rawConn
			if tc.plain {
				resp, body = plainRaw(t, h, tc.raw)
			} else {
				c = dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hp)
				c.send(tc.raw)
				resp, body = c.read(http.MethodGet)
			}
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Fatalf("status %d %q, want 405", resp.StatusCode, body)
			}
			checkOwnAnswer(t, resp, body, "http_request_denied")
			mustContain(t, "body", body, tc.reason)
			if n := len(up.requests()) - before; n != 0 {
				t.Errorf("the upstream saw %d requests, want none", n)
			}
			switch {
			case c != nil && tc.keptOpen:
				c.expectServesNext(hp)
			case c != nil:
				if !resp.Close {
					t.Error("the answer to CONNECT does not close the connection")
				}
				c.expectClosed()
			}
		})
	}
}

// answerPaths are the ways a request reaches the upstream: on the fast
// path (a plain GET), the general way with a small body sent with the
// head, with a body sent on its own goroutine, and as plain HTTP through
// the shared transport. Each returns the answer the client read.
func answerPaths(t *testing.T, h *harness, hostport, path string) map[string]func(t *testing.T) (*http.Response, string) {
	intercepted := func(raw, method string) func(t *testing.T) (*http.Response, string) {
		return func(t *testing.T) (*http.Response, string) {
			c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hostport)
			c.send(raw)
			return c.read(method)
		}
	}
	host := "Host: " + hostport + "\r\n"
	big := strings.Repeat("b", 2<<20) // over maxReplayBody: streamed
	return map[string]func(t *testing.T) (*http.Response, string){
		"GET":        intercepted("GET "+path+" HTTP/1.1\r\n"+host+"\r\n", http.MethodGet),
		"small POST": intercepted("POST "+path+" HTTP/1.1\r\n"+host+"Content-Length: 2\r\n\r\nhi", http.MethodPost),
		"large PUT":  intercepted("PUT "+path+" HTTP/1.1\r\n"+host+"Content-Length: "+strconv.Itoa(len(big))+"\r\n\r\n"+big, http.MethodPut),
		"plain HTTP": func(t *testing.T) (*http.Response, string) {
			return plainRaw(t, h, "GET http://"+hostport+path+" HTTP/1.1\r\n"+host+"\r\n")
		},
	}
}

// TestFinalAnswerAfterInterimOnes: an informational answer (103 Early
// Hints, 100 Continue) followed a second later by the final one gets the
// final one, not a timeout of the first, short wait for the answer.
func TestFinalAnswerAfterInterimOnes(t *testing.T) {
	pki := newTestPKI(t)
	hostport := scriptedUpstream(t, pki, func(conn net.Conn, req *http.Request) bool {
		interim := "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
		if req.URL.Path == "/continue" {
			interim = "HTTP/1.1 100 Continue\r\n\r\n"
		}
		_, _ = io.WriteString(conn, interim)
		late := time.NewTimer(2 * h1.WatchDelay)
		<-late.C
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
		return true
	})
	h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool, PlainHTTP: true})
	for _, path := range []string{"/hints", "/continue"} {
		for name, send := range answerPaths(t, h, hostport, path) {
			t.Run(path+"/"+name, func(t *testing.T) {
				t.Parallel()
				resp, body := send(t)
				if resp.StatusCode != http.StatusOK || body != "late" {
					t.Fatalf("got %d %q (%s), want the upstream's late 200", resp.StatusCode, body, resp.Header.Get("Proxy-Status"))
				}
			})
		}
	}
}

// TestUpstreamAnswerHeadsBounded: an answer head over 64 KiB, or more
// than a handful of informational answers before the final one, gets
// 502 with the cause instead of being read on; a head under the bound and
// a few informational answers pass.
func TestUpstreamAnswerHeadsBounded(t *testing.T) {
	pki := newTestPKI(t)
	answers := map[string]string{
		"/huge-field":  "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 4<<20) + "\r\nContent-Length: 2\r\n\r\nok",
		"/many-fields": "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Field: 0123456789abcdef0123456789abcdef\r\n", 2000) + "Content-Length: 2\r\n\r\nok",
		"/large-head":  "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 60<<10) + "\r\nContent-Length: 2\r\n\r\nok",
		"/hint-flood":  strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", 20000) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"/six-hints":   strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", 6) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"/five-hints":  strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", 5) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"/normal":      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	}
	hostport := scriptedUpstream(t, pki, func(conn net.Conn, req *http.Request) bool {
		_, _ = io.WriteString(conn, answers[req.URL.Path])
		return true
	})
	h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool, PlainHTTP: true})
	tests := []struct {
		path       string
		wantStatus int
		wantError  string // in Proxy-Status
	}{
		{"/huge-field", 502, "http_response_header_section_size"},
		{"/many-fields", 502, "http_response_header_section_size"},
		{"/large-head", 200, ""},
		{"/hint-flood", 502, ""}, // too many answers, or too large a head in all
		{"/six-hints", 502, "http_protocol_error"},
		{"/five-hints", 200, ""},
	}
	for _, tc := range tests {
		for name, send := range answerPaths(t, h, hostport, tc.path) {
			t.Run(tc.path+"/"+name, func(t *testing.T) {
				resp, body := send(t)
				if resp.StatusCode != tc.wantStatus {
					t.Fatalf("got %d %q, want %d", resp.StatusCode, body, tc.wantStatus)
				}
				if tc.wantStatus == 200 {
					if body != "ok" {
						t.Errorf("body %q, want ok", body)
					}
					return
				}
				checkOwnAnswer(t, resp, body, tc.wantError)
			})
		}
	}
}

// TestConnectionFieldOfAnswerHonoured: the fields that an answer's
// Connection field names are hop-by-hop and do not reach the client,
// also when the field says close too (RFC 9110, section 7.6.1).
func TestConnectionFieldOfAnswerHonoured(t *testing.T) {
	pki := newTestPKI(t)
	hostport := scriptedUpstream(t, pki, func(conn net.Conn, req *http.Request) bool {
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if req.URL.Path == "/split" {
			// The head comes in two writes, the second after a pause,
			// so that the proxy reads it in two parts.
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nX-Pad: "+strings.Repeat("p", 6000)+"\r\n")
			pause := time.NewTimer(50 * time.Millisecond)
			<-pause.C
		} else {
			if req.URL.Path == "/hinted" {
				// The final answer's Connection field counts, not
				// the informational one's.
				_, _ = io.WriteString(conn, "HTTP/1.1 103 Early Hints\r\nConnection: X-Public\r\n\r\n")
			}
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\n")
		}
		_, _ = io.WriteString(conn, "Connection: keep-alive, X-Secret, close\r\nX-Secret: s3cret\r\nX-Public: 1\r\nContent-Length: 2\r\n\r\nok")
		return false
	})
	h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool, PlainHTTP: true})
	for _, path := range []string{"/whole", "/split", "/hinted"} {
		for name, send := range answerPaths(t, h, hostport, path) {
			t.Run(path+"/"+name, func(t *testing.T) {
				resp, body := send(t)
				if resp.StatusCode != http.StatusOK || body != "ok" {
					t.Fatalf("got %d %q, want the upstream's 200", resp.StatusCode, body)
				}
				if v, ok := resp.Header["X-Secret"]; ok {
					t.Errorf("X-Secret: %q reached the client, though the upstream's Connection field named it", v)
				}
				if resp.Header.Get("X-Public") != "1" {
					t.Error("X-Public did not reach the client")
				}
			})
		}
	}
}

// TestStalledBodyCutOff: a request whose client stops sending its body
// is answered 408 with the cause once no byte came for BodyTimeout, and
// its connection ends, whether its body would be held for a replay,
// streamed or chunked, inside a CONNECT or as plain HTTP. A body that
// keeps coming, however slowly, is not cut off.
func TestStalledBodyCutOff(t *testing.T) {
	const timeout = 300 * time.Millisecond
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots, PlainHTTP: true}, func(c *Config) {
		c.Limits.BodyTimeout = timeout
	})
	hp := up.hostport
	stalled := []struct{ name, fields, sent string }{
		{"held for a replay", "Content-Length: 1048576\r\n", "x"},
		{"streamed", "Content-Length: 4194304\r\n", strings.Repeat("x", 100<<10)},
		{"chunked", "Transfer-Encoding: chunked\r\n", "1\r\nx\r\n"},
		{"after 100 Continue", "Content-Length: 10\r\nExpect: 100-continue\r\n", ""},
	}
	for _, tc := range stalled {
		check := func(t *testing.T, resp *http.Response, body string) {
			t.Helper()
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("status %d %q, want 408", resp.StatusCode, body)
			}
			checkOwnAnswer(t, resp, body, "http_request_error")
			mustContain(t, "body", body, "limits.body_timeout")
			if !resp.Close {
				t.Error("the answer does not close the connection")
			}
		}
		t.Run(tc.name+"/intercepted", func(t *testing.T) {
			c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hp)
			c.send("POST /echo HTTP/1.1\r\nHost: " + hp + "\r\n" + tc.fields + "\r\n" + tc.sent)
			resp, body := c.read(http.MethodPost)
			if resp.StatusCode == http.StatusContinue {
				resp, body = c.read(http.MethodPost)
			}
			check(t, resp, body)
			c.expectEnd(true)
		})
		t.Run(tc.name+"/plain HTTP", func(t *testing.T) {
			if strings.Contains(tc.fields, "Expect") {
				t.Skip("net/http's server sends the 100 Continue")
			}
			resp, body := plainRaw(t, h, "POST http://"+hp+"/echo HTTP/1.1\r\nHost: "+hp+"\r\n"+tc.fields+"\r\n"+tc.sent)
			check(t, resp, body)
		})
	}

	// Ten bytes, one every fifth of the timeout: slow, never stalled. A
	// proxy of its own has a longer timeout, so that a busy machine does
	// not make the pauses look long.
	const slowTimeout = time.Second
	h = startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots, PlainHTTP: true}, func(c *Config) {
		c.Limits.BodyTimeout = slowTimeout
	})
	slow := func(w io.Writer) error {
		tick := time.NewTicker(slowTimeout / 5)
		defer tick.Stop()
		for range 10 {
			<-tick.C
			if _, err := io.WriteString(w, "y"); err != nil {
				return err
			}
		}
		return nil
	}
	t.Run("slow body/intercepted", func(t *testing.T) {
		c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hp)
		c.send("POST /echo HTTP/1.1\r\nHost: " + hp + "\r\nContent-Length: 10\r\n\r\n")
		if err := slow(c.conn); err != nil {
			t.Fatal(err)
		}
		resp, body := c.read(http.MethodPost)
		if resp.StatusCode != http.StatusOK || echoOf(t, body).BodyLen != 10 {
			t.Fatalf("got %d %q, want 200 with the 10 bytes", resp.StatusCode, body)
		}
		c.expectServesNext(hp)
	})
	t.Run("slow body/plain HTTP", func(t *testing.T) {
		conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		_, _ = io.WriteString(conn, "POST http://"+hp+"/echo HTTP/1.1\r\nHost: "+hp+"\r\nContent-Length: 10\r\n\r\n")
		if err := slow(conn); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK || echoOf(t, body).BodyLen != 10 {
			t.Fatalf("got %d %q, want 200 with the 10 bytes", resp.StatusCode, body)
		}
	})
}

// TestStalledBodiesHoldLittleMemory: requests that declare a body of a
// megabyte, small enough to be held for a replay, and send one byte of it
// hold memory for what arrived, not for what they declared.
func TestStalledBodiesHoldLittleMemory(t *testing.T) {
	const conns = 16
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	hp := up.hostport
	cs := make([]*rawConn, conns)
	for i := range cs {
		cs[i] = dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hp)
	}
	hw := newHeapWatch()
	for _, c := range cs {
		c.send("POST /echo HTTP/1.1\r\nHost: " + hp + "\r\nContent-Length: 1048576\r\n\r\nx")
	}
	eventually(t, 10*time.Second, "the requests to be served", func() bool {
		n, _, _ := h.obs.transfer()
		return n == conns
	})
	// The handlers are reading the bodies now; the heap is sampled for a
	// while to see what they hold.
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		runtime.GC()
		hw.sample()
	}
	if grew := hw.peak - hw.base; grew > conns<<20/2 {
		t.Errorf("the heap grew by %d KiB with %d requests that sent 1 byte of a declared megabyte, want far less than %d MiB", grew>>10, conns, conns)
	}
	for _, c := range cs {
		_ = c.conn.Close()
	}
	eventually(t, 10*time.Second, "the requests to end", func() bool {
		n, _, _ := h.obs.transfer()
		return n == 0
	})
}

// headerEcho makes up answer /fields with the names of the header fields
// that arrived, and the length of the body, as JSON.
func headerEcho(up *upstream) {
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		if r.URL.Path != "/fields" {
			return false
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"header": r.Header, "body_len": s.BodyLen, "host": r.Host})
		return true
	})
}

// TestUnderscoredFieldsDropped: request fields whose names hold an
// underscore do not reach the upstream, which might read
// Transfer_Encoding as Transfer-Encoding; the request goes on framed as
// the proxy read it.
func TestUnderscoredFieldsDropped(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	headerEcho(up)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots, PlainHTTP: true})
	hp := up.hostport
	tests := []struct {
		name, raw string
		bodyLen   int64
	}{
		{"Transfer_Encoding beside Content-Length", "POST /fields HTTP/1.1\r\nHost: " + hp + "\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\nX-Kept: 1\r\n\r\nhello", 5},
		{"a GET with X_Custom", "GET /fields HTTP/1.1\r\nHost: " + hp + "\r\nX_Custom: 1\r\nX-Kept: 1\r\n\r\n", 0},
	}
	for _, tc := range tests {
		check := func(t *testing.T, resp *http.Response, body string) {
			t.Helper()
			var got struct {
				Header  http.Header `json:"header"`
				BodyLen int64       `json:"body_len"`
			}
			if err := json.Unmarshal([]byte(body), &got); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("got %d %q (%v)", resp.StatusCode, body, err)
			}
			for k := range got.Header {
				if strings.Contains(k, "_") {
					t.Errorf("%s reached the upstream", k)
				}
			}
			if got.Header.Get("X-Kept") != "1" || got.BodyLen != tc.bodyLen {
				t.Errorf("the upstream saw X-Kept %q and %d body bytes, want 1 and %d", got.Header.Get("X-Kept"), got.BodyLen, tc.bodyLen)
			}
		}
		t.Run(tc.name+"/intercepted", func(t *testing.T) {
			c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hp)
			c.send(tc.raw)
			method, _, _ := strings.Cut(tc.raw, " ")
			resp, body := c.read(method)
			check(t, resp, body)
			c.expectServesNext(hp)
		})
		t.Run(tc.name+"/plain HTTP", func(t *testing.T) {
			method, rest, _ := strings.Cut(tc.raw, " ")
			resp, body := plainRaw(t, h, method+" http://"+hp+rest)
			check(t, resp, body)
		})
	}
}

// TestHTTP10WithoutHostGoesToTarget: an HTTP/1.0 request without a Host
// inside a CONNECT is for the CONNECT target.
func TestHTTP10WithoutHostGoesToTarget(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, up.hostport)
	c.send("GET /2/0/users/me HTTP/1.0\r\n\r\n")
	resp, body := c.read(http.MethodGet)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got %d %q, want 200 from the CONNECT target", resp.StatusCode, body)
	}
	if e := echoOf(t, body); e.Host != up.hostport || e.Authorization != "AnaplanAuthToken tok-1" || e.Path != "/2/0/users/me" {
		t.Errorf("the upstream saw %+v, want the request for the target with the token", e)
	}
	c.expectClosed()
}

// readPartial reads one answer from br and as much of its body as comes,
// with the error that ended it.
func readPartial(t *testing.T, br *bufio.Reader, method string) (*http.Response, string, error) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// TestAnswerTrailersFiltered: trailer fields of an upstream's answer that
// a trailer may not carry (framing, authentication, hop-by-hop) do not
// reach the client; others do.
func TestAnswerTrailersFiltered(t *testing.T) {
	pki := newTestPKI(t)
	hostport := scriptedUpstream(t, pki, func(conn net.Conn, req *http.Request) bool {
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nTrailer: X-Checksum\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"+
			"X-Checksum: abc\r\nContent-Length: 99\r\nAuthorization: Bearer leaked\r\nConnection: close\r\nX_Under: 1\r\n\r\n")
		return true
	})
	h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool, PlainHTTP: true})
	raws := map[string]string{
		"intercepted GET":  "GET /t HTTP/1.1\r\nHost: " + hostport + "\r\n\r\n",
		"intercepted POST": "POST /t HTTP/1.1\r\nHost: " + hostport + "\r\nContent-Length: 2\r\n\r\nhi",
		"plain HTTP":       "GET http://" + hostport + "/t HTTP/1.1\r\nHost: " + hostport + "\r\nTE: trailers\r\n\r\n",
	}
	for name, raw := range raws {
		t.Run(name, func(t *testing.T) {
			br := sendRaw(t, h, hostport, strings.HasPrefix(name, "plain"), raw)
			method, _, _ := strings.Cut(raw, " ")
			resp, body, err := readPartial(t, br, method)
			if err != nil || resp.StatusCode != http.StatusOK || body != "ok" {
				t.Fatalf("got %d %q %v, want 200 ok", resp.StatusCode, body, err)
			}
			if resp.Trailer.Get("X-Checksum") != "abc" {
				t.Errorf("trailer %v, want X-Checksum: abc in it", resp.Trailer)
			}
			for _, k := range []string{"Content-Length", "Authorization", "Connection", "X_under"} {
				if v, ok := resp.Trailer[k]; ok {
					t.Errorf("trailer field %s: %q reached the client", k, v)
				}
			}
		})
	}
}

// TestShortAnswerEndsTheSameWay: an upstream answer whose body is shorter
// than its Content-Length reaches the client the same way on every path:
// the head, the bytes that came, and the end of the connection.
func TestShortAnswerEndsTheSameWay(t *testing.T) {
	pki := newTestPKI(t)
	hostport := scriptedUpstream(t, pki, func(conn net.Conn, req *http.Request) bool {
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nshort")
		return false
	})
	h := startProxy(t, Config{Inject: []string{hostport}, UpstreamRoots: pki.pool, PlainHTTP: true})
	raws := map[string]string{
		"intercepted GET":  "GET /s HTTP/1.1\r\nHost: " + hostport + "\r\n\r\n",
		"intercepted POST": "POST /s HTTP/1.1\r\nHost: " + hostport + "\r\nContent-Length: 2\r\n\r\nhi",
		"plain HTTP":       "GET http://" + hostport + "/s HTTP/1.1\r\nHost: " + hostport + "\r\n\r\n",
	}
	for name, raw := range raws {
		t.Run(name, func(t *testing.T) {
			br := sendRaw(t, h, hostport, strings.HasPrefix(name, "plain"), raw)
			method, _, _ := strings.Cut(raw, " ")
			resp, body, err := readPartial(t, br, method)
			if resp.StatusCode != http.StatusOK || resp.ContentLength != 100 || body != "short" || err != io.ErrUnexpectedEOF {
				t.Fatalf("got %d, Content-Length %d, body %q, %v; want the upstream's 200 and 100, %q and io.ErrUnexpectedEOF",
					resp.StatusCode, resp.ContentLength, body, err, "short")
			}
		})
	}
}

// TestBodyWaitsBounded: requests whose bodies are still arriving hold at
// most Limits.MaxBodyWaits at once; one more with a body gets 503 naming
// the key, while requests without a body are served, and a finished body
// makes room for the next.
func TestBodyWaitsBounded(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	s := startServed(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots, PlainHTTP: true}, func(c *Config) {
		c.Limits.MaxConnections = 5
		c.Limits.MaxBodyWaits = 2
	})
	hp := up.hostport
	head := "POST /echo HTTP/1.1\r\nHost: " + hp + "\r\nContent-Length: 10\r\n\r\n"
	var slow []*rawConn
	for range 2 {
		c := dialRaw(t, s.addr, s.ca, hp)
		c.send(head + "x")
		slow = append(slow, c)
	}
	eventually(t, 10*time.Second, "two bodies to be waited for", func() bool {
		return s.p.bodyWaits.n.Load() == 2
	})
	check := func(t *testing.T, resp *http.Response, body string) {
		t.Helper()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("got %d %q, want 503 with Retry-After", resp.StatusCode, body)
		}
		checkOwnAnswer(t, resp, body, "proxy_internal_error")
		mustContain(t, "body", body, "limits.max_body_waits")
	}
	t.Run("another upload, intercepted", func(t *testing.T) {
		c := dialRaw(t, s.addr, s.ca, hp)
		c.send(head + "0123456789")
		resp, body := c.read(http.MethodPost)
		check(t, resp, body)
		c.expectEnd(true)
	})
	t.Run("another upload, plain HTTP", func(t *testing.T) {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(conn, "POST http://"+hp+"/echo HTTP/1.1\r\nHost: "+hp+"\r\nContent-Length: 10\r\n\r\n0123456789")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		check(t, resp, readBody(t, resp))
	})
	t.Run("a request without a body", func(t *testing.T) {
		c := dialRaw(t, s.addr, s.ca, hp)
		c.expectServesNext(hp)
	})
	t.Run("room after a body ends", func(t *testing.T) {
		slow[0].send("123456789")
		if resp, body := slow[0].read(http.MethodPost); resp.StatusCode != http.StatusOK || echoOf(t, body).BodyLen != 10 {
			t.Fatalf("the first upload: %d %q, want 200 with its 10 bytes", resp.StatusCode, body)
		}
		c := dialRaw(t, s.addr, s.ca, hp)
		c.send(head + "0123456789")
		if resp, body := c.read(http.MethodPost); resp.StatusCode != http.StatusOK {
			t.Fatalf("an upload after the first ended: %d %q, want 200", resp.StatusCode, body)
		}
	})
	for _, c := range slow {
		_ = c.conn.Close()
	}
	eventually(t, 10*time.Second, "the waits to end", func() bool {
		return s.p.bodyWaits.n.Load() == 0
	})
}

// sendRaw sends raw to the proxy h, as a plain-HTTP request on the proxy
// listener or inside an intercepted connection to hostport, and returns
// the reader of the answer.
func sendRaw(t *testing.T, h *harness, hostport string, plain bool, raw string) *bufio.Reader {
	t.Helper()
	if !plain {
		c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, hostport)
		c.send(raw)
		return c.br
	}
	conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(conn, raw)
	return bufio.NewReader(conn)
}
