package anaplantest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Grant types accepted by the token endpoint.
const (
	grantDeviceCode   = "urn:ietf:params:oauth:grant-type:device_code"
	grantRefreshToken = "refresh_token"
)

// Identity carried in every id_token.
const (
	userEmail = "integration.user@example.com"
	userName  = "Integration User"
)

// maxParamsBody bounds an OAuth request body.
const maxParamsBody = 1 << 20

type codeState int

const (
	codePending codeState = iota
	codeApproved
	codeDenied
	codeExchanged
)

// deviceCode is one device authorization request.
type deviceCode struct {
	seq        int
	deviceCode string
	userCode   string
	scope      string
	expires    time.Time
	interval   time.Duration // grows by 5s on every slow_down
	lastPoll   time.Time
	state      codeState
}

// grant is one login: every token issued from one approved device code,
// through any number of refreshes. Revoking it kills all of them.
type grant struct {
	id      int
	scope   string
	revoked bool
}

type accessToken struct {
	grant   *grant
	expires time.Time
}

type refreshToken struct {
	grant   *grant
	rotated bool // replaced by a newer refresh token; presenting it again is a replay
}

// oauthState is everything the OAuth service remembers. It is guarded by
// Server.mu.
type oauthState struct {
	seq       int
	codes     map[string]*deviceCode // by device_code
	userCodes map[string]*deviceCode // by user_code
	grants    []*grant
	access    map[string]*accessToken
	refresh   map[string]*refreshToken
	refreshes int
	replays   int

	// issued is closed and replaced whenever a device code is issued.
	issued chan struct{}
}

func newOAuthState() oauthState {
	return oauthState{
		codes:     make(map[string]*deviceCode),
		userCodes: make(map[string]*deviceCode),
		access:    make(map[string]*accessToken),
		refresh:   make(map[string]*refreshToken),
		issued:    make(chan struct{}),
	}
}

// newestPending returns the user code of the newest device code still
// waiting for a decision.
func (st *oauthState) newestPending(now time.Time) (string, bool) {
	var newest *deviceCode
	for _, dc := range st.codes {
		if dc.state != codePending || !now.Before(dc.expires) {
			continue
		}
		if newest == nil || dc.seq > newest.seq {
			newest = dc
		}
	}
	if newest == nil {
		return "", false
	}
	return newest.userCode, true
}

// oauthError is an OAuth error answer (RFC 6749 section 5.2).
type oauthError struct {
	status      int
	code        string
	description string
}

func (s *Server) oauthMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/oauth/device/code", s.serveDeviceCode)
	mux.HandleFunc("/oauth/token", s.serveToken)
	mux.HandleFunc("/oauth/revoke", s.serveRevoke)
	mux.HandleFunc("/activate", s.serveActivate)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeOAuthError(w, &oauthError{http.StatusNotFound, "invalid_request", "no such endpoint"})
	})
	return mux
}

// Approve approves the device code with this user code, as the user would
// in a browser.
func (s *Server) Approve(userCode string) error {
	return s.decide(userCode, codeApproved)
}

// Deny denies the device code with this user code; polling it then answers
// access_denied.
func (s *Server) Deny(userCode string) error {
	return s.decide(userCode, codeDenied)
}

func (s *Server) decide(userCode string, to codeState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	dc, ok := s.state.userCodes[strings.ToUpper(strings.TrimSpace(userCode))]
	switch {
	case !ok:
		return fmt.Errorf("anaplantest: unknown user code %q", userCode)
	case !s.now().Before(dc.expires):
		return fmt.Errorf("anaplantest: user code %q has expired", userCode)
	case dc.state != codePending:
		return fmt.Errorf("anaplantest: user code %q was already decided", userCode)
	}
	dc.state = to
	if to == codeApproved {
		s.opts.Logf("device code approved: user_code=%s", dc.userCode)
	} else {
		s.opts.Logf("device code denied: user_code=%s", dc.userCode)
	}
	return nil
}

// RevokeAll revokes every grant: each refresh token then answers
// invalid_grant and each access token 401. Device codes not yet exchanged
// are unaffected.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	for _, g := range s.state.grants {
		g.revoked = true
	}
	s.mu.Unlock()
	s.opts.Logf("every grant revoked")
}

