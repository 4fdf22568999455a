package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// echoUpstream answers each request with what arrived (request line, Host
// and every field, sorted) in an answer whose shape the path picks.
func echoUpstream(t *testing.T) *upstream {
	t.Helper()
	up := startUpstream(t, newTestPKI(t))
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s %s\n", r.Method, r.RequestURI, r.Host)
		fmt.Fprintf(&b, "body %d bytes, sha256 %.12s, transfer-encoding %q, trailer %q\n", s.BodyLen, s.BodySHA256, r.TransferEncoding, r.Trailer)
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range r.Header {
				if !yield(k) {
					return
				}
			}
		})
		for _, k := range keys {
			fmt.Fprintf(&b, "%s: %q\n", k, r.Header[k])
		}
		echo := b.String()
		h := w.Header()
		length := func() { h.Set("Content-Length", strconv.Itoa(len(echo))) }
		switch r.URL.Path {
		case "/close":
			h.Set("Connection", "close")
			length()
		case "/keep-alive":
			h.Set("Connection", "keep-alive")
			h.Set("Keep-Alive", "timeout=5")
			length()
		case "/streamed":
			_, _ = io.WriteString(w, echo[:10])
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, echo[10:])
			return true
		case "/no-content":
			w.WriteHeader(http.StatusNoContent)
			return true
		case "/not-modified":
			h.Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
			return true
		case "/denied":
			h.Set("WWW-Authenticate", "AnaplanAuthToken")
			length()
			w.WriteHeader(http.StatusUnauthorized)
		case "/denied-once":
			if r.Header.Get("Authorization") == "AnaplanAuthToken tok-1" {
				length()
				w.WriteHeader(http.StatusUnauthorized)
			} else {
				length()
			}
		case "/events":
			h.Set("Content-Type", "text/event-stream")
			length()
		case "/failed":
			length()
			w.WriteHeader(http.StatusInternalServerError)
		case "/no-date":
			h["Date"] = nil
			length()
		case "/fields":
			h.Set("X-Upstream", "1")
			h.Add("Set-Cookie", "a=1")
			h.Add("Set-Cookie", "b=2")
			h.Set("Proxy-Authenticate", "Basic")
			length()
		default:
			length()
		}
		_, _ = io.WriteString(w, echo)
		return true
	})
	return up
}

// exchangeRaw sends raw requests on one intercepted connection and reads
// as many answers, each as status, fields without Date, framing and body.
func exchangeRaw(t *testing.T, h *harness, hostport string, raws []string) []string {
	t.Helper()
	conn := intercepted(t, h.srv.Listener.Addr().String(), h.ca, hostport)
	br := bufio.NewReader(conn)
	var out []string
	for _, raw := range raws {
		if _, err := io.WriteString(conn, raw); err != nil {
			out = append(out, "write: "+err.Error())
			break
		}
		method, _, _ := strings.Cut(raw, " ")
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			out = append(out, "read: "+err.Error())
			break
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			out = append(out, "body: "+err.Error())
			break
		}
		_, dated := resp.Header["Date"]
		resp.Header.Del("Date")
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range resp.Header {
				if !yield(k) {
					return
				}
			}
		})
		var b strings.Builder
		fmt.Fprintf(&b, "%d close=%v length=%d chunked=%v dated=%v\n", resp.StatusCode, resp.Close, resp.ContentLength, len(resp.TransferEncoding) > 0, dated)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s: %q\n", k, resp.Header[k])
		}
		b.Write(body)
		out = append(out, b.String())
		if resp.Close {
			break
		}
	}
	return out
}

