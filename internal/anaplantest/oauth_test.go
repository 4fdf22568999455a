package anaplantest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDeviceFlowOutcomes(t *testing.T) {
	tests := []struct {
		name      string
		decide    func(s *Server, clk *fakeClock, userCode string) error
		wantCode  int
		wantError string
	}{
		{
			name:     "approved",
			decide:   func(s *Server, _ *fakeClock, uc string) error { return s.Approve(uc) },
			wantCode: http.StatusOK,
		},
		{
			name:      "denied",
			decide:    func(s *Server, _ *fakeClock, uc string) error { return s.Deny(uc) },
			wantCode:  http.StatusBadRequest,
			wantError: "access_denied",
		},
		{
			name: "expired before approval",
			decide: func(s *Server, clk *fakeClock, uc string) error {
				clk.Advance(15 * time.Minute)
				if err := s.Approve(uc); err == nil {
					return errors.New("Approve accepted an expired code")
				}
				return nil
			},
			wantCode:  http.StatusBadRequest,
			wantError: "expired_token",
		},
		{
			name: "approved but exchanged too late",
			decide: func(s *Server, clk *fakeClock, uc string) error {
				err := s.Approve(uc)
				clk.Advance(15 * time.Minute)
				return err
			},
			wantCode:  http.StatusBadRequest,
			wantError: "expired_token",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			s := start(t, Options{}, clk)
			c := testClient(t, s)

			dc := deviceCodeResp(t, s, c, testScope)
			userCode, deviceCode := str(dc, "user_code"), str(dc, "device_code")
			if status, body := pollDevice(t, s, c, deviceCode); status != http.StatusBadRequest || errCode(body) != "authorization_pending" {
				t.Fatalf("first poll: status %d, body %v; want 400 authorization_pending", status, body)
			}
			if err := tt.decide(s, clk, userCode); err != nil {
				t.Fatal(err)
			}
			clk.Advance(5 * time.Second)
			status, body := pollDevice(t, s, c, deviceCode)
			if status != tt.wantCode || errCode(body) != tt.wantError {
				t.Fatalf("poll after decision: status %d, body %v; want %d %q", status, body, tt.wantCode, tt.wantError)
			}
			if tt.wantError != "" && str(body, "error_description") == "" {
				t.Errorf("error answer has no error_description: %v", body)
			}
		})
	}
}

func TestDeviceCodeAnswer(t *testing.T) {
	s := start(t, Options{DeviceCodeLifetime: 90 * time.Second, Interval: 1500 * time.Millisecond}, nil)
	dc := deviceCodeResp(t, s, testClient(t, s), testScope)

	if !regexp.MustCompile(`^[A-Z]{4}-[A-Z]{4}$`).MatchString(str(dc, "user_code")) {
		t.Errorf("user_code = %q, want the shape ABCD-EFGH", dc["user_code"])
	}
	if got := str(dc, "device_code"); len(got) < 40 {
		t.Errorf("device_code %q is too short to be unguessable", got)
	}
	if got, want := str(dc, "verification_uri"), s.OAuthURL()+"/activate"; got != want {
		t.Errorf("verification_uri = %q, want %q", got, want)
	}
	if got, want := str(dc, "verification_uri_complete"), s.OAuthURL()+"/activate?user_code="+url.QueryEscape(str(dc, "user_code")); got != want {
		t.Errorf("verification_uri_complete = %q, want %q", got, want)
	}
	if got := dc["expires_in"]; got != 90.0 {
		t.Errorf("expires_in = %v, want 90", got)
	}
	if got := dc["interval"]; got != 2.0 {
		t.Errorf("interval = %v, want 2 (1.5s rounded up to whole seconds)", got)
	}
}

