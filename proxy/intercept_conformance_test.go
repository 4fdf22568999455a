package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests in this file pin the HTTP/1.1 behaviour that a client sees on
// an intercepted connection: connection reuse and closing, message
// framing in both directions, interim answers, the answers to requests the
// proxy refuses, timeouts and shutdown. They drive the proxy with raw bytes
// inside the CONNECT so that every byte the proxy writes is checked, not
// only what a forgiving client library makes of it.

// rawConn is one intercepted connection, written with raw request bytes
// and read with http.ReadResponse.
type rawConn struct {
	t    *testing.T
	conn *tls.Conn
	br   *bufio.Reader
}

func dialRaw(t *testing.T, addr string, ca *CA, target string) *rawConn {
	t.Helper()
	tc := intercepted(t, addr, ca, target)
	return &rawConn{t: t, conn: tc, br: bufio.NewReader(tc)}
}

func (c *rawConn) send(raw string) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.conn, raw); err != nil {
		c.t.Fatalf("writing the request: %v", err)
	}
}

// read reads one response, with its whole body, to a request with the
// given method.
func (c *rawConn) read(method string) (*http.Response, string) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		c.t.Fatalf("reading the response to %s: %v", method, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("reading the body of the %d response to %s: %v", resp.StatusCode, method, err)
	}
	return resp, string(b)
}

// expectClosed checks that the proxy ends the connection cleanly: a TLS
// close_notify and the end of the stream, with no byte before them.
func (c *rawConn) expectClosed() {
	c.t.Helper()
	c.expectEnd(false)
}

// expectEnd checks that no byte follows and the connection ends, with a
// close_notify, or also with a reset if allowReset.
func (c *rawConn) expectEnd(allowReset bool) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := c.br.ReadByte()
	switch {
	case err == nil:
		c.t.Errorf("read %q after the response, want the connection closed", b)
	case errors.Is(err, io.EOF):
	case allowReset && errors.Is(err, syscall.ECONNRESET):
	default:
		c.t.Errorf("reading after the response: %v, want io.EOF (the connection closed with a TLS close_notify)", err)
	}
}

