package proxy

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// expiringTokens adds a known access-token expiry to a TokenSource.
type expiringTokens struct {
	TokenSource
	expiry time.Time
}

func (e expiringTokens) AccessTokenExpiry() time.Time { return e.expiry }

// compatSetup is a proxy with one inject upstream and Compat hosts.
type compatSetup struct {
	h      *harness
	api    *upstream // inject host
	auth   *upstream // compat host: must never see a request
	client *http.Client
}

// startCompat runs a proxy whose Compat hosts are a live upstream (which
// must never be reached) and a closed port (which cannot be dialled).
func startCompat(t *testing.T, mode string, edit ...func(*Config)) *compatSetup {
	t.Helper()
	pki := newTestPKI(t)
	api, auth := startUpstream(t, pki), startUpstream(t, pki)
	inject := []string{api.hostport}
	compat := []string{auth.hostport, "localhost:" + closedPort(t)}
	ca, err := LoadOrCreateCA(t.TempDir(), slices.Concat(inject, compat))
	if err != nil {
		t.Fatal(err)
	}
	h := startProxy(t, Config{Inject: inject, Compat: compat, CA: ca, ClientAuthorization: mode, UpstreamRoots: pki.pool}, edit...)
	s := &compatSetup{h: h, api: api, auth: auth, client: h.client(t)}
	t.Cleanup(func() {
		if n := len(auth.requests()); n != 0 {
			t.Errorf("the compat host received %d requests; it must receive none", n)
		}
	})
	return s
}

// do sends one request through the proxy and returns the response with
// its body read.
func (s *compatSetup) do(t *testing.T, method, url, authorization, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, readBody(t, resp)
}

// authenticate posts Basic credentials to the compat host and returns
// the decoded answer.
func (s *compatSetup) authenticate(t *testing.T) classicAnswer {
	t.Helper()
	resp, body := s.do(t, http.MethodPost, "https://"+s.auth.hostport+"/token/authenticate", basicPassword, "")
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("authenticate = %d %q, want 201", resp.StatusCode, body)
	}
	return decodeClassic(t, body)
}

// basicPassword is "Basic " + base64("script.user:Pa55-w0rd!").
const basicPassword = "Basic c2NyaXB0LnVzZXI6UGE1NS13MHJkIQ=="

func decodeClassic(t *testing.T, body string) classicAnswer {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	var a classicAnswer
	if err := dec.Decode(&a); err != nil {
		t.Fatalf("answer %q does not have the classic shape: %v", body, err)
	}
	return a
}

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestCompatAuthenticateThenAPI(t *testing.T) {
	expiry := time.Now().Add(17 * time.Minute).Truncate(time.Millisecond)
	s := startCompat(t, "", func(c *Config) { c.Tokens = expiringTokens{c.Tokens, expiry} })

	resp, body := s.do(t, http.MethodPost, "https://"+s.auth.hostport+"/token/authenticate", basicPassword, "")
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("authenticate = %d %q, want 201", resp.StatusCode, body)
	}
	mustContain(t, "Content-Type", resp.Header.Get("Content-Type"), "application/json")
	mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "anaplan-proxy")
	// The exact documented shape, keys in Anaplan's order.
	shape := regexp.MustCompile(`^\{"meta":\{"validationUrl":"[^"]+"\},"status":"SUCCESS","statusMessage":"Login successful",` +
		`"tokenInfo":\{"expiresAt":\d+,"tokenId":"[^"]+","tokenValue":"[^"]+","refreshTokenId":"[^"]+"\}\}$`)
	if !shape.MatchString(body) {
		t.Fatalf("body %s does not have the documented shape", body)
	}
	a := decodeClassic(t, body)
	if want := "https://" + s.auth.hostport + "/token/validate"; a.Meta.ValidationURL != want {
		t.Errorf("validationUrl = %q, want %q", a.Meta.ValidationURL, want)
	}
	if a.TokenInfo.ExpiresAt != expiry.UnixMilli() {
		t.Errorf("expiresAt = %d, want the session's expiry %d", a.TokenInfo.ExpiresAt, expiry.UnixMilli())
	}
	if !strings.HasPrefix(a.TokenInfo.TokenValue, "anaplan-proxy-placeholder.") || strings.Contains(a.TokenInfo.TokenValue, "tok-1") {
		t.Errorf("tokenValue = %q, want a placeholder without the access token", a.TokenInfo.TokenValue)
	}
	for name, id := range map[string]string{"tokenId": a.TokenInfo.TokenID, "refreshTokenId": a.TokenInfo.RefreshTokenID} {
		if !uuidPattern.MatchString(id) {
			t.Errorf("%s = %q, want a UUID", name, id)
		}
	}
	if again := s.authenticate(t); again.TokenInfo.TokenValue == a.TokenInfo.TokenValue {
		t.Errorf("two logins got the same placeholder %q", again.TokenInfo.TokenValue)
	}

	resp, body = s.do(t, http.MethodGet, "https://"+s.api.hostport+"/2/0/workspaces", "AnaplanAuthToken "+a.TokenInfo.TokenValue, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("API call with the placeholder = %d %q", resp.StatusCode, body)
	}
	if got := s.api.requests(); len(got) != 1 || got[0].Authorization != "AnaplanAuthToken tok-1" {
		t.Fatalf("the API saw %+v, want one request carrying the access token", got)
	}

	obs := s.h.obs.snapshot()
	if !slices.Contains(obs.connects, "compat ") {
		t.Errorf("Observer.Connect calls %q lack a compat decision", obs.connects)
	}
	logs := s.h.logs.String()
	mustContain(t, "access log", logs, `"decision":"compat"`)
	for _, secret := range []string{"c2NyaXB0LnVzZXI6UGE1NS13MHJkIQ", "Pa55-w0rd!", "tok-1"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains %q", secret)
		}
	}
}

