package proxy

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// writeUsers writes an htpasswd file with bcrypt hashes (at the minimum
// cost, for speed) of the given user:password pairs.
func writeUsers(t *testing.T, pairs ...string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range pairs {
		name, pw, _ := strings.Cut(p, ":")
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", name, h)
	}
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func loadUsers(t *testing.T, pairs ...string) *Users {
	t.Helper()
	u, err := LoadHTPasswd(writeUsers(t, pairs...))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestLoadHTPasswd(t *testing.T) {
	good, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		wantErr string // "" = loads
	}{
		{"bcrypt with comments", "# proxy users\n\nalice:" + string(good) + "\n", 0o600, ""},
		{"group-readable is fine", "alice:" + string(good) + "\n", 0o640, ""},
		{"$2y$ from Apache htpasswd", "alice:$2y$" + string(good[4:]) + "\n", 0o600, ""},
		{"SHA1 refused", "alice:" + string(good) + "\nbob:{SHA}fEqNCco3Yq9h5ZUglD3CZJT4lBs=\n", 0o600, "line 2: user \"bob\": only bcrypt hashes are accepted"},
		{"apr1 MD5 refused", "carol:$apr1$abc$def\n", 0o600, "line 1: user \"carol\": only bcrypt"},
		{"crypt refused", "dave:abJnggxhB/yWI\n", 0o600, "line 1: user \"dave\": only bcrypt"},
		{"malformed bcrypt", "erin:$2a$10$short\n", 0o600, "line 1: user \"erin\": malformed bcrypt hash"},
		{"no colon", "frank\n", 0o600, "line 1: not \"user:hash\""},
		{"duplicate user", "alice:" + string(good) + "\nalice:" + string(good) + "\n", 0o600, "line 2: user \"alice\" appears twice"},
		{"empty", "# nobody\n", 0o600, "names no user"},
		{"world-readable refused", "alice:" + string(good) + "\n", 0o644, "chmod 640"},
		{"group-writable refused", "alice:" + string(good) + "\n", 0o660, "chmod 640"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "users")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			u, err := LoadHTPasswd(path)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("LoadHTPasswd: %v", err)
				}
				basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:pw"))
				if _, ok := u.check(basic); !ok {
					t.Error("alice's password was not accepted")
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadHTPasswd accepted the file, want an error with %q", tc.wantErr)
			}
			mustContain(t, "error", err.Error(), tc.wantErr)
			if strings.HasPrefix(tc.wantErr, "line ") && !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
	if _, err := LoadHTPasswd(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing file loaded")
	}
}

// connectWith sends a CONNECT with the given Proxy-Authorization ("" for
// none) and returns the answer and its body.
func connectWith(t *testing.T, proxyAddr, target, proxyAuth string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n", target, target)
	if proxyAuth != "" {
		req += "Proxy-Authorization: " + proxyAuth + "\r\n"
	}
	fmt.Fprint(conn, req+"\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("reading CONNECT answer: %v", err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, ""
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func basicAuth(user, pw string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
}

func TestProxyAuthentication(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots, Users: loadUsers(t, "alice:s3cret", "bob:hunter2")})
	addr := h.srv.Listener.Addr().String()

	tests := []struct {
		name, auth string
		wantStatus int
		wantBody   string
	}{
		{"no credentials", "", 407, "proxy authentication required"},
		{"wrong password", basicAuth("alice", "wrong"), 407, "proxy authentication failed"},
		{"unknown user", basicAuth("mallory", "s3cret"), 407, "proxy authentication failed"},
		{"another user's password", basicAuth("bob", "s3cret"), 407, "proxy authentication failed"},
		{"not Basic", "Bearer s3cret", 407, "proxy authentication failed"},
		{"garbage", "Basic ???", 407, "proxy authentication failed"},
		{"right credentials", basicAuth("alice", "s3cret"), 200, ""},
		{"right credentials again (cached)", basicAuth("alice", "s3cret"), 200, ""},
	}
	failures := 0
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := connectWith(t, addr, up.hostport, tc.auth)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
			}
			if tc.wantStatus != 407 {
				return
			}
			failures++
			if got := resp.Header.Get("Proxy-Authenticate"); !strings.HasPrefix(got, `Basic realm="anaplan-proxy"`) {
				t.Errorf("Proxy-Authenticate = %q", got)
			}
			mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=http_request_denied")
			mustContain(t, "body", body, "anaplan-proxy: "+tc.wantBody)
			if strings.Count(body, "\n") != 1 {
				t.Errorf("body %q is not one line", body)
			}
		})
	}
	if len(up.requests()) != 0 {
		t.Errorf("the upstream saw %d requests from CONNECTs alone", len(up.requests()))
	}
	if got := h.obs.snapshot().authFailures; got != failures {
		t.Errorf("ProxyAuthFailure calls = %d, want %d", got, failures)
	}

	t.Run("a client with credentials gets the token, the upstream no proxy credentials", func(t *testing.T) {
		c := h.client(t)
		c.Transport.(*http.Transport).Proxy = func(*http.Request) (*url.URL, error) {
			return url.Parse("http://alice:s3cret@" + addr)
		}
		resp, err := c.Get("https://" + up.hostport + "/2/0/users/me")
		if err != nil {
			t.Fatal(err)
		}
		s := decodeSeen(t, resp)
		if resp.StatusCode != 200 || s.Authorization != "AnaplanAuthToken tok-1" || s.ProxyAuth != "" {
			t.Errorf("got %d, upstream saw Authorization %q and Proxy-Authorization %q", resp.StatusCode, s.Authorization, s.ProxyAuth)
		}
		eventually(t, 5*time.Second, "the access log line naming the user", func() bool {
			return strings.Contains(h.logs.String(), `"user":"alice"`)
		})
		if strings.Contains(h.logs.String(), "s3cret") || strings.Contains(h.logs.String(), basicAuth("alice", "s3cret")[6:]) {
			t.Error("the log carries the proxy password")
		}
	})
}

