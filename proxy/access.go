package proxy

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"
)

// Users is a set of proxy users with bcrypt password hashes, as read from
// an htpasswd file by LoadHTPasswd. It is safe for concurrent use.
type Users struct {
	hashes map[string][]byte
	// dummy is compared against when the user is unknown, so that the
	// time taken does not reveal which user names exist.
	dummy []byte

	mu       sync.Mutex
	verified map[[sha256.Size]byte]string // digest of a good header value → user
}

// maxUsersFile bounds what LoadHTPasswd reads; a real file is a few lines.
const maxUsersFile = 1 << 20

// maxVerified bounds the cache of credentials that passed bcrypt, which
// spares a CPU-bound comparison on every CONNECT of a busy client.
const maxVerified = 1024

// LoadHTPasswd reads an htpasswd file of "user:hash" lines (blank lines and
// lines starting with '#' are skipped). Only bcrypt hashes ($2a$, $2b$,
// $2y$, as written by `htpasswd -B`) are accepted: any other line is an
// error naming the file and line. A file that others may read or that
// group or others may write is refused, because the hashes can be
// attacked offline and a writer can add users.
func LoadHTPasswd(path string) (*Users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("proxy users file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("proxy users file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("proxy users file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o027 != 0 {
		return nil, fmt.Errorf("proxy users file %s has mode %04o: others may read its hashes or group/others may change it; run: chmod 640 %s", path, perm, path)
	}
	if fi.Size() > maxUsersFile {
		return nil, fmt.Errorf("proxy users file %s is larger than %d bytes; is it the right file?", path, maxUsersFile)
	}
	u := &Users{hashes: map[string][]byte{}, verified: map[[sha256.Size]byte]string{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), maxUsersFile)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, hash, ok := strings.Cut(text, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("%s: line %d: not \"user:hash\"", path, line)
		}
		if !validUserName(name) {
			return nil, fmt.Errorf("%s: line %d: user name %q has a character that Basic authentication cannot carry", path, line, name)
		}
		if _, dup := u.hashes[name]; dup {
			return nil, fmt.Errorf("%s: line %d: user %q appears twice", path, line, name)
		}
		if !isBcrypt(hash) {
			return nil, fmt.Errorf("%s: line %d: user %q: only bcrypt hashes are accepted (create them with `htpasswd -B`)", path, line, name)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("%s: line %d: user %q: malformed bcrypt hash", path, line, name)
		}
		u.hashes[name] = []byte(hash)
		if u.dummy == nil {
			cost, _ := bcrypt.Cost([]byte(hash))
			if u.dummy, err = bcrypt.GenerateFromPassword([]byte("not a password"), cost); err != nil {
				return nil, fmt.Errorf("proxy users file %s: %w", path, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("proxy users file %s: %w", path, err)
	}
	if len(u.hashes) == 0 {
		return nil, fmt.Errorf("proxy users file %s names no user", path)
	}
	return u, nil
}

func isBcrypt(hash string) bool {
	for _, p := range []string{"$2a$", "$2b$", "$2y$"} {
		if strings.HasPrefix(hash, p) {
			return true
		}
	}
	return false
}

func validUserName(name string) bool {
	for _, r := range name {
		if r < 0x21 || r == 0x7f || r == ':' {
			return false
		}
	}
	return true
}

// check returns the user named by a Proxy-Authorization header value if
// its Basic credentials are right.
func (u *Users) check(header string) (string, bool) {
	scheme, encoded, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(encoded))
	if err != nil {
		return "", false
	}
	name, password, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", false
	}
	digest := sha256.Sum256(raw)
	u.mu.Lock()
	cached, hit := u.verified[digest]
	u.mu.Unlock()
	if hit && subtle.ConstantTimeCompare([]byte(cached), []byte(name)) == 1 {
		return name, true
	}
	hash, known := u.hashes[name]
	if !known {
		_ = bcrypt.CompareHashAndPassword(u.dummy, []byte(password))
		return "", false
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(password)) != nil {
		return "", false
	}
	u.mu.Lock()
	if len(u.verified) >= maxVerified {
		clear(u.verified)
	}
	u.verified[digest] = name
	u.mu.Unlock()
	return name, true
}

// Failed proxy authentications allowed per client address: a burst, then
// one more every authFailEvery.
const (
	authFailBurst    = 10
	authFailEvery    = 6 * time.Second
	maxFailureTracks = 4096
)

// failureLimiter rate-limits failed authentications per client address.
type failureLimiter struct {
	mu     sync.Mutex
	byAddr map[netip.Addr]*rate.Limiter
}

// blocked reports whether addr has used up its failed attempts, and when
// it may try again.
func (fl *failureLimiter) blocked(addr netip.Addr) (time.Duration, bool) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	l, ok := fl.byAddr[addr]
	if !ok {
		return 0, false
	}
	if l.Tokens() >= 1 {
		return 0, false
	}
	r := l.Reserve()
	d := r.Delay()
	r.Cancel()
	return d, true
}

