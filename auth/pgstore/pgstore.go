// Package pgstore keeps the OAuth session in PostgreSQL, so that two or
// three proxies on different hosts share one session and refresh it in
// turn: it implements auth.Store with a lease whose fencing number only
// grows, and a versioned record whose every write is conditional and
// checked by the database, with the database's clock deciding every
// deadline.
//
// Tokens never reach the database in the clear: the session is sealed
// with AES-256-GCM under a key that only the proxies hold, bound to its
// session name and record version, so neither a dump nor an old row
// copied back can be used.
//
// Several session names can share one database; every row is keyed by
// its name. The tables are created on first use when the role may create
// them, or beforehand by Migrate (`anaplan-proxy store-init`).
package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
)

// Defaults for Options.
const (
	DefaultSessionName = "default"
	DefaultLease       = 15 * time.Second
	DefaultTimeout     = 5 * time.Second
)

// Options configure a Store.
type Options struct {
	// DSN is a libpq connection string or postgres:// URL.
	DSN string
	// SessionName names the session in the database; proxies that share
	// a session use the same name. Default "default".
	SessionName string
	// Key is the 32-byte sealing key (see LoadKeyFile), the same on every
	// proxy that shares the session.
	Key []byte
	// Lease is how long an acquired lease lasts (Lease.TTL). Default 15 s.
	Lease time.Duration
	// Timeout bounds every store operation, so that an unreachable
	// database fails the caller instead of hanging it. Default 5 s.
	Timeout time.Duration
	// Logger receives the store's events (never a token). Default: none.
	Logger *slog.Logger
	// Observe, if set, is called after each operation with its name
	// (load, acquire, release, begin, finish, mark_uncertain, put,
	// watch_reconnect), its duration and its error.
	Observe func(op string, d time.Duration, err error)
}

// Store is the PostgreSQL session store. Its methods may be called from
// several goroutines.
type Store struct {
	// Set by Open, read-only after.
	pool    *pgxpool.Pool
	name    string
	seal    sealer
	lease   time.Duration
	timeout time.Duration
	log     *slog.Logger
	observe func(op string, d time.Duration, err error)
	desc    string

	// seen is the highest record version this Store has read or written
	// (any goroutine, atomically); a lower one is refused as restored.
	seen atomic.Int64
}

var _ auth.Store = (*Store)(nil)

// Open connects to the database, creates the store's tables if they are
// missing and the role may, and returns the Store for one session name.
func Open(ctx context.Context, o Options) (*Store, error) {
	sl, err := newSealer(o.Key)
	if err != nil {
		return nil, fmt.Errorf("postgres store: %w", err)
	}
	if o.SessionName == "" {
		o.SessionName = DefaultSessionName
	}
	if o.Lease == 0 {
		o.Lease = DefaultLease
	}
	if o.Lease < 0 {
		return nil, fmt.Errorf("postgres store: the lease must be positive, not %v", o.Lease)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg, err := poolConfig(o.DSN, o.Timeout)
	if err != nil {
		return nil, err
	}
	s := &Store{
		name:    o.SessionName,
		seal:    sl,
		lease:   o.Lease,
		timeout: o.Timeout,
		log:     o.Logger,
		observe: o.Observe,
		desc:    describe(cfg.ConnConfig, o.SessionName),
	}
	s.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.desc, err)
	}
	octx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	if err := ensureSchema(octx, s.pool, s.log); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("%s: %w", s.desc, err)
	}
	return s, nil
}

// poolConfig parses dsn and sets the server-side limits that keep a dead
// or stuck client from holding a row lock for long.
func poolConfig(dsn string, timeout time.Duration) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message hides the password.
		return nil, fmt.Errorf("postgres store: the DSN cannot be used: %w", err)
	}
	cfg.MaxConns = 4
	// Check every connection before use: store operations are few, and
	// after a database restart or failover each idle connection would
	// otherwise fail one caller's operation.
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return true }
	cfg.PingTimeout = timeout / 2
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > timeout {
		cfg.ConnConfig.ConnectTimeout = timeout
	}
	ms := strconv.FormatInt(timeout.Milliseconds(), 10)
	rp := cfg.ConnConfig.RuntimeParams
	if rp["application_name"] == "" {
		rp["application_name"] = "anaplan-proxy"
	}
	rp["statement_timeout"] = ms
	rp["lock_timeout"] = ms
	rp["idle_in_transaction_session_timeout"] = strconv.FormatInt(2*timeout.Milliseconds(), 10)
	return cfg, nil
}

func describe(c *pgx.ConnConfig, name string) string {
	host := c.Host
	if len(host) == 0 || host[0] != '/' {
		host = net.JoinHostPort(host, strconv.Itoa(int(c.Port)))
	}
	return fmt.Sprintf("postgres %s/%s session %q", host, c.Database, name)
}

// String names the store for operators: host, database and session name,
// never the password.
func (s *Store) String() string { return s.desc }

// Close closes the store's connections. Watches stop with their context.
func (s *Store) Close() { s.pool.Close() }

// opContext bounds one operation by the store's timeout.
func (s *Store) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

func (s *Store) done(op string, start time.Time, err error) {
	if s.observe != nil {
		s.observe(op, time.Since(start), err)
	}
}