// ExpireAccessTokens makes every access token issued so far expire now,
// without touching refresh tokens: the next API call with one gets 401 and
// a refresh is needed.
func (s *Server) ExpireAccessTokens() {
	s.mu.Lock()
	now := s.now()
	for _, at := range s.state.access {
		if at.expires.After(now) {
			at.expires = now
		}
	}
	s.mu.Unlock()
	s.opts.Logf("every access token expired")
}

// Refreshes returns the number of successful refresh_token grants.
func (s *Server) Refreshes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.refreshes
}

// RefreshReplays returns how many times a refresh token was presented again
// after it had been rotated. Each one revoked its grant.
func (s *Server) RefreshReplays() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.replays
}

func (s *Server) serveDeviceCode(w http.ResponseWriter, r *http.Request) {
	params, oerr := readParams(r)
	if oerr != nil {
		writeOAuthError(w, oerr)
		return
	}
	if params.Get("client_id") != s.opts.ClientID {
		writeOAuthError(w, &oauthError{http.StatusBadRequest, "invalid_client", "unknown client_id"})
		return
	}
	scope := params.Get("scope")

	s.mu.Lock()
	now := s.now()
	st := &s.state
	st.seq++
	dc := &deviceCode{
		seq:        st.seq,
		deviceCode: s.newSecret("fake-dc-"),
		userCode:   newUserCode(st.userCodes),
		scope:      scope,
		expires:    now.Add(s.opts.DeviceCodeLifetime),
		interval:   s.interval,
	}
	st.codes[dc.deviceCode] = dc
	st.userCodes[dc.userCode] = dc
	if s.opts.AutoApprove {
		dc.state = codeApproved
	}
	close(st.issued)
	st.issued = make(chan struct{})
	s.mu.Unlock()

	s.opts.Logf("device code issued: user_code=%s auto_approved=%t", dc.userCode, s.opts.AutoApprove)
	activate := s.OAuthURL() + "/activate"
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code":               dc.deviceCode,
		"user_code":                 dc.userCode,
		"verification_uri":          activate,
		"verification_uri_complete": activate + "?user_code=" + url.QueryEscape(dc.userCode),
		"expires_in":                seconds(s.opts.DeviceCodeLifetime),
		"interval":                  int64(s.interval / time.Second),
	})
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	params, oerr := readParams(r)
	if rw, ok := w.(*recWriter); ok && params != nil {
		rw.grantType = params.Get("grant_type")
	}
	s.mu.Lock()
	outage := s.outage
	s.mu.Unlock()
	if outage != 0 {
		writeOAuthError(w, &oauthError{outage, "temporarily_unavailable", "the token service is unavailable"})
		return
	}
	if oerr != nil {
		writeOAuthError(w, oerr)
		return
	}
	if id := params.Get("client_id"); id != s.opts.ClientID {
		desc := "unknown client_id"
		if id == "" {
			desc = "client_id is required"
		}
		writeOAuthError(w, &oauthError{http.StatusUnauthorized, "invalid_client", desc})
		return
	}

	var body map[string]any
	switch gt := params.Get("grant_type"); gt {
	case grantDeviceCode:
		body, oerr = s.exchangeDeviceCode(params.Get("device_code"))
	case grantRefreshToken:
		body, oerr = s.refreshGrant(params.Get("refresh_token"))
	case "":
		oerr = &oauthError{http.StatusBadRequest, "invalid_request", "grant_type is required"}
	default:
		oerr = &oauthError{http.StatusBadRequest, "unsupported_grant_type", "grant_type is not supported"}
	}
	if oerr != nil {
		writeOAuthError(w, oerr)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

// exchangeDeviceCode answers one device-flow poll.
func (s *Server) exchangeDeviceCode(code string) (map[string]any, *oauthError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	dc, ok := s.state.codes[code]
	if !ok {
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "unknown device_code"}
	}
	if dc.state == codeExchanged {
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "device_code was already exchanged"}
	}
	if !now.Before(dc.expires) {
		return nil, &oauthError{http.StatusBadRequest, "expired_token", "device_code has expired; start a new login"}
	}
	// RFC 8628 section 3.5: a client polling faster than the interval is
	// told to slow down, and the interval grows by 5 seconds. A margin
	// keeps clients that poll on time from being punished for jitter.
	prev := dc.lastPoll
	dc.lastPoll = now
	if !prev.IsZero() && now.Sub(prev) < dc.interval-200*time.Millisecond {
		dc.interval += 5 * time.Second
		s.opts.Logf("device code polled too fast: user_code=%s interval=%s", dc.userCode, dc.interval)
		return nil, &oauthError{http.StatusBadRequest, "slow_down", "polling too fast; wait longer between polls"}
	}
	switch dc.state {
	case codePending:
		return nil, &oauthError{http.StatusBadRequest, "authorization_pending", "the user has not approved the device yet"}
	case codeDenied:
		return nil, &oauthError{http.StatusBadRequest, "access_denied", "the user denied the request"}
	}
	dc.state = codeExchanged
	s.state.seq++
	g := &grant{id: s.state.seq, scope: dc.scope}
	s.state.grants = append(s.state.grants, g)
	s.opts.Logf("device code exchanged: user_code=%s grant=%d", dc.userCode, g.id)
	return s.issueTokens(g, now, true), nil
}

