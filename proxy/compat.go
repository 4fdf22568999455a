package proxy

// Anaplan's classic authentication API, answered by the proxy itself.
//
// Scripts and Anaplan Connect written for Basic or certificate
// authentication post credentials to https://auth.anaplan.com/token/authenticate,
// take tokenInfo.tokenValue from the answer and send it to the API hosts as
// "AnaplanAuthToken <token>". For the Compat hosts the proxy intercepts TLS
// and answers /token/* itself: the token it hands out is a placeholder that
// is worth nothing outside the proxy, and on inject hosts the placeholder
// is replaced by the session's access token. The credentials the client
// sent are read only to be discarded: never forwarded, stored, logged or
// hashed. Nothing is ever sent to a Compat host.

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The classic authentication endpoints the proxy answers.
const (
	compatPrefix       = "/token/"
	compatAuthenticate = "/token/authenticate"
	compatRefresh      = "/token/refresh"
	compatValidate     = "/token/validate"
	compatLogout       = "/token/logout"
)

const (
	// placeholderPrefix starts every token the proxy hands out, so that it
	// is recognised in headers and by people reading a script's output.
	placeholderPrefix = "anaplan-proxy-placeholder."
	// placeholderRandomBytes is the size of the random part: placeholders
	// carry no secret, the randomness only keeps them distinct.
	placeholderRandomBytes = 18
	// classicTokenLifetime is the lifetime of Anaplan's classic tokens,
	// reported as expiresAt when the TokenSource cannot tell the session's.
	classicTokenLifetime = 35 * time.Minute
)

// placeholderLen is the length of a placeholder token.
var placeholderLen = len(placeholderPrefix) + base64.RawURLEncoding.EncodedLen(placeholderRandomBytes)

// TokenExpiry may be implemented by a TokenSource that knows when the
// access token it currently returns expires. Answers of the classic
// authentication API report that time as tokenInfo.expiresAt, so that a
// script refreshes on the session's schedule; without it they report 35
// minutes from now, the lifetime of a classic Anaplan token.
type TokenExpiry interface {
	AccessTokenExpiry() time.Time
}

// addCompat parses the Compat host patterns into the policy.
func (pl *policy) addCompat(hosts []string) error {
	for _, s := range hosts {
		hp, err := parseHostPattern(s)
		if err != nil {
			return err
		}
		pl.compat = append(pl.compat, hp)
	}
	return nil
}