// expectServesNext checks that the connection still carries requests: a
// GET sent now gets the upstream's answer to it, and nothing else.
func (c *rawConn) expectServesNext(hostport string) {
	c.t.Helper()
	c.send("GET /next HTTP/1.1\r\nHost: " + hostport + "\r\n\r\n")
	resp, body := c.read(http.MethodGet)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"path":"/next"`) {
		c.t.Fatalf("next request on the connection: %d %q, want 200 from the upstream for /next", resp.StatusCode, body)
	}
	if n := c.br.Buffered(); n != 0 {
		c.t.Errorf("%d bytes followed the answer to the next request", n)
	}
}

// echoOf decodes the upstream's JSON echo of a request.
func echoOf(t *testing.T, body string) seen {
	t.Helper()
	var s seen
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("decoding the upstream's echo %q: %v", body, err)
	}
	return s
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// encodeChunked encodes body in chunks of the given sizes (the last repeated),
// with the final zero chunk.
func encodeChunked(body []byte, sizes ...int) string {
	var b strings.Builder
	for i := 0; len(body) > 0; i++ {
		n := sizes[min(i, len(sizes)-1)]
		n = min(n, len(body))
		fmt.Fprintf(&b, "%x\r\n%s\r\n", n, body[:n])
		body = body[n:]
	}
	b.WriteString("0\r\n\r\n")
	return b.String()
}

// patternBytes returns n bytes that are not all alike, so that a shifted or
// truncated copy has another hash.
func patternBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%23)
	}
	return b
}

// checkOwnAnswer checks the headers every answer the proxy gives itself
// carries: a Date, a Content-Length that matches the body, and the reason
// in Proxy-Status.
func checkOwnAnswer(t *testing.T, resp *http.Response, body, errType string) {
	t.Helper()
	if d, err := http.ParseTime(resp.Header.Get("Date")); err != nil || time.Since(d).Abs() > time.Minute {
		t.Errorf("Date = %q, want the current time", resp.Header.Get("Date"))
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length = %q for a body of %d bytes", cl, len(body))
	}
	mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error="+errType)
	mustContain(t, "body", body, "anaplan-proxy: ")
}

// conformanceRoutes answers the paths these tests use; every other path
// gets the upstream's JSON echo of the request. The answer to
// /stream-gated holds its second line until gate is closed.
func conformanceRoutes(gate <-chan struct{}) func(w http.ResponseWriter, r *http.Request, s seen) bool {
	return func(w http.ResponseWriter, r *http.Request, s seen) bool {
		flush := func() { _ = http.NewResponseController(w).Flush() }
		switch r.URL.Path {
		case "/no-content":
			w.WriteHeader(http.StatusNoContent)
		case "/not-modified":
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		case "/sized":
			w.Header().Set("Content-Length", "1234")
			w.Header().Set("X-Upstream", "1")
			if r.Method != http.MethodHead {
				_, _ = w.Write(patternBytes(1234))
			}
		case "/stream":
			w.Header().Set("Content-Type", "text/csv")
			for _, line := range []string{"a,1\n", "b,2\n", "c,3\n"} {
				_, _ = io.WriteString(w, line)
				flush()
			}
		case "/stream-gated":
			w.Header().Set("Content-Type", "text/csv")
			_, _ = io.WriteString(w, "first\n")
			flush()
			select {
			case <-gate:
			case <-r.Context().Done():
				return true
			}
			_, _ = io.WriteString(w, "second\n")
			flush()
			_, _ = io.WriteString(w, "third\n")
		case "/typed":
			w.Header().Set("Content-Type", "text/csv; charset=utf-8")
			w.Header().Set("X-Upstream", "1")
			w.Header().Set("Server", "fake-anaplan")
			w.Header().Set("Date", "Mon, 02 Jan 2006 15:04:05 GMT")
			_, _ = io.WriteString(w, "a,b\n")
		case "/untyped":
			// Go's server would otherwise add a sniffed type itself.
			w.Header()["Content-Type"] = nil
			w.Header().Set("X-Upstream", "1")
			_, _ = io.WriteString(w, "<html><body>not typed</body></html>")
		default:
			return false
		}
		return true
	}
}

// conformanceMaxHead is the Limits.MaxHeaderBytes of the conformance proxy.
const conformanceMaxHead = 4096

func TestInterceptConformance(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	gate := make(chan struct{})
	up.setHandler(conformanceRoutes(gate))
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots}, func(c *Config) {
		c.Limits.MaxHeaderBytes = conformanceMaxHead
	})
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(openGate) // before the proxy's cleanup
	addr := h.srv.Listener.Addr().String()
	hp := up.hostport
	host := "Host: " + hp + "\r\n"
	dial := func(t *testing.T) *rawConn {
		t.Helper()
		return dialRaw(t, addr, h.ca, hp)
	}

	t.Run("keep-alive", func(t *testing.T) {
		body := patternBytes(300)
		steps := []struct {
			raw, method, wantPath string
			wantBody              int64
		}{
			{"GET /2/0/workspaces HTTP/1.1\r\n" + host + "\r\n", "GET", "/2/0/workspaces", 0},
			{"POST /2/0/files/1 HTTP/1.1\r\n" + host + "Content-Length: 300\r\n\r\n" + string(body), "POST", "/2/0/files/1", 300},
			{"DELETE /2/0/files/1 HTTP/1.1\r\n" + host + "\r\n", "DELETE", "/2/0/files/1", 0},
			{"GET /2/0/tasks/1 HTTP/1.1\n" + "Host: " + hp + "\n\n", "GET", "/2/0/tasks/1", 0}, // bare LF line ends
		}
		before := len(up.requests())
		c := dial(t)
		for i, s := range steps {
			c.send(s.raw)
			resp, got := c.read(s.method)
			if resp.StatusCode != http.StatusOK || resp.Close {
				t.Fatalf("request %d: status %d, close %v; want 200 and a kept connection", i, resp.StatusCode, resp.Close)
			}
			e := echoOf(t, got)
			if e.Method != s.method || e.Path != s.wantPath || e.BodyLen != s.wantBody {
				t.Errorf("request %d reached the upstream as %s %s with %d body bytes, want %s %s with %d", i, e.Method, e.Path, e.BodyLen, s.method, s.wantPath, s.wantBody)
			}
		}
		if n := len(up.requests()) - before; n != len(steps) {
			t.Errorf("the upstream saw %d requests, want %d", n, len(steps))
		}
	})

	t.Run("pipelining", func(t *testing.T) {
		tests := []struct {
			name  string
			raw   string
			reqs  []string // method and path of each request, in order
			sizes []int64  // body bytes the upstream sees for each
		}{
			{"two GETs",
				"GET /p/1 HTTP/1.1\r\n" + host + "\r\nGET /p/2 HTTP/1.1\r\n" + host + "\r\n",
				[]string{"GET /p/1", "GET /p/2"}, []int64{0, 0}},
			{"POST with a body, then GET",
				"POST /p/1 HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhelloGET /p/2 HTTP/1.1\r\n" + host + "\r\n",
				[]string{"POST /p/1", "GET /p/2"}, []int64{5, 0}},
			{"chunked POST between two GETs",
				"GET /p/1 HTTP/1.1\r\n" + host + "\r\nPOST /p/2 HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n" +
					encodeChunked([]byte("hello world"), 5) + "GET /p/3 HTTP/1.1\r\n" + host + "\r\n",
				[]string{"GET /p/1", "POST /p/2", "GET /p/3"}, []int64{0, 11, 0}},
			{"HEAD, then GET",
				"HEAD /sized HTTP/1.1\r\n" + host + "\r\nGET /p/2 HTTP/1.1\r\n" + host + "\r\n",
				[]string{"HEAD /sized", "GET /p/2"}, []int64{0, 0}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := len(up.requests())
				c := dial(t)
				c.send(tc.raw) // one write
				for i, want := range tc.reqs {
					method, _, _ := strings.Cut(want, " ")
					resp, body := c.read(method)
					if resp.StatusCode != http.StatusOK {
						t.Fatalf("response %d: status %d, want 200", i, resp.StatusCode)
					}
					if method == http.MethodHead {
						continue
					}
					if e := echoOf(t, body); e.Method+" "+e.Path != want || e.BodyLen != tc.sizes[i] {
						t.Errorf("response %d answers %s %s (%d body bytes), want %s (%d)", i, e.Method, e.Path, e.BodyLen, want, tc.sizes[i])
					}
				}
				if n := len(up.requests()) - before; n != len(tc.reqs) {
					t.Errorf("the upstream saw %d requests, want %d", n, len(tc.reqs))
				}
				c.expectServesNext(hp)
			})
		}
	})

	t.Run("client asks to close", func(t *testing.T) {
		tests := []struct {
			name       string
			raw        string
			wantStatus int
		}{
			{"GET", "GET /c HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n", 200},
			{"POST with a body", "POST /c HTTP/1.1\r\n" + host + "Connection: close\r\nContent-Length: 2\r\n\r\nhi", 200},
			{"close among other tokens", "GET /c HTTP/1.1\r\n" + host + "Connection: X-Other, Close\r\n\r\n", 200},
			{"refused request", "GET /c HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n", 403},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := dial(t)
				c.send(tc.raw)
				resp, _ := c.read("GET")
				if resp.StatusCode != tc.wantStatus {
					t.Fatalf("status = %d, want %d", resp.StatusCode, tc.wantStatus)
				}
				// http.ReadResponse turns "Connection: close" into Close.
				if !resp.Close {
					t.Error("the response does not carry Connection: close")
				}
				c.expectClosed()
			})
		}
	})

	t.Run("HTTP/1.0", func(t *testing.T) {
		tests := []struct {
			name       string
			raw        string
			wantConn   string // the response's Connection header
			wantLength bool   // the response carries Content-Length
			wantBody   string // contained in the body
			keptOpen   bool
		}{
			{"without keep-alive", "GET /old HTTP/1.0\r\n" + host + "\r\n", "", true, `"path":"/old"`, false},
			{"with keep-alive", "GET /old HTTP/1.0\r\n" + host + "Connection: keep-alive\r\n\r\n", "keep-alive", true, `"path":"/old"`, true},
			// No chunked coding in HTTP/1.0: the end of the connection
			// ends the body.
			{"with keep-alive, streamed answer", "GET /stream HTTP/1.0\r\n" + host + "Connection: keep-alive\r\n\r\n", "", false, "a,1\nb,2\nc,3\n", false},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := dial(t)
				c.send(tc.raw)
				resp, body := c.read("GET")
				if resp.StatusCode != http.StatusOK || resp.Proto != "HTTP/1.0" {
					t.Fatalf("answer %s %d, want HTTP/1.0 200", resp.Proto, resp.StatusCode)
				}
				if got := resp.Header.Get("Connection"); got != tc.wantConn {
					t.Errorf("Connection = %q, want %q", got, tc.wantConn)
				}
				if _, ok := resp.Header["Content-Length"]; ok != tc.wantLength {
					t.Errorf("Content-Length present = %v, want %v", ok, tc.wantLength)
				}
				if len(resp.TransferEncoding) != 0 {
					t.Errorf("Transfer-Encoding %q in an answer to HTTP/1.0", resp.TransferEncoding)
				}
				mustContain(t, "body", body, tc.wantBody)
				if tc.keptOpen {
					c.expectServesNext(hp)
				} else {
					c.expectClosed()
				}
			})
		}
	})

	t.Run("HEAD", func(t *testing.T) {
		c := dial(t)
		c.send("HEAD /sized HTTP/1.1\r\n" + host + "\r\n")
		resp, body := c.read(http.MethodHead)
		if resp.StatusCode != http.StatusOK || body != "" {
			t.Fatalf("HEAD: %d %q, want 200 without a body", resp.StatusCode, body)
		}
		if cl := resp.Header.Get("Content-Length"); cl != "1234" {
			t.Errorf("Content-Length = %q, want the upstream's 1234", cl)
		}
		if v := resp.Header.Get("X-Upstream"); v != "1" {
			t.Errorf("X-Upstream = %q, want 1", v)
		}
		// Any body byte after the HEAD answer would be read as the start
		// of the next response.
		c.expectServesNext(hp)
		// The same path with GET has the body HEAD announced.
		c.send("GET /sized HTTP/1.1\r\n" + host + "\r\n")
		if resp, body = c.read(http.MethodGet); resp.StatusCode != http.StatusOK || len(body) != 1234 {
			t.Errorf("GET: %d with %d body bytes, want 200 with 1234", resp.StatusCode, len(body))
		}
	})

	t.Run("bodiless statuses", func(t *testing.T) {
		tests := []struct {
			path       string
			wantStatus int
			wantHeader string // a header of the upstream's that reaches the client
		}{
			{"/no-content", http.StatusNoContent, ""},
			{"/not-modified", http.StatusNotModified, "Etag"},
		}
		for _, tc := range tests {
			t.Run(strconv.Itoa(tc.wantStatus), func(t *testing.T) {
				c := dial(t)
				c.send("GET " + tc.path + " HTTP/1.1\r\n" + host + "\r\n")
				resp, body := c.read("GET")
				if resp.StatusCode != tc.wantStatus || body != "" || resp.Close {
					t.Fatalf("%d %q close %v, want %d without a body on a kept connection", resp.StatusCode, body, resp.Close, tc.wantStatus)
				}
				if _, ok := resp.Header["Content-Length"]; ok {
					t.Errorf("Content-Length %q on a %d", resp.Header.Get("Content-Length"), tc.wantStatus)
				}
				if len(resp.TransferEncoding) != 0 {
					t.Errorf("Transfer-Encoding %q on a %d", resp.TransferEncoding, tc.wantStatus)
				}
				if tc.wantHeader != "" && resp.Header.Get(tc.wantHeader) == "" {
					t.Errorf("the upstream's %s did not reach the client", tc.wantHeader)
				}
				c.expectServesNext(hp)
			})
		}
	})

	t.Run("chunked request body", func(t *testing.T) {
		big := patternBytes(3<<20 + 17)
		tests := []struct {
			name string
			body []byte
			enc  string
		}{
			{"small", []byte("hello world"), encodeChunked([]byte("hello world"), 5)},
			{"odd chunk sizes across records", big, encodeChunked(big, 1, 7, 16<<10, 100003)},
			{"extensions and upper-case hex", []byte("0123456789ABCD"), "4;name=value\r\n0123\r\nA;q=\"a b\"\r\n456789ABCD\r\n0\r\n\r\n"},
			{"trailer fields", []byte("hello"), "5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"},
			{"empty", nil, "0\r\n\r\n"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := dial(t)
				c.send("POST /upload HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n" + tc.enc)
				resp, body := c.read("POST")
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status = %d, want 200 (body %q)", resp.StatusCode, body)
				}
				e := echoOf(t, body)
				if e.BodyLen != int64(len(tc.body)) || e.BodySHA256 != hexSHA256(tc.body) {
					t.Errorf("the upstream got %d body bytes (sha256 %s), want %d (%s)", e.BodyLen, e.BodySHA256, len(tc.body), hexSHA256(tc.body))
				}
				c.expectServesNext(hp)
			})
		}
	})

	t.Run("streamed answer", func(t *testing.T) {
		c := dial(t)
		c.send("GET /stream-gated HTTP/1.1\r\n" + host + "\r\n")
		_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(c.br, &http.Request{Method: http.MethodGet})
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.ContentLength != -1 ||
			len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
			t.Fatalf("status %d, length %d, transfer encoding %q; want 200, chunked, no length", resp.StatusCode, resp.ContentLength, resp.TransferEncoding)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/csv" {
			t.Errorf("Content-Type = %q, want the upstream's text/csv", ct)
		}
		// The first line arrives while the upstream still holds the rest:
		// the proxy passes a stream on as it comes.
		first := make([]byte, len("first\n"))
		if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first\n" {
			t.Fatalf("first line: %q %v", first, err)
		}
		openGate()
		rest, err := io.ReadAll(resp.Body)
		if err != nil || string(rest) != "second\nthird\n" {
			t.Fatalf("rest of the stream: %q %v, want the remaining lines and a clean end", rest, err)
		}
		c.expectServesNext(hp)
	})

	t.Run("Expect: 100-continue", func(t *testing.T) {
		tests := []struct {
			name string
			size int
		}{
			{"small body", 5},
			{"body too large to replay", 2<<20 + 3},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				body := patternBytes(tc.size)
				c := dial(t)
				c.send(fmt.Sprintf("PUT /2/0/files/1/chunks/0 HTTP/1.1\r\n%sContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", host, tc.size))
				interim, _ := c.read("PUT")
				if interim.StatusCode != http.StatusContinue {
					t.Fatalf("first answer %d, want 100 Continue before the body is sent", interim.StatusCode)
				}
				c.send(string(body))
				resp, got := c.read("PUT")
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("final answer %d, want 200", resp.StatusCode)
				}
				if e := echoOf(t, got); e.BodyLen != int64(tc.size) || e.BodySHA256 != hexSHA256(body) {
					t.Errorf("the upstream got %d body bytes, want all %d intact", e.BodyLen, tc.size)
				}
				c.expectServesNext(hp)
			})
		}
	})

	t.Run("refused request with a body", func(t *testing.T) {
		const refused = "POST /x HTTP/1.1\r\nHost: evil.example\r\n"
		tests := []struct {
			name     string
			raw      string
			keptOpen bool // the connection serves the next request
			// late is what the client sends after the answer, as one that
			// stopped waiting for 100 Continue would: it is not answered.
			late string
		}{
			{"Content-Length body sent", refused + "Content-Length: 5\r\n\r\nhello", true, ""},
			{"chunked body sent", refused + "Transfer-Encoding: chunked\r\n\r\n" + encodeChunked([]byte("hello"), 2), true, ""},
			// No 100 Continue before the refusal, and the connection
			// ends after it.
			{"Expect: 100-continue, body withheld", refused + "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n", false, "hello"},
			// Too much unread body to skip: the connection ends.
			{"large body withheld", refused + "Content-Length: 1048576\r\n\r\n", false, ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := len(up.requests())
				c := dial(t)
				c.send(tc.raw)
				resp, body := c.read("POST")
				if resp.StatusCode != http.StatusForbidden {
					t.Fatalf("status = %d, want 403 (an interim answer before it is wrong too)", resp.StatusCode)
				}
				checkOwnAnswer(t, resp, body, "http_request_denied")
				mustContain(t, "body", body, "differs from the CONNECT target")
				if resp.Close == tc.keptOpen {
					t.Errorf("Connection: close = %v, want %v", resp.Close, !tc.keptOpen)
				}
				switch {
				case tc.keptOpen:
					c.expectServesNext(hp)
				case tc.late != "":
					// A proxy that closes at once may see these bytes
					// reset the connection: the write's error and a
					// reset are both an end.
					_, _ = io.WriteString(c.conn, tc.late)
					c.expectEnd(true)
				default:
					c.expectClosed()
				}
				want := 0
				if tc.keptOpen {
					want = 1 // the next request
				}
				if n := len(up.requests()) - before; n != want {
					t.Errorf("the upstream saw %d requests, want %d", n, want)
				}
			})
		}
		t.Run("pipelined behind the refused one", func(t *testing.T) {
			c := dial(t)
			c.send(refused + "Content-Length: 5\r\n\r\nhelloGET /after HTTP/1.1\r\n" + host + "\r\n")
			if resp, body := c.read("POST"); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("first answer %d %q, want 403", resp.StatusCode, body)
			}
			resp, body := c.read("GET")
			if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"path":"/after"`) {
				t.Fatalf("second answer %d %q, want 200 for /after", resp.StatusCode, body)
			}
		})
	})

	t.Run("malformed request", func(t *testing.T) {
		tests := []struct {
			name       string
			raw        string
			wantStatus int
			// wantReason, when set, is the proxy's own reason in the body
			// and Proxy-Status. The answers without one come from
			// net/http's parser today; a Proxy-Status there is welcome
			// but not required.
			wantReason string
		}{
			{"request line without version", "GET /\r\n" + host + "\r\n", 400, "malformed request line"},
			{"request line with two spaces", "GET  / HTTP/1.1\r\n" + host + "\r\n", 400, "malformed request line"},
			{"header line without colon", "GET / HTTP/1.1\r\n" + host + "NoColon\r\n\r\n", 400, "malformed header line"},
			{"space in header name", "GET / HTTP/1.1\r\n" + host + "Bad Name: x\r\n\r\n", 400, "malformed header line"},
			{"invalid character in header name", "GET / HTTP/1.1\r\n" + host + "Bad(Name: x\r\n\r\n", 400, ""},
			{"control character in header name", "GET / HTTP/1.1\r\n" + host + "Bad\x01Name: x\r\n\r\n", 400, ""},
			{"control character in header value", "GET / HTTP/1.1\r\n" + host + "X-A: a\x00b\r\n\r\n", 400, ""},
			{"invalid method", "G(T / HTTP/1.1\r\n" + host + "\r\n", 400, ""},
			{"malformed version", "GET / HTTP/1.x\r\n" + host + "\r\n", 400, ""},
			{"HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n", 400, ""},
			{"HTTP/2.0 request line", "GET / HTTP/2.0\r\n" + host + "\r\n", 505, ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := len(up.requests())
				c := dial(t)
				c.send(tc.raw)
				resp, body := c.read("GET")
				if resp.StatusCode != tc.wantStatus {
					t.Fatalf("status = %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
				}
				if tc.wantReason != "" {
					mustContain(t, "body", body, "anaplan-proxy: "+tc.wantReason)
					mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=http_request_error")
					if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
						t.Errorf("Content-Length = %q for a body of %d bytes", cl, len(body))
					}
				}
				if !resp.Close {
					t.Error("the answer does not carry Connection: close")
				}
				c.expectClosed()
				if n := len(up.requests()) - before; n != 0 {
					t.Errorf("the upstream saw %d requests", n)
				}
			})
		}
	})

	t.Run("relayed headers", func(t *testing.T) {
		c := dial(t)
		c.send("GET /typed HTTP/1.1\r\n" + host + "\r\n")
		resp, body := c.read("GET")
		if resp.StatusCode != http.StatusOK || body != "a,b\n" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		for name, want := range map[string]string{
			"Content-Type":   "text/csv; charset=utf-8",
			"X-Upstream":     "1",
			"Server":         "fake-anaplan",
			"Date":           "Mon, 02 Jan 2006 15:04:05 GMT", // the upstream's, not the proxy's
			"Content-Length": "4",
			"Proxy-Status":   "",
		} {
			if got := strings.Join(resp.Header.Values(name), ", "); got != want {
				t.Errorf("%s = %q, want %q", name, got, want)
			}
		}
	})

	t.Run("request head size", func(t *testing.T) {
		headOf := func(size int) string {
			start := "GET /big HTTP/1.1\r\n" + host + "X-Pad: "
			return start + strings.Repeat("p", size-len(start)-len("\r\n\r\n")) + "\r\n\r\n"
		}
		tests := []struct {
			name       string
			size       int
			wantStatus int
		}{
			{"at the limit", conformanceMaxHead, 200},
			{"one byte over", conformanceMaxHead + 1, 431},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := len(up.requests())
				c := dial(t)
				raw := headOf(tc.size)
				if len(raw) != tc.size {
					t.Fatalf("built a head of %d bytes, want %d", len(raw), tc.size)
				}
				c.send(raw)
				resp, body := c.read("GET")
				if resp.StatusCode != tc.wantStatus {
					t.Fatalf("status = %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
				}
				if tc.wantStatus == 200 {
					if n := len(up.requests()) - before; n != 1 {
						t.Errorf("the upstream saw %d requests, want 1", n)
					}
					c.expectServesNext(hp)
					return
				}
				mustContain(t, "body", body, fmt.Sprintf("larger than %d bytes", conformanceMaxHead))
				mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=http_request_error")
				c.expectClosed()
				if n := len(up.requests()) - before; n != 0 {
					t.Errorf("the upstream saw %d requests", n)
				}
			})
		}
	})
}