// refreshGrant answers one refresh_token grant.
func (s *Server) refreshGrant(token string) (map[string]any, *oauthError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	rt, ok := s.state.refresh[token]
	if !ok {
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "unknown refresh_token"}
	}
	if rt.rotated {
		// RFC 9700 section 4.14.2: a rotated refresh token presented again
		// means it may have been stolen, so the whole grant dies.
		s.state.replays++
		rt.grant.revoked = true
		s.opts.Logf("rotated refresh token presented again: grant=%d revoked", rt.grant.id)
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "refresh_token was already used; the grant is revoked"}
	}
	if rt.grant.revoked {
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "refresh_token is revoked"}
	}
	s.state.refreshes++
	rotate := !s.opts.NonRotating
	if rotate {
		rt.rotated = true
	}
	s.opts.Logf("refresh: grant=%d rotated=%t", rt.grant.id, rotate)
	return s.issueTokens(rt.grant, now, rotate), nil
}

// issueTokens creates an access token, and a refresh token when withRefresh
// is set and the grant's scope asks for offline_access, and returns the
// token response. The caller holds s.mu.
func (s *Server) issueTokens(g *grant, now time.Time, withRefresh bool) map[string]any {
	at := s.newSecret("fake-at-")
	s.state.access[at] = &accessToken{grant: g, expires: now.Add(s.opts.AccessTokenLifetime)}
	body := map[string]any{
		"access_token": at,
		"id_token":     s.idToken(g, now),
		"token_type":   "Bearer",
		"expires_in":   seconds(s.opts.AccessTokenLifetime),
		"scope":        g.scope,
	}
	if withRefresh && slices.Contains(strings.Fields(g.scope), "offline_access") {
		rt := s.newSecret("fake-rt-")
		s.state.refresh[rt] = &refreshToken{grant: g}
		body["refresh_token"] = rt
	}
	return body
}

// idToken returns an unsigned JWT-shaped string ("alg":"none") naming the
// integration user.
func (s *Server) idToken(g *grant, now time.Time) string {
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT"})
	payload, _ := json.Marshal(map[string]any{
		"iss":   s.OAuthURL() + "/",
		"sub":   fmt.Sprintf("anaplantest|grant-%d", g.id),
		"aud":   s.opts.ClientID,
		"iat":   now.Unix(),
		"exp":   now.Add(s.opts.AccessTokenLifetime).Unix(),
		"email": userEmail,
		"name":  userName,
	})
	return enc.EncodeToString(header) + "." + enc.EncodeToString(payload) + "."
}

