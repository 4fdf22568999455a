package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// assumedLifetime is used for an access token whose response carried no
// expires_in. Anaplan always sends it (2100 s); this only keeps a
// nonconforming server from producing a token that never expires.
const assumedLifetime = 30 * time.Minute

// oauth2Config builds the x/oauth2 configuration for a public device client:
// credentials in the body, never a Basic header (the default auto-detection
// would send every failing request twice).
func oauth2Config(cfg OAuthConfig) *oauth2.Config {
	return &oauth2.Config{
		ClientID: cfg.ClientID,
		Endpoint: oauth2.Endpoint{
			DeviceAuthURL: cfg.DeviceAuthURL,
			TokenURL:      cfg.TokenURL,
			AuthStyle:     oauth2.AuthStyleInParams,
		},
		Scopes: cfg.Scopes,
	}
}

// oauthClient returns the client handed to x/oauth2: the configured one (or
// a direct client trusting the system roots), with form bodies rewritten to
// JSON when cfg asks for it. observe, when set, sees every response.
func oauthClient(cfg OAuthConfig, observe func(*http.Response)) *http.Client {
	var c http.Client
	if cfg.HTTPClient != nil {
		c = *cfg.HTTPClient
	}
	base := c.Transport
	if base == nil {
		if cfg.HTTPClient != nil {
			base = http.DefaultTransport
		} else {
			t := http.DefaultTransport.(*http.Transport).Clone()
			t.Proxy = nil
			base = t
		}
	}
	c.Transport = &oauthTransport{base: base, json: cfg.Encoding == EncodingJSON, observe: observe}
	return &c
}

// withClient returns ctx carrying client for x/oauth2.
func withClient(ctx context.Context, client *http.Client) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, client)
}

// oauthTransport adapts the requests x/oauth2 makes. x/oauth2 always sends
// application/x-www-form-urlencoded bodies; Anaplan documents JSON bodies
// with the same fields, so with json set every form POST through this
// transport (which serves only the OAuth endpoints) is re-encoded as a JSON
// object of strings.
type oauthTransport struct {
	base    http.RoundTripper
	json    bool
	observe func(*http.Response)
}

func (t *oauthTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.json && req.Method == http.MethodPost && req.Body != nil && isForm(req.Header.Get("Content-Type")) {
		r, err := formToJSON(req)
		if err != nil {
			return nil, err
		}
		req = r
	}
	resp, err := t.base.RoundTrip(req)
	if err == nil && t.observe != nil {
		t.observe(resp)
	}
	return resp, err
}

func isForm(contentType string) bool {
	mt, _, _ := mime.ParseMediaType(contentType)
	return mt == "application/x-www-form-urlencoded"
}

// formToJSON returns a copy of req whose form body is a JSON object instead.
// A field sent more than once becomes an array.
func formToJSON(req *http.Request) (*http.Request, error) {
	raw, err := io.ReadAll(req.Body)
	req.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading the OAuth request body: %w", err)
	}
	vals, err := url.ParseQuery(string(raw))
	if err != nil {
		return nil, errors.New("re-encoding the OAuth request body: not a form")
	}
	obj := make(map[string]any, len(vals))
	for k, v := range vals {
		if len(v) == 1 {
			obj[k] = v[0]
		} else {
			obj[k] = v
		}
	}
	body, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("re-encoding the OAuth request body: %w", err)
	}
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.Header.Set("Content-Type", "application/json")
	return r, nil
}

// EndpointError is a failure answered by an OAuth endpoint. Unlike
// x/oauth2's RetrieveError its message never includes the response body,
// only the HTTP status and the RFC 6749 error code and description.
type EndpointError struct {
	// Endpoint names the endpoint: "token", "device authorization" or
	// "revocation".
	Endpoint   string
	StatusCode int
	Status     string
	// Code and Description are RFC 6749's error and error_description.
	Code        string
	Description string
	// RetryAfter is the server's Retry-After hint, if any.
	RetryAfter time.Duration
}

