package proxy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
)

const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
	caLockFile = ".ca.lock"

	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 7 * 24 * time.Hour
	leafBackdate = time.Hour
)

// CA is the local certificate authority that signs the leaf certificates
// presented to clients for intercepted hosts. Its X.509 name constraints
// limit it to the inject domains, so that its key cannot be used to
// impersonate any other site even if it leaks.
type CA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
}

// LoadOrCreateCA loads the CA from dir/ca.crt and dir/ca.key, or creates
// both on first use: an ECDSA P-256 key written with mode 0600 (PKCS#8 PEM)
// and a ten-year certificate with mode 0644 whose name constraints permit
// only the DNS domains of hosts (the Inject patterns). A key file that other
// users could read is refused, and so is an existing CA whose constraints do
// not cover every host.
func LoadOrCreateCA(dir string, hosts []string) (*CA, error) {
	patterns, err := caPatterns(hosts)
	if err != nil {
		return nil, err
	}
	if err := securefile.MkdirPrivate(dir); err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	_, certErr := os.Lstat(certPath)
	_, keyErr := os.Lstat(keyPath)
	switch {
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		return createCA(certPath, keyPath, patterns)
	case certErr == nil && keyErr == nil:
	case errors.Is(keyErr, fs.ErrNotExist) && certErr == nil:
		return nil, fmt.Errorf("local CA: %s exists but %s is missing: restore the key, or remove %s to create a new CA (then redistribute it to clients)", certPath, keyPath, certPath)
	case errors.Is(certErr, fs.ErrNotExist) && keyErr == nil:
		return nil, fmt.Errorf("local CA: %s exists but %s is missing: restore the certificate, or remove %s to create a new CA (then redistribute it to clients)", keyPath, certPath, keyPath)
	default:
		return nil, fmt.Errorf("local CA: %w", errors.Join(certErr, keyErr))
	}
	ca, err := loadCA(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	for _, hp := range patterns {
		if !ca.permits(hp) {
			return nil, fmt.Errorf("local CA: %s is not allowed to sign for %s (its name constraints were made for other hosts): remove %s and %s to create a new CA, then redistribute it to clients", certPath, hp.text, certPath, keyPath)
		}
	}
	return ca, nil
}

// caPatterns parses the hosts a CA is constrained to.
func caPatterns(hosts []string) ([]hostPattern, error) {
	if len(hosts) == 0 {
		return nil, errors.New("local CA: no inject hosts to constrain the CA to")
	}
	patterns := make([]hostPattern, 0, len(hosts))
	for _, h := range hosts {
		hp, err := parseHostPattern(h)
		if err != nil {
			return nil, fmt.Errorf("local CA: %w", err)
		}
		patterns = append(patterns, hp)
	}
	return patterns, nil
}

// lockDir serialises CA creation between processes sharing dir.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, caLockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("local CA: locking %s: %w", path, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// caConstraints returns the permitted DNS domains and IP ranges for
// patterns, and whether all IP addresses must be excluded.
func caConstraints(patterns []hostPattern) (domains []string, ips []*net.IPNet, excludeIPs bool) {
	for _, hp := range patterns {
		if hp.ip.IsValid() {
			bits := hp.ip.BitLen()
			ips = append(ips, &net.IPNet{IP: net.IP(hp.ip.AsSlice()), Mask: net.CIDRMask(bits, bits)})
			continue
		}
		if !slices.Contains(domains, hp.name) {
			domains = append(domains, hp.name)
		}
	}
	return domains, ips, len(ips) == 0
}

func createCA(certPath, keyPath string, patterns []hostPattern) (*CA, error) {
	ca, keyPEM, err := generateCA(patterns)
	if err != nil {
		return nil, err
	}
	// The key goes first: a certificate without its key is reported as
	// such on the next start instead of silently replaced.
	if err := securefile.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	if err := securefile.WriteFile(certPath, ca.pem, 0o644); err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	return ca, nil
}

// generateCA makes a new CA constrained to patterns and returns it with
// its key as PKCS#8 PEM.
func generateCA(patterns []hostPattern) (*CA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("local CA: generating key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	hostname, _ := os.Hostname()
	cn := "anaplan-proxy local CA"
	if hostname != "" {
		cn += " " + hostname
	}
	domains, ips, excludeIPs := caConstraints(patterns)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     pkix.Name{CommonName: cn, Organization: []string{"anaplan-proxy"}},
		NotBefore:                   now.Add(-leafBackdate),
		NotAfter:                    now.Add(caValidity),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage:                 []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         domains,
		PermittedIPRanges:           ips,
	}
	if excludeIPs {
		tmpl.ExcludedIPRanges = []*net.IPNet{
			{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("local CA: creating certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("local CA: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("local CA: encoding key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return &CA{cert: cert, key: key, pem: certPEM}, keyPEM, nil
}

func loadCA(certPath, keyPath string) (*CA, error) {
	if err := securefile.CheckPrivate(keyPath); err != nil {
		return nil, fmt.Errorf("local CA key: %w", err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	return parseCA(certPEM, keyPEM, certPath, keyPath, "remove "+certPath+" and "+keyPath)
}

// parseCA checks and parses a CA from its PEM certificate and key, which
// certPath and keyPath name in errors; fix says how to start afresh.
func parseCA(certPEM, keyPEM []byte, certPath, keyPath, fix string) (*CA, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("local CA: %s holds no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("local CA: %s: %w", certPath, err)
	}
	kblock, _ := pem.Decode(keyPEM)
	if kblock == nil || kblock.Type != "PRIVATE KEY" {
		// The key's content is never quoted in an error.
		return nil, fmt.Errorf("local CA: %s holds no PKCS#8 PEM private key", keyPath)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(kblock.Bytes)
	if err != nil {
		return nil, fmt.Errorf("local CA: %s: cannot parse the private key", keyPath)
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("local CA: %s: unsupported key type", keyPath)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("local CA: %s does not belong to %s: %s to create a new CA, then redistribute it to clients", keyPath, certPath, fix)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("local CA: %s is not a CA certificate", certPath)
	}
	now := time.Now()
	if now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return nil, fmt.Errorf("local CA: %s is valid only from %s to %s: %s to create a new CA, then redistribute it to clients",
			certPath, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), fix)
	}
	return &CA{cert: cert, key: signer, pem: certPEM}, nil
}

// permits reports whether the CA's name constraints allow a leaf for the
// names hp covers.
func (c *CA) permits(hp hostPattern) bool {
	cert := c.cert
	if hp.ip.IsValid() {
		ip := net.IP(hp.ip.AsSlice())
		for _, r := range cert.ExcludedIPRanges {
			if r.Contains(ip) {
				return false
			}
		}
		if len(cert.PermittedIPRanges) == 0 {
			return true
		}
		for _, r := range cert.PermittedIPRanges {
			if r.Contains(ip) {
				return true
			}
		}
		return false
	}
	name := hp.name
	if hp.wildcard {
		name = "x." + name // any name below the suffix
	}
	for _, d := range cert.ExcludedDNSDomains {
		if domainCovers(d, name) || (hp.wildcard && domainCovers(name, d)) {
			return false
		}
	}
	if len(cert.PermittedDNSDomains) == 0 {
		return true
	}
	for _, d := range cert.PermittedDNSDomains {
		if domainCovers(d, name) {
			return true
		}
	}
	return false
}

// domainCovers applies RFC 5280 dNSName constraint matching: "example.com"
// covers itself and every name below it; ".example.com" only names below.
func domainCovers(constraint, name string) bool {
	constraint = strings.ToLower(constraint)
	if constraint == "" {
		return true
	}
	if strings.HasPrefix(constraint, ".") {
		return strings.HasSuffix(name, constraint)
	}
	return name == constraint || strings.HasSuffix(name, "."+constraint)
}

// CertPEM returns the CA certificate in PEM form, for clients to trust.
func (c *CA) CertPEM() []byte { return slices.Clone(c.pem) }

// Fingerprint returns the SHA-256 digest of the certificate's DER encoding
// as upper-case hex pairs separated by colons, as browsers and openssl show it.
func (c *CA) Fingerprint() string {
	sum := sha256.Sum256(c.cert.Raw)
	var b strings.Builder
	for i, v := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", v)
	}
	return b.String()
}

// NotAfter returns the end of the CA certificate's validity.
func (c *CA) NotAfter() time.Time { return c.cert.NotAfter }

// signLeaf makes a short-lived server certificate for host (a DNS name or
// an IP literal) with a fresh ECDSA P-256 key. It does not check the policy:
// callers pass only hosts that the policy intercepts.
func (c *CA) signLeaf(host string, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating leaf key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(leafValidity)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: host, Organization: []string{"anaplan-proxy"}},
		NotBefore:    now.Add(-leafBackdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		tmpl.IPAddresses = []net.IP{net.IP(ip.AsSlice())}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, fmt.Errorf("signing leaf certificate for %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("signing leaf certificate for %s: %w", host, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}