func TestTokenAnswer(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	tok := login(t, s, testClient(t, s), clk, testScope)

	if at := str(tok, "access_token"); !strings.HasPrefix(at, "fake-at-") || len(at) < 48 || !regexp.MustCompile(`^[A-Za-z0-9_-]+$`).MatchString(at) {
		t.Errorf("access_token %q: want fake-at- and 40+ url-safe characters", at)
	}
	if rt := str(tok, "refresh_token"); !strings.HasPrefix(rt, "fake-rt-") || len(rt) < 48 {
		t.Errorf("refresh_token %q: want fake-rt- and 40+ url-safe characters", rt)
	}
	if tok["token_type"] != "Bearer" || tok["expires_in"] != 2100.0 || tok["scope"] != testScope {
		t.Errorf("token_type, expires_in, scope = %v, %v, %v; want Bearer, 2100, %q", tok["token_type"], tok["expires_in"], tok["scope"], testScope)
	}
	parts := strings.Split(str(tok, "id_token"), ".")
	if len(parts) != 3 {
		t.Fatalf("id_token %q is not JWT-shaped", tok["id_token"])
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("id_token payload: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatalf("id_token payload: %v", err)
	}
	if claims["email"] != "integration.user@example.com" || claims["name"] == "" || claims["name"] == nil {
		t.Errorf("id_token claims %v: want email integration.user@example.com and a name", claims)
	}
}

func TestDeviceCodeExchangedOnce(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	dc := deviceCodeResp(t, s, c, testScope)
	if err := s.Approve(str(dc, "user_code")); err != nil {
		t.Fatal(err)
	}
	if status, body := pollDevice(t, s, c, str(dc, "device_code")); status != http.StatusOK {
		t.Fatalf("first exchange: status %d, body %v", status, body)
	}
	clk.Advance(5 * time.Second)
	if status, body := pollDevice(t, s, c, str(dc, "device_code")); status != http.StatusBadRequest || errCode(body) != "invalid_grant" {
		t.Fatalf("second exchange: status %d, body %v; want 400 invalid_grant", status, body)
	}
	if status, body := pollDevice(t, s, c, "fake-dc-never-issued"); status != http.StatusBadRequest || errCode(body) != "invalid_grant" {
		t.Fatalf("unknown device code: status %d, body %v; want 400 invalid_grant", status, body)
	}
}

func TestSlowDown(t *testing.T) {
	// Gaps between consecutive polls (the first poll is at issue time) and
	// the answer each poll should get. The interval is 5s and grows by 5s
	// on every slow_down.
	tests := []struct {
		name  string
		gaps  []time.Duration
		wants []string
	}{
		{"on time", []time.Duration{0, 5 * time.Second, 5 * time.Second}, []string{"authorization_pending", "authorization_pending", "authorization_pending"}},
		{"within jitter margin", []time.Duration{0, 4900 * time.Millisecond}, []string{"authorization_pending", "authorization_pending"}},
		{"too fast", []time.Duration{0, time.Second}, []string{"authorization_pending", "slow_down"}},
		{"interval grows by 5s", []time.Duration{0, time.Second, 10 * time.Second}, []string{"authorization_pending", "slow_down", "authorization_pending"}},
		{"interval grows each time", []time.Duration{0, time.Second, 5 * time.Second, 15 * time.Second}, []string{"authorization_pending", "slow_down", "slow_down", "authorization_pending"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			s := start(t, Options{}, clk)
			c := testClient(t, s)
			dc := deviceCodeResp(t, s, c, testScope)
			for i, gap := range tt.gaps {
				clk.Advance(gap)
				status, body := pollDevice(t, s, c, str(dc, "device_code"))
				if status != http.StatusBadRequest || errCode(body) != tt.wants[i] {
					t.Fatalf("poll %d: status %d, body %v; want 400 %s", i, status, body, tt.wants[i])
				}
			}
		})
	}
}

func TestSlowDownStillDeliversTokens(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	dc := deviceCodeResp(t, s, c, testScope)
	pollDevice(t, s, c, str(dc, "device_code"))
	if err := s.Approve(str(dc, "user_code")); err != nil {
		t.Fatal(err)
	}
	if _, body := pollDevice(t, s, c, str(dc, "device_code")); errCode(body) != "slow_down" {
		t.Fatalf("immediate poll: %v, want slow_down", body)
	}
	clk.Advance(10 * time.Second)
	if status, body := pollDevice(t, s, c, str(dc, "device_code")); status != http.StatusOK {
		t.Fatalf("poll after the longer interval: status %d, body %v", status, body)
	}
}

func TestRefreshRotation(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	tok := login(t, s, c, clk, testScope)
	rt1, at1 := str(tok, "refresh_token"), str(tok, "access_token")

	status, tok2 := refresh(t, s, c, rt1)
	if status != http.StatusOK {
		t.Fatalf("refresh: status %d, body %v", status, tok2)
	}
	rt2, at2 := str(tok2, "refresh_token"), str(tok2, "access_token")
	if rt2 == "" || rt2 == rt1 || at2 == "" || at2 == at1 {
		t.Fatalf("refresh did not rotate: rt %q -> %q, at %q -> %q", rt1, rt2, at1, at2)
	}
	if s.Refreshes() != 1 {
		t.Errorf("Refreshes() = %d, want 1", s.Refreshes())
	}
	for _, at := range []string{at1, at2} {
		if status, _ := apiGet(t, s, c, "/", "AnaplanAuthToken "+at); status != http.StatusOK {
			t.Fatalf("API with an unexpired access token before the replay: status %d", status)
		}
	}

	// The rotated token comes back: the whole family dies.
	if status, body := refresh(t, s, c, rt1); status != http.StatusBadRequest || errCode(body) != "invalid_grant" {
		t.Fatalf("replay: status %d, body %v; want 400 invalid_grant", status, body)
	}
	if s.RefreshReplays() != 1 {
		t.Errorf("RefreshReplays() = %d, want 1", s.RefreshReplays())
	}
	if status, body := refresh(t, s, c, rt2); status != http.StatusBadRequest || errCode(body) != "invalid_grant" {
		t.Fatalf("newest refresh token after a replay: status %d, body %v; want 400 invalid_grant", status, body)
	}
	for _, at := range []string{at1, at2} {
		if status, body := apiGet(t, s, c, "/", "AnaplanAuthToken "+at); status != http.StatusUnauthorized {
			t.Fatalf("API after the replay: status %d, body %v; want 401", status, body)
		}
	}
	if s.Refreshes() != 1 {
		t.Errorf("Refreshes() = %d after failures, want 1", s.Refreshes())
	}

	// A second login is a new family, untouched by the first one's fate.
	tok3 := login(t, s, c, clk, testScope)
	if status, _ := refresh(t, s, c, str(tok3, "refresh_token")); status != http.StatusOK {
		t.Fatalf("refresh in a new login: status %d", status)
	}
}

func TestRefreshNonRotating(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{NonRotating: true}, clk)
	c := testClient(t, s)
	rt := str(login(t, s, c, clk, testScope), "refresh_token")
	for i := range 3 {
		status, body := refresh(t, s, c, rt)
		if status != http.StatusOK || str(body, "access_token") == "" {
			t.Fatalf("refresh %d: status %d, body %v", i, status, body)
		}
		if _, ok := body["refresh_token"]; ok {
			t.Fatalf("refresh %d: non-rotating answer carries a refresh_token", i)
		}
	}
	if s.Refreshes() != 3 || s.RefreshReplays() != 0 {
		t.Errorf("Refreshes, RefreshReplays = %d, %d; want 3, 0", s.Refreshes(), s.RefreshReplays())
	}
}