// TestInterceptConformanceRelayAddsNoContentType checks that a response
// the upstream sent without a Content-Type reaches the client without one:
// a type the proxy guessed from the body would tell the client something
// the upstream never said.
func TestInterceptConformanceRelayAddsNoContentType(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	up.setHandler(conformanceRoutes(nil))
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	c := dialRaw(t, h.srv.Listener.Addr().String(), h.ca, up.hostport)
	c.send("GET /untyped HTTP/1.1\r\nHost: " + up.hostport + "\r\n\r\n")
	resp, body := c.read("GET")
	if resp.StatusCode != http.StatusOK || body != "<html><body>not typed</body></html>" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if v := resp.Header.Get("X-Upstream"); v != "1" {
		t.Errorf("X-Upstream = %q, want 1", v)
	}
	if ct, ok := resp.Header["Content-Type"]; ok {
		t.Errorf("Content-Type = %q, want none, as the upstream sent none", ct)
	}
}

func TestInterceptConformanceIdleTimeout(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	const idle = 300 * time.Millisecond
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		if r.URL.Path != "/slow" {
			return false
		}
		// An upstream that takes longer than the idle timeout to answer.
		select {
		case <-time.After(3 * idle):
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, "late")
		return true
	})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots}, func(c *Config) {
		c.Limits.IdleTimeout = idle
	})
	addr := h.srv.Listener.Addr().String()
	host := "Host: " + up.hostport + "\r\n"

	t.Run("idle connection is closed", func(t *testing.T) {
		c := dialRaw(t, addr, h.ca, up.hostport)
		c.send("GET /x HTTP/1.1\r\n" + host + "\r\n")
		if resp, _ := c.read("GET"); resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("status %d close %v, want 200 on a kept connection", resp.StatusCode, resp.Close)
		}
		start := time.Now()
		c.expectClosed()
		if d := time.Since(start); d < idle/2 || d > 5*idle+time.Second {
			t.Errorf("closed %s after the answer, want about %s", d.Round(time.Millisecond), idle)
		}
	})
	t.Run("a slow answer is not idleness", func(t *testing.T) {
		c := dialRaw(t, addr, h.ca, up.hostport)
		c.send("GET /slow HTTP/1.1\r\n" + host + "\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != http.StatusOK || body != "late" {
			t.Fatalf("%d %q, want the upstream's late 200", resp.StatusCode, body)
		}
		c.expectServesNext(up.hostport)
	})
}