func TestCompatEndpoints(t *testing.T) {
	s := startCompat(t, "")
	ph := s.authenticate(t).TokenInfo.TokenValue
	base := "https://" + s.auth.hostport
	certBody := `{"encodedData":"` + strings.Repeat("QUJD", 40) + `","encodedSignedData":"c2lnbmVk"}`
	tests := []struct {
		name, method, path, auth, body string
		status                         int
		message                        string // statusMessage, or text in the proxy's answer
	}{
		{"authenticate with a certificate", "POST", "/token/authenticate", "CACertificate MIIBpTCCAUugAwIBAgIU", certBody, 201, "Login successful"},
		{"authenticate without credentials", "POST", "/token/authenticate", "", "", 401, "Basic or CACertificate"},
		{"authenticate with a bearer token", "POST", "/token/authenticate", "Bearer abc", "", 401, "Basic or CACertificate"},
		{"authenticate by GET", "GET", "/token/authenticate", basicPassword, "", 405, "takes POST"},
		{"refresh", "POST", "/token/refresh", "AnaplanAuthToken " + ph, "", 201, "Token refreshed"},
		{"refresh with Bearer", "POST", "/token/refresh", "Bearer " + ph, "", 201, "Token refreshed"},
		{"refresh with a foreign token", "POST", "/token/refresh", "AnaplanAuthToken eyJhbGciOi.x.y", "", 401, "/token/authenticate"},
		{"refresh without a token", "POST", "/token/refresh", "", "", 401, "/token/authenticate"},
		{"validate", "GET", "/token/validate", "AnaplanAuthToken " + ph, "", 200, "Token validated"},
		{"validate by POST", "POST", "/token/validate", "AnaplanAuthToken " + ph, "", 405, "takes GET"},
		{"logout", "POST", "/token/logout", "AnaplanAuthToken " + ph, "", 204, ""},
		{"unknown token path", "GET", "/token/whoami", "AnaplanAuthToken " + ph, "", 404, "is not part of"},
		{"path outside /token/", "GET", "/2/0/workspaces", "AnaplanAuthToken " + ph, "", 403, "forwards nothing"},
		{"OAuth path on a compat host", "POST", "/oauth/token", "", "grant_type=refresh_token", 403, "forwards nothing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := s.do(t, tc.method, base+tc.path, tc.auth, tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("%s %s = %d %q, want %d", tc.method, tc.path, resp.StatusCode, body, tc.status)
			}
			switch {
			case tc.status == 204:
				if body != "" {
					t.Errorf("logout body = %q, want none", body)
				}
			case tc.status < 300:
				a := decodeClassic(t, body)
				if a.Status != "SUCCESS" || a.StatusMessage != tc.message || !isPlaceholder(a.TokenInfo.TokenValue) {
					t.Errorf("answer %+v, want SUCCESS, %q and a placeholder", a, tc.message)
				}
				if tc.path != "/token/authenticate" && a.TokenInfo.TokenValue != ph {
					t.Errorf("tokenValue = %q, want the presented placeholder kept", a.TokenInfo.TokenValue)
				}
				if d := time.Until(time.UnixMilli(a.TokenInfo.ExpiresAt)); d < 34*time.Minute || d > 36*time.Minute {
					t.Errorf("expiresAt is %s away; without a known expiry, want Anaplan's 35 minutes", d)
				}
			default:
				mustContain(t, "body", body, tc.message)
				mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=")
				if tc.status == 405 {
					mustContain(t, "Allow", resp.Header.Get("Allow"), strings.TrimPrefix(tc.message, "takes "))
				}
			}
		})
	}
}