// newPlaceholder returns a fresh placeholder token.
func newPlaceholder() string {
	b := make([]byte, placeholderRandomBytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return placeholderPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// isPlaceholder reports whether token has the exact form of the proxy's
// placeholders. Any such value is accepted, not only those handed out by
// this process: it can never be a real Anaplan token, and a script that
// authenticated before a restart keeps working.
func isPlaceholder(token string) bool {
	rest, ok := strings.CutPrefix(token, placeholderPrefix)
	if !ok || len(token) != placeholderLen {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// placeholderIn returns the placeholder that h's Authorization header
// carries with the AnaplanAuthToken or Bearer scheme, if it carries one.
func placeholderIn(h http.Header) (string, bool) {
	values := h.Values("Authorization")
	if len(values) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !ok || !(strings.EqualFold(scheme, "AnaplanAuthToken") || strings.EqualFold(scheme, "Bearer")) {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, isPlaceholder(token)
}

// hasCredentials reports whether h's Authorization header uses one of the
// schemes of /token/authenticate: Basic or CACertificate. The credentials
// themselves are not looked at.
func hasCredentials(h http.Header) bool {
	scheme, _, _ := strings.Cut(strings.TrimSpace(h.Get("Authorization")), " ")
	return strings.EqualFold(scheme, "Basic") || strings.EqualFold(scheme, "CACertificate")
}

// classicAnswer is the body of Anaplan's classic authentication answers.
// Field order follows Anaplan's documentation.
type classicAnswer struct {
	Meta          classicMeta      `json:"meta"`
	Status        string           `json:"status"`
	StatusMessage string           `json:"statusMessage"`
	TokenInfo     classicTokenInfo `json:"tokenInfo"`
}

type classicMeta struct {
	ValidationURL string `json:"validationUrl"`
}

type classicTokenInfo struct {
	ExpiresAt      int64  `json:"expiresAt"` // epoch milliseconds
	TokenID        string `json:"tokenId"`
	TokenValue     string `json:"tokenValue"`
	RefreshTokenID string `json:"refreshTokenId"`
}

// compatEndpoint is one answered endpoint: the method it takes and the
// status and message of its answer.
type compatEndpoint struct {
	method  string
	status  int
	message string
}

// compatEndpoints are Anaplan's documented answers: 201 "Login successful"
// for authenticate, with the same shape for refresh. Anaplan documents no
// body for validate; the proxy answers 200 in the same shape with the
// message "Token validated", which is what clients that only check the
// status and tokenInfo need.
var compatEndpoints = map[string]compatEndpoint{
	compatAuthenticate: {http.MethodPost, http.StatusCreated, "Login successful"},
	compatRefresh:      {http.MethodPost, http.StatusCreated, "Token refreshed"},
	compatValidate:     {http.MethodGet, http.StatusOK, "Token validated"},
	compatLogout:       {http.MethodPost, http.StatusNoContent, ""},
}

// compatProxyStatus tells a client reading headers who answered.
const compatProxyStatus = `anaplan-proxy; details="classic authentication answered by the proxy; nothing was sent to Anaplan"`

// serveCompat answers one request to a Compat host. It never dials.
func (p *Proxy) serveCompat(w http.ResponseWriter, r *http.Request, t *target) {
	// The body (the signed data of CACertificate) is never read here;
	// the serving loop drops it after the answer.
	ep, ok := compatEndpoints[r.URL.Path]
	if !ok {
		if strings.HasPrefix(r.URL.Path, compatPrefix) {
			requestError(http.StatusNotFound, fmt.Sprintf("%s is not part of Anaplan's classic authentication API that the proxy answers for %s (authenticate, refresh, validate, logout)", r.URL.Path, t.hostport)).write(w)
			return
		}
		requestDenied(http.StatusForbidden, fmt.Sprintf("%s is a classic authentication host: the proxy answers its /token/ calls itself and forwards nothing to it", t.hostport)).write(w)
		return
	}
	if r.Method != ep.method {
		a := requestError(http.StatusMethodNotAllowed, fmt.Sprintf("%s takes %s, not %s", r.URL.Path, ep.method, r.Method))
		a.withHeader("Allow", ep.method).write(w)
		return
	}
	if r.URL.Path == compatLogout {
		// The session is the proxy's, not the script's: logging out
		// changes nothing, and a script's clean-up never fails.
		w.Header().Set("Proxy-Status", compatProxyStatus)
		w.WriteHeader(ep.status)
		return
	}

	var placeholder string
	if r.URL.Path == compatAuthenticate {
		if !hasCredentials(r.Header) {
			requestError(http.StatusUnauthorized, "/token/authenticate needs an Authorization header with Basic or CACertificate credentials, as Anaplan does (the proxy does not check them and sends them nowhere)").write(w)
			return
		}
		placeholder = newPlaceholder()
	} else {
		ph, ok := placeholderIn(r.Header)
		if !ok {
			requestError(http.StatusUnauthorized, fmt.Sprintf("%s needs \"Authorization: AnaplanAuthToken <tokenValue>\" with the token that /token/authenticate through this proxy returned", r.URL.Path)).write(w)
			return
		}
		placeholder = ph
	}

	// A script must stop at its first step when there is no session, with
	// the same answer an API call would get.
	if _, err := p.tokens.AccessToken(r.Context()); err != nil {
		a := tokenAnswer(err)
		p.log.Warn("no access token for a classic authentication call", "host", t.hostport, "path", r.URL.Path, "status", a.status, "error", oneLine(err.Error()))
		a.write(w)
		return
	}
	body, err := json.Marshal(classicAnswer{
		Meta:          classicMeta{ValidationURL: "https://" + t.authority + compatValidate},
		Status:        "SUCCESS",
		StatusMessage: ep.message,
		TokenInfo: classicTokenInfo{
			ExpiresAt:      p.compatExpiry(time.Now()).UnixMilli(),
			TokenID:        newUUID(),
			TokenValue:     placeholder,
			RefreshTokenID: newUUID(),
		},
	})
	if err != nil {
		internalError("encoding the answer: " + err.Error()).write(w)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Proxy-Status", compatProxyStatus)
	w.WriteHeader(ep.status)
	_, _ = w.Write(body)
	p.log.LogAttrs(r.Context(), slog.LevelDebug, "classic authentication answered locally",
		slog.String("host", t.hostport), slog.String("path", r.URL.Path))
}

// compatExpiry is the expiresAt of an answer given at now: the session's
// access-token expiry when the TokenSource knows it.
func (p *Proxy) compatExpiry(now time.Time) time.Time {
	if te, ok := p.tokens.(TokenExpiry); ok {
		if exp := te.AccessTokenExpiry(); exp.After(now) {
			return exp
		}
	}
	return now.Add(classicTokenLifetime)
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// action is the policy decision that intercepted t.
func (t *target) action() action {
	if t.compat {
		return actionCompat
	}
	return actionInject
}

// hasPlaceholder reports whether h carries one of the proxy's placeholders
// as its only Authorization.
func hasPlaceholder(h http.Header) bool {
	_, ok := placeholderIn(h)
	return ok
}