// TestInterceptConformanceShutdown adds to TestShutdownDrainsThenCloses
// what a client on an intercepted connection sees of a shutdown: an idle
// connection ends at once, while a request in flight on another one still
// gets its answer, marked as the connection's last.
func TestInterceptConformanceShutdown(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	up.holdPath(t, "/slow", entered, release)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	// Registered after the proxy so that it runs before the proxy's
	// cleanup, which would wait for the held request.
	var releaseOnce sync.Once
	releaseSlow := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseSlow)
	addr := h.srv.Listener.Addr().String()
	host := "Host: " + up.hostport + "\r\n"

	idle := dialRaw(t, addr, h.ca, up.hostport)
	idle.send("GET /x HTTP/1.1\r\n" + host + "\r\n")
	if resp, _ := idle.read("GET"); resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("status %d close %v, want 200 on a kept connection", resp.StatusCode, resp.Close)
	}
	busy := dialRaw(t, addr, h.ca, up.hostport)
	busy.send("GET /slow HTTP/1.1\r\n" + host + "\r\n")
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the upstream")
	}

	h.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- h.p.Shutdown(ctx) }()

	start := time.Now()
	idle.expectClosed()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the idle connection was closed %s after Shutdown began", d.Round(time.Millisecond))
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a request was in flight", err)
	default:
	}

	releaseSlow()
	resp, body := busy.read("GET")
	if resp.StatusCode != http.StatusOK || body != "done" {
		t.Fatalf("in-flight request: %d %q, want 200 done", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Error("the last answer during shutdown does not carry Connection: close")
	}
	busy.expectClosed()
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Shutdown did not return after the in-flight request finished")
	}
}

