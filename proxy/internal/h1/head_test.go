package h1

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestSplitField(t *testing.T) {
	tests := []struct {
		line        string
		name, value string
		ok          bool
	}{
		{"Host: example.com", "Host", "example.com", true},
		{"X-A: \t a b \t", "X-A", "a b", true},
		{"X-Empty:", "X-Empty", "", true},
		{"X-Obs: caf\xc3\xa9", "X-Obs", "caf\xc3\xa9", true},
		{": no name", "", "", false},
		{"no colon", "", "", false},
		{"X A: space in name", "", "", false},
		{"X-A : space before colon", "", "", false},
		{"Bad\x01Name: x", "", "", false},
		{"X-A: a\x00b", "", "", false},
		{"X-A: a\rb", "", "", false},
		{"X-A: a\x7fb", "", "", false},
	}
	for _, tt := range tests {
		name, value, ok := SplitField([]byte(tt.line))
		if ok != tt.ok || string(name) != tt.name || string(value) != tt.value {
			t.Errorf("SplitField(%q) = %q, %q, %v; want %q, %q, %v", tt.line, name, value, ok, tt.name, tt.value, tt.ok)
		}
	}
}

func TestParseLength(t *testing.T) {
	tests := []struct {
		v  string
		n  int64
		ok bool
	}{
		{"0", 0, true},
		{"42", 42, true},
		{"9223372036854775807", 1<<63 - 1, true},
		{"9223372036854775808", 0, false},
		{"", 0, false},
		{"-0", 0, false},
		{"+5", 0, false},
		{"4, 40", 0, false},
		{"0x10", 0, false},
	}
	for _, tt := range tests {
		n, ok := ParseLength([]byte(tt.v))
		if n != tt.n || ok != tt.ok {
			t.Errorf("ParseLength(%q) = %d, %v; want %d, %v", tt.v, n, ok, tt.n, tt.ok)
		}
	}
}

func TestStartLines(t *testing.T) {
	if m, target, proto, ok := RequestLine([]byte("GET /a?b HTTP/1.1")); !ok || string(m) != "GET" || string(target) != "/a?b" || string(proto) != "HTTP/1.1" {
		t.Errorf("RequestLine: %q %q %q %v", m, target, proto, ok)
	}
	for _, bad := range []string{"GET /a", "GET  /a HTTP/1.1", "GET /a HTTP/1.1 x", "GET"} {
		if _, _, _, ok := RequestLine([]byte(bad)); ok {
			t.Errorf("RequestLine(%q) accepted", bad)
		}
	}
	tests := []struct {
		head string
		code int
		ok   bool
	}{
		{"HTTP/1.1 200 OK\r\n", 200, true},
		{"HTTP/1.1 204\r\n", 204, true},
		{"HTTP/1.0 103 Early Hints\r\n", 103, true},
		{"HTTP/1.1 2x0 OK\r\n", 0, false},
		{"HTTP/1.1 2000 OK\r\n", 0, false},
		{"HTTP/1.1 20", 0, false},
		{"ICY 200 OK\r\n", 0, false},
	}
	for _, tt := range tests {
		_, code, ok := StatusLine([]byte(tt.head))
		if code != tt.code || ok != tt.ok {
			t.Errorf("StatusLine(%q) = %d, %v; want %d, %v", tt.head, code, ok, tt.code, tt.ok)
		}
	}
}

// TestOneFieldPolicy checks that both directions leave out a field that
// would break the framing, never rewrite it, and say so.
func TestOneFieldPolicy(t *testing.T) {
	bad := http.Header{
		"X-Good":        {"1"},
		"X-Injected":    {"a\r\nX-Evil: 1"},
		"Bad Name":      {"2"},
		"X-Also-Good":   {"3"},
		"X-Control-Nul": {"a\x00b"},
	}
	var resp bytes.Buffer
	bw := bufio.NewWriter(&resp)
	err := WriteResponseHead(bw, true, 200, bad, false)
	_ = bw.Flush()
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("WriteResponseHead error = %v, want a *FieldError", err)
	}
	got := resp.String()
	for _, want := range []string{"HTTP/1.1 200 OK\r\n", "X-Good: 1\r\n", "X-Also-Good: 3\r\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("answer head %q lacks %q", got, want)
		}
	}
	for _, never := range []string{"X-Evil", "X-Injected", "Bad Name", "X-Control-Nul"} {
		if strings.Contains(got, never) {
			t.Errorf("answer head %q holds %q", got, never)
		}
	}

	req := &http.Request{Method: "GET", URL: &url.URL{Path: "/"}, Host: "example.com", Header: http.Header{"X-Injected": {"a\nb"}}}
	var out bytes.Buffer
	bw = bufio.NewWriter(&out)
	if err := WriteRequestHead(bw, req); !errors.As(err, &fe) || fe.Name != "X-Injected" {
		t.Errorf("WriteRequestHead error = %v, want a *FieldError for X-Injected", err)
	}
	if strings.Contains(fe.Error(), "a\nb") {
		t.Errorf("the error %q shows the value", fe.Error())
	}
	req.Header = http.Header{"X-A": {"1"}}
	req.Method = "GE T"
	if err := WriteRequestHead(bufio.NewWriter(&out), req); err == nil {
		t.Error("a method that is not a token was written")
	}
}

func TestReadResponseHeadKeepsConnection(t *testing.T) {
	raw := "HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\nX-Secret: s\r\nContent-Length: 2\r\n\r\nok"
	for _, size := range []int{16, 4096} { // head split over reads, and whole in the buffer
		src := &HeadSource{R: strings.NewReader(raw)}
		br := bufio.NewReaderSize(src, size)
		_, _ = br.Peek(1)
		resp, err := ReadResponseHead(br, src, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("buffer %d: %v", size, err)
		}
		if got := resp.Header["Connection"]; len(got) != 1 || got[0] != "X-Secret, close" {
			t.Errorf("buffer %d: Connection = %q", size, got)
		}
	}
	if got := ConnectionOfFinal([]byte("HTTP/1.1 103 Early Hints\r\nConnection: a\r\n\r\nHTTP/1.1 200 OK\r\nConnection: b, close\r\n\r\n")); len(got) != 1 || got[0] != "b, close" {
		t.Errorf("ConnectionOfFinal = %q", got)
	}
}

func TestRemoveHopByHop(t *testing.T) {
	h := http.Header{
		"Connection":        {"keep-alive, X-Secret", "x-other"},
		"X-Secret":          {"s"},
		"X-Other":           {"o"},
		"Keep-Alive":        {"timeout=5"},
		"Proxy-Connection":  {"keep-alive"},
		"Te":                {"trailers"},
		"Transfer-Encoding": {"chunked"},
		"Upgrade":           {"h2c"},
		"X-Public":          {"1"},
	}
	RemoveHopByHop(h)
	if len(h) != 1 || h.Get("X-Public") != "1" {
		t.Errorf("after RemoveHopByHop: %v, want only X-Public", h)
	}
	for _, name := range []string{"connection", "KEEP-ALIVE", "Proxy-Authorization"} {
		if !IsHopByHopName([]byte(name)) {
			t.Errorf("IsHopByHopName(%q) = false", name)
		}
	}
	if IsHopByHop("X-Public") || IsHopByHopName([]byte("x-public")) {
		t.Error("X-Public taken for a hop-by-hop field")
	}
}
