package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestProhibitedKind(t *testing.T) {
	tests := []struct {
		addr string
		want string // "" = public
	}{
		{"127.0.0.1", "loopback"},
		{"127.255.0.9", "loopback"},
		{"::1", "loopback"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"172.31.255.255", "private"},
		{"192.168.1.1", "private"},
		{"169.254.169.254", "link-local (cloud metadata)"},
		{"fe80::1", "link-local"},
		{"100.64.0.1", "shared address space (CGNAT)"},
		{"100.127.255.254", "shared address space (CGNAT)"},
		{"fc00::1", "unique-local"},
		{"fd12:3456::1", "unique-local"},
		{"224.0.0.1", "multicast"},
		{"ff02::1", "multicast"},
		{"0.0.0.0", "this-network"},
		{"::", "unspecified"},
		{"::ffff:127.0.0.1", "IPv4-mapped"},
		{"::ffff:8.8.8.8", "IPv4-mapped"},
		{"64:ff9b::a9fe:a9fe", "IPv4/IPv6 translation"},
		{"2002:7f00:1::1", "6to4 (embeds an IPv4 address)"},
		{"255.255.255.255", "reserved"},
		{"8.8.8.8", ""},
		{"172.32.0.1", ""},
		{"100.128.0.1", ""},
		{"2606:4700:4700::1111", ""},
	}
	for _, tc := range tests {
		if got := prohibitedKind(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("prohibitedKind(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

// fakeResolver answers from a table and counts lookups.
type fakeResolver struct {
	mu      sync.Mutex
	table   map[string][]netip.Addr
	lookups map[string]int
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lookups == nil {
		r.lookups = map[string]int{}
	}
	r.lookups[host]++
	if a, ok := r.table[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (r *fakeResolver) count(host string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lookups[host]
}

// countingListener is a loopback listener that counts what it accepts and
// then closes it.
func countingListener(t *testing.T) (port string, accepted func() int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var mu sync.Mutex
	n := 0
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
			c.Close()
		}
	}()
	_, port, _ = net.SplitHostPort(l.Addr().String())
	return port, func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func TestSSRFGuardOnTunnels(t *testing.T) {
	port, accepted := countingListener(t)
	res := &fakeResolver{table: map[string][]netip.Addr{
		"internal.example.com": {netip.MustParseAddr("127.0.0.1")},
		"metadata.example.com": {netip.MustParseAddr("169.254.169.254")},
		"mapped.example.com":   {netip.MustParseAddr("::ffff:127.0.0.1")},
		"mixed.example.com":    {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("127.0.0.1")},
	}}
	tunnel := []string{"internal.example.com:" + port, "metadata.example.com:" + port, "mapped.example.com:" + port,
		"mixed.example.com:" + port, "127.0.0.1:" + port}
	tests := []struct {
		name         string
		target       string
		allowPrivate bool
		allowCIDRs   []string
		wantStatus   int
		wantBody     string
	}{
		{"name resolving to loopback", "internal.example.com:" + port, false, nil, 403, "internal.example.com resolves to 127.0.0.1 (loopback)"},
		{"cloud metadata address", "metadata.example.com:" + port, false, nil, 403, "169.254.169.254 (link-local (cloud metadata))"},
		{"IPv4-mapped answer is judged as IPv4", "mapped.example.com:" + port, false, nil, 403, "mapped.example.com resolves to 127.0.0.1 (loopback)"},
		{"IP literal pattern", "127.0.0.1:" + port, false, nil, 403, "127.0.0.1 (loopback)"},
		{"allowed by allow_cidrs", "internal.example.com:" + port, false, []string{"127.0.0.0/8"}, 200, ""},
		{"mapped answer allowed by its IPv4 prefix", "mapped.example.com:" + port, false, []string{"127.0.0.1/32"}, 200, ""},
		{"only the allowed address is dialled", "mixed.example.com:" + port, false, []string{"127.0.0.0/8"}, 200, ""},
		{"allow_private", "internal.example.com:" + port, true, nil, 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := accepted()
			var allow []netip.Prefix
			for _, c := range tc.allowCIDRs {
				allow = append(allow, netip.MustParsePrefix(c))
			}
			h := startProxy(t, Config{Tunnel: tunnel}, func(c *Config) {
				c.AllowPrivateUpstream = tc.allowPrivate
				c.UpstreamAllowCIDRs = allow
				c.Resolver = res
			})
			resp, body := h.rawConnect(t, tc.target)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
			}
			if tc.wantStatus == 403 {
				mustContain(t, "body", body, tc.wantBody)
				mustContain(t, "body", body, "upstream.allow_private")
				mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=destination_ip_prohibited")
				if got := accepted() - before; got != 0 {
					t.Errorf("the refused destination received %d connections", got)
				}
				if snap := h.obs.snapshot(); len(snap.upstream) != 1 || snap.upstream[0] != "prohibited" {
					t.Errorf("UpstreamError calls = %v, want [prohibited]", snap.upstream)
				}
			}
			if tc.wantStatus == 200 {
				eventually(t, 5*time.Second, "the tunnelled connection", func() bool { return accepted() == before+1 })
			}
		})
	}
	// Resolved once per dial: nothing can answer differently between the
	// check and the connection.
	if n := res.count("mixed.example.com"); n != 1 {
		t.Errorf("mixed.example.com was looked up %d times for one CONNECT, want 1", n)
	}
}

func TestSSRFGuardOnInjectHosts(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	tests := []struct {
		name       string
		allow      []string
		wantStatus int
	}{
		{"loopback refused", nil, 403},
		{"loopback allowed by allow_cidrs", []string{"127.0.0.0/8", "::1/128"}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.requests())
			var allow []netip.Prefix
			for _, c := range tc.allow {
				allow = append(allow, netip.MustParsePrefix(c))
			}
			h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots}, func(c *Config) {
				c.AllowPrivateUpstream = false
				c.UpstreamAllowCIDRs = allow
			})
			resp, err := h.client(t).Get("https://" + up.hostport + "/2/0/users/me")
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
			}
			got := up.requests()[before:]
			if tc.wantStatus == 403 {
				mustContain(t, "body", body, "localhost resolves to")
				mustContain(t, "Proxy-Status", resp.Header.Get("Proxy-Status"), "error=destination_ip_prohibited")
				if len(got) != 0 {
					t.Errorf("the upstream saw %d requests", len(got))
				}
				return
			}
			if len(got) != 1 || got[0].Authorization != "AnaplanAuthToken tok-1" {
				t.Errorf("upstream saw %v", got)
			}
		})
	}
}

