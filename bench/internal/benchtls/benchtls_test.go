package benchtls

import (
	"crypto/x509"
	"path/filepath"
	"testing"
)

func TestLeafVerifiesOnlyForLoopbackNames(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCert(caFile); err != nil {
		t.Fatal(err)
	}
	pool, err := LoadPool(caFile)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		verify string // the name a client checks
		ok     bool
	}{
		{"localhost", "localhost", true},
		{"127.0.0.1", "127.0.0.1", true},
		{"::1", "::1", true},
		{"localhost", "example.com", false},
		// The CA's name constraints refuse a leaf beyond loopback even
		// though the CA signed it.
		{"api.anaplan.com", "api.anaplan.com", false},
		{"10.0.0.1", "10.0.0.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+tt.verify, func(t *testing.T) {
			leaf, err := ca.Leaf(tt.name)
			if err != nil {
				t.Fatal(err)
			}
			_, err = leaf.Leaf.Verify(x509.VerifyOptions{DNSName: tt.verify, Roots: pool})
			if (err == nil) != tt.ok {
				t.Errorf("Verify(%q) error = %v, want ok=%v", tt.verify, err, tt.ok)
			}
		})
	}
}

func TestLeafNeedsAName(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Leaf(); err == nil {
		t.Error("Leaf() with no names succeeded")
	}
}

func TestLoadPoolRefusesFilesWithoutCertificates(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	if err := WriteAddr(empty, "not a certificate"); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{empty, filepath.Join(dir, "missing.pem")} {
		if _, err := LoadPool(path); err == nil {
			t.Errorf("LoadPool(%s) succeeded", filepath.Base(path))
		}
	}
}