func (e *EndpointError) Error() string {
	s := e.Endpoint + " endpoint: "
	switch {
	case e.Code != "" && e.Description != "":
		s += e.Code + " (" + e.Description + ")"
	case e.Code != "":
		s += e.Code
	default:
		return s + e.Status
	}
	// The status tells an operator at a glance whether the server was
	// down (5xx), throttling (429) or refusing (4xx).
	if e.Status != "" {
		s += ", HTTP " + e.Status
	}
	return s
}

// Permanent reports whether the server rejected the request itself, so
// that repeating it cannot succeed: an OAuth error code with status 400,
// 401 or 403 (or a 2xx answer carrying an error code), except the codes
// RFC 6749 defines as temporary.
func (e *EndpointError) Permanent() bool {
	switch e.Code {
	case "":
		return false
	case "temporarily_unavailable", "server_error", "slow_down", "authorization_pending":
		return false
	}
	switch {
	case e.StatusCode == http.StatusBadRequest, e.StatusCode == http.StatusUnauthorized, e.StatusCode == http.StatusForbidden:
		return true
	case e.StatusCode >= 200 && e.StatusCode <= 299:
		return true
	}
	return false
}

// sanitize turns an x/oauth2 error into one safe to log: a RetrieveError
// becomes an *EndpointError (the raw body is dropped), and any secret that
// the server echoed into a description is masked. Other errors (network
// failures, timeouts) are returned unchanged: they carry no response data.
func sanitize(endpoint string, err error, secrets ...string) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		if err != nil && strings.HasPrefix(err.Error(), "oauth2: ") {
			// x/oauth2's own parse errors; keep only the gist.
			return fmt.Errorf("%s endpoint: unusable answer: %s", endpoint, mask(strings.TrimPrefix(err.Error(), "oauth2: "), secrets))
		}
		return err
	}
	e := &EndpointError{
		Endpoint:    endpoint,
		Code:        mask(oneLine(re.ErrorCode, 64), secrets),
		Description: mask(oneLine(re.ErrorDescription, 200), secrets),
	}
	if re.Response != nil {
		e.StatusCode = re.Response.StatusCode
		e.Status = re.Response.Status
		e.RetryAfter = retryAfter(re.Response.Header.Get("Retry-After"), time.Now())
	}
	if e.Status == "" {
		e.Status = strconv.Itoa(e.StatusCode)
	}
	return e
}

func mask(s string, secrets []string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

// oneLine keeps server-provided text printable, single-line and short.
func oneLine(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// retryAfter parses an HTTP Retry-After value (seconds or an HTTP date).
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// isPermanent reports whether err means the grant is gone for good.
func isPermanent(err error) bool {
	var ee *EndpointError
	return errors.As(err, &ee) && ee.Permanent()
}

// retryHint returns the server's Retry-After for err, if any.
func retryHint(err error) time.Duration {
	var ee *EndpointError
	if errors.As(err, &ee) {
		return ee.RetryAfter
	}
	return 0
}

// isTransient reports whether a failed OAuth request may succeed if simply
// repeated: network errors, timeouts, 429 and 5xx answers.
func isTransient(err error) bool {
	var ee *EndpointError
	if errors.As(err, &ee) {
		if ee.Code == "temporarily_unavailable" || ee.Code == "server_error" {
			return true
		}
		return ee.StatusCode == http.StatusTooManyRequests || ee.StatusCode >= 500
	}
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded)
}

// sessionFromToken builds the stored form of a token response.
func sessionFromToken(cfg OAuthConfig, tok *oauth2.Token, now time.Time) *Session {
	s := &Session{
		Version:      sessionVersion,
		ClientID:     cfg.ClientID,
		TokenURL:     cfg.TokenURL,
		AccessToken:  tok.AccessToken,
		TokenType:    tok.TokenType,
		Expiry:       tok.Expiry,
		RefreshToken: tok.RefreshToken,
	}
	if s.Expiry.IsZero() {
		s.Expiry = now.Add(assumedLifetime)
	}
	if id, ok := tok.Extra("id_token").(string); ok {
		s.IDToken = id
	}
	return s
}