func TestNoRefreshTokenWithoutOfflineAccess(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	tok := login(t, s, testClient(t, s), clk, "openid profile email")
	if _, ok := tok["refresh_token"]; ok {
		t.Fatalf("a refresh token was issued without offline_access: %v", tok["scope"])
	}
}

func TestTokenEndpointErrors(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	rt := str(login(t, s, c, clk, testScope), "refresh_token")

	tests := []struct {
		name       string
		params     map[string]string
		wantStatus int
		wantError  string
	}{
		{"missing client_id", map[string]string{"grant_type": "refresh_token", "refresh_token": rt}, 401, "invalid_client"},
		{"unknown client_id", map[string]string{"grant_type": "refresh_token", "refresh_token": rt, "client_id": "ffffffffffffffffffffffffffffffff"}, 401, "invalid_client"},
		{"unknown refresh token", map[string]string{"grant_type": "refresh_token", "refresh_token": "fake-rt-not-issued", "client_id": s.ClientID()}, 400, "invalid_grant"},
		{"missing grant_type", map[string]string{"client_id": s.ClientID()}, 400, "invalid_request"},
		{"unsupported grant_type", map[string]string{"grant_type": "password", "client_id": s.ClientID()}, 400, "unsupported_grant_type"},
	}
	for _, tt := range tests {
		for _, enc := range []encoding{asJSON, asForm} {
			t.Run(tt.name+"/"+enc.String(), func(t *testing.T) {
				status, body := post(t, c, s.TokenURL(), enc, tt.params)
				if status != tt.wantStatus || errCode(body) != tt.wantError {
					t.Fatalf("status %d, body %v; want %d %s", status, body, tt.wantStatus, tt.wantError)
				}
			})
		}
	}
	// None of the failures above used up the refresh token.
	if status, body := refresh(t, s, c, rt); status != http.StatusOK {
		t.Fatalf("refresh after rejected requests: status %d, body %v", status, body)
	}
}

