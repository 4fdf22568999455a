// Package benchtls creates the throwaway certificate authorities used by the
// benchmark's upstream server and TLS relay: ECDSA P-256, in memory only,
// name-constrained to loopback so that trusting one vouches for nothing else.
package benchtls

import (
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/loopbackca"
)

// CA is a certificate authority whose key never leaves the process.
type CA = loopbackca.CA

// NewCA generates a CA named name, valid from an hour ago for a day, that
// may only sign certificates for "localhost" and loopback addresses.
func NewCA(name string) (*CA, error) { return loopbackca.New(name, 24*time.Hour) }

// LoadPool reads PEM certificates from the named files into a new pool.
func LoadPool(paths ...string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", p)
		}
	}
	return pool, nil
}

// WriteAddr writes addr and a newline to path, for a script waiting on it.
// The file appears complete or not at all.
func WriteAddr(path, addr string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(addr+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing address file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing address file: %w", err)
	}
	return nil
}
