package proxy

import (
	"strings"
	"testing"
)

func TestValidateHostPattern(t *testing.T) {
	tests := []struct {
		pattern string
		wantErr string // "" = valid
	}{
		{"api.anaplan.com", ""},
		{"*.api.anaplan.com", ""},
		{"API.Anaplan.COM.", ""},
		{"api.anaplan.com:8443", ""},
		{"127.0.0.1", ""},
		{"127.0.0.1:8443", ""},
		{"::1", ""},
		{"[::1]:8443", ""},
		{"localhost", ""},
		{"", "empty"},
		{" api.anaplan.com", "spaces"},
		{"https://api.anaplan.com", "not a URL"},
		{"api.anaplan.com/2/0", "not a URL"},
		{"*", "wildcard"},
		{"*.com", "wildcard must sit below"},
		{"api.*.com", "only a leading"},
		{"*.*.anaplan.com", "only a leading"},
		{"api.anaplan.com:0", "port"},
		{"api.anaplan.com:65536", "port"},
		{"api.anaplan.com:https", "port"},
		{"api.anaplan.com:", "port"},
		{"[::1]", "missing port"},
		{"[api.anaplan.com]", "brackets"},
		{"api_x.anaplan.com", "invalid character"},
		{"-api.anaplan.com", "starts or ends"},
		{"api..anaplan.com", "empty label"},
		{"*.10.0.0.1", "IP"},
		{"*.0.1", "numeric"},
		{"10.0.1", "numeric"},
		{"fe80::1%eth0", "zone"},
	}
	for _, tc := range tests {
		t.Run(tc.pattern, func(t *testing.T) {
			err := ValidateHostPattern(tc.pattern)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateHostPattern(%q) = %v, want nil", tc.pattern, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ValidateHostPattern(%q) = %v, want error containing %q", tc.pattern, err, tc.wantErr)
			}
		})
	}
}

func TestPolicyDecide(t *testing.T) {
	pl, err := newPolicy(
		[]string{"api.anaplan.com", "*.api.anaplan.com", "audit.anaplan.com:8443", "10.1.2.3", "*.anaplan.com"},
		[]string{"auth.anaplan.com", "*.auth.anaplan.com", "[::1]:9443", "*.anaplan.com"},
	)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host        string
		port        int
		want        action
		wantPattern string
		wantReason  string
	}{
		{"api.anaplan.com", 443, actionInject, "api.anaplan.com", ""},
		{"API.ANAPLAN.COM.", 443, actionInject, "api.anaplan.com", ""},
		{"eu1.api.anaplan.com", 443, actionInject, "*.api.anaplan.com", ""},
		{"a.b.api.anaplan.com", 443, actionInject, "*.api.anaplan.com", ""},
		{"api.anaplan.com", 8443, actionDeny, "", reasonPort},
		{"audit.anaplan.com", 8443, actionInject, "audit.anaplan.com:8443", ""},
		// Matches the wildcard on 443 even though the exact pattern names 8443.
		{"audit.anaplan.com", 443, actionTunnel, "*.anaplan.com", ""},
		{"auth.anaplan.com", 443, actionTunnel, "auth.anaplan.com", ""},
		{"eu1.auth.anaplan.com", 443, actionTunnel, "*.auth.anaplan.com", ""},
		// An inject and a tunnel wildcard of equal reach: no token.
		{"us1a.app.anaplan.com", 443, actionTunnel, "*.anaplan.com", ""},
		{"anaplan.com", 443, actionDeny, "", reasonNotAllowed},
		{"api.anaplan.com.evil.com", 443, actionDeny, "", reasonNotAllowed},
		{"evilapi.anaplan.com", 443, actionTunnel, "*.anaplan.com", ""},
		{"10.1.2.3", 443, actionInject, "10.1.2.3", ""},
		{"::ffff:10.1.2.3", 443, actionInject, "10.1.2.3", ""},
		{"10.1.2.4", 443, actionDeny, "", reasonNotAllowed},
		{"::1", 9443, actionTunnel, "[::1]:9443", ""},
		{"::1", 443, actionDeny, "", reasonPort},
		{"", 443, actionDeny, "", reasonBadTarget},
		{"api.anaplan.com", 0, actionDeny, "", reasonBadTarget},
	}
	for _, tc := range tests {
		v := pl.decide(tc.host, tc.port)
		if v.action != tc.want || v.pattern != tc.wantPattern || v.reason != tc.wantReason {
			t.Errorf("decide(%q, %d) = %v %q %q, want %v %q %q", tc.host, tc.port, v.action, v.pattern, v.reason, tc.want, tc.wantPattern, tc.wantReason)
		}
	}
}

func TestNameNeverMatchesIP(t *testing.T) {
	pl, err := newPolicy([]string{"localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := pl.decide("127.0.0.1", 443); v.action != actionDeny {
		t.Errorf("name pattern matched an IP literal: %+v", v)
	}
}

func FuzzValidateHostPattern(f *testing.F) {
	for _, s := range []string{"api.anaplan.com", "*.api.anaplan.com:443", "[::1]:1", "1.2.3.4", "*."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hp, err := parseHostPattern(s)
		if err != nil {
			return
		}
		if hp.port < 1 || hp.port > 65535 {
			t.Fatalf("%q: port %d", s, hp.port)
		}
		if !hp.ip.IsValid() && (hp.name == "" || strings.ContainsAny(hp.name, "*: ")) {
			t.Fatalf("%q: name %q", s, hp.name)
		}
	})
}
