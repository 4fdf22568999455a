package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// defaultPort is the only port a pattern allows when it names none.
const defaultPort = 443

// hostPattern is a parsed Config.Inject or Config.Tunnel entry.
type hostPattern struct {
	text     string     // as configured, used as the metrics label
	wildcard bool       // "*.suffix": any name below suffix, not suffix itself
	name     string     // lower case, no trailing dot; the suffix for a wildcard
	ip       netip.Addr // valid for an IP literal pattern
	port     int
}

// ValidateHostPattern reports whether p is a valid Inject or Tunnel host
// pattern: a DNS name ("api.anaplan.com"), a wildcard for any deeper name
// ("*.api.anaplan.com"), or an IP literal, each optionally followed by
// ":port" (IPv6 with a port in brackets). The error says what is wrong.
func ValidateHostPattern(p string) error {
	_, err := parseHostPattern(p)
	return err
}

func parseHostPattern(p string) (hostPattern, error) {
	hp := hostPattern{text: p, port: defaultPort}
	s := strings.TrimSpace(p)
	if s == "" {
		return hp, errors.New("empty host pattern")
	}
	if s != p {
		return hp, fmt.Errorf("host pattern %q has surrounding spaces", p)
	}
	if strings.Contains(s, "://") || strings.ContainsAny(s, "/?#@") {
		return hp, fmt.Errorf("host pattern %q: give a host name such as api.anaplan.com, not a URL", p)
	}
	host := s
	// A bare IPv6 literal has several colons and no brackets: no port.
	if _, err := netip.ParseAddr(s); err != nil && strings.Contains(s, ":") {
		h, portText, err := net.SplitHostPort(s)
		if err != nil {
			return hp, fmt.Errorf("host pattern %q: %w", p, err)
		}
		port, err := strconv.Atoi(portText)
		if err != nil || port < 1 || port > 65535 || portText != strconv.Itoa(port) {
			return hp, fmt.Errorf("host pattern %q: port %q is not a number from 1 to 65535", p, portText)
		}
		host, hp.port = h, port
	} else if strings.HasPrefix(s, "[") {
		return hp, fmt.Errorf("host pattern %q: brackets are only for an IPv6 address followed by a port", p)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return hp, fmt.Errorf("host pattern %q: an IPv6 zone is not allowed", p)
		}
		hp.ip = ip.Unmap()
		return hp, nil
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		hp.wildcard = true
		host = rest
		if !strings.Contains(host, ".") {
			return hp, fmt.Errorf("host pattern %q: a wildcard must sit below at least two labels (like *.api.anaplan.com)", p)
		}
	}
	if strings.Contains(host, "*") {
		return hp, fmt.Errorf("host pattern %q: only a leading \"*.\" wildcard is allowed", p)
	}
	if err := checkDNSName(host); err != nil {
		return hp, fmt.Errorf("host pattern %q: %w", p, err)
	}
	hp.name = host
	return hp, nil
}

// checkDNSName accepts lower-case LDH host names (RFC 1123).
func checkDNSName(name string) error {
	if name == "" {
		return errors.New("empty host name")
	}
	if len(name) > 253 {
		return errors.New("host name longer than 253 characters")
	}
	if last := name[strings.LastIndexByte(name, '.')+1:]; strings.Trim(last, "0123456789") == "" {
		return errors.New("the last label is numeric: neither a host name nor an IP address")
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" {
			return errors.New("empty label in host name")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q longer than 63 characters", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return fmt.Errorf("invalid character %q in host name", c)
			}
		}
	}
	return nil
}

// specificity ranks how closely a pattern matched: an exact name or IP beats
// any wildcard, and a longer wildcard suffix beats a shorter one.
func (hp *hostPattern) specificity() int {
	if hp.wildcard {
		return len(hp.name)
	}
	return 1 << 20
}

// matchesHost reports whether the pattern covers host, ignoring the port.
// host is normalised (lower case, no trailing dot, IPv6 without brackets).
func (hp *hostPattern) matchesHost(host string, ip netip.Addr) bool {
	if hp.ip.IsValid() {
		return ip.IsValid() && ip == hp.ip
	}
	if ip.IsValid() {
		return false // a name pattern never matches an IP literal
	}
	if hp.wildcard {
		return len(host) > len(hp.name)+1 && strings.HasSuffix(host, hp.name) && host[len(host)-len(hp.name)-1] == '.'
	}
	return host == hp.name
}