func TestBodyEncodings(t *testing.T) {
	for _, enc := range []encoding{asJSON, asForm} {
		t.Run(enc.String(), func(t *testing.T) {
			clk := newFakeClock()
			s := start(t, Options{}, clk)
			c := testClient(t, s)
			status, dc := post(t, c, s.DeviceAuthURL(), enc, map[string]string{"client_id": s.ClientID(), "scope": testScope})
			if status != http.StatusOK {
				t.Fatalf("device code: status %d, body %v", status, dc)
			}
			if err := s.Approve(str(dc, "user_code")); err != nil {
				t.Fatal(err)
			}
			status, tok := post(t, c, s.TokenURL(), enc, map[string]string{
				"grant_type": grantDeviceCode, "device_code": str(dc, "device_code"), "client_id": s.ClientID(),
			})
			if status != http.StatusOK {
				t.Fatalf("device token: status %d, body %v", status, tok)
			}
			status, tok = post(t, c, s.TokenURL(), enc, map[string]string{
				"grant_type": grantRefreshToken, "refresh_token": str(tok, "refresh_token"), "client_id": s.ClientID(),
			})
			if status != http.StatusOK {
				t.Fatalf("refresh: status %d, body %v", status, tok)
			}
			if status, _ := post(t, c, s.RevokeURL(), enc, map[string]string{"token": str(tok, "refresh_token"), "client_id": s.ClientID()}); status != http.StatusOK {
				t.Fatalf("revoke: status %d", status)
			}
			if status, body := refresh(t, s, c, str(tok, "refresh_token")); errCode(body) != "invalid_grant" {
				t.Fatalf("refresh after revoke: status %d, body %v; want invalid_grant", status, body)
			}
		})
	}
}

func TestRejectedBodies(t *testing.T) {
	s := start(t, Options{}, nil)
	c := testClient(t, s)
	tests := []struct {
		name, contentType, body string
	}{
		{"no content type", "", "client_id=" + s.ClientID()},
		{"text", "text/plain", "client_id=" + s.ClientID()},
		{"broken JSON", "application/json", `{"client_id":`},
		{"JSON array", "application/json", `["client_id"]`},
		{"JSON number field", "application/json", `{"client_id":12}`},
	}
	for _, tt := range tests {
		for _, endpoint := range []string{s.DeviceAuthURL(), s.TokenURL()} {
			t.Run(tt.name+path(endpoint), func(t *testing.T) {
				req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(tt.body))
				if tt.contentType != "" {
					req.Header.Set("Content-Type", tt.contentType)
				}
				if status, body := do(t, c, req); status != http.StatusBadRequest || errCode(body) != "invalid_request" {
					t.Fatalf("status %d, body %v; want 400 invalid_request", status, body)
				}
			})
		}
	}
	req, _ := http.NewRequest(http.MethodGet, s.TokenURL(), nil)
	if status, body := do(t, c, req); status != http.StatusMethodNotAllowed || errCode(body) != "invalid_request" {
		t.Fatalf("GET token endpoint: status %d, body %v; want 405 invalid_request", status, body)
	}
}

func path(u string) string {
	p, _ := url.Parse(u)
	return p.Path
}

func TestDeviceCodeUnknownClient(t *testing.T) {
	s := start(t, Options{ClientID: "aaaabbbbccccddddaaaabbbbccccdddd"}, nil)
	c := testClient(t, s)
	for _, id := range []string{"", DefaultClientID} {
		status, body := post(t, c, s.DeviceAuthURL(), asJSON, map[string]string{"client_id": id, "scope": testScope})
		if status != http.StatusBadRequest || errCode(body) != "invalid_client" {
			t.Errorf("client_id %q: status %d, body %v; want 400 invalid_client", id, status, body)
		}
	}
	if s.ClientID() != "aaaabbbbccccddddaaaabbbbccccdddd" {
		t.Errorf("ClientID() = %q", s.ClientID())
	}
	if status, _ := post(t, c, s.DeviceAuthURL(), asForm, map[string]string{"client_id": s.ClientID(), "scope": testScope}); status != http.StatusOK {
		t.Errorf("configured client: status %d", status)
	}
}