// TestInterceptConformanceAbortedUpload checks that when a client goes
// away half way through sending a request body, the upstream request ends
// too instead of waiting for the rest.
func TestInterceptConformanceAbortedUpload(t *testing.T) {
	pki := newTestPKI(t)
	type result struct {
		n   int64
		err error
	}
	arrived := make(chan struct{}, 1)
	ended := make(chan result, 1)
	up := startCountedUpstream(t, pki, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		n, err := io.Copy(io.Discard, r.Body)
		ended <- result{n, err}
	})
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: pki.pool})
	addr := h.srv.Listener.Addr().String()
	host := "Host: " + up.hostport + "\r\n"
	const declared = 4 << 20
	part := patternBytes(256 << 10)

	tests := []struct {
		name string
		raw  string
		// streamed: the body goes upstream as it arrives; otherwise it is
		// small enough to be held for a replay and nothing is sent.
		streamed bool
	}{
		{"Content-Length body", fmt.Sprintf("PUT /2/0/files/1/chunks/0 HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s", host, declared, part), true},
		{"chunked body", "PUT /2/0/files/1/chunks/0 HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n" +
			strings.TrimSuffix(encodeChunked(part, 64<<10), "0\r\n\r\n"), true},
		{"small body held for replay", "PUT /2/0/files/1/chunks/0 HTTP/1.1\r\n" + host + "Content-Length: 1000\r\n\r\n" + string(part[:500]), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.obs.snapshot().requests)
			c := dialRaw(t, addr, h.ca, up.hostport)
			c.send(tc.raw)
			if tc.streamed {
				select {
				case <-arrived:
				case <-time.After(10 * time.Second):
					t.Fatal("the request did not reach the upstream")
				}
			}
			_ = c.conn.Close()
			if !tc.streamed {
				// The proxy finishes the request without the upstream.
				eventually(t, 10*time.Second, "the aborted request to end", func() bool {
					return len(h.obs.snapshot().requests) > before
				})
				select {
				case <-arrived:
					t.Fatal("an incomplete small body was sent upstream")
				default:
				}
				return
			}
			select {
			case r := <-ended:
				if r.err == nil || r.n >= declared {
					t.Errorf("the upstream read %d body bytes and %v, want an error before the end", r.n, r.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream request was still reading its body 10 s after the client went away")
			}
		})
	}
}
