package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// Resolver looks up the addresses of a host name. *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// prohibitedRange is an address range the proxy does not connect to unless
// the configuration allows it: reaching these from a proxy is how SSRF
// attacks get at internal services and cloud metadata.
type prohibitedRange struct {
	prefix netip.Prefix
	name   string
}

var prohibitedRanges = func() []prohibitedRange {
	var out []prohibitedRange
	for _, r := range []struct{ cidr, name string }{
		{"0.0.0.0/8", "this-network"},
		{"10.0.0.0/8", "private"},
		{"100.64.0.0/10", "shared address space (CGNAT)"},
		{"127.0.0.0/8", "loopback"},
		{"169.254.0.0/16", "link-local (cloud metadata)"},
		{"172.16.0.0/12", "private"},
		{"192.0.0.0/24", "IETF protocol assignments"},
		{"192.168.0.0/16", "private"},
		{"198.18.0.0/15", "benchmarking"},
		{"224.0.0.0/4", "multicast"},
		{"240.0.0.0/4", "reserved"},
		{"::/128", "unspecified"},
		{"::1/128", "loopback"},
		{"::ffff:0:0/96", "IPv4-mapped"},
		{"::ffff:0:0:0/96", "IPv4-translated"},
		{"64:ff9b::/96", "IPv4/IPv6 translation"},
		{"64:ff9b:1::/48", "IPv4/IPv6 translation"},
		{"100::/64", "discard-only"},
		{"2002::/16", "6to4 (embeds an IPv4 address)"},
		{"fc00::/7", "unique-local"},
		{"fe80::/10", "link-local"},
		{"ff00::/8", "multicast"},
	} {
		out = append(out, prohibitedRange{netip.MustParsePrefix(r.cidr), r.name})
	}
	return out
}()

// prohibitedKind names the range addr falls in, or "" if it is a public
// address. Callers unmap IPv4-mapped addresses first; one that reaches it
// mapped is refused as such.
func prohibitedKind(addr netip.Addr) string {
	addr = addr.WithZone("")
	for _, r := range prohibitedRanges {
		if r.prefix.Contains(addr) {
			return r.name
		}
	}
	return ""
}

// prohibitedError says that every address of a destination is in a range
// the proxy may not connect to.
type prohibitedError struct {
	host   string
	detail string
}

func (e *prohibitedError) Error() string {
	return fmt.Sprintf("%s resolves to %s, which the proxy does not connect to (set upstream.allow_private or list the address in upstream.allow_cidrs if this is intended)", e.host, e.detail)
}

// guardedDialer resolves a destination once, drops the addresses it may not
// connect to, and dials one of those it checked: no second lookup can
// swap in another address (DNS rebinding).
//
// With a corporate proxy (via), destinations that no no-proxy pattern
// matches are reached through it: their names are resolved there, so only
// IP-literal destinations can be checked here.
type guardedDialer struct {
	dialer       *net.Dialer
	resolver     Resolver
	allowPrivate bool
	allow        []netip.Prefix
	via          *UpstreamProxy
	viaRoots     *x509.CertPool // verifies an https:// corporate proxy
}

// permitted reports whether addr may be connected to, and if not, why.
func (g *guardedDialer) permitted(addr netip.Addr) (bool, string) {
	if g.allowPrivate || containsAddr(g.allow, addr.Unmap()) {
		return true, ""
	}
	if kind := prohibitedKind(addr); kind != "" {
		return false, kind
	}
	return true, ""
}

// DialContext dials address ("host:port") on one of its permitted
// addresses, trying them in the resolver's order.
func (g *guardedDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	if g.via != nil {
		if portNum, err := strconv.Atoi(port); err == nil && !g.via.Bypass(host, portNum) {
			if ip, err := netip.ParseAddr(host); err == nil {
				ip = ip.Unmap()
				if yes, kind := g.permitted(ip); !yes {
					return nil, &prohibitedError{host: host, detail: fmt.Sprintf("%s (%s)", ip, kind)}
				}
			}
			return g.via.dial(ctx, g.dialer, g.viaRoots, net.JoinHostPort(host, port))
		}
	}
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		addrs, err = g.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, err
		}
	}
	var ok []netip.Addr
	var refused []string
	for _, a := range addrs {
		// net.Resolver returns IPv4 answers in IPv4-mapped form: check
		// and dial the IPv4 address itself, so that an embedded private
		// address is judged by the IPv4 ranges.
		a = a.Unmap()
		if yes, kind := g.permitted(a); yes {
			ok = append(ok, a)
		} else {
			refused = append(refused, fmt.Sprintf("%s (%s)", a, kind))
		}
	}
	if len(ok) == 0 {
		if len(refused) == 0 {
			return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
		}
		return nil, &prohibitedError{host: host, detail: strings.Join(refused, ", ")}
	}
	var errs []error
	for _, a := range ok {
		c, err := g.dialer.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, errors.Join(errs...)
}

// dialTLS opens a verified TLS connection to hostport, whose certificate
// must name host, through the guarded dialer (and corporate proxy, if
// any).
//
// A connection of the pool's runs its TLS over h1.WatchRecords, which
// spares the look at an idle connection a read of TLS.
func (p *Proxy) dialTLS(ctx context.Context, hostport, host string, pooled bool) (*tls.Conn, error) {
	raw, err := p.dialer.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, err
	}
	under := raw
	if pooled {
		under = h1.WatchRecords(raw)
	}
	cfg := p.upstreamTLS.Clone()
	cfg.ServerName = host
	tc := tls.Client(under, cfg)
	hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = raw.Close()
		return nil, err
	}
	return tc, nil
}