// net.Resolver gives IPv4 answers in IPv4-mapped form: a public IPv4
// address must be dialled as such, not refused as "IPv4-mapped".
func TestGuardDialsCheckedPublicAddress(t *testing.T) {
	var dialled []string
	stop := errors.New("stopped before connecting")
	g := &guardedDialer{
		dialer: &net.Dialer{Control: func(network, address string, _ syscall.RawConn) error {
			dialled = append(dialled, address)
			return stop
		}},
		resolver: &fakeResolver{table: map[string][]netip.Addr{
			"api.example.com": {netip.MustParseAddr("::ffff:93.184.216.34"), netip.MustParseAddr("2606:2800:220:1::1")},
		}},
	}
	_, err := g.DialContext(t.Context(), "tcp", "api.example.com:443")
	var prohibited *prohibitedError
	if errors.As(err, &prohibited) || !errors.Is(err, stop) {
		t.Fatalf("DialContext = %v, want the dial attempted", err)
	}
	if want := []string{"93.184.216.34:443", "[2606:2800:220:1::1]:443"}; fmt.Sprint(dialled) != fmt.Sprint(want) {
		t.Errorf("dialled %v, want %v", dialled, want)
	}
}

// The client's answer to a prohibited destination names no token.
func TestProhibitedAnswerCarriesNoToken(t *testing.T) {
	h := startProxy(t, Config{Inject: []string{"localhost:1"}}, func(c *Config) { c.AllowPrivateUpstream = false })
	h.tokens.token = "SECRET-TOKEN"
	resp, err := h.client(t).Get("https://localhost:1/")
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusForbidden || strings.Contains(body, "SECRET") || strings.Contains(h.logs.String(), "SECRET") {
		t.Errorf("got %d %q; logs:\n%s", resp.StatusCode, body, h.logs)
	}
}
