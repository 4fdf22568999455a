package proxy

import (
	"context"
	"fmt"
)

// CAStore keeps one CA for several proxies, so that clients trust one
// certificate whichever proxy they reach. LoadOrCreateCA returns the stored
// certificate and key (PEM), or stores what create returns when there is
// none yet; when two proxies create at once, one CA wins and both get it.
type CAStore interface {
	LoadOrCreateCA(ctx context.Context, create func() (certPEM, keyPEM []byte, err error)) (certPEM, keyPEM []byte, err error)
}

// LoadOrCreateSharedCA is LoadOrCreateCA for a CA kept in a shared store
// (named by where, for errors) instead of a directory.
func LoadOrCreateSharedCA(ctx context.Context, s CAStore, where string, hosts []string) (*CA, error) {
	patterns, err := caPatterns(hosts)
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := s.LoadOrCreateCA(ctx, func() ([]byte, []byte, error) {
		ca, keyPEM, err := generateCA(patterns)
		if err != nil {
			return nil, nil, err
		}
		return ca.pem, keyPEM, nil
	})
	if err != nil {
		return nil, fmt.Errorf("local CA in %s: %w", where, err)
	}
	fix := "delete it from " + where
	ca, err := parseCA(certPEM, keyPEM, "the CA certificate in "+where, "the CA key in "+where, fix)
	if err != nil {
		return nil, err
	}
	for _, hp := range patterns {
		if !ca.permits(hp) {
			return nil, fmt.Errorf("local CA: the CA in %s is not allowed to sign for %s (its name constraints were made for other hosts): %s to create a new CA, then redistribute it to clients", where, hp.text, fix)
		}
	}
	return ca, nil
}
