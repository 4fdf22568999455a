package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
)

const (
	// acquireSQL takes the lease if it is free or lapsed (a new fence from
	// the sequence), or renews it for the holder that still has it (same
	// fence), all by the database clock. The ON CONFLICT branch is decided
	// under the row lock, so two acquirers cannot both win.
	acquireSQL = `INSERT INTO anaplan_proxy_lease AS l (name, fence, holder, expires_at)
		VALUES ($1, nextval('anaplan_proxy_fence_seq'), $2, clock_timestamp() + $3::bigint * interval '1 microsecond')
		ON CONFLICT (name) DO UPDATE SET
			fence = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > clock_timestamp()
				THEN l.fence ELSE EXCLUDED.fence END,
			holder = EXCLUDED.holder,
			expires_at = clock_timestamp() + $3::bigint * interval '1 microsecond'
		WHERE l.holder = EXCLUDED.holder OR l.expires_at <= clock_timestamp()
		RETURNING fence`
	heldSQL = `SELECT holder, (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint
		FROM anaplan_proxy_lease WHERE name = $1`
	releaseSQL = `UPDATE anaplan_proxy_lease SET expires_at = clock_timestamp()
		WHERE name = $1 AND fence = $2 AND expires_at > clock_timestamp()`
)

// Acquire takes the lease for holder, or renews it if holder still has
// it. While another holds it, it returns a *auth.LeaseHeldError with the
// time left by the database clock.
func (s *Store) Acquire(ctx context.Context, holder string) (l auth.Lease, err error) {
	defer func(start time.Time) { s.done("acquire", start, err) }(time.Now())
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	// A lease that lapses between the two statements is tried again.
	for range 3 {
		var fence int64
		err := s.pool.QueryRow(ctx, acquireSQL, s.name, holder, s.lease.Microseconds()).Scan(&fence)
		if err == nil {
			return auth.Lease{Fence: uint64(fence), Holder: holder, TTL: s.lease}, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return auth.Lease{}, fmt.Errorf("acquiring the refresh lease: %w", err)
		}
		var other string
		var left int64
		err = s.pool.QueryRow(ctx, heldSQL, s.name).Scan(&other, &left)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return auth.Lease{}, fmt.Errorf("acquiring the refresh lease: %w", err)
		}
		if err == nil && left > 0 {
			return auth.Lease{}, &auth.LeaseHeldError{Holder: other, Remaining: time.Duration(left) * time.Microsecond}
		}
	}
	return auth.Lease{}, errors.New("acquiring the refresh lease: it changed hands on every try")
}

// Release lets the lease lapse now if l is still the current lease; it
// does nothing otherwise. The fence is kept, so the next grant's is
// higher.
func (s *Store) Release(ctx context.Context, l auth.Lease) (err error) {
	defer func(start time.Time) { s.done("release", start, err) }(time.Now())
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	if _, err := s.pool.Exec(ctx, releaseSQL, s.name, int64(l.Fence)); err != nil {
		return fmt.Errorf("releasing the refresh lease: %w", err)
	}
	return nil
}
