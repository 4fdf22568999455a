package config

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
	"github.com/anaplan-proxy/anaplan-proxy/proxy"
)

// HostPattern is one entry of inject.hosts, tunnel.hosts or compat.hosts:
// a DNS name, "*.suffix" or an IP literal, optionally with ":port", checked
// by the proxy's own rule so that what loads is what the proxy can serve.
type HostPattern struct {
	text string // as configured
	key  string // lower case, no trailing dot, explicit port: for comparisons
}

// ParseHostPattern checks p and returns it as a HostPattern.
func ParseHostPattern(p string) (HostPattern, error) {
	if err := proxy.ValidateHostPattern(p); err != nil {
		return HostPattern{}, err
	}
	return HostPattern{text: p, key: hostKey(p)}, nil
}

// String returns the pattern as configured.
func (h HostPattern) String() string { return h.text }

// Same reports whether h and o name the same host and port ("API.example.com."
// and "api.example.com:443" do).
func (h HostPattern) Same(o HostPattern) bool { return h.key == o.key }

// HostStrings returns the patterns as configured, for the proxy package and
// for display.
func HostStrings(hosts []HostPattern) []string {
	out := make([]string, len(hosts))
	for i, h := range hosts {
		out[i] = h.text
	}
	return out
}

// hostKey normalises a host pattern for comparison: lower case, no
// trailing dot, explicit port (443 when none is given).
func hostKey(p string) string {
	host, port := p, "443"
	if _, err := netip.ParseAddr(p); err != nil {
		if h, pt, err := net.SplitHostPort(p); err == nil {
			host, port = h, pt
		}
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
	}
	return net.JoinHostPort(host, port)
}

// parsePrefix parses a CIDR prefix ("10.0.0.0/8", "2001:db8::/32"), or a
// single address as its /32 or /128.
func parsePrefix(v string) (netip.Prefix, error) {
	t := strings.TrimSpace(v)
	if a, err := netip.ParseAddr(t); err == nil && a.Zone() == "" {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(t)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address prefix like 10.0.0.0/8 or 2001:db8::/32", v)
	}
	return p, nil
}

// checkURL accepts an absolute https URL, or http for a loopback host (a
// test or local stand-in); an empty value only when not required. The
// value is shown with any password redacted.
func checkURL(required bool) func(string) error {
	return func(v string) error {
		if v == "" {
			if required {
				return errors.New("is empty; give an absolute https:// URL")
			}
			return nil
		}
		u, err := url.Parse(v)
		if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
			shown := v
			if u != nil && u.User != nil {
				shown = u.Redacted()
			}
			return fmt.Errorf("%q is not an absolute https:// URL", shown)
		}
		if u.User != nil {
			return fmt.Errorf("%q must not hold a user name or password", u.Redacted())
		}
		switch {
		case u.Scheme == "https":
		case u.Scheme == "http" && isLoopbackHost(u.Hostname()):
		default:
			return fmt.Errorf("%q must be an https:// URL (http:// only for a loopback host)", u.Redacted())
		}
		if u.Fragment != "" || strings.HasSuffix(v, "#") {
			return fmt.Errorf("%q must not have a #fragment", u.Redacted())
		}
		return nil
	}
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

// checkCAFile accepts an empty path or a readable file holding at least one
// PEM certificate.
func checkCAFile(path string) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", path, unwrapPathError(err))
	}
	for len(data) > 0 {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err == nil {
			return nil
		}
	}
	return fmt.Errorf("%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path)
}

// RootPool returns the system roots plus the certificates in extraFile (a
// ca_file key's value; key names it in errors).
func RootPool(extraFile, key string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if extraFile == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(extraFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: %s holds no PEM certificate", key, extraFile)
	}
	return pool, nil
}

