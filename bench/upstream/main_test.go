package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRoutes(t *testing.T) {
	srv := httptest.NewServer(newHandler())
	t.Cleanup(srv.Close)
	tests := []struct {
		name, method, path, auth string
		body                     string
		status                   int
		wantLen                  int64  // -1: do not check
		wantBody                 string // "": do not check
		wantScheme               string
	}{
		{"small", "GET", "/small", "", "", 200, 100, "", "none"},
		{"stream exact size", "GET", "/stream?bytes=1000003", "Bearer secret-token", "", 200, 1000003, "", "Bearer"},
		{"stream nothing", "GET", "/stream?bytes=0", "", "", 200, 0, "", "none"},
		{"stream bad size", "GET", "/stream?bytes=-1", "", "", 400, -1, "", ""},
		{"stream no size", "GET", "/stream", "", "", 400, -1, "", ""},
		{"upload counts", "PUT", "/upload", "AnaplanAuthToken abc.def", strings.Repeat("z", 700001), 200, -1, "received 700001 bytes\n", "AnaplanAuthToken"},
		{"upload is PUT only", "GET", "/upload", "", "", 405, -1, "", ""},
		{"unknown path", "GET", "/nothing", "", "", 404, -1, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tt.status, b)
			}
			if tt.wantLen >= 0 && int64(len(b)) != tt.wantLen {
				t.Errorf("body of %d bytes, want %d", len(b), tt.wantLen)
			}
			if tt.wantBody != "" && string(b) != tt.wantBody {
				t.Errorf("body %q, want %q", b, tt.wantBody)
			}
			if got := resp.Header.Get("Bench-Auth-Scheme"); tt.wantScheme != "" && got != tt.wantScheme {
				t.Errorf("Bench-Auth-Scheme %q, want %q", got, tt.wantScheme)
			}
			if _, cred, ok := strings.Cut(tt.auth, " "); ok && strings.Contains(string(b)+resp.Header.Get("Bench-Auth-Scheme"), cred) {
				t.Errorf("the credential %q came back to the client", cred)
			}
		})
	}
}
