package auth

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"
)

// Encoding is how token-endpoint request bodies are encoded.
type Encoding string

// Request encodings: Anaplan documents JSON bodies; RFC 6749 servers want forms.
const (
	EncodingJSON Encoding = "json"
	EncodingForm Encoding = "form"
)

// OAuthConfig names the OAuth client and its endpoints.
type OAuthConfig struct {
	ClientID      string
	DeviceAuthURL string
	TokenURL      string
	// RevokeURL is an optional RFC 7009 revocation endpoint used by Logout.
	RevokeURL string
	Scopes    []string
	Encoding  Encoding
	// HTTPClient carries the transport (extra roots, upstream proxy). Nil
	// means a client that trusts the system roots and uses no proxy.
	HTTPClient *http.Client
}

// DeviceCode is what the user needs to approve a login.
type DeviceCode struct {
	UserCode                string
	VerificationURI         string
	VerificationURIComplete string
	Expiry                  time.Time
	Interval                time.Duration
}

// Errors that end a login.
var (
	ErrAccessDenied = errors.New("the login was denied in the browser")
	ErrCodeExpired  = errors.New("the device code expired before it was approved")
)

// SessionError is returned by Manager.AccessToken when there is no usable
// access token. Its message is one line an operator can act on.
type SessionError struct {
	State State
	// Cause is the underlying failure, if any. It never contains a token.
	Cause error
	// Retry is a hint for transient failures; zero when login is required.
	Retry time.Duration
}

// LoginRequired reports whether only a new `anaplan-proxy login` can help.
func (e *SessionError) LoginRequired() bool {
	return e.State == StateLoginRequired || e.State == StateLoggedOut
}

// RetryAfter is how long a client should wait before trying again.
func (e *SessionError) RetryAfter() time.Duration { return e.Retry }

func (e *SessionError) Unwrap() error { return e.Cause }

// ManagerOptions tunes a Manager. The zero value is usable.
type ManagerOptions struct {
	Logger *slog.Logger
	// RefreshFraction is the part of an access token's lifetime after which
	// it is refreshed in the background (default 0.75, with jitter).
	RefreshFraction float64
	// WatchInterval is how often the store is checked for a new login made
	// by another process (default 1s).
	WatchInterval time.Duration
	// WaitForRefresh bounds how long AccessToken waits for a refresh in
	// flight when the token has expired (default 10s).
	WaitForRefresh time.Duration
	// OnRefresh is called after each refresh attempt with result "success",
	// "transient_error" or "rejected" and its duration.
	OnRefresh func(result string, d time.Duration)
	// OnState is called on every state change.
	OnState func(s Status)
	// ForcedRefreshInterval is how long a token brought by a forced
	// refresh (after an API refused its predecessor) is not refreshed again
	// when an API refuses it too (default 5m, at most half the token's
	// lifetime): the token is not the cause then, and clients cannot make
	// the proxy rotate refresh tokens at will.
	ForcedRefreshInterval time.Duration
	// OnForcedRefresh is called when an API refused the current token,
	// with "refreshed" or "suppressed" (within ForcedRefreshInterval).
	OnForcedRefresh func(result string)
	// OnEvent is called on the events of the shared refresh protocol
	// (EventLeaseBusy, EventFenced, EventUncertain, …).
	OnEvent func(event string)
	// OnNewToken is called when a new access token is taken into use, by
	// this process's refresh or another's, with how long after this
	// process's planned refresh time it came (zero when not late): after
	// a failover, how long the takeover took.
	OnNewToken func(late time.Duration)
	// Instance names this process to other processes sharing the store
	// and to operators (default DefaultInstance()).
	Instance string
	// Failpoint, when set, is called at the named points of a refresh
	// (FailpointAfterIntent, …). Tests use it to stop or kill a process
	// there; production code leaves it nil.
	Failpoint func(name string)
}

// DefaultInstance names this process: the host name, the process ID and a
// random part. The random part keeps a name from ever being reused (a
// container's process is always PID 1, and a restarted container keeps
// its host name): a store tells holders apart by name.
func DefaultInstance() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return h + ":" + strconv.Itoa(os.Getpid()) + ":" + hex.EncodeToString(b[:])
}