// action is what the proxy does with a CONNECT. The order matters: it
// ranks how little leaves the machine, which breaks ties in decide.
type action int

const (
	actionDeny   action = iota
	actionInject        // intercept, forward with the token
	actionTunnel        // relay bytes, no token
	actionCompat        // intercept, answer locally, never dial
)

func (a action) String() string {
	switch a {
	case actionInject:
		return "inject"
	case actionTunnel:
		return "tunnel"
	case actionCompat:
		return "compat"
	default:
		return "deny"
	}
}

// Reason codes for denied CONNECTs, as passed to Observer.Connect.
const (
	reasonNotAllowed   = "not_allowed"
	reasonPort         = "port_not_allowed"
	reasonBadTarget    = "bad_target"
	reasonShuttingDown = "shutting_down"
	// reasonTooManyConnections is the reason of a connection refused
	// over Limits.MaxConnections.
	reasonTooManyConnections = "too_many_connections"
)

// verdict is the policy's answer for one CONNECT target.
type verdict struct {
	action  action
	pattern string // the configured pattern that matched, if any
	reason  string // reason code for a deny
	detail  string // one human sentence for a deny
}

// policy holds the parsed Inject, Tunnel and Compat patterns.
type policy struct {
	inject  []hostPattern
	tunnel  []hostPattern
	compat  []hostPattern // see addCompat
	allowed string        // summary of the patterns for deny messages
}

func newPolicy(inject, tunnel []string) (*policy, error) {
	pl := &policy{}
	var all []string
	for _, list := range []struct {
		in  []string
		out *[]hostPattern
	}{{inject, &pl.inject}, {tunnel, &pl.tunnel}} {
		for _, s := range list.in {
			hp, err := parseHostPattern(s)
			if err != nil {
				return nil, err
			}
			*list.out = append(*list.out, hp)
			all = append(all, s)
		}
	}
	const shown = 6
	if len(all) > shown {
		all = append(all[:shown:shown], "…")
	}
	pl.allowed = strings.Join(all, ", ")
	return pl, nil
}

// normalizeHost lower-cases host, drops a trailing dot and parses an IP
// literal. It is applied to CONNECT targets and to Host headers alike.
func normalizeHost(host string) (string, netip.Addr) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		return ip.String(), ip
	}
	return host, netip.Addr{}
}

// decide is the single place where a CONNECT target becomes inject, tunnel,
// compat or deny. The most specific matching pattern wins; between patterns
// of equal specificity the one that sends less wins (compat over tunnel over
// inject), so that an ambiguous configuration never sends the token.
func (pl *policy) decide(host string, port int) verdict {
	host, ip := normalizeHost(host)
	if host == "" || port < 1 || port > 65535 {
		return verdict{action: actionDeny, reason: reasonBadTarget, detail: "the CONNECT target is not host:port"}
	}
	best, bestRank := (*hostPattern)(nil), -1
	var bestAction action
	portMismatch := (*hostPattern)(nil)
	consider := func(list []hostPattern, a action) {
		for i := range list {
			hp := &list[i]
			if !hp.matchesHost(host, ip) {
				continue
			}
			if hp.port != port {
				if portMismatch == nil {
					portMismatch = hp
				}
				continue
			}
			if r := hp.specificity(); r > bestRank || (r == bestRank && a > bestAction) {
				best, bestRank, bestAction = hp, r, a
			}
		}
	}
	consider(pl.inject, actionInject)
	consider(pl.tunnel, actionTunnel)
	consider(pl.compat, actionCompat)
	if best != nil {
		return verdict{action: bestAction, pattern: best.text}
	}
	if portMismatch != nil {
		return verdict{
			action: actionDeny, reason: reasonPort,
			detail: fmt.Sprintf("port %d is not allowed for this host (pattern %s allows port %d only)", port, portMismatch.text, portMismatch.port),
		}
	}
	return verdict{
		action: actionDeny, reason: reasonNotAllowed,
		detail: fmt.Sprintf("not an Anaplan API host (allowed: %s)", pl.allowed),
	}
}

// splitTarget splits a CONNECT authority "host:port" into a host and port.
func splitTarget(authority string) (string, int, bool) {
	host, portText, err := net.SplitHostPort(authority)
	if err != nil || host == "" {
		return "", 0, false
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, false
	}
	return host, port, true
}