func TestTokenOutage(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	rt := str(login(t, s, c, clk, testScope), "refresh_token")

	for _, status := range []int{http.StatusServiceUnavailable, http.StatusBadGateway} {
		s.SetTokenOutage(status)
		got, body := refresh(t, s, c, rt)
		if got != status || errCode(body) != "temporarily_unavailable" {
			t.Fatalf("outage %d: status %d, body %v", status, got, body)
		}
	}
	s.SetTokenOutage(0)
	if status, body := refresh(t, s, c, rt); status != http.StatusOK {
		t.Fatalf("after the outage: status %d, body %v; the outage must not have used the token", status, body)
	}

	calls := s.Calls()
	var outages int
	for _, call := range calls {
		if call.Error == "temporarily_unavailable" {
			outages++
			if call.GrantType != grantRefreshToken || call.Path != "/oauth/token" {
				t.Errorf("outage call recorded as %+v", call)
			}
		}
	}
	if outages != 2 {
		t.Errorf("recorded %d outage answers, want 2", outages)
	}
}

func TestRevokeAll(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	a := login(t, s, c, clk, testScope)
	b := login(t, s, c, clk, testScope)
	s.RevokeAll()
	for _, tok := range []map[string]any{a, b} {
		if status, body := refresh(t, s, c, str(tok, "refresh_token")); status != http.StatusBadRequest || errCode(body) != "invalid_grant" {
			t.Errorf("refresh after RevokeAll: status %d, body %v", status, body)
		}
		if status, _ := apiGet(t, s, c, "/", "AnaplanAuthToken "+str(tok, "access_token")); status != http.StatusUnauthorized {
			t.Errorf("API after RevokeAll: status %d, want 401", status)
		}
	}
	if s.RefreshReplays() != 0 {
		t.Errorf("RefreshReplays() = %d after revocation, want 0", s.RefreshReplays())
	}
}

func TestRevokeEndpoint(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)
	keep := login(t, s, c, clk, testScope)

	tests := []struct {
		name  string
		token func(tok map[string]any) string
	}{
		{"refresh token", func(tok map[string]any) string { return str(tok, "refresh_token") }},
		{"access token", func(tok map[string]any) string { return str(tok, "access_token") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := login(t, s, c, clk, testScope)
			if status, _ := post(t, c, s.RevokeURL(), asForm, map[string]string{"token": tt.token(tok), "client_id": s.ClientID()}); status != http.StatusOK {
				t.Fatalf("revoke: status %d", status)
			}
			if _, body := refresh(t, s, c, str(tok, "refresh_token")); errCode(body) != "invalid_grant" {
				t.Errorf("refresh after revoke: %v, want invalid_grant", body)
			}
			if status, _ := apiGet(t, s, c, "/", "AnaplanAuthToken "+str(tok, "access_token")); status != http.StatusUnauthorized {
				t.Errorf("API after revoke: status %d, want 401", status)
			}
		})
	}
	if status, _ := post(t, c, s.RevokeURL(), asJSON, map[string]string{"token": "fake-rt-unknown"}); status != http.StatusOK {
		t.Errorf("revoking an unknown token: status %d, want 200 (RFC 7009)", status)
	}
	if status, _ := apiGet(t, s, c, "/", "AnaplanAuthToken "+str(keep, "access_token")); status != http.StatusOK {
		t.Errorf("another login's token after revocations: status %d, want 200", status)
	}
}

func TestAutoApprove(t *testing.T) {
	s := start(t, Options{AutoApprove: true}, nil)
	c := testClient(t, s)
	dc := deviceCodeResp(t, s, c, testScope)
	if status, body := pollDevice(t, s, c, str(dc, "device_code")); status != http.StatusOK || str(body, "access_token") == "" {
		t.Fatalf("first poll: status %d, body %v; want tokens", status, body)
	}
}