// serveRevoke implements RFC 7009: revoking a refresh or access token
// revokes its whole grant. Unknown tokens are answered 200 as the RFC asks.
func (s *Server) serveRevoke(w http.ResponseWriter, r *http.Request) {
	params, oerr := readParams(r)
	if oerr != nil {
		writeOAuthError(w, oerr)
		return
	}
	if id := params.Get("client_id"); id != "" && id != s.opts.ClientID {
		writeOAuthError(w, &oauthError{http.StatusUnauthorized, "invalid_client", "unknown client_id"})
		return
	}
	token := params.Get("token")
	if token == "" {
		writeOAuthError(w, &oauthError{http.StatusBadRequest, "invalid_request", "token is required"})
		return
	}
	s.mu.Lock()
	var g *grant
	if rt, ok := s.state.refresh[token]; ok {
		g = rt.grant
	} else if at, ok := s.state.access[token]; ok {
		g = at.grant
	}
	if g != nil {
		g.revoked = true
	}
	s.mu.Unlock()
	if g != nil {
		s.opts.Logf("grant revoked by client: grant=%d", g.id)
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
}

var activatePage = template.Must(template.New("activate").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Activate device</title></head>
<body><h1>Activate device</h1>
<p>This is a fake Anaplan used for testing. Approve the code to let the device sign in as {{.Email}}.</p>
<form method="post"><p><label>Code <input name="user_code" value="{{.UserCode}}"></label></p>
<p><button name="action" value="approve">Approve</button> <button name="action" value="deny">Deny</button></p></form>
{{if .Message}}<p><strong>{{.Message}}</strong></p>{{end}}
</body></html>
`))

// serveActivate is the verification page a user opens in a browser: GET
// shows a form, POST approves or denies the code.
func (s *Server) serveActivate(w http.ResponseWriter, r *http.Request) {
	data := struct{ Email, UserCode, Message string }{Email: userEmail, UserCode: r.URL.Query().Get("user_code")}
	status := http.StatusOK
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, maxParamsBody)
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		data.UserCode = r.PostForm.Get("user_code")
		var err error
		if r.PostForm.Get("action") == "deny" {
			err = s.Deny(data.UserCode)
			data.Message = "Denied."
		} else {
			err = s.Approve(data.UserCode)
			data.Message = "Approved: you can close this page."
		}
		if err != nil {
			status = http.StatusBadRequest
			data.Message = strings.TrimPrefix(err.Error(), "anaplantest: ")
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	activatePage.Execute(w, data)
}

// readParams reads the parameters of an OAuth POST from a JSON object
// (what Anaplan Connect sends) or a form (what RFC 6749 clients send).
func readParams(r *http.Request) (url.Values, *oauthError) {
	if r.Method != http.MethodPost {
		return nil, &oauthError{http.StatusMethodNotAllowed, "invalid_request", "use POST"}
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return nil, &oauthError{http.StatusBadRequest, "invalid_request", "Content-Type must be application/json or application/x-www-form-urlencoded"}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxParamsBody+1))
	if err != nil {
		return nil, &oauthError{http.StatusBadRequest, "invalid_request", "reading the request body failed"}
	}
	if len(body) > maxParamsBody {
		return nil, &oauthError{http.StatusRequestEntityTooLarge, "invalid_request", "request body too large"}
	}
	switch mt {
	case "application/json":
		var obj map[string]any
		if err := json.Unmarshal(body, &obj); err != nil {
			return nil, &oauthError{http.StatusBadRequest, "invalid_request", "the body is not a JSON object"}
		}
		v := url.Values{}
		for k, val := range obj {
			str, ok := val.(string)
			if !ok {
				return nil, &oauthError{http.StatusBadRequest, "invalid_request", fmt.Sprintf("%s must be a string", k)}
			}
			v.Set(k, str)
		}
		return v, nil
	case "application/x-www-form-urlencoded":
		v, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, &oauthError{http.StatusBadRequest, "invalid_request", "the body is not a valid form"}
		}
		return v, nil
	default:
		return nil, &oauthError{http.StatusBadRequest, "invalid_request", "Content-Type must be application/json or application/x-www-form-urlencoded"}
	}
}

// writeOAuthError writes {error, error_description} with e's status and
// records the error code.
func writeOAuthError(w http.ResponseWriter, e *oauthError) {
	if rw, ok := w.(*recWriter); ok {
		rw.errCode = e.code
	}
	writeJSON(w, e.status, map[string]string{"error": e.code, "error_description": e.description})
}

// writeJSON writes v as a JSON answer that no cache may keep.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"server_error"}`)
	}
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// newSecret returns prefix followed by 43 random url-safe characters and
// remembers it for IssuedSecrets. The caller holds s.mu.
func (s *Server) newSecret(prefix string) string {
	b := make([]byte, 32)
	rand.Read(b)
	tok := prefix + base64.RawURLEncoding.EncodeToString(b)
	s.secrets = append(s.secrets, tok)
	return tok
}

// userCodeAlphabet avoids vowels and look-alike characters (RFC 8628
// section 6.1).
const userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"

// newUserCode returns an unused code like "BCDF-GHJK".
func newUserCode(used map[string]*deviceCode) string {
	for {
		b := make([]byte, 8)
		rand.Read(b)
		var sb strings.Builder
		for i, c := range b {
			if i == 4 {
				sb.WriteByte('-')
			}
			sb.WriteByte(userCodeAlphabet[int(c)%len(userCodeAlphabet)])
		}
		if _, dup := used[sb.String()]; !dup {
			return sb.String()
		}
	}
}
