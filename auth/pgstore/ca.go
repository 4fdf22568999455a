package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
)

// LoadOrCreateCA returns the local CA shared by every proxy on this
// database (one per database, not per session name: clients trust one
// certificate whichever proxy they reach). When there is none yet it calls
// create and stores the result; when proxies start at once, the first
// insert wins and every one of them returns the winner's CA. The private
// key is stored sealed, bound to its certificate.
func (s *Store) LoadOrCreateCA(ctx context.Context, create func() (certPEM, keyPEM []byte, err error)) (certPEM, keyPEM []byte, err error) {
	cert, key, err := s.loadCA(ctx)
	if err == nil || !errors.Is(err, pgx.ErrNoRows) {
		return cert, key, err
	}
	cert, key, err = create()
	if err != nil {
		return nil, nil, fmt.Errorf("creating the shared CA: %w", err)
	}
	octx, cancel := s.opContext(ctx)
	defer cancel()
	_, err = s.pool.Exec(octx, `INSERT INTO anaplan_proxy_ca (id, cert_pem, sealed_key) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING`,
		string(cert), s.seal.seal(key, caKeyAD(cert)))
	if err != nil {
		return nil, nil, fmt.Errorf("storing the shared CA in %s: %w", s.desc, err)
	}
	cert, key, err = s.loadCA(ctx)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("storing the shared CA in %s: it is gone after it was stored", s.desc)
	}
	return cert, key, err
}

// loadCA reads and opens the stored CA; pgx.ErrNoRows when there is none.
func (s *Store) loadCA(ctx context.Context) ([]byte, []byte, error) {
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	var cert string
	var sealed []byte
	err := s.pool.QueryRow(ctx, `SELECT cert_pem, sealed_key FROM anaplan_proxy_ca WHERE id = 1`).Scan(&cert, &sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("loading the shared CA from %s: %w", s.desc, err)
	}
	key, err := s.seal.open(sealed, caKeyAD([]byte(cert)))
	if err != nil {
		return nil, nil, &auth.StoreError{Path: s.desc, Problem: "holds a CA key that cannot be opened: a wrong key, or a CA row restored or copied from elsewhere",
			Fix: "check that every proxy uses the same key file", Err: err}
	}
	return []byte(cert), key, nil
}
