package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
)

// notifyChannel is the LISTEN/NOTIFY channel of every store in a
// database. A payload is "<version> <session name>": never a token.
const notifyChannel = "anaplan_proxy"

// locked is the session row as a write found it under its row lock, with
// what the database said at that moment.
type locked struct {
	row
	exists  bool
	leaseOK bool  // the write's lease fence is the current, unexpired one
	next    int64 // the version this write will store
	xid     int64 // this transaction's id, to learn its fate if COMMIT's answer is lost
}

// change is what a write stores in the locked row: sealed session (nil:
// logged out) and flight mark.
type change struct {
	sealed []byte
	flight *auth.Flight
	// deadline, for a new flight: its token-call timeout from now.
	deadline time.Duration
	// keepDeadline keeps the row's flight deadline (an uncertain mark).
	keepDeadline bool
}

// decide inspects the locked row and returns the change to store, or an
// error (ErrConflict, ErrFenced) that leaves the row untouched.
type decide func(cur *locked) (change, error)

const (
	ensureRowSQL = `INSERT INTO anaplan_proxy_session (name, version) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING`
	lockSQL      = `SELECT version, sealed, flight_fence, flight_holder, flight_version, flight_uncertain
		FROM anaplan_proxy_session WHERE name = $1 FOR UPDATE`
	// Run only after lockSQL returned, so that the clock, the lease and
	// the new version are read while this write holds the row.
	afterLockSQL = `SELECT
		EXISTS (SELECT 1 FROM anaplan_proxy_lease
			WHERE name = $1 AND fence = $2 AND expires_at > clock_timestamp()),
		(SELECT (extract(epoch FROM flight_deadline - clock_timestamp()) * 1000000)::bigint
			FROM anaplan_proxy_session WHERE name = $1),
		nextval('anaplan_proxy_version_seq'),
		txid_current()`
	updateSQL = `UPDATE anaplan_proxy_session SET
		version = $2, sealed = $3,
		flight_fence = $4, flight_holder = $5, flight_version = $6,
		flight_deadline = CASE
			WHEN $4::bigint IS NULL THEN NULL
			WHEN $8::boolean THEN flight_deadline
			ELSE clock_timestamp() + $7::bigint * interval '1 microsecond' END,
		flight_uncertain = $9,
		updated_at = clock_timestamp()
		WHERE name = $1`
	notifySQL = `SELECT pg_notify('` + notifyChannel + `', $1)`
)

// write runs one conditional write in a transaction: lock the row, read
// the lease and a new version by the database's clock, let d decide, store
// the change and notify watchers, commit. Every write gives the row a new
// version from the sequence, taken under the row lock, so versions of a
// row only grow.
func (s *Store) write(ctx context.Context, op string, fence uint64, create bool, d decide) (rec auth.Record, err error) {
	defer func(start time.Time) { s.done(op, start, err) }(time.Now())
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return auth.Record{}, fmt.Errorf("%s: %w", op, err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		tx.Rollback(rctx) // after Commit: does nothing
	}()

	var b pgx.Batch
	if create {
		b.Queue(ensureRowSQL, s.name)
	}
	var cur locked
	b.Queue(lockSQL, s.name).QueryRow(func(r pgx.Row) error {
		err := r.Scan(&cur.version, &cur.sealed, &cur.fence, &cur.holder, &cur.fversion, &cur.uncertain)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		cur.exists = err == nil
		return err
	})
	b.Queue(afterLockSQL, s.name, int64(fence)).QueryRow(func(r pgx.Row) error {
		return r.Scan(&cur.leaseOK, &cur.remaining, &cur.next, &cur.xid)
	})
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return auth.Record{}, fmt.Errorf("%s: %w", op, err)
	}
	ch, err := d(&cur)
	if err != nil {
		return auth.Record{}, err
	}

	var ffence, fversion *int64
	var fholder *string
	if f := ch.flight; f != nil {
		fe := int64(f.Fence)
		ffence, fversion, fholder = &fe, &f.Version, &f.Holder
	}
	b = pgx.Batch{}
	b.Queue(updateSQL, s.name, cur.next, ch.sealed, ffence, fholder, fversion,
		ch.deadline.Microseconds(), ch.keepDeadline, ch.flight != nil && ch.flight.Uncertain)
	b.Queue(notifySQL, strconv.FormatInt(cur.next, 10)+" "+s.name)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		// Without COMMIT the server rolls the transaction back.
		return auth.Record{}, fmt.Errorf("%s: %w", op, err)
	}
	rec = auth.Record{Version: cur.next, Flight: ch.flight}
	if ch.sealed != nil {
		if rec.Session, err = s.openSession(ch.sealed, cur.next); err != nil {
			return auth.Record{}, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		if rerr := s.resolveCommit(ctx, op, cur.next, cur.xid, err); rerr != nil {
			return auth.Record{}, rerr
		}
	}
	s.noteVersion(cur.next)
	return rec, nil
}

