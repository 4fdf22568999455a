package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fuzzToken is the access token of FuzzProxyRequest: it may reach the
// inject upstream only, and only for requests aimed at it.
const fuzzToken = "FUZZ-SECRET-TOKEN-7f3a"

// sink is a plain TCP listener standing for a tunnel host: it records
// every byte it receives.
type sink struct {
	mu   sync.Mutex
	data bytes.Buffer
}

func startSink(t testing.TB) (*sink, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s := &sink{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					s.mu.Lock()
					s.data.Write(buf[:n])
					s.mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return s, port
}

func (s *sink) contains(needle string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Contains(s.data.Bytes(), []byte(needle))
}

// FuzzProxyRequest writes arbitrary bytes to the proxy listener, either
// directly (first byte even) or inside an intercepted connection to the
// inject host (first byte odd). Whatever the bytes, the proxy must not
// panic, the token must reach no host but the inject upstream and no
// request there but one aimed at it, and no client may ever read it.
func FuzzProxyRequest(f *testing.F) {
	pki := newTestPKI(f)
	up := startUpstream(f, pki)
	// The upstream records what it received but echoes nothing back, so
	// that a token in the client's answer can only come from the proxy.
	// It also notes any trailer field that reached it: the proxy passes
	// none on.
	var trailers atomic.Int32
	up.setHandler(func(w http.ResponseWriter, r *http.Request, _ seen) bool {
		if len(r.Trailer) > 0 {
			trailers.Add(1)
		}
		_, _ = io.WriteString(w, "ok")
		return true
	})
	tunnelSink, sinkPort := startSink(f)
	tunnelHost := "localhost:" + sinkPort
	s := startServed(f, Config{Inject: []string{up.hostport}, Tunnel: []string{tunnelHost}, UpstreamRoots: up.roots}, func(c *Config) {
		c.Limits.ReadHeaderTimeout = time.Second
		c.Limits.MaxHeaderBytes = 8 << 10
		c.PlainHTTP = true
	})
	s.tokens.token = fuzzToken
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.ca.CertPEM())

	inside := func(reqs ...string) []byte { return append([]byte{1}, strings.Join(reqs, "")...) }
	outside := func(reqs ...string) []byte { return append([]byte{0}, strings.Join(reqs, "")...) }
	h := up.hostport
	for _, seed := range [][]byte{
		outside("CONNECT " + h + " HTTP/1.1\r\nHost: " + h + "\r\n\r\n"),
		outside("CONNECT " + tunnelHost + " HTTP/1.1\r\nHost: " + tunnelHost + "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		outside("GET http://" + h + "/ HTTP/1.1\r\nHost: " + h + "\r\n\r\n"),
		outside("CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n"),
		outside("CONNECT [::1]:443 HTTP/1.1\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\r\n"),
		outside("GARBAGE\r\n\r\n"),
		inside("GET /2/0/users/me HTTP/1.1\r\nHost: " + h + "\r\n\r\n"),
		inside("GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
		inside("GET https://evil.example/x HTTP/1.1\r\nHost: " + h + "\r\n\r\n"),
		inside("GET http://" + h + "/x HTTP/1.1\r\nHost: " + h + "\r\n\r\n"),
		inside("POST /x HTTP/1.1\r\nHost: " + h + "\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
		inside("POST /x HTTP/1.1\r\nHost: " + h + "\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /y HTTP/1.1\r\nHost: other\r\n\r\n"),
		inside("GET /x HTTP/1.1\r\nHost: " + h + "\r\nAuthorization: Basic YTpi\r\nProxy-Authorization: Basic YTpi\r\n\r\n"),
		inside("GET /x HTTP/1.0\r\n\r\n"),
		inside("CONNECT " + tunnelHost + " HTTP/1.1\r\nHost: " + tunnelHost + "\r\n\r\n"),
		inside("OPTIONS * HTTP/1.1\r\nHost: " + h + "\r\n\r\n"),
		// TRACE and CONNECT get 405 (TestTraceAndConnectRefused).
		inside("TRACE /2/0/users/me HTTP/1.1\r\nHost: " + h + "\r\n\r\n"),
		inside("CONNECT " + h + " HTTP/1.1\r\nHost: " + h + "\r\n\r\n"),
		outside("TRACE http://" + h + "/ HTTP/1.1\r\nHost: " + h + "\r\n\r\n"),
		// Ask the fuzz upstream for interim answers; the fuzzer may find more.
		inside("GET /2/0/users/me HTTP/1.1\r\nHost: " + h + "\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"),
		// A body that stops short of its declared length
		// (TestStalledBodyCutOff, TestStalledBodiesHoldLittleMemory).
		inside("POST /echo HTTP/1.1\r\nHost: " + h + "\r\nContent-Length: 1048576\r\n\r\nx"),
		outside("POST http://" + h + "/echo HTTP/1.1\r\nHost: " + h + "\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n"),
		// Fields named with '_' are dropped (TestUnderscoredFieldsDropped).
		inside("POST /echo HTTP/1.1\r\nHost: " + h + "\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"),
		// HTTP/1.0 without Host is for the CONNECT target.
		inside("GET /2/0/users/me HTTP/1.0\r\n\r\n"),
		// Request trailers are dropped (TestRequestTrailersAreNotForwarded).
		inside("POST /echo HTTP/1.1\r\nHost: " + h + "\r\nTrailer: Authorization, Proxy-Authorization, Host, Connection\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5\r\nhello\r\n0\r\nAuthorization: Basic YTpi\r\nProxy-Authorization: Basic YTpi\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
		outside("POST http://" + h + "/echo HTTP/1.1\r\nHost: " + h + "\r\nTrailer: Proxy-Authorization\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5\r\nhello\r\n0\r\nProxy-Authorization: Basic YTpi\r\n\r\n"),
	} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || len(data) > 64<<10 {
			return
		}
		before, logsBefore := len(up.requests()), len(s.logs.String())
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		var rw interface {
			io.ReadWriter
			CloseWrite() error
		} = conn.(*net.TCPConn)
		if data[0]%2 == 1 {
			if _, err := io.WriteString(conn, "CONNECT "+h+" HTTP/1.1\r\nHost: "+h+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT to the inject host: %v %v", resp, err)
			}
			tc := tls.Client(conn, &tls.Config{RootCAs: roots, ServerName: "localhost"})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("TLS: %v", err)
			}
			rw = tc
		}
		_, _ = rw.Write(data[1:])
		_ = rw.CloseWrite()
		answer, _ := io.ReadAll(rw)
		if bytes.Contains(answer, []byte(fuzzToken)) {
			t.Fatalf("the client read the token")
		}
		for _, r := range up.requests()[before:] {
			if strings.Contains(r.Authorization, fuzzToken) && !strings.EqualFold(r.Host, h) {
				t.Fatalf("the token went with a request for Host %q", r.Host)
			}
			if r.ProxyAuth != "" {
				t.Fatalf("Proxy-Authorization reached the upstream")
			}
		}
		if trailers.Load() != 0 {
			t.Fatalf("a request trailer reached the upstream")
		}
		if tunnelSink.contains(fuzzToken) {
			t.Fatalf("the token reached a tunnel host")
		}
		if logs := s.logs.String()[logsBefore:]; strings.Contains(logs, "panic serving") || strings.Contains(logs, fuzzToken) {
			t.Fatalf("the log shows a panic or the token:\n%s", logs)
		}
	})
}
