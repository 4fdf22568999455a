package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// UpstreamProxy is a corporate HTTP proxy that outbound connections go
// through: the proxy's connections to inject and tunnel hosts (as CONNECT
// tunnels, with TLS to the destination on top, verified as without it) and,
// through ProxyFunc, any http.Transport such as the OAuth client's. It is
// only ever configured explicitly, never taken from the environment.
//
// The corporate proxy resolves destination names itself, so the destination
// address guard (Config.AllowPrivateUpstream) can only check destinations
// given as IP literals; the corporate proxy's own address, typically a
// private one, is allowed because it is configured, not chosen by a client.
type UpstreamProxy struct {
	url       *url.URL // as configured, credentials included
	addr      string   // host:port to dial
	tls       bool     // https:// proxy: TLS to the proxy itself
	authValue string   // Proxy-Authorization value, or ""
	noProxy   []noProxyPattern
}

// ParseUpstreamProxy checks the URL of a corporate proxy,
// "http://[user:password@]host:port" (or https://), and the no-proxy
// patterns of destinations reached directly (see ValidateNoProxyPattern).
// Errors never show the password.
func ParseUpstreamProxy(rawURL string, noProxy []string) (*UpstreamProxy, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the whole URL, password included.
		shown := rawURL
		if i := strings.LastIndex(rawURL, "@"); i >= 0 {
			shown = "xxxxx@" + rawURL[i+1:]
		}
		return nil, fmt.Errorf("%q is not a URL like http://proxy.example.com:8080", shown)
	}
	shown := u.Redacted()
	switch {
	case !u.IsAbs() || u.Opaque != "" || u.Host == "":
		return nil, fmt.Errorf("%q is not a URL like http://proxy.example.com:8080", shown)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%q: the scheme must be http:// or https://, not %s://", shown, u.Scheme)
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "", u.ForceQuery, strings.HasSuffix(rawURL, "#"):
		return nil, fmt.Errorf("%q must be scheme://host:port only, without a path, query or fragment", shown)
	case u.User != nil && u.User.Username() == "":
		return nil, fmt.Errorf("%q has a password but no user name", shown)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" || port == "" {
		return nil, fmt.Errorf("%q must name a host and a port (like http://proxy.example.com:8080)", shown)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("%q: port %s is not a number from 1 to 65535", shown, port)
	}
	up := &UpstreamProxy{url: u, addr: net.JoinHostPort(host, port), tls: u.Scheme == "https"}
	if u.User != nil {
		pass, _ := u.User.Password()
		up.authValue = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
	}
	for _, s := range noProxy {
		np, err := parseNoProxyPattern(s)
		if err != nil {
			return nil, err
		}
		up.noProxy = append(up.noProxy, np)
	}
	return up, nil
}

// String returns the proxy's URL without user name or password, for logs
// and status pages.
func (up *UpstreamProxy) String() string {
	if up == nil {
		return ""
	}
	return up.url.Scheme + "://" + up.addr
}