// fail records one failed attempt from addr.
func (fl *failureLimiter) fail(addr netip.Addr) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.byAddr == nil {
		fl.byAddr = map[netip.Addr]*rate.Limiter{}
	}
	l, ok := fl.byAddr[addr]
	if !ok {
		if len(fl.byAddr) >= maxFailureTracks {
			fl.prune()
		}
		l = rate.NewLimiter(rate.Every(authFailEvery), authFailBurst)
		fl.byAddr[addr] = l
	}
	l.Allow()
}

// prune forgets addresses whose allowance has refilled, and if that frees
// nothing, all of them: the map never grows without bound.
func (fl *failureLimiter) prune() {
	for a, l := range fl.byAddr {
		if l.Tokens() >= authFailBurst {
			delete(fl.byAddr, a)
		}
	}
	if len(fl.byAddr) >= maxFailureTracks {
		clear(fl.byAddr)
	}
}

// access is the client access control of the proxy listener.
type access struct {
	allow    []netip.Prefix
	users    *Users
	failures failureLimiter
}

var errNoAddress = errors.New("client address unknown")

func clientAddr(remote string) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(remote)
	if err == nil {
		return ap.Addr().Unmap(), nil
	}
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return netip.Addr{}, errNoAddress
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, errNoAddress
	}
	return a.Unmap(), nil
}

// admit decides whether the client of r may use the proxy. It returns the
// proxy user ("" without users), or the answer to send and a reason code.
func (ac *access) admit(r *http.Request) (user string, refusal *answer, reason string) {
	addr, err := clientAddr(r.RemoteAddr)
	if err != nil {
		return "", new(requestDenied(http.StatusForbidden, "client address unknown: the proxy serves known addresses only")), "client_unknown"
	}
	switch {
	case len(ac.allow) > 0:
		if !containsAddr(ac.allow, addr) {
			return "", new(requestDenied(http.StatusForbidden, fmt.Sprintf("client address %s is not allowed to use this proxy (clients.allow_cidrs)", addr))), "client_not_allowed"
		}
	case ac.users == nil:
		if !addr.IsLoopback() {
			return "", new(requestDenied(http.StatusForbidden, fmt.Sprintf("client address %s is not allowed to use this proxy: only loopback clients are served", addr))), "client_not_allowed"
		}
	}
	if ac.users == nil {
		return "", nil, ""
	}
	if wait, blocked := ac.failures.blocked(addr); blocked {
		return "", new(requestDenied(http.StatusTooManyRequests, "too many failed proxy authentications from "+addr.String()+": wait, then retry with the right credentials").retryIn(max(wait, time.Second))), "auth_rate_limited"
	}
	header := r.Header.Get("Proxy-Authorization")
	if name, ok := ac.users.check(header); ok {
		return name, nil, ""
	}
	ac.failures.fail(addr)
	msg := "proxy authentication required: send Basic credentials of a proxy user (curl --proxy-user, or user:password@ in HTTPS_PROXY)"
	if header != "" {
		msg = "proxy authentication failed: wrong user name or password"
	}
	a := new(requestDenied(http.StatusProxyAuthRequired, msg).withHeader("Proxy-Authenticate", `Basic realm="anaplan-proxy", charset="UTF-8"`))
	return "", a, "auth_failed"
}

func containsAddr(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