// TestFastPathMatchesGeneralPath sends the same requests, on keep-alive
// connections, through a proxy with the fast path and one without, and
// compares what the upstream saw and what the client got.
func TestFastPathMatchesGeneralPath(t *testing.T) {
	up, fast, general := twoProxies(t, 0, func(p *Proxy) { p.generalOnly = true })
	host := "Host: " + up.hostport + "\r\n"
	paths := []string{"/plain", "/close", "/keep-alive", "/streamed", "/no-content", "/not-modified",
		"/denied", "/denied-once", "/events", "/failed", "/no-date", "/fields"}
	variants := []struct {
		name string
		head string // after the request line
	}{
		{"bare", host},
		{"user fields", host + "User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Forwarded-Port: 443\r\nCookie: a=1\r\nX-Many: 1\r\nX-Many: 2\r\n"},
		{"odd case and spaces", strings.ToLower(host) + "x-anaplan-trace:   padded \t\r\naccept-encoding: gzip\r\n"},
		{"own Authorization", host + "Authorization: Basic dXNlcjpwYXNz\r\n"},
		{"Connection close", host + "Connection: close\r\n"},
		{"Pragma", host + "Pragma: no-cache\r\n"},
		{"forwarding fields", host + "X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n"},
		{"proxy credentials inside", host + "Proxy-Authorization: Basic YTpi\r\n"},
		{"TE trailers", host + "TE: trailers\r\n"},
	}
	targets := []string{"", "?includeAll=true&x=1", "?q=a%20b", "?a;b=1", "?bad=%zz"}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			var raws []string
			for _, p := range paths {
				for _, q := range targets {
					raws = append(raws, "GET "+p+q+" HTTP/1.1\r\n"+v.head+"\r\n")
				}
			}
			compareWays(t, up.hostport, raws, way{"fast path", fast}, way{"general way", general})
		})
	}
	compareMetrics(t, way{"fast path", fast}, way{"general way", general}, "download")
}

// twoProxies starts an echo upstream and two proxies that inject it, the
// second changed by other. Both hand out tok-1, then tok-2 once the
// upstream rejects tok-1. A readHeaderTimeout other than 0 replaces the
// default, for fuzz inputs that leave a head unfinished.
func twoProxies(t *testing.T, readHeaderTimeout time.Duration, other func(*Proxy)) (*upstream, *harness, *harness) {
	t.Helper()
	up := echoUpstream(t)
	cfg := Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots}
	cfg.Limits.ReadHeaderTimeout = readHeaderTimeout
	a, b := startProxy(t, cfg), startProxy(t, cfg)
	other(b.p)
	for _, h := range []*harness{a, b} {
		h.tokens.next = map[string]string{"tok-1": "tok-2"}
	}
	return up, a, b
}

// way is a proxy that forwards a certain way, named for the failures.
type way struct {
	name string
	h    *harness
}

// compareWays sends raws through proxies a and b, on keep-alive
// connections (an answer that closes one ends a batch), and fails at the
// first answer that differs.
func compareWays(t *testing.T, hostport string, raws []string, a, b way) {
	t.Helper()
	for len(raws) > 0 {
		aOut := exchangeRaw(t, a.h, hostport, raws)
		bOut := exchangeRaw(t, b.h, hostport, raws)
		for i := range max(len(aOut), len(bOut)) {
			var x, y string
			if i < len(aOut) {
				x = aOut[i]
			}
			if i < len(bOut) {
				y = bOut[i]
			}
			if x != y {
				t.Fatalf("request %.200q:\n%s:\n%s\n%s:\n%s", raws[i], a.name, x, b.name, y)
			}
		}
		if len(aOut) == 0 {
			t.Fatal("no answer")
		}
		raws = raws[len(aOut):]
	}
}

// compareMetrics checks that proxies a and b counted the same requests,
// replays and bytes, that a has none in flight, and that bytes were
// counted in direction.
func compareMetrics(t *testing.T, a, b way, direction string) {
	t.Helper()
	x, y := a.h.obs.snapshot(), b.h.obs.snapshot()
	for _, l := range [][]string{x.requests, y.requests, x.replays, y.replays} {
		slices.Sort(l)
	}
	if !reflect.DeepEqual(x.requests, y.requests) || !reflect.DeepEqual(x.replays, y.replays) {
		t.Errorf("metrics differ:\n%s: %v %v\n%s: %v %v", a.name, x.requests, x.replays, b.name, y.requests, y.replays)
	}
	if x.inFlight != 0 || x.bytes[direction] == 0 || !reflect.DeepEqual(x.bytes, y.bytes) {
		t.Errorf("%s: in flight %d, bytes %v; %s: bytes %v", a.name, x.inFlight, x.bytes, b.name, y.bytes)
	}
}

