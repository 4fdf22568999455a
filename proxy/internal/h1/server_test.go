package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/loopbackca"
)

// testServer runs an h1.Server on a loopback listener, with hooks that
// record what they hear.
type testServer struct {
	s     *Server
	addr  string
	roots *x509.CertPool

	mu       sync.Mutex
	refusals []RequestError
	panics   []string
	hosts    []string // r.Host of each request the handler saw
}

func startServer(t *testing.T, configure func(*testServer)) *testServer {
	t.Helper()
	cert, roots := selfSigned(t)
	ts := &testServer{roots: roots}
	ts.s = &Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ts.mu.Lock()
			ts.hosts = append(ts.hosts, r.Host)
			ts.mu.Unlock()
			if r.URL.Path == "/panic" {
				panic("handler failed")
			}
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(body))
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       5 * time.Second,
		BodyTimeout:       5 * time.Second,
		MaxHeaderBytes:    1 << 10,
		Refused: func(_ context.Context, w io.Writer, _ string, e *RequestError) {
			ts.mu.Lock()
			ts.refusals = append(ts.refusals, *e)
			ts.mu.Unlock()
			fmt.Fprintf(w, "HTTP/1.1 %d Refused\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", e.Status)
		},
		Panicked: func(_ context.Context, v any, _ []byte) {
			ts.mu.Lock()
			ts.panics = append(ts.panics, fmt.Sprint(v))
			ts.mu.Unlock()
		},
	}
	if configure != nil {
		configure(ts)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ts.s.NewConn(conn, "api.example:443").Serve(context.Background())
			}()
		}
	}()
	return ts
}

// exchange sends raw on a new connection and returns everything the
// server wrote until it closed the connection.
func (ts *testServer) exchange(t *testing.T, raw string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: ts.roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(conn)
	return string(out)
}

// selfSigned returns a leaf for localhost from a throwaway loopback CA,
// and the pool that trusts it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	ca, err := loopbackca.New("h1 test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf("localhost")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	return *leaf, roots
}

// TestServerRefusesBeforeTheHandler checks the requests the server
// refuses itself: what the Refused hook hears (the status, the method and
// the reason the access log gets), that the handler never sees them, and
// that the connection ends after the refusal, also when a valid
// request came before it in the same read.
func TestServerRefusesBeforeTheHandler(t *testing.T) {
	tests := []struct {
		name       string
		raw        string
		enterBody  func() (func(), *RequestError)
		wantOut    []string // substrings of the output, in order
		want       RequestError
		wantServed int
	}{
		{
			name:    "Content-Length with Transfer-Encoding",
			raw:     "POST /a HTTP/1.1\r\nHost: api.example\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			wantOut: []string{"HTTP/1.1 400 Refused"},
			want:    RequestError{Status: 400, Method: "POST", Reason: "bad_framing", Message: "the request has both Content-Length and Transfer-Encoding: refused as a request smuggling attempt"},
		},
		{
			name:    "head over MaxHeaderBytes",
			raw:     "GET /a HTTP/1.1\r\nHost: api.example\r\nX-Big: " + strings.Repeat("a", 2<<10) + "\r\n\r\n",
			wantOut: []string{"HTTP/1.1 431 Refused"},
			want:    RequestError{Status: 431, Method: "GET", Reason: "bad_framing", Message: "the request's header block is larger than 1024 bytes"},
		},
		{
			// Nothing of a read that holds a refused request is served.
			name:    "pipelined behind a valid request",
			raw:     "GET /first HTTP/1.1\r\nHost: api.example\r\n\r\nGET /b HTTP/1.1\r\nHost: api.example\r\nUpgrade: websocket\r\n\r\n",
			wantOut: []string{"HTTP/1.1 400 Refused"},
			want:    RequestError{Status: 400, Method: "GET", Reason: "bad_framing", Message: "protocol upgrades are not supported through this proxy"},
		},
		{
			name:    "unknown expectation",
			raw:     "PUT /a HTTP/1.1\r\nHost: api.example\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx",
			wantOut: []string{"HTTP/1.1 417 Refused"},
			want:    RequestError{Status: 417, Method: "PUT", Reason: "bad_request", Message: "the only expectation served is Expect: 100-continue"},
		},
		{
			name:    "HTTP/1.1 without Host",
			raw:     "GET /a HTTP/1.1\r\n\r\n",
			wantOut: []string{"HTTP/1.1 400 Refused"},
			want:    RequestError{Status: 400, Method: "GET", Reason: "bad_request", Message: "an HTTP/1.1 request needs a Host header"},
		},
		{
			name: "body not admitted",
			raw:  "POST /a HTTP/1.1\r\nHost: api.example\r\nContent-Length: 1\r\n\r\nx",
			enterBody: func() (func(), *RequestError) {
				return nil, &RequestError{Status: 503, Reason: "busy", Message: "no room", RetryAfter: time.Second}
			},
			wantOut: []string{"HTTP/1.1 503 Refused"},
			want:    RequestError{Status: 503, Method: "POST", Reason: "busy", Message: "no room", RetryAfter: time.Second},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(ts *testServer) { ts.s.EnterBody = tc.enterBody })
			out := ts.exchange(t, tc.raw)
			rest := out
			for _, want := range tc.wantOut {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Fatalf("output %q lacks %q (in order)", out, want)
				}
				rest = rest[i+len(want):]
			}
			ts.mu.Lock()
			defer ts.mu.Unlock()
			if len(ts.refusals) != 1 || ts.refusals[0] != tc.want {
				t.Errorf("Refused heard %+v, want %+v", ts.refusals, tc.want)
			}
			if len(ts.hosts) != tc.wantServed {
				t.Errorf("the handler served %d requests, want %d", len(ts.hosts), tc.wantServed)
			}
		})
	}
}