// Bypass reports whether a connection to host and port goes directly
// rather than through the proxy, because a no-proxy pattern matches it.
// Names are compared as given, without resolving them.
func (up *UpstreamProxy) Bypass(host string, port int) bool {
	host, ip := normalizeHost(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	for _, np := range up.noProxy {
		if np.matches(host, ip, port) {
			return true
		}
	}
	return false
}

// ProxyFunc returns a function for http.Transport.Proxy: the proxy's URL
// (credentials included, which the transport sends as Proxy-Authorization)
// for every request except those that Bypass sends directly.
func (up *UpstreamProxy) ProxyFunc() func(*http.Request) (*url.URL, error) {
	return func(r *http.Request) (*url.URL, error) {
		port := r.URL.Port()
		if port == "" {
			port = "443"
			if strings.EqualFold(r.URL.Scheme, "http") {
				port = "80"
			}
		}
		n, _ := strconv.Atoi(port)
		if up.Bypass(r.URL.Hostname(), n) {
			return nil, nil
		}
		return up.url, nil
	}
}

// upstreamProxyError is a connection that the corporate proxy could not
// set up: it was unreachable, or it answered the CONNECT with an error.
type upstreamProxyError struct {
	proxy  string // the proxy, as String shows it
	target string // the CONNECT target
	status int    // the proxy's answer; 0 if there was none
	text   string // its status line's reason
	err    error  // the cause when there was no answer
}

func (e *upstreamProxyError) Error() string {
	if e.status == 0 {
		return fmt.Sprintf("the corporate proxy %s (upstream.proxy) failed: %v", e.proxy, e.err)
	}
	msg := fmt.Sprintf("the corporate proxy %s (upstream.proxy) answered %d %s to CONNECT %s", e.proxy, e.status, e.text, e.target)
	switch e.status {
	case http.StatusProxyAuthRequired:
		msg += ": check the user name and password in upstream.proxy"
	case http.StatusForbidden:
		msg += ": ask its administrators to allow this destination"
	}
	return msg
}

func (e *upstreamProxyError) Unwrap() error { return e.err }

// maxProxyAnswer bounds the head of the corporate proxy's answer to a
// CONNECT.
const maxProxyAnswer = 64 << 10

// dial opens a tunnel to target ("host:port") through the proxy. The
// returned connection carries the destination's bytes; the caller runs
// TLS over it as over a direct connection.
func (up *UpstreamProxy) dial(ctx context.Context, d *net.Dialer, roots *x509.CertPool, target string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	fail := func(err error) error {
		return &upstreamProxyError{proxy: up.String(), target: target, err: err}
	}
	conn, err := d.DialContext(ctx, "tcp", up.addr)
	if err != nil {
		return nil, fail(err)
	}
	// Abandon the handshake when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if up.tls {
		tc := tls.Client(conn, &tls.Config{ServerName: up.url.Hostname(), RootCAs: roots, MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, fail(err)
		}
		conn = tc
	}
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: target},
		Host:   target,
		Header: http.Header{},
	}
	if up.authValue != "" {
		req.Header.Set("Proxy-Authorization", up.authValue)
	}
	if err := req.Write(conn); err != nil {
		_ = conn.Close()
		return nil, fail(ctxErr(ctx, err))
	}
	br := bufio.NewReader(&io.LimitedReader{R: conn, N: maxProxyAnswer})
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		_ = conn.Close()
		return nil, fail(ctxErr(ctx, fmt.Errorf("reading its answer to CONNECT: %w", err)))
	}
	if resp.StatusCode/100 != 2 {
		_ = conn.Close()
		text, _ := strings.CutPrefix(resp.Status, strconv.Itoa(resp.StatusCode))
		return nil, &upstreamProxyError{proxy: up.String(), target: target, status: resp.StatusCode, text: oneLine(strings.TrimSpace(text))}
	}
	if !stop() {
		_ = conn.Close()
		return nil, fail(ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	if n := br.Buffered(); n > 0 {
		// The destination spoke before the client: keep what was read.
		early, _ := br.Peek(n)
		return &prefixConn{Conn: conn, prefix: append([]byte(nil), early...)}, nil
	}
	return conn, nil
}

// ctxErr prefers the context's error, which says why a deadline fired.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// prefixConn returns bytes read ahead before those of the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// NetConn returns the connection under the tunnel, and Buffered how many
// bytes read ahead of it are still to be returned: the upstream
// connection pool looks through the tunnel at the socket (h1.ReadAhead).
func (c *prefixConn) NetConn() net.Conn { return c.Conn }
func (c *prefixConn) Buffered() int     { return len(c.prefix) }

// CloseWrite half-closes the connection, for tunnels.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// noProxyPattern is one entry of the no-proxy list.
type noProxyPattern struct {
	name   string       // exact name, or the suffix of a wildcard
	suffix bool         // ".suffix" or "*.suffix": names below suffix
	prefix netip.Prefix // an IP address (as a full-length prefix) or CIDR
	port   int          // 0: any port
}

// ValidateNoProxyPattern reports whether p is a valid no-proxy pattern, in
// the syntax of the NO_PROXY variable that curl and Go read: a host name
// ("login.example.com"), names below a domain (".example.com" or
// "*.example.com", not the domain itself), an IP address or a CIDR prefix
// ("10.0.0.0/8"); names and addresses may end in ":port". Names are matched
// as the client gave them, never resolved.
func ValidateNoProxyPattern(p string) error {
	_, err := parseNoProxyPattern(p)
	return err
}

func parseNoProxyPattern(p string) (noProxyPattern, error) {
	var np noProxyPattern
	s := strings.TrimSpace(p)
	switch {
	case s == "":
		return np, errors.New("empty no-proxy pattern")
	case s != p:
		return np, fmt.Errorf("no-proxy pattern %q has surrounding spaces", p)
	case s == "*":
		return np, errors.New(`no-proxy pattern "*" would bypass the corporate proxy for everything: leave upstream.proxy empty instead`)
	case strings.Contains(s, "://") || strings.ContainsAny(s, "?#@"):
		return np, fmt.Errorf("no-proxy pattern %q: give a host name, domain, address or CIDR, not a URL", p)
	}
	if pfx, err := netip.ParsePrefix(s); err == nil {
		if pfx.Addr().Zone() != "" {
			return np, fmt.Errorf("no-proxy pattern %q: an IPv6 zone is not allowed", p)
		}
		np.prefix = masked([]netip.Prefix{pfx})[0]
		return np, nil
	}
	if strings.Contains(s, "/") {
		return np, fmt.Errorf("no-proxy pattern %q is not a valid CIDR prefix", p)
	}
	host := s
	if _, err := netip.ParseAddr(s); err != nil && strings.Contains(s, ":") {
		h, portText, err := net.SplitHostPort(s)
		if err != nil {
			return np, fmt.Errorf("no-proxy pattern %q: %w", p, err)
		}
		port, err := strconv.Atoi(portText)
		if err != nil || port < 1 || port > 65535 || portText != strconv.Itoa(port) {
			return np, fmt.Errorf("no-proxy pattern %q: port %q is not a number from 1 to 65535", p, portText)
		}
		host, np.port = h, port
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return np, fmt.Errorf("no-proxy pattern %q: an IPv6 zone is not allowed", p)
		}
		ip = ip.Unmap()
		np.prefix = netip.PrefixFrom(ip, ip.BitLen())
		return np, nil
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		np.suffix, host = true, rest
	} else if rest, ok := strings.CutPrefix(host, "."); ok {
		np.suffix, host = true, rest
	}
	if strings.Contains(host, "*") {
		return np, fmt.Errorf("no-proxy pattern %q: only a leading \"*.\" or \".\" is allowed", p)
	}
	if err := checkDNSName(host); err != nil {
		return np, fmt.Errorf("no-proxy pattern %q: %w", p, err)
	}
	np.name = host
	return np, nil
}

// matches reports whether the pattern covers a destination; host is
// normalised and ip is valid when host is an IP literal.
func (np *noProxyPattern) matches(host string, ip netip.Addr, port int) bool {
	if np.port != 0 && np.port != port {
		return false
	}
	if np.prefix.IsValid() {
		return ip.IsValid() && np.prefix.Contains(ip)
	}
	if ip.IsValid() {
		return false
	}
	if np.suffix {
		return len(host) > len(np.name)+1 && strings.HasSuffix(host, np.name) && host[len(host)-len(np.name)-1] == '.'
	}
	return host == np.name
}
