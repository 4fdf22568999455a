package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
)

func TestCAFilesAndReload(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"api.anaplan.com", "*.api.anaplan.com:443"}
	ca, err := LoadOrCreateCA(dir, hosts)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"ca.crt": 0o644, "ca.key": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode = %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}
	key, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	if !strings.HasPrefix(string(key), "-----BEGIN PRIVATE KEY-----") {
		t.Errorf("ca.key is not PKCS#8 PEM")
	}
	crt, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if string(crt) != string(ca.CertPEM()) {
		t.Errorf("CertPEM differs from ca.crt")
	}

	cert := ca.cert
	if !cert.IsCA || !cert.MaxPathLenZero || cert.MaxPathLen != 0 {
		t.Errorf("basic constraints: IsCA %v MaxPathLen %d zero %v", cert.IsCA, cert.MaxPathLen, cert.MaxPathLenZero)
	}
	if cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("key usage = %v", cert.KeyUsage)
	}
	if !cert.PermittedDNSDomainsCritical || strings.Join(cert.PermittedDNSDomains, ",") != "api.anaplan.com" {
		t.Errorf("permitted DNS domains = %v (critical %v), want [api.anaplan.com]", cert.PermittedDNSDomains, cert.PermittedDNSDomainsCritical)
	}
	if len(cert.ExcludedIPRanges) != 2 {
		t.Errorf("excluded IP ranges = %v, want all of IPv4 and IPv6", cert.ExcludedIPRanges)
	}
	if !strings.HasPrefix(cert.Subject.CommonName, "anaplan-proxy local CA") {
		t.Errorf("subject = %q", cert.Subject.CommonName)
	}
	if d := time.Until(ca.NotAfter()); d < 9*365*24*time.Hour {
		t.Errorf("CA valid for %v, want about ten years", d)
	}
	if fp := ca.Fingerprint(); len(fp) != 32*3-1 || strings.Count(fp, ":") != 31 {
		t.Errorf("fingerprint %q is not 32 colon-separated hex pairs", fp)
	}

	again, err := LoadOrCreateCA(dir, []string{"eu1.api.anaplan.com"})
	if err != nil {
		t.Fatalf("reloading for a covered host: %v", err)
	}
	if again.Fingerprint() != ca.Fingerprint() {
		t.Errorf("reload created a new CA")
	}
}

func TestCARefusals(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		hosts   []string
		wantErr string
	}{
		{"key readable by others", func(t *testing.T, dir string) {
			if err := os.Chmod(filepath.Join(dir, "ca.key"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, []string{"api.anaplan.com"}, "chmod 600"},
		{"host outside the constraints", nil, []string{"api.anaplan.com", "api.cloudworks.anaplan.com"},
			"not allowed to sign for api.cloudworks.anaplan.com"},
		{"key missing", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "ca.key")); err != nil {
				t.Fatal(err)
			}
		}, []string{"api.anaplan.com"}, "ca.key is missing"},
		{"key of another CA", func(t *testing.T, dir string) {
			other := t.TempDir()
			if _, err := LoadOrCreateCA(other, []string{"api.anaplan.com"}); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(filepath.Join(other, "ca.key"))
			if err := securefile.WriteFile(filepath.Join(dir, "ca.key"), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{"api.anaplan.com"}, "does not belong to"},
		{"no hosts", nil, nil, "no inject hosts"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := LoadOrCreateCA(dir, []string{"api.anaplan.com"}); err != nil {
				t.Fatal(err)
			}
			if tc.prepare != nil {
				tc.prepare(t, dir)
			}
			_, err := LoadOrCreateCA(dir, tc.hosts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("LoadOrCreateCA = %v, want error containing %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error quotes the key: %v", err)
			}
		})
	}
	t.Run("unsafe key wraps ErrUnsafe", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := LoadOrCreateCA(dir, []string{"api.anaplan.com"}); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(dir, "ca.key"), 0o640)
		if _, err := LoadOrCreateCA(dir, []string{"api.anaplan.com"}); !errors.Is(err, securefile.ErrUnsafe) {
			t.Fatalf("err = %v, want ErrUnsafe", err)
		}
	})
}

// verifyLeaf checks a leaf for host against the CA as a client would.
func verifyLeaf(ca *CA, leaf *tls.Certificate, host string) error {
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	_, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots})
	return err
}

