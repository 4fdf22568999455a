// Package auth holds one OAuth 2.0 device-flow session (RFC 8628) for an
// Anaplan integration user: the login, the durable token store, and a
// Manager that refreshes the access token before it expires, one refresh at
// a time, writing every rotated refresh token to disk before it is used.
//
// The package knows nothing about proxying: a caller asks the Manager for the
// current access token and reports tokens that the API rejected.
package auth

import (
	"context"
	"errors"
	"time"
)

// Session is the persisted state of one login. It is stored as JSON; the
// field names are part of the on-disk format.
type Session struct {
	// Version is the store format version; currently 1.
	Version      int       `json:"version"`
	ClientID     string    `json:"client_id"`
	TokenURL     string    `json:"token_url"`
	AccessToken  string    `json:"access_token"`
	TokenType    string    `json:"token_type,omitempty"`
	Expiry       time.Time `json:"expiry"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	IDToken      string    `json:"id_token,omitempty"`
	// LoggedInAt is when the device flow completed.
	LoggedInAt time.Time `json:"logged_in_at"`
	// RefreshedAt is when the access token was last refreshed (zero if never).
	RefreshedAt time.Time `json:"refreshed_at,omitempty"`
	// RefreshTokenIssuedAt is when the current refresh token was issued
	// (login, or the last refresh that rotated it).
	RefreshTokenIssuedAt time.Time `json:"refresh_token_issued_at"`
}

// ErrNoSession is returned by Store.Load when nothing is stored.
var ErrNoSession = errors.New("no stored session")

// Store persists one Session. Save must be atomic and durable: when it
// returns nil, the session survives a crash or power loss. Lock serialises
// read-refresh-write cycles across processes sharing the store.
type Store interface {
	// Lock takes an exclusive lock, waiting until ctx is done.
	Lock(ctx context.Context) (unlock func() error, err error)
	// Load returns the stored session, ErrNoSession when there is none, or an
	// error naming the file when it is corrupt or unsafe.
	Load(ctx context.Context) (*Session, error)
	Save(ctx context.Context, s *Session) error
	Delete(ctx context.Context) error
}

// State is the session state as operators see it.
type State string

// The session states. Every change is logged once and exported as a metric.
const (
	StateLoggedOut     State = "logged_out"
	StateValid         State = "valid"
	StateRefreshing    State = "refreshing"
	StateDegraded      State = "degraded"
	StateLoginRequired State = "login_required"
)

// States lists every State, in a fixed order (for one-hot metrics).
var States = [...]State{StateLoggedOut, StateValid, StateRefreshing, StateDegraded, StateLoginRequired}

// Status is a snapshot of the Manager for /status and `anaplan-proxy status`.
type Status struct {
	State                State     `json:"state"`
	Since                time.Time `json:"since"`
	AccessTokenExpiry    time.Time `json:"access_token_expiry,omitzero"`
	LastRefresh          time.Time `json:"last_refresh,omitzero"`
	LastError            string    `json:"last_error,omitempty"`
	RefreshTokenIssuedAt time.Time `json:"refresh_token_issued_at,omitzero"`
	RefreshTokenAge      string    `json:"refresh_token_age,omitempty"`
}