// checkUsersFile accepts an empty path or an existing regular file; its
// content and mode are checked when the proxy starts.
func checkUsersFile(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", path, unwrapPathError(err))
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

// KeySize is the length of the store key in bytes.
const KeySize = 32

// ReadKeyFile reads the store key: a file of exactly 32 bytes, or their
// standard base64 encoding (what `openssl rand -base64 32` prints), with
// surrounding white space ignored. Errors never show the file's content.
func ReadKeyFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", path, unwrapPathError(err))
	}
	if key, ok := securefile.DecodeKey(data, KeySize); ok {
		return key, nil
	}
	return nil, fmt.Errorf("%s holds %d bytes, not a key: it must hold %d random bytes, raw or base64 (openssl rand -base64 32 > %s)", path, len(data), KeySize, path)
}

// DSN is a PostgreSQL connection string, as a URL
// ("postgres://user:password@host/db?sslmode=verify-full") or as key=value
// words ("host=db user=u password=p"). String hides its password, so a DSN
// can be logged or printed; Value gives it whole, for the driver only.
type DSN struct {
	raw string
}

// ParseDSN checks that v has one of the two forms; "" is the empty DSN.
// Errors show v with its password hidden.
func ParseDSN(v string) (DSN, error) {
	if v == "" {
		return DSN{}, nil
	}
	d := DSN{raw: v}
	if strings.Contains(v, "://") {
		u, err := url.Parse(v)
		switch {
		case err != nil:
			return DSN{}, fmt.Errorf("%q is not a URL like postgres://anaplan_proxy@db.example/anaplan?sslmode=verify-full", d)
		case u.Scheme != "postgres" && u.Scheme != "postgresql":
			return DSN{}, fmt.Errorf("%q: the scheme must be postgres:// or postgresql://", d)
		}
		return d, nil
	}
	words, ok := dsnWords(v)
	if !ok || len(words) == 0 {
		return DSN{}, fmt.Errorf("%q is not a PostgreSQL connection string: give a URL (postgres://user@host/db?sslmode=verify-full) or key=value words (host=db dbname=anaplan)", d)
	}
	return d, nil
}

// Value returns the connection string with its password.
func (d DSN) Value() string { return d.raw }

// IsZero reports whether no DSN is set.
func (d DSN) IsZero() bool { return d.raw == "" }

// String returns the connection string with any password replaced by
// "xxxxx".
func (d DSN) String() string {
	if d.raw == "" {
		return ""
	}
	if strings.Contains(d.raw, "://") {
		return redactDSNURL(d.raw)
	}
	return dsnPassword.ReplaceAllString(d.raw, "${1}xxxxx")
}

// dsnPassword matches the value of a password word, quoted or not, even in
// a connection string that does not parse.
var dsnPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s]*)`)

// GoString hides the password from %#v too.
func (d DSN) GoString() string { return fmt.Sprintf("config.DSN(%q)", d.String()) }

// redactDSNURL hides the user-info password and any password parameter. A
// URL that does not parse shows nothing of what precedes its '@'.
func redactDSNURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		scheme, rest, _ := strings.Cut(raw, "://")
		if i := strings.LastIndex(rest, "@"); i >= 0 {
			rest = "xxxxx@" + rest[i+1:]
		}
		if i := strings.Index(strings.ToLower(rest), "password="); i >= 0 {
			rest = rest[:i] + "password=xxxxx"
		}
		return scheme + "://" + rest
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// dsnWords splits key=value words, values optionally in single quotes with
// backslash escapes, as libpq reads them.
func dsnWords(s string) ([][2]string, bool) {
	var out [][2]string
	i := 0
	for {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n') {
			i++
		}
		if i == len(s) {
			return out, true
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq <= 0 {
			return nil, false
		}
		key := strings.TrimSpace(s[i : i+eq])
		if key == "" || strings.ContainsAny(key, " \t'") {
			return nil, false
		}
		i += eq + 1
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				if s[i] == '\\' && i+1 < len(s) {
					val.WriteByte(s[i+1])
					i += 2
					continue
				}
				if s[i] == '\'' {
					closed = true
					i++
					break
				}
				val.WriteByte(s[i])
				i++
			}
			if !closed {
				return nil, false
			}
		} else {
			for i < len(s) && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
		}
		out = append(out, [2]string{key, val.String()})
	}
}