// FuzzFastPathMatchesGeneralPath sends one GET, with a head as the fuzzer
// makes it, through a proxy with the fast path and one without, and
// compares what the client got, which includes what the upstream saw.
func FuzzFastPathMatchesGeneralPath(f *testing.F) {
	for _, seed := range []string{
		"/plain?includeAll=true HTTP/1.1\r\nAccept: */*\r\nUser-Agent: curl/8.5.0\r\n",
		"/fields HTTP/1.1\r\nX-A:  b \r\nx-a: c\r\n",
		"/close HTTP/1.1\r\nConnection: keep-alive\r\n",
		"/streamed?q=%41 HTTP/1.1\r\nCookie: a=1; b=2\r\n",
		"/denied HTTP/1.1\r\nAuthorization: AnaplanAuthToken placeholder\r\n",
		"/no-date?a;b HTTP/1.1\r\nPragma: no-cache\r\n",
		"/plain?x=1\r\nAccept: */*\r\n",                                     // no HTTP version: malformed
		"/fields HTTP/1.1\r\nX_Custom: 1\r\nTransfer_Encoding: chunked\r\n", // dropped: names with '_'
		"/plain HTTP/1.0\r\nAccept: */*\r\n",                                // HTTP/1.0 with the Host added below
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		// Heads that would wait for a body or the rest of a head only
		// measure the timeouts.
		lower := strings.ToLower(rest)
		if strings.Contains(lower, "content-length") || strings.Contains(lower, "transfer-encoding") ||
			strings.Contains(rest, "\r\n\r\n") || strings.Contains(rest, "\n\n") || strings.Contains(lower, "expect") {
			return
		}
		up, fast, general := twoProxies(t, 2*time.Second, func(p *Proxy) { p.generalOnly = true })
		raw := []string{"GET " + rest + "\r\nHost: " + up.hostport + "\r\n\r\n"}
		fastOut := exchangeRaw(t, fast, up.hostport, raw)
		generalOut := exchangeRaw(t, general, up.hostport, raw)
		if !reflect.DeepEqual(fastOut, generalOut) {
			t.Fatalf("request %q:\nfast path:\n%q\ngeneral way:\n%q", raw[0], fastOut, generalOut)
		}
	})
}

// TestDirectPathMatchesTransport sends the same requests with bodies (of
// a known length and chunked) and bodiless ones of methods other than
// GET, on keep-alive connections, through a proxy that sends them on its
// pooled upstream connections and one that uses the shared transport (as net/http sends them), and compares what the upstream saw,
// what the client got and the metrics.
func TestDirectPathMatchesTransport(t *testing.T) {
	up, direct, shared := twoProxies(t, 0, func(p *Proxy) { p.transportOnly = true })
	host := "Host: " + up.hostport + "\r\n"
	paths := []string{"/plain", "/close", "/keep-alive", "/streamed", "/no-content", "/denied", "/denied-once", "/failed", "/fields"}
	big := strings.Repeat("0123456789abcdef", (maxReplayBody+4096)/16) // not replayable
	requests := []struct {
		name string
		head string // method, then the fields after the request line
		body string
	}{
		{"POST json", "POST|" + host + "Content-Type: application/json\r\n", `{"localeName":"en_US"}`},
		{"PUT chunked", "PUT|" + host + "Transfer-Encoding: chunked\r\n", encodeChunked(patternBytes(150_000), 1000, 64<<10)},
		{"POST chunked, empty", "POST|" + host + "Transfer-Encoding: chunked\r\n", "0\r\n\r\n"},
		{"POST chunked with trailer", "POST|" + host + "Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n", "3\r\nabc\r\n0\r\nX-Checksum: 900150983cd2\r\n\r\n"},
		{"POST empty", "POST|" + host + "Content-Length: 0\r\n", ""},
		{"POST without length", "POST|" + host, ""},
		{"PUT chunk", "PUT|" + host + "Content-Type: application/octet-stream\r\n", strings.Repeat("x", 100_000)},
		{"PUT over the replay limit", "PUT|" + host + "Content-Type: application/octet-stream\r\n", big},
		{"PATCH", "PATCH|" + host, "a=1"},
		{"DELETE", "DELETE|" + host, ""},
		{"DELETE with body", "DELETE|" + host, "[1,2]"},
		{"OPTIONS", "OPTIONS|" + host, ""},
		{"HEAD", "HEAD|" + host, ""},
		{"own Authorization", "POST|" + host + "Authorization: Basic dXNlcjpwYXNz\r\n", "x"},
		{"Connection close", "POST|" + host + "Connection: close\r\n", "x"},
		{"user fields", "POST|" + host + "User-Agent: python-requests/2.31\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1\r\nCookie: a=1\r\n", "x=1"},
	}
	for _, rq := range requests {
		t.Run(rq.name, func(t *testing.T) {
			method, fields, _ := strings.Cut(rq.head, "|")
			if rq.body != "" && !strings.Contains(fields, "chunked") {
				if !strings.Contains(fields, "Content-Length") {
					fields += "Content-Length: " + strconv.Itoa(len(rq.body)) + "\r\n"
				}
			}
			var raws []string
			for _, p := range paths {
				for _, q := range []string{"", "?a;b=1"} {
					raws = append(raws, method+" "+p+q+" HTTP/1.1\r\n"+fields+"\r\n"+rq.body)
				}
			}
			compareWays(t, up.hostport, raws, way{"direct path", direct}, way{"shared transport", shared})
		})
	}
	compareMetrics(t, way{"direct path", direct}, way{"shared transport", shared}, "upload")
}