func TestCompatWithoutSession(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		status     int
		retryAfter string
	}{
		{"login required", &sessionError{msg: "no Anaplan session: run `anaplan-proxy login`", login: true}, 511, ""},
		{"refresh failing", &sessionError{msg: "refreshing the access token failed: 503 from the token endpoint", retryAfter: 7 * time.Second}, 503, "7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startCompat(t, "")
			ph := s.authenticate(t).TokenInfo.TokenValue
			s.h.tokens.mu.Lock()
			s.h.tokens.err = tc.err
			s.h.tokens.mu.Unlock()
			for _, call := range []struct{ method, path, auth string }{
				{"POST", "/token/authenticate", basicPassword},
				{"POST", "/token/refresh", "AnaplanAuthToken " + ph},
				{"GET", "/token/validate", "AnaplanAuthToken " + ph},
			} {
				resp, body := s.do(t, call.method, "https://"+s.auth.hostport+call.path, call.auth, "")
				if resp.StatusCode != tc.status {
					t.Fatalf("%s = %d %q, want %d", call.path, resp.StatusCode, body, tc.status)
				}
				mustContain(t, call.path+" body", body, tc.err.Error())
				mustContain(t, call.path+" Proxy-Status", resp.Header.Get("Proxy-Status"), "anaplan-proxy; error=")
				if got := resp.Header.Get("Retry-After"); got != tc.retryAfter {
					t.Errorf("%s Retry-After = %q, want %q", call.path, got, tc.retryAfter)
				}
			}
			// The API answers the same way, so a script sees one story.
			resp, body := s.do(t, "GET", "https://"+s.api.hostport+"/2/0/users/me", "AnaplanAuthToken "+ph, "")
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.err.Error()) {
				t.Errorf("API call = %d %q, want %d with the same reason", resp.StatusCode, body, tc.status)
			}
			// Logout asks nothing of the session.
			if resp, body := s.do(t, "POST", "https://"+s.auth.hostport+"/token/logout", "AnaplanAuthToken "+ph, ""); resp.StatusCode != 204 {
				t.Errorf("logout = %d %q, want 204", resp.StatusCode, body)
			}
		})
	}
}

func TestPlaceholderOnInjectHosts(t *testing.T) {
	ph := newPlaceholder()
	tests := []struct {
		mode, auth string
		status     int
		want       string // Authorization seen by the API
	}{
		{"replace", "AnaplanAuthToken " + ph, 200, "AnaplanAuthToken tok-1"},
		{"replace", "Bearer " + ph, 200, "AnaplanAuthToken tok-1"},
		{"replace", "AnaplanAuthToken real-looking-token", 200, "AnaplanAuthToken tok-1"},
		{"keep", "AnaplanAuthToken " + ph, 200, "AnaplanAuthToken tok-1"},
		{"keep", "AnaplanAuthToken real-looking-token", 200, "AnaplanAuthToken real-looking-token"},
		{"reject", "AnaplanAuthToken " + ph, 200, "AnaplanAuthToken tok-1"},
		{"reject", "anaplanauthtoken  " + ph, 200, "AnaplanAuthToken tok-1"},
		{"reject", "AnaplanAuthToken real-looking-token", 403, ""},
		{"reject", "AnaplanAuthToken " + ph + "x", 403, ""},
		{"reject", "Basic " + ph, 403, ""},
	}
	for _, tc := range tests {
		t.Run(tc.mode+" "+tc.auth, func(t *testing.T) {
			s := startCompat(t, tc.mode)
			resp, body := s.do(t, "GET", "https://"+s.api.hostport+"/2/0/workspaces", tc.auth, "")
			if resp.StatusCode != tc.status {
				t.Fatalf("status = %d %q, want %d", resp.StatusCode, body, tc.status)
			}
			got := s.api.requests()
			if tc.status != 200 {
				if len(got) != 0 {
					t.Errorf("the API saw %d requests, want none", len(got))
				}
				mustContain(t, "body", body, "client_authorization: reject")
				return
			}
			if len(got) != 1 || got[0].Authorization != tc.want {
				t.Errorf("the API saw %+v, want Authorization %q", got, tc.want)
			}
		})
	}
}

