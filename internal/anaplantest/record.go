package anaplantest

import (
	"net/http"
	"time"
)

// Listener names used in Call.Listener.
const (
	listenerOAuth   = "oauth"
	listenerAPI     = "api"
	listenerClassic = "classic"
)

// Call records one request the server received.
type Call struct {
	Time     time.Time // arrival, on the server's clock
	Listener string    // "oauth", "api" or "classic"
	Method   string
	Path     string

	// GrantType is the grant_type of a /oauth/token request.
	GrantType string

	// Authorization is the raw Authorization header received, so a test
	// can compare it with the token it expects to have been injected on
	// the API listener, or prove that none reached the OAuth and classic
	// listeners.
	Authorization string

	// Status is the HTTP status answered; 0 while the answer has not
	// started yet. It is recorded before the status line is sent, so a
	// client that has read the answer always finds it here.
	Status int

	// Error is the OAuth error code answered by the OAuth listener. On the
	// API listener it says why a request was refused: "missing_token",
	// "unknown_token", "expired_token" or "revoked_token".
	Error string
}

// Calls returns a copy of the record of every request, in order of arrival.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// recording wraps h so that every request is recorded on arrival and its
// status, grant type and error are filled in when the answer starts.
func (s *Server) recording(listener string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := Call{
			Time:     s.now(),
			Listener: listener,
			Method:   r.Method,
			Path:     r.URL.Path,

			Authorization: r.Header.Get("Authorization"),
		}
		s.mu.Lock()
		idx := len(s.calls)
		s.calls = append(s.calls, c)
		s.mu.Unlock()

		// The Date header follows the server's clock (Options.Now), so that a
		// test can show a client a skewed clock.
		w.Header().Set("Date", s.now().UTC().Format(http.TimeFormat))
		rw := &recWriter{ResponseWriter: w, s: s, idx: idx}
		h.ServeHTTP(rw, r)
		if !rw.wrote {
			rw.WriteHeader(http.StatusOK)
		}
	})
}

// recWriter fills in the call record when the handler starts its answer.
type recWriter struct {
	http.ResponseWriter
	s         *Server
	idx       int
	grantType string
	errCode   string
	wrote     bool
}

func (w *recWriter) WriteHeader(code int) {
	if w.wrote {
		return
	}
	w.wrote = true
	w.s.mu.Lock()
	c := &w.s.calls[w.idx]
	c.Status = code
	c.GrantType = w.grantType
	c.Error = w.errCode
	w.s.mu.Unlock()
	w.ResponseWriter.WriteHeader(code)
}

func (w *recWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Flush sends buffered data to the client.
func (w *recWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *recWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
