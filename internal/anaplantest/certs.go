package anaplantest

import (
	"crypto/tls"
	"crypto/x509"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/loopbackca"
)

// certificates holds the CA generated at Start and the leaf it signed.
type certificates struct {
	cert    *x509.Certificate
	certPEM []byte
	leaf    tls.Certificate
}

// newCA generates the fake's CA (see loopbackca: name-constrained to
// loopback names, so that its certificate, once trusted somewhere, vouches
// for nothing else) and a leaf for "localhost", 127.0.0.1 and ::1.
func newCA() (*certificates, error) {
	ca, err := loopbackca.New("anaplantest fake Anaplan CA", 90*24*time.Hour)
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Leaf("localhost", "127.0.0.1", "::1")
	if err != nil {
		return nil, err
	}
	return &certificates{cert: ca.Certificate(), certPEM: ca.CertPEM(), leaf: *leaf}, nil
}