func TestIsPlaceholder(t *testing.T) {
	ph := newPlaceholder()
	tests := []struct {
		token string
		want  bool
	}{
		{ph, true},
		{newPlaceholder(), true},
		{"anaplan-proxy-placeholder.AAAAAAAAAAAAAAAAAAAAAAAA", true},
		{"anaplan-proxy-placeholder.", false},
		{ph[:len(ph)-1], false},
		{ph + "A", false},
		{"anaplan-proxy-placeholder.AAAAAAAAAAAAAAAAAAAAAAA=", false},
		{"anaplan-proxy-placeholder.AAAAAAAAAAAAAAAAAAAAAA.A", false},
		{"Anaplan-Proxy-Placeholder.AAAAAAAAAAAAAAAAAAAAAAAA", false},
		{"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", false},
		{"", false},
	}
	for _, tc := range tests {
		if got := isPlaceholder(tc.token); got != tc.want {
			t.Errorf("isPlaceholder(%q) = %v, want %v", tc.token, got, tc.want)
		}
	}
	h := http.Header{}
	h.Add("Authorization", "AnaplanAuthToken "+ph)
	h.Add("Authorization", "AnaplanAuthToken "+ph)
	if hasPlaceholder(h) {
		t.Error("two Authorization headers count as a placeholder")
	}
}

func TestPolicyCompat(t *testing.T) {
	pl, err := newPolicy([]string{"api.anaplan.com", "*.anaplan.com", "localhost:8443"}, []string{"*.app.anaplan.com", "iam.anaplan.com"})
	if err == nil {
		err = pl.addCompat([]string{"auth.anaplan.com", "*.auth.anaplan.com", "au1a.app2.anaplan.com", "iam.anaplan.com", "localhost:8443"})
	}
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host    string
		port    int
		want    action
		pattern string
	}{
		{"auth.anaplan.com", 443, actionCompat, "auth.anaplan.com"},
		{"AUTH.anaplan.com.", 443, actionCompat, "auth.anaplan.com"},
		{"eu3.auth.anaplan.com", 443, actionCompat, "*.auth.anaplan.com"},
		{"au1a.app2.anaplan.com", 443, actionCompat, "au1a.app2.anaplan.com"},
		{"api.au1a.app2.anaplan.com", 443, actionInject, "*.anaplan.com"},
		{"api.anaplan.com", 443, actionInject, "api.anaplan.com"},
		{"us1a.app.anaplan.com", 443, actionTunnel, "*.app.anaplan.com"},
		// Equal specificity: the decision that sends less wins.
		{"iam.anaplan.com", 443, actionCompat, "iam.anaplan.com"},
		{"localhost", 8443, actionCompat, "localhost:8443"},
		{"auth.anaplan.com", 8443, actionDeny, ""},
	}
	for _, tc := range tests {
		v := pl.decide(tc.host, tc.port)
		if v.action != tc.want || v.pattern != tc.pattern {
			t.Errorf("decide(%s, %d) = %s by %q, want %s by %q", tc.host, tc.port, v.action, v.pattern, tc.want, tc.pattern)
		}
	}
	if err := pl.addCompat([]string{"https://auth.anaplan.com/"}); err == nil {
		t.Error("a URL was accepted as a compat host")
	}
}

func TestNewRefusesCAWithoutCompatHosts(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), []string{"api.anaplan.com"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{Inject: []string{"api.anaplan.com"}, Compat: []string{"auth.anaplan.com"}, CA: ca, Tokens: &stubTokens{}})
	if err == nil || !strings.Contains(err.Error(), "auth.anaplan.com") {
		t.Fatalf("New with a CA that cannot sign for the compat host: %v, want a refusal naming it", err)
	}
	if _, err := New(Config{Compat: []string{"auth.anaplan.com"}, Tokens: &stubTokens{}}); err == nil {
		t.Fatal("New accepted compat hosts without a CA")
	}
}