// TestServerServesKeepAliveAndHTTP10 checks the requests the server hands
// to its handler: kept-alive requests on one connection, pipelined ones
// answered in order, and an HTTP/1.0 request without Host given the
// connection's authority.
func TestServerServesKeepAliveAndHTTP10(t *testing.T) {
	ts := startServer(t, nil)
	out := ts.exchange(t, "GET /a HTTP/1.1\r\nHost: api.example\r\n\r\n"+
		"POST /b HTTP/1.1\r\nHost: api.example\r\nContent-Length: 3\r\n\r\nabc"+
		"GET /c HTTP/1.0\r\n\r\n")
	br := bufio.NewReader(strings.NewReader(out))
	for _, want := range []string{"GET /a 0", "POST /b 3", "GET /c 0"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading the answer %q: %v (output %q)", want, err, out)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != want {
			t.Errorf("got %d %q, want 200 %q", resp.StatusCode, body, want)
		}
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if got := strings.Join(ts.hosts, ","); got != "api.example,api.example,api.example:443" {
		t.Errorf("hosts %s", got)
	}
}

// TestServerFastHook checks the Fast hook's seam: a request it serves
// from the bytes of its head never reaches the handler; one it takes and
// hands back with ServeGeneral is parsed and served by the handler it
// gives, with the connection kept.
func TestServerFastHook(t *testing.T) {
	ts := startServer(t, func(ts *testServer) {
		ts.s.Fast = func(x *FastExchange) (keep, served bool) {
			buf := x.Buffered()
			end := strings.Index(string(buf), "\r\n\r\n")
			switch {
			case end < 0 || !strings.HasPrefix(string(buf), "GET /fast"):
				return false, false
			case strings.HasPrefix(string(buf), "GET /fast-general"):
				x.Take(end + 4)
				return x.ServeGeneral(func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprintf(w, "general %s", r.URL.Path)
				}), true
			}
			x.Take(end + 4)
			_, _ = io.WriteString(x.Writer(), "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast")
			return x.Writer().Flush() == nil, true
		}
	})
	out := ts.exchange(t, "GET /fast HTTP/1.1\r\nHost: api.example\r\n\r\n"+
		"GET /fast-general HTTP/1.1\r\nHost: api.example\r\n\r\n"+
		"GET /slow HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(strings.NewReader(out))
	for _, want := range []string{"fast", "general /fast-general", "GET /slow 0"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading the answer %q: %v (output %q)", want, err, out)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != want {
			t.Errorf("got %q, want %q", body, want)
		}
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.hosts) != 1 {
		t.Errorf("the handler served %d requests, want 1 (/slow)", len(ts.hosts))
	}
}

// TestServerHandlerPanic checks that a handler's panic is reported and
// ends the connection without a whole-looking answer.
func TestServerHandlerPanic(t *testing.T) {
	ts := startServer(t, nil)
	out := ts.exchange(t, "GET /panic HTTP/1.1\r\nHost: api.example\r\n\r\nGET /a HTTP/1.1\r\nHost: api.example\r\n\r\n")
	if out != "" {
		t.Errorf("output %q after a panic, want none", out)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.panics) != 1 || ts.panics[0] != "handler failed" {
		t.Errorf("Panicked heard %q", ts.panics)
	}
}
