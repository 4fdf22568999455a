package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/testutil"
)

var testScopes = []string{"openid", "profile", "email", "offline_access"}

// startFake starts the fake Anaplan and returns a config for it.
func startFake(t *testing.T, opts anaplantest.Options) (*anaplantest.Server, OAuthConfig) {
	t.Helper()
	srv, err := anaplantest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv, OAuthConfig{
		ClientID:      srv.ClientID(),
		DeviceAuthURL: srv.DeviceAuthURL(),
		TokenURL:      srv.TokenURL(),
		RevokeURL:     srv.RevokeURL(),
		Scopes:        testScopes,
		Encoding:      EncodingJSON,
		HTTPClient:    srv.Client(),
	}
}

// sentRequest is what a client really put on the wire.
type sentRequest struct {
	Path        string
	ContentType string
	Body        string
}

// recordingTransport records the requests that reach the network.
type recordingTransport struct {
	base http.RoundTripper
	mu   sync.Mutex
	reqs []sentRequest
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, sentRequest{Path: req.URL.Path, ContentType: req.Header.Get("Content-Type"), Body: string(body)})
	r.mu.Unlock()
	return r.base.RoundTrip(req)
}

func (r *recordingTransport) sent() []sentRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]sentRequest(nil), r.reqs...)
}

// scriptedAnswer is one answer of a scriptedOAuth token endpoint.
type scriptedAnswer struct {
	status int
	body   string
	header http.Header
}

// scriptedOAuth is an OAuth server whose token endpoint plays a script of
// answers, one per request (the last repeats), and records when each
// request came.
type scriptedOAuth struct {
	*httptest.Server
	mu      sync.Mutex
	script  []scriptedAnswer
	polls   []time.Time
	revokes []url.Values
	revoke  scriptedAnswer
}

func startScripted(t *testing.T, script ...scriptedAnswer) (*scriptedOAuth, OAuthConfig) {
	t.Helper()
	s := &scriptedOAuth{script: script, revoke: scriptedAnswer{status: 200}}
	mux := http.NewServeMux()
	mux.HandleFunc("/device", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"device_code":"dc-secret","user_code":"ABCD-EFGH","verification_uri":"https://example.test/activate","expires_in":60,"interval":1}`)
	})
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		s.mu.Lock()
		s.polls = append(s.polls, time.Now())
		a := s.script[min(len(s.polls), len(s.script))-1]
		s.mu.Unlock()
		s.write(w, a)
	})
	mux.HandleFunc("/revoke", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		s.mu.Lock()
		s.revokes = append(s.revokes, r.PostForm)
		a := s.revoke
		s.mu.Unlock()
		s.write(w, a)
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s, OAuthConfig{
		ClientID:      "client",
		DeviceAuthURL: s.URL + "/device",
		TokenURL:      s.URL + "/token",
		RevokeURL:     s.URL + "/revoke",
		Scopes:        testScopes,
		Encoding:      EncodingForm,
		HTTPClient:    s.Client(),
	}
}

func (s *scriptedOAuth) write(w http.ResponseWriter, a scriptedAnswer) {
	for k, v := range a.header {
		w.Header()[k] = v
	}
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(a.status)
	io.WriteString(w, a.body)
}

func (s *scriptedOAuth) pollTimes() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.polls...)
}

func oauthErr(status int, code string) scriptedAnswer {
	b, _ := json.Marshal(map[string]string{"error": code, "error_description": "described " + code})
	return scriptedAnswer{status: status, body: string(b)}
}

func tokenAnswer(access, refresh string, expiresIn int) scriptedAnswer {
	m := map[string]any{"access_token": access, "token_type": "Bearer", "expires_in": expiresIn}
	if refresh != "" {
		m["refresh_token"] = refresh
	}
	b, _ := json.Marshal(m)
	return scriptedAnswer{status: 200, body: string(b)}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		<-tick.C
	}
}

// syncBuffer collects output that goroutines write while the test reads it.
type syncBuffer = testutil.Buffer

// assertNoSecrets fails if any issued secret appears in text.
func assertNoSecrets(t *testing.T, where, text string, secrets []string) {
	t.Helper()
	for _, sec := range secrets {
		if sec != "" && strings.Contains(text, sec) {
			t.Errorf("%s contains an issued secret (%.12s…)", where, sec)
		}
	}
}

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// runManager runs m until the test ends and checks that Run returns nil.
func runManager(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
}

// runConcurrently runs n subtests at the same time. The subtests mostly
// wait on protocol timers (whole-second polling intervals), so letting
// -parallel (the number of CPUs) serialise them would only slow the suite.
func runConcurrently(t *testing.T, n int, name func(int) string, f func(t *testing.T, i int)) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(name(i), func(t *testing.T) { f(t, i) })
		}()
	}
	wg.Wait()
}

// Save stores s as a new login would.
func (f *FileStore) Save(ctx context.Context, s *Session) error {
	_, err := f.Put(ctx, s)
	return err
}

// Delete removes the stored session as a logout would.
func (f *FileStore) Delete(ctx context.Context) error {
	_, err := f.Put(ctx, nil)
	return err
}

// Lock takes the store's lease and returns its release.
func (f *FileStore) Lock(ctx context.Context) (func() error, error) {
	l, err := f.Acquire(ctx, "test")
	if err != nil {
		return nil, err
	}
	return func() error { return f.Release(context.Background(), l) }, nil
}

// loadSession returns the stored session, as Load's record holds it.
func loadSession(ctx context.Context, st Store) (*Session, error) {
	rec, err := st.Load(ctx)
	return rec.Session, err
}