// noteVersion records v as seen.
func (s *Store) noteVersion(v int64) {
	for {
		cur := s.seen.Load()
		if v <= cur || s.seen.CompareAndSwap(cur, v) {
			return
		}
	}
}

// storeError is a stored record that cannot be used; its message names the
// store and what to do.
func (s *Store) storeError(problem, fix string, err error) error {
	return &auth.StoreError{Path: s.desc, Problem: problem, Fix: fix, Err: err}
}

// The SQL of the session row, shared by Load and the writes.
const (
	rowColumns = `version, sealed, flight_fence, flight_holder, flight_version, flight_uncertain,
		(extract(epoch FROM flight_deadline - clock_timestamp()) * 1000000)::bigint`
	loadSQL = `SELECT ` + rowColumns + ` FROM anaplan_proxy_session WHERE name = $1`
)

// row is one session row as read.
type row struct {
	version   int64
	sealed    []byte
	fence     *int64
	holder    *string
	fversion  *int64
	uncertain bool
	remaining *int64 // microseconds to the flight deadline, by the database clock
}

func (r *row) scan(sc pgx.Row) error {
	return sc.Scan(&r.version, &r.sealed, &r.fence, &r.holder, &r.fversion, &r.uncertain, &r.remaining)
}

func (r *row) flight() *auth.Flight {
	if r.fence == nil || r.fversion == nil {
		return nil
	}
	f := &auth.Flight{Fence: uint64(*r.fence), Version: *r.fversion, Uncertain: r.uncertain}
	if r.holder != nil {
		f.Holder = *r.holder
	}
	if r.remaining != nil {
		f.Remaining = time.Duration(*r.remaining) * time.Microsecond
	}
	return f
}

// Load returns the current record. A record older than one this Store has
// seen, or whose sealed session does not open, is refused with a
// *auth.StoreError that says what to do.
func (s *Store) Load(ctx context.Context) (rec auth.Record, err error) {
	defer func(start time.Time) { s.done("load", start, err) }(time.Now())
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	var r row
	if err := r.scan(s.pool.QueryRow(ctx, loadSQL, s.name)); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return auth.Record{}, auth.ErrNoSession
		}
		return auth.Record{}, fmt.Errorf("loading the session from %s: %w", s.desc, err)
	}
	if seen := s.seen.Load(); r.version < seen {
		return auth.Record{}, s.storeError(
			fmt.Sprintf("holds record version %d, older than version %d that this process already read: the row was restored from a backup or copied", r.version, seen),
			"run `anaplan-proxy login` (or, if the whole database was restored on purpose, restart anaplan-proxy)", nil)
	}
	rec, err = s.record(&r)
	if err != nil {
		return auth.Record{}, err
	}
	s.noteVersion(r.version)
	if rec.Session == nil {
		return rec, auth.ErrNoSession
	}
	return rec, nil
}

// record opens r's sealed session.
func (s *Store) record(r *row) (auth.Record, error) {
	rec := auth.Record{Version: r.version, Flight: r.flight()}
	if r.sealed == nil {
		return rec, nil
	}
	sess, err := s.openSession(r.sealed, r.version)
	if err != nil {
		return auth.Record{}, err
	}
	rec.Session = sess
	return rec, nil
}

const fixUnopenable = "check that every proxy uses the same key file; otherwise run `anaplan-proxy login` to store a new session"

func (s *Store) openSession(sealed []byte, version int64) (*auth.Session, error) {
	plain, err := s.seal.open(sealed, sessionAD(s.name, version))
	if err != nil {
		return nil, s.storeError(
			fmt.Sprintf("holds a session (record version %d) that cannot be opened: a wrong key, or a row restored or copied from another version or session name", version),
			fixUnopenable, err)
	}
	var sess auth.Session
	if err := json.Unmarshal(plain, &sess); err != nil {
		return nil, s.storeError("holds a sealed session that is not valid JSON", fixUnopenable, errors.New("undecodable session"))
	}
	if err := checkSession(&sess); err != nil {
		return nil, s.storeError("holds a session this version cannot use", "run `anaplan-proxy login`", err)
	}
	return &sess, nil
}

// sessionFormat is the Session.Version this store reads and writes (the
// file store's format).
const sessionFormat = 1

func checkSession(s *auth.Session) error {
	switch {
	case s.Version != sessionFormat:
		return fmt.Errorf("unknown session format version %d (this program reads version %d)", s.Version, sessionFormat)
	case s.AccessToken == "":
		return errors.New("no access_token")
	case s.Expiry.IsZero():
		return errors.New("no expiry")
	}
	return nil
}

// sealSession returns s sealed for record version.
func (s *Store) sealSession(sess *auth.Session, version int64) ([]byte, error) {
	if sess == nil {
		return nil, nil
	}
	c := *sess
	if c.Version == 0 {
		c.Version = sessionFormat
	}
	if err := checkSession(&c); err != nil {
		return nil, fmt.Errorf("storing the session: %w", err)
	}
	plain, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("storing the session: %w", err)
	}
	return s.seal.seal(plain, sessionAD(s.name, version)), nil
}

// isUndefinedTable reports PostgreSQL's undefined_table error.
func isUndefinedTable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42P01"
}
