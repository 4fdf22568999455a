package anaplantest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

const testScope = "openid profile email offline_access"

// fakeClock is a manual clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// start starts a server with opts (and clk as its clock, when given) that is
// closed when the test ends.
func start(t *testing.T, opts Options, clk *fakeClock) *Server {
	t.Helper()
	if clk != nil {
		opts.Now = clk.Now
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// testClient returns a client that trusts s and drops its connections when
// the test ends.
func testClient(t *testing.T, s *Server) *http.Client {
	t.Helper()
	c := s.Client()
	t.Cleanup(c.CloseIdleConnections)
	return c
}

type encoding int

const (
	asJSON encoding = iota
	asForm
)

func (e encoding) String() string {
	if e == asJSON {
		return "json"
	}
	return "form"
}

// post sends params to endpoint as JSON or as a form and returns the status
// and the decoded JSON answer (nil when the answer is not JSON).
func post(t *testing.T, c *http.Client, endpoint string, enc encoding, params map[string]string) (int, map[string]any) {
	t.Helper()
	var body io.Reader
	var ct string
	if enc == asJSON {
		b, err := json.Marshal(params)
		if err != nil {
			t.Fatal(err)
		}
		body, ct = bytes.NewReader(b), "application/json"
	} else {
		v := url.Values{}
		for k, val := range params {
			v.Set(k, val)
		}
		body, ct = strings.NewReader(v.Encode()), "application/x-www-form-urlencoded"
	}
	req, err := http.NewRequest(http.MethodPost, endpoint, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	return do(t, c, req)
}

// do sends req and decodes a JSON answer.
func do(t *testing.T, c *http.Client, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading answer: %v", req.Method, req.URL, err)
	}
	var out map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: answer is not JSON: %v: %q", req.Method, req.URL, err, raw)
		}
	}
	return resp.StatusCode, out
}

// deviceCodeResp asks for a device code and returns the answer.
func deviceCodeResp(t *testing.T, s *Server, c *http.Client, scope string) map[string]any {
	t.Helper()
	status, body := post(t, c, s.DeviceAuthURL(), asJSON, map[string]string{"client_id": s.ClientID(), "scope": scope})
	if status != http.StatusOK {
		t.Fatalf("device code: status %d, body %v", status, body)
	}
	return body
}

// pollDevice sends one device-code token request.
func pollDevice(t *testing.T, s *Server, c *http.Client, deviceCode string) (int, map[string]any) {
	t.Helper()
	return post(t, c, s.TokenURL(), asJSON, map[string]string{
		"grant_type":  grantDeviceCode,
		"device_code": deviceCode,
		"client_id":   s.ClientID(),
	})
}

// refresh sends one refresh_token request.
func refresh(t *testing.T, s *Server, c *http.Client, rt string) (int, map[string]any) {
	t.Helper()
	return post(t, c, s.TokenURL(), asJSON, map[string]string{
		"grant_type":    grantRefreshToken,
		"refresh_token": rt,
		"client_id":     s.ClientID(),
	})
}

// login runs the device flow to the end with the given scope and returns
// the token answer.
func login(t *testing.T, s *Server, c *http.Client, clk *fakeClock, scope string) map[string]any {
	t.Helper()
	dc := deviceCodeResp(t, s, c, scope)
	if err := s.Approve(dc["user_code"].(string)); err != nil {
		t.Fatalf("Approve: %v", err)
	}
	if clk != nil {
		clk.Advance(s.interval)
	}
	status, tok := pollDevice(t, s, c, dc["device_code"].(string))
	if status != http.StatusOK {
		t.Fatalf("device token: status %d, body %v", status, tok)
	}
	return tok
}

// apiGet calls the API listener with the given Authorization header.
func apiGet(t *testing.T, s *Server, c *http.Client, path, authorization string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.APIURL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return do(t, c, req)
}

// errCode returns the "error" field of an OAuth answer.
func errCode(body map[string]any) string {
	s, _ := body["error"].(string)
	return s
}

// str returns a string field of a JSON answer.
func str(body map[string]any, key string) string {
	s, _ := body[key].(string)
	return s
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}
