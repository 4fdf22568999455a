package anaplantest

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// maxStreamBytes bounds GET /stream?bytes=N.
const maxStreamBytes = 1 << 40

// serveAPI is the Integration API: every request needs a live access token.
//
//   - GET /stream?bytes=N answers N bytes of the PatternReader pattern,
//     generated as they are sent.
//   - GET /redirect answers 302 to https://example.invalid/.
//   - GET /unauthorized answers 401 even with a live token, as an API
//     that refuses the user for a reason no new token fixes.
//   - PUT or POST with a body answers {"method","path","query","host",
//     "authorization_scheme","bytes","sha256"}, reading the body as it arrives.
//   - Anything else answers {"method","path","query","host",
//     "authorization_scheme"}.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	if reason := s.checkAccessToken(r.Header.Get("Authorization")); reason != "" {
		if rw, ok := w.(*recWriter); ok {
			rw.errCode = reason
		}
		writeAnaplanStatus(w, http.StatusUnauthorized, "Unauthorized")
		return
	}
	echo := map[string]any{
		"method": r.Method,
		"path":   r.URL.Path,
		"host":   r.Host,
		// The scheme only: the answer reaches the client, which must never
		// see a token. Tests read the full header from Calls().
		"authorization_scheme": authScheme(r.Header.Get("Authorization")),
	}
	if r.URL.RawQuery != "" {
		echo["query"] = r.URL.RawQuery
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/stream":
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n < 0 || n > maxStreamBytes {
			writeAnaplanStatus(w, http.StatusBadRequest, "bytes must be an integer from 0 to 2^40")
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.WriteHeader(http.StatusOK)
		io.Copy(w, NewPatternReader(n))
	case r.Method == http.MethodGet && r.URL.Path == "/unauthorized":
		writeAnaplanStatus(w, http.StatusUnauthorized, "Unauthorized")
	case r.Method == http.MethodGet && r.URL.Path == "/redirect":
		w.Header().Set("Location", "https://example.invalid/")
		w.WriteHeader(http.StatusFound)
	case (r.Method == http.MethodPut || r.Method == http.MethodPost) && r.ContentLength != 0:
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			writeAnaplanStatus(w, http.StatusBadRequest, "reading the request body failed")
			return
		}
		echo["bytes"] = n
		echo["sha256"] = hex.EncodeToString(h.Sum(nil))
		writeJSON(w, http.StatusOK, echo)
	default:
		writeJSON(w, http.StatusOK, echo)
	}
}

// checkAccessToken returns why the Authorization header does not carry a
// live access token, or "" when it does. Both Anaplan's "AnaplanAuthToken"
// scheme and "Bearer" are accepted.
func (s *Server) checkAccessToken(header string) string {
	scheme, token, ok := strings.Cut(strings.TrimSpace(header), " ")
	token = strings.TrimSpace(token)
	if !ok || token == "" || !(strings.EqualFold(scheme, "AnaplanAuthToken") || strings.EqualFold(scheme, "Bearer")) {
		return "missing_token"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.state.access[token]
	switch {
	case !ok:
		return "unknown_token"
	case at.grant.revoked:
		return "revoked_token"
	case !s.now().Before(at.expires):
		return "expired_token"
	}
	return ""
}

// serveClassic stands in for Anaplan's classic authentication API. It only
// records what reaches it and refuses everything, so a test can prove that
// nothing was sent there.
func (s *Server) serveClassic(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, io.LimitReader(r.Body, maxParamsBody))
	switch r.URL.Path {
	case "/token/authenticate", "/token/refresh", "/token/validate", "/token/logout":
		writeJSON(w, http.StatusUnauthorized, map[string]string{
			"status":        "FAILURE_BAD_CREDENTIAL",
			"statusMessage": "Unauthorized",
		})
	default:
		writeAnaplanStatus(w, http.StatusNotFound, "Not Found")
	}
}

// writeAnaplanStatus writes the error shape of Anaplan's APIs:
// {"status":{"code":401,"message":"Unauthorized"}}.
func writeAnaplanStatus(w http.ResponseWriter, code int, message string) {
	writeJSON(w, code, map[string]any{"status": map[string]any{"code": code, "message": message}})
}

// PatternReader yields the deterministic bytes that GET /stream sends: the
// byte at offset i is i mod 251. A prime period makes shifted, dropped or
// repeated chunks of any power-of-two size show up in a checksum.
type PatternReader struct {
	off, n int64
}

// NewPatternReader returns a reader of the first n bytes of the pattern.
func NewPatternReader(n int64) *PatternReader { return &PatternReader{n: n} }

// Read fills p with the next bytes of the pattern.
func (p *PatternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if rest := p.n - p.off; int64(len(b)) > rest {
		b = b[:rest]
	}
	v := byte(p.off % 251)
	for i := range b {
		b[i] = v
		v++
		if v == 251 {
			v = 0
		}
	}
	p.off += int64(len(b))
	return len(b), nil
}

// authScheme returns the scheme word of an Authorization header.
func authScheme(header string) string {
	scheme, _, _ := strings.Cut(strings.TrimSpace(header), " ")
	return scheme
}