func TestAuthFailuresAreRateLimited(t *testing.T) {
	h := startProxy(t, Config{Tunnel: []string{"example.com"}, Users: loadUsers(t, "alice:s3cret")})
	addr := h.srv.Listener.Addr().String()
	for i := range authFailBurst {
		if resp, _ := connectWith(t, addr, "example.com:443", basicAuth("alice", fmt.Sprint("guess", i))); resp.StatusCode != 407 {
			t.Fatalf("attempt %d: status %d, want 407", i, resp.StatusCode)
		}
	}
	// Now even the right password is refused until the allowance refills:
	// guessing costs time, not just CPU.
	resp, body := connectWith(t, addr, "example.com:443", basicAuth("alice", "s3cret"))
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("after %d failures: status %d, want 429 (body %q)", authFailBurst, resp.StatusCode, body)
	}
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After = %q, want a wait", ra)
	}
	mustContain(t, "body", body, "too many failed proxy authentications")
	if got := h.obs.snapshot().authFailures; got != authFailBurst+1 {
		t.Errorf("ProxyAuthFailure calls = %d, want %d", got, authFailBurst+1)
	}
}

func TestClientAddressControl(t *testing.T) {
	users := loadUsers(t, "alice:s3cret")
	tests := []struct {
		name       string
		allow      []string
		users      *Users
		remote     string
		auth       string
		wantStatus int
		wantBody   string
	}{
		{"loopback without controls", nil, nil, "127.0.0.1:5000", "", 400, "forward proxy"},
		{"IPv6 loopback without controls", nil, nil, "[::1]:5000", "", 400, "forward proxy"},
		{"remote without controls", nil, nil, "192.0.2.7:5000", "", 403, "only loopback clients"},
		{"in allow_cidrs", []string{"192.0.2.0/24"}, nil, "192.0.2.7:5000", "", 400, "forward proxy"},
		{"mapped address in allow_cidrs", []string{"192.0.2.0/24"}, nil, "[::ffff:192.0.2.7]:5000", "", 400, "forward proxy"},
		{"outside allow_cidrs", []string{"192.0.2.0/24"}, nil, "198.51.100.1:5000", "", 403, "client address 198.51.100.1 is not allowed"},
		{"loopback outside allow_cidrs", []string{"192.0.2.0/24"}, nil, "127.0.0.1:5000", "", 403, "client address 127.0.0.1 is not allowed"},
		{"users alone admit any address that authenticates", nil, users, "198.51.100.1:5000", basicAuth("alice", "s3cret"), 400, "forward proxy"},
		{"users alone: no credentials", nil, users, "198.51.100.1:5000", "", 407, "proxy authentication required"},
		{"both: address checked first", []string{"192.0.2.0/24"}, users, "198.51.100.1:5000", basicAuth("alice", "s3cret"), 403, "not allowed"},
		{"both: right address, no credentials", []string{"192.0.2.0/24"}, users, "192.0.2.9:5000", "", 407, "proxy authentication required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var allow []netip.Prefix
			for _, c := range tc.allow {
				allow = append(allow, netip.MustParsePrefix(c))
			}
			p, err := New(Config{Tokens: &stubTokens{}, Tunnel: []string{"example.com"}, AllowCIDRs: allow, Users: tc.users})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = p.Shutdown(t.Context()) })
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tc.remote
			if tc.auth != "" {
				r.Header.Set("Proxy-Authorization", tc.auth)
			}
			w := httptest.NewRecorder()
			p.ServeHTTP(w, r)
			if w.Code != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", w.Code, tc.wantStatus, w.Body)
			}
			mustContain(t, "body", w.Body.String(), tc.wantBody)
			if tc.wantStatus == 403 && w.Header().Get("Proxy-Status") == "" {
				t.Error("403 without Proxy-Status")
			}
		})
	}
}