func TestNameConstraintsEnforced(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), []string{"api.anaplan.com", "*.api.anaplan.com", "audit.anaplan.com"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host string
		ok   bool
	}{
		{"api.anaplan.com", true},
		{"eu1.api.anaplan.com", true},
		{"audit.anaplan.com", true},
		{"auth.anaplan.com", false},
		{"anaplan.com", false},
		{"www.google.com", false},
		{"api.anaplan.com.evil.com", false},
		{"127.0.0.1", false},
		{"::1", false},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			leaf, err := ca.signLeaf(tc.host, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			err = verifyLeaf(ca, leaf, tc.host)
			if tc.ok && err != nil {
				t.Fatalf("leaf for permitted %s rejected: %v", tc.host, err)
			}
			if !tc.ok {
				var inv x509.CertificateInvalidError
				if !errors.As(err, &inv) || inv.Reason != x509.CANotAuthorizedForThisName {
					t.Fatalf("leaf for %s: err = %v, want CANotAuthorizedForThisName", tc.host, err)
				}
			}
		})
	}
}

func TestIPPatternCA(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), []string{"127.0.0.1:8443", "api.anaplan.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ca.cert.ExcludedIPRanges) != 0 || len(ca.cert.PermittedIPRanges) != 1 {
		t.Fatalf("permitted %v excluded %v", ca.cert.PermittedIPRanges, ca.cert.ExcludedIPRanges)
	}
	for host, ok := range map[string]bool{"127.0.0.1": true, "127.0.0.2": false, "::1": false} {
		leaf, err := ca.signLeaf(host, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyLeaf(ca, leaf, host); (err == nil) != ok {
			t.Errorf("leaf for %s: err = %v, want ok=%v", host, err, ok)
		}
	}
}

func TestLeafShape(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), []string{"api.anaplan.com"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	leaf, err := ca.signLeaf("api.anaplan.com", now)
	if err != nil {
		t.Fatal(err)
	}
	c := leaf.Leaf
	if c.Subject.Organization[0] != "anaplan-proxy" || len(c.DNSNames) != 1 || c.DNSNames[0] != "api.anaplan.com" {
		t.Errorf("subject %v SAN %v", c.Subject, c.DNSNames)
	}
	if got := c.NotAfter.Sub(c.NotBefore); got != leafValidity+leafBackdate {
		t.Errorf("validity = %v", got)
	}
	if c.NotBefore.After(now.Add(-59 * time.Minute)) {
		t.Errorf("NotBefore %v is not an hour back", c.NotBefore)
	}
}

func TestLeafCacheSingleFlight(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), []string{"api.anaplan.com"})
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	var mu sync.Mutex
	misses := 0
	c := newLeafCache(4, func(host string, now time.Time) (*tls.Certificate, error) {
		<-gate
		return ca.signLeaf(host, now)
	}, func(r string) {
		mu.Lock()
		defer mu.Unlock()
		if r == "miss" {
			misses++
		}
	})
	const n = 50
	certs := make(chan *tls.Certificate, n)
	for range n {
		go func() {
			cert, err := c.get("api.anaplan.com")
			if err != nil {
				t.Error(err)
			}
			certs <- cert
		}()
	}
	eventually(t, 10*time.Second, "50 lookups waiting", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return misses == n
	})
	close(gate)
	first := <-certs
	for range n - 1 {
		if got := <-certs; got != first {
			t.Fatal("concurrent lookups got different certificates")
		}
	}
	if g := c.generate.Load(); g != 1 {
		t.Errorf("signed %d leaves, want 1", g)
	}
}

func TestLeafCacheEvictionAndRenewal(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), []string{"anaplan.example"})
	if err != nil {
		t.Fatal(err)
	}
	c := newLeafCache(2, ca.signLeaf, nil)
	now := time.Now()
	c.now = func() time.Time { return now }
	a, _ := c.get("a.anaplan.example")
	c.get("b.anaplan.example")
	if again, _ := c.get("a.anaplan.example"); again != a {
		t.Fatal("cached leaf not reused")
	}
	c.get("c.anaplan.example") // evicts b, the least recently used
	if len(c.entries) != 2 {
		t.Fatalf("cache holds %d entries, want 2", len(c.entries))
	}
	if _, ok := c.entries["b.anaplan.example"]; ok {
		t.Error("least recently used entry was not evicted")
	}
	before := c.generate.Load()
	now = now.Add(leafValidity - leafRenewBefore + time.Minute)
	if renewed, _ := c.get("a.anaplan.example"); renewed == a || c.generate.Load() != before+1 {
		t.Error("leaf near expiry was not renewed")
	}
}