// resolveCommit learns whether a transaction whose COMMIT got no answer
// (connection lost, timeout) committed: it re-reads the row, which holds
// version only if this write committed (versions are unique), and else asks
// the database for the transaction's status, waiting while the server has
// not yet noticed the lost connection. It returns nil when the write
// committed, and otherwise an error; never ErrConflict, since the caller
// must reload before it decides again.
func (s *Store) resolveCommit(ctx context.Context, op string, version, xid int64, commitErr error) error {
	ctx, cancel := s.opContext(context.WithoutCancel(ctx))
	defer cancel()
	for {
		var v int64
		err := s.pool.QueryRow(ctx, `SELECT version FROM anaplan_proxy_session WHERE name = $1`, s.name).Scan(&v)
		if err == nil && v == version {
			s.log.Warn("store_commit_resolved", "op", op, "outcome", "committed", "version", version, "commit_error", commitErr.Error())
			return nil
		}
		var status *string
		if err == nil {
			err = s.pool.QueryRow(ctx, `SELECT txid_status($1)`, xid).Scan(&status)
		}
		if err == nil && status != nil {
			switch *status {
			case "committed":
				// Written, and overwritten since by another write.
				s.log.Warn("store_commit_resolved", "op", op, "outcome", "committed", "version", version, "commit_error", commitErr.Error())
				return nil
			case "aborted":
				return fmt.Errorf("%s: not written: %w", op, commitErr)
			}
		}
		select {
		case <-ctx.Done():
			s.log.Error("store_commit_unknown", "op", op, "version", version, "commit_error", commitErr.Error())
			return fmt.Errorf("%s: the outcome of the write is unknown (the database did not answer COMMIT and could not be asked since): %w", op, commitErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// resealed reseals the locked row's session for the new version: the
// associated data binds a ciphertext to the version it was written at.
func (s *Store) resealed(cur *locked) ([]byte, error) {
	if cur.sealed == nil {
		return nil, nil
	}
	sess, err := s.openSession(cur.sealed, cur.version)
	if err != nil {
		return nil, err
	}
	return s.sealSession(sess, cur.next)
}

func conflict(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{auth.ErrConflict}, args...)...)
}

func fenced(fence uint64) error {
	return fmt.Errorf("%w: lease fence %d is not the current one", auth.ErrFenced, fence)
}

// Begin is the intent write: conditional on l being the current lease (by
// the database clock) and the record being at version with no flight, it
// marks a refresh in flight under l.Fence with a deadline timeout from now
// by the database clock.
func (s *Store) Begin(ctx context.Context, l auth.Lease, version int64, timeout time.Duration) (auth.Record, error) {
	if timeout <= 0 {
		return auth.Record{}, fmt.Errorf("begin: the refresh timeout must be positive, not %v", timeout)
	}
	return s.write(ctx, "begin", l.Fence, false, func(cur *locked) (change, error) {
		switch {
		case !cur.leaseOK:
			return change{}, fenced(l.Fence)
		case !cur.exists:
			return change{}, conflict("no session is stored")
		case cur.version != version:
			return change{}, conflict("the record is at version %d, not %d", cur.version, version)
		case cur.sealed == nil:
			return change{}, conflict("the session was logged out")
		case cur.fence != nil:
			return change{}, conflict("a refresh is already in flight under fence %d", *cur.fence)
		}
		sealed, err := s.resealed(cur)
		if err != nil {
			return change{}, err
		}
		return change{
			sealed:   sealed,
			flight:   &auth.Flight{Fence: l.Fence, Holder: l.Holder, Version: cur.next, Remaining: timeout},
			deadline: timeout,
		}, nil
	})
}

// Finish is the result write: it stores sess and clears the flight if the
// record is still in flight as base left it (possibly marked uncertain
// since). It needs no lease.
func (s *Store) Finish(ctx context.Context, base auth.Flight, sess *auth.Session) (auth.Record, error) {
	if sess == nil {
		return auth.Record{}, errors.New("finish: no session to store")
	}
	return s.write(ctx, "finish", 0, false, func(cur *locked) (change, error) {
		switch {
		case !cur.exists:
			return change{}, conflict("no session is stored")
		case base.Fence == 0:
			if cur.version != base.Version || cur.fence != nil {
				return change{}, conflict("the record is no longer at version %d with no refresh in flight", base.Version)
			}
		case cur.fence == nil || uint64(*cur.fence) != base.Fence || *cur.fversion != base.Version:
			return change{}, conflict("the record is no longer in flight under fence %d at version %d", base.Fence, base.Version)
		}
		sealed, err := s.sealSession(sess, cur.next)
		if err != nil {
			return change{}, err
		}
		return change{sealed: sealed}, nil
	})
}

// MarkUncertain marks f, found in flight, as uncertain: it needs the
// current lease l, the record still in flight as f, and f's deadline
// passed by the database clock.
func (s *Store) MarkUncertain(ctx context.Context, l auth.Lease, f auth.Flight) (auth.Record, error) {
	return s.write(ctx, "mark_uncertain", l.Fence, false, func(cur *locked) (change, error) {
		switch {
		case !cur.leaseOK:
			return change{}, fenced(l.Fence)
		case !cur.exists || cur.fence == nil || uint64(*cur.fence) != f.Fence || *cur.fversion != f.Version:
			return change{}, conflict("the record is no longer in flight under fence %d at version %d", f.Fence, f.Version)
		case cur.remaining == nil || *cur.remaining > 0:
			left := time.Duration(0)
			if cur.remaining != nil {
				left = time.Duration(*cur.remaining) * time.Microsecond
			}
			return change{}, conflict("the refresh deadline has not passed (%v left)", left.Round(time.Millisecond))
		}
		sealed, err := s.resealed(cur)
		if err != nil {
			return change{}, err
		}
		fl := cur.flight()
		fl.Uncertain = true
		return change{sealed: sealed, flight: fl, keepDeadline: true}, nil
	})
}

// Put stores sess unconditionally (a login), clearing any flight; a nil
// sess stores a logged-out record (a logout). The row is kept, so the next
// login's version is higher still.
func (s *Store) Put(ctx context.Context, sess *auth.Session) (auth.Record, error) {
	return s.write(ctx, "put", 0, true, func(cur *locked) (change, error) {
		sealed, err := s.sealSession(sess, cur.next)
		if err != nil {
			return change{}, err
		}
		return change{sealed: sealed}, nil
	})
}
