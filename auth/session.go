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
	// RefreshedBy names the process that made the last refresh.
	RefreshedBy string `json:"refreshed_by,omitempty"`
	// RefreshTokenIssuedAt is when the current refresh token was issued
	// (login, or the last refresh that rotated it).
	RefreshTokenIssuedAt time.Time `json:"refresh_token_issued_at"`
	// Rotation says what the last refresh showed of the refresh token:
	// "rotating" (a new one each time), "fixed" (the same one), or empty
	// before the first refresh. A fixed refresh token may safely be sent
	// again when the outcome of a refresh is unknown.
	Rotation string `json:"rotation,omitempty"`
	// Ended says why this session can no longer be refreshed (the token
	// endpoint rejected its refresh token, or a refresh's outcome is
	// unknown); empty while it can. Only a new login replaces it.
	Ended string `json:"ended,omitempty"`
}

// Rotation values.
const (
	RotationRotating = "rotating"
	RotationFixed    = "fixed"
)

// ErrNoSession is returned by Store.Load when nothing is stored.
var ErrNoSession = errors.New("no stored session")

// Errors of the Store's conditional writes. They mean the record or the
// lease is no longer what the caller read: the caller reloads and decides
// again. They never mean the write might have happened.
var (
	// ErrConflict: the record's version (or its in-flight mark) is not the
	// one the write was conditioned on.
	ErrConflict = errors.New("the stored session was changed by another process")
	// ErrFenced: the write was conditioned on a lease that is no longer the
	// current one (it lapsed, or another process took it since).
	ErrFenced = errors.New("the refresh lease was lost to another process")
)

// LeaseHeldError is returned by Store.Acquire while another process holds
// the lease.
type LeaseHeldError struct {
	// Holder names the process that holds it, for operators.
	Holder string
	// Remaining is how long the lease has left by the store's clock; zero
	// when the lease cannot lapse (a file lock held by a live process).
	Remaining time.Duration
}

func (e *LeaseHeldError) Error() string {
	s := "the refresh lease is held by " + e.Holder
	if e.Remaining > 0 {
		s += " for " + e.Remaining.Round(time.Millisecond).String()
	}
	return s
}

// Lease is the right to start refreshes, granted by the store. Its Fence
// grows with every grant, so that the store can refuse writes from a
// holder whose lease has passed to another.
type Lease struct {
	Fence  uint64
	Holder string
	// TTL is how long the lease lasts from the moment Acquire was called,
	// by the caller's clock (the store's own clock decides; the holder
	// stays inside it by counting from before its request). Zero means the
	// lease cannot lapse while this process lives (a file lock).
	TTL time.Duration
}

// Lapses reports whether the lease can pass to another process while
// this one still believes it holds it (a paused or partitioned holder).
func (l Lease) Lapses() bool { return l.TTL > 0 }

// Flight is the store's mark of a refresh in flight: its holder may have
// sent the stored refresh token, so nobody else may send it.
type Flight struct {
	// Fence is the lease fence under which the intent was written.
	Fence  uint64
	Holder string
	// Version is the record version the intent write produced. A result
	// write names it (with Fence) to prove that nothing but an uncertain
	// mark happened since.
	Version int64
	// Remaining is how long the holder still had, at Load and by the
	// store's clock, before its token-endpoint deadline. Negative when the
	// deadline has passed.
	Remaining time.Duration
	// Uncertain is set by a successor that waited past the deadline: the
	// outcome of the refresh is unknown, the session needs a login unless
	// the holder still writes its result.
	Uncertain bool
}

// Record is one version of the stored session.
type Record struct {
	// Session is nil when nothing is stored (logged out).
	Session *Session
	// Version changes with every write; conditional writes name it.
	Version int64
	// Flight is set while a refresh is marked in flight.
	Flight *Flight
}

// Store keeps one session for one or more processes and decides which of
// them may refresh it. The refresh protocol above it (see Manager) is the
// same for every store:
//
//  1. Acquire the lease (fence F);
//  2. Load the record at version V; stop if another process refreshed, or
//     if the record is in flight under another fence (never send that
//     refresh token);
//  3. Begin: the intent write, conditional on F and V, marks the refresh
//     in flight;
//  4. call the token endpoint;
//  5. Finish: the result write, conditional on the in-flight mark;
//  6. only then use the new access token.
//
// Every write is atomic and durable when it returns nil.
type Store interface {
	// Load returns the current record. With nothing stored it returns the
	// record (for its Version) and ErrNoSession. A store that exists but
	// cannot be used returns an error that names it and what to do
	// (*StoreError); one open to other users wraps securefile.ErrUnsafe.
	Load(ctx context.Context) (Record, error)
	// Acquire takes the lease for holder, or renews it if holder has it.
	// While another holds it, it returns a *LeaseHeldError.
	Acquire(ctx context.Context, holder string) (Lease, error)
	// Release gives the lease up early, if it is still the current one.
	Release(ctx context.Context, l Lease) error
	// Begin is the intent write: it marks a refresh of the record at
	// version in flight, with a deadline timeout from now by the store's
	// clock. It fails with ErrFenced when l is not the current lease and
	// ErrConflict when the record is not at version or already in flight.
	Begin(ctx context.Context, l Lease, version int64, timeout time.Duration) (Record, error)
	// Finish is the result write: it stores s (with no in-flight mark) if
	// the record is still as base left it: in flight under base.Fence at
	// base.Version, possibly marked uncertain since. A base with Fence 0
	// means no intent was written (a store whose lease cannot lapse) and
	// then the record must still be at base.Version with no mark. It
	// fails with ErrConflict otherwise. It does not need the lease: a late
	// holder may still rescue a session marked uncertain.
	Finish(ctx context.Context, base Flight, s *Session) (Record, error)
	// MarkUncertain marks f, found in flight, as uncertain. It needs the
	// current lease l and fails with ErrConflict unless the record is
	// still in flight as f and f's deadline has passed by the store's
	// clock.
	MarkUncertain(ctx context.Context, l Lease, f Flight) (Record, error)
	// Put stores s unconditionally (a new login), clearing any in-flight
	// mark; a nil s removes the session (a logout).
	Put(ctx context.Context, s *Session) (Record, error)
	// Watch returns a channel that receives a value soon after the record
	// may have changed (another process wrote it), or nil if the store
	// cannot tell: the caller then polls Load. It stops when ctx is done.
	Watch(ctx context.Context) <-chan struct{}
	// String names the store for operators, never with a secret in it.
	String() string
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
	// Store names where the session is kept (never with a secret).
	Store string `json:"store,omitempty"`
	// Instance names this process; Refresher names the process that holds
	// or last held the refresh lease, as far as this one knows.
	Instance  string `json:"instance,omitempty"`
	Refresher string `json:"refresher,omitempty"`
}
