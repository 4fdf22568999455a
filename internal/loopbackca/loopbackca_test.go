package loopbackca

import (
	"crypto/x509"
	"testing"
	"time"
)

func TestLeafVerifiesOnlyForLoopback(t *testing.T) {
	ca, err := New("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	tests := []struct {
		names  []string
		verify string
		ok     bool
	}{
		{[]string{"localhost", "127.0.0.1", "::1"}, "localhost", true},
		{[]string{"localhost", "127.0.0.1", "::1"}, "127.0.0.1", true},
		{[]string{"api.anaplan.com"}, "api.anaplan.com", false},
		{[]string{"10.0.0.1"}, "10.0.0.1", false},
	}
	for _, tt := range tests {
		leaf, err := ca.Leaf(tt.names...)
		if err != nil {
			t.Fatal(err)
		}
		_, err = leaf.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: tt.verify})
		if (err == nil) != tt.ok {
			t.Errorf("leaf for %v verified as %s: err = %v, want ok=%v", tt.names, tt.verify, err, tt.ok)
		}
	}
	if _, err := ca.Leaf(); err == nil {
		t.Error("a leaf without names was signed")
	}
}