// FuzzDirectPathMatchesTransport sends one request with a body, its head
// fields and body as the fuzzer makes them, sent with a Content-Length or
// chunked, through a proxy that uses its pooled upstream connections and
// one that uses the shared transport, and compares what
// the client got, which includes what the upstream saw.
func FuzzDirectPathMatchesTransport(f *testing.F) {
	f.Add(uint8(0), "/plain?a=1 HTTP/1.1\r\nContent-Type: application/json\r\n", []byte(`{"a":1}`), false)
	f.Add(uint8(1), "/denied-once HTTP/1.1\r\nX-A: 1\r\n", []byte("chunk"), true)
	f.Add(uint8(2), "/fields?a;b HTTP/1.1\r\nTE: trailers\r\n", []byte{}, false)
	f.Add(uint8(3), "/close HTTP/1.1\r\nConnection: close\r\n", bytes.Repeat([]byte("z"), 20000), true)
	f.Add(uint8(3), "/malformed\r\nConnection: close\r\n", bytes.Repeat([]byte("z"), 20000), true)
	f.Add(uint8(0), "/fields HTTP/1.1\r\nTrailer: Authorization\r\nX_Custom: 1\r\n", []byte("body"), true)
	f.Add(uint8(1), "/plain HTTP/1.1\r\nTE: trailers\r\nContent_Length: 1\r\n", []byte("body"), false)
	methods := []string{"POST", "PUT", "PATCH", "DELETE"}
	f.Fuzz(func(t *testing.T, m uint8, rest string, body []byte, chunked bool) {
		// Heads that frame the body themselves, or wait for more, only
		// measure the timeouts.
		lower := strings.ToLower(rest)
		if strings.Contains(lower, "content-length") || strings.Contains(lower, "transfer-encoding") ||
			strings.Contains(rest, "\r\n\r\n") || strings.Contains(rest, "\n\n") || strings.Contains(lower, "expect") ||
			len(body) > 64<<10 {
			return
		}
		framing := "Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
		payload := string(body)
		if chunked {
			framing = "Transfer-Encoding: chunked\r\n"
			payload = "0\r\n\r\n"
			if len(body) > 0 {
				payload = encodeChunked(body, 4096)
			}
		}
		up, direct, shared := twoProxies(t, 2*time.Second, func(p *Proxy) { p.transportOnly = true })
		raw := []string{methods[int(m)%len(methods)] + " " + rest + "\r\nHost: " + up.hostport + "\r\n" + framing + "\r\n" + payload}
		directOut := exchangeRaw(t, direct, up.hostport, raw)
		sharedOut := exchangeRaw(t, shared, up.hostport, raw)
		if !reflect.DeepEqual(directOut, sharedOut) {
			t.Fatalf("request %q:\ndirect path:\n%q\nshared transport:\n%q", raw[0], directOut, sharedOut)
		}
	})
}