func TestWaitForPendingCode(t *testing.T) {
	clk := newFakeClock()
	s := start(t, Options{}, clk)
	c := testClient(t, s)

	got := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		code, err := s.WaitForPendingCode(context.Background())
		got <- code
		errc <- err
	}()
	dc := deviceCodeResp(t, s, c, testScope)
	if code := <-got; code != str(dc, "user_code") {
		t.Fatalf("WaitForPendingCode = %q, want %q", code, dc["user_code"])
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// The newest pending code wins; approved, denied and expired ones are
	// skipped.
	older := deviceCodeResp(t, s, c, testScope)
	newer := deviceCodeResp(t, s, c, testScope)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if code, err := s.WaitForPendingCode(ctx); err != nil || code != str(newer, "user_code") {
		t.Fatalf("WaitForPendingCode = %q, %v; want the newest %q", code, err, newer["user_code"])
	}
	if err := s.Approve(str(newer, "user_code")); err != nil {
		t.Fatal(err)
	}
	if code, err := s.WaitForPendingCode(ctx); err != nil || code != str(older, "user_code") {
		t.Fatalf("after approving the newest: %q, %v; want %q", code, err, older["user_code"])
	}
	if err := s.Approve(str(newer, "user_code")); err == nil {
		t.Error("approving a code twice succeeded")
	}
	if err := s.Deny("ZZZZ-ZZZZ"); err == nil {
		t.Error("denying an unknown code succeeded")
	}

	clk.Advance(16 * time.Minute)
	short, cancelShort := context.WithCancel(context.Background())
	cancelShort()
	if _, err := s.WaitForPendingCode(short); !errors.Is(err, context.Canceled) {
		t.Fatalf("with only expired codes and a cancelled context: err = %v, want context.Canceled", err)
	}

	go func() {
		_, err := s.WaitForPendingCode(context.Background())
		errc <- err
	}()
	s.Close()
	if err := <-errc; err == nil {
		t.Fatal("WaitForPendingCode returned no error after Close")
	}
}

func TestActivatePage(t *testing.T) {
	s := start(t, Options{}, nil)
	c := testClient(t, s)
	dc := deviceCodeResp(t, s, c, testScope)

	resp, err := c.Get(str(dc, "verification_uri_complete"))
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), str(dc, "user_code")) {
		t.Fatalf("activate page: status %d, code missing from page", resp.StatusCode)
	}

	resp, err = c.PostForm(s.OAuthURL()+"/activate", url.Values{"user_code": {str(dc, "user_code")}, "action": {"approve"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("approve via page: status %d", resp.StatusCode)
	}
	if status, _ := pollDevice(t, s, c, str(dc, "device_code")); status != http.StatusOK {
		t.Fatalf("poll after approval via page: status %d", status)
	}
}

func TestSecretsNeverLogged(t *testing.T) {
	var mu sync.Mutex
	var logs strings.Builder
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logs.WriteString(fmt.Sprintf(format, args...) + "\n")
	}
	clk := newFakeClock()
	s := start(t, Options{Logf: logf}, clk)
	c := testClient(t, s)
	tok := login(t, s, c, clk, testScope)
	_, tok2 := refresh(t, s, c, str(tok, "refresh_token"))
	refresh(t, s, c, str(tok, "refresh_token")) // replay
	apiGet(t, s, c, "/", "AnaplanAuthToken "+str(tok2, "access_token"))

	secrets := s.IssuedSecrets()
	want := []string{str(tok, "access_token"), str(tok, "refresh_token"), str(tok2, "access_token"), str(tok2, "refresh_token")}
	for _, w := range want {
		if !slices.Contains(secrets, w) {
			t.Errorf("IssuedSecrets misses a token with prefix %.8s", w)
		}
	}
	if len(secrets) != 5 { // one device code, two access and two refresh tokens
		t.Errorf("IssuedSecrets has %d entries, want 5", len(secrets))
	}
	mu.Lock()
	defer mu.Unlock()
	if logs.Len() == 0 {
		t.Fatal("nothing was logged; the check below would prove nothing")
	}
	for _, sec := range secrets {
		if strings.Contains(logs.String(), sec) {
			t.Errorf("a secret with prefix %.8s appears in the log", sec)
		}
	}
}
