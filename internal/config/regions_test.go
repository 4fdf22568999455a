package config

import (
	"reflect"
	"strings"
	"testing"
)

// TestRegionTable checks every region against Anaplan's published host
// table (URL, IP and allow-list requirements), as DESIGN.md records it.
func TestRegionTable(t *testing.T) {
	us := []string{"api.anaplan.com", "api.cloudworks.anaplan.com", "audit.anaplan.com"}
	tests := []struct {
		region      string
		oauth       string
		inject      []string
		classicAuth string
	}{
		{"us1", "https://us1a.app.anaplan.com", us, "auth.anaplan.com"},
		{"us2", "https://us1a.app.anaplan.com", us, "auth.anaplan.com"},
		{"us5", "https://us1a.app.anaplan.com", us, "auth.anaplan.com"},
		{"us7", "https://us1a.app.anaplan.com", us, "auth.anaplan.com"},
		{"eu1", "https://us1a.app.anaplan.com", us, "auth.anaplan.com"},
		{"eu2", "https://us1a.app.anaplan.com", us, "auth.anaplan.com"},
		{"eu4", "https://us1a.app.anaplan.com", us, "auth.anaplan.com"},
		{"ap1", "https://us1a.app.anaplan.com", us, "auth.anaplan.com"},
		{"us9", "https://us9.app.anaplan.com", []string{"us9.api.anaplan.com"}, "us9.auth.anaplan.com"},
		{"eu3", "https://eu3.app.anaplan.com", []string{"eu3.api.anaplan.com"}, "eu3.auth.anaplan.com"},
		{"eu5", "https://eu5.app.anaplan.com", []string{"eu5.api.anaplan.com"}, "eu5.auth.anaplan.com"},
		{"gb1", "https://gb1.app.anaplan.com", []string{"gb1.api.anaplan.com"}, "gb1.auth.anaplan.com"},
		{"sg1", "https://sg1.app.anaplan.com", []string{"sg1.api.anaplan.com"}, "sg1.auth.anaplan.com"},
		{"ae1", "https://ae1.app.anaplan.com", []string{"ae1.api.anaplan.com"}, "ae1.auth.anaplan.com"},
		{"in1", "https://in1.app.anaplan.com", []string{"in1.api.anaplan.com"}, "in1.auth.anaplan.com"},
		{"id1", "https://id1.app.anaplan.com", []string{"id1.api.anaplan.com"}, "id1.auth.anaplan.com"},
		{"me1", "https://me1.app.anaplan.com", []string{"me1.api.anaplan.com"}, "me1.auth.anaplan.com"},
		{"ca1", "https://ca1a.app.anaplan.com", []string{"ca1a.api.anaplan.com"}, "ca1a.auth.anaplan.com"},
		{"au1", "https://au1a.app2.anaplan.com", []string{"api.au1a.app2.anaplan.com", "api.cloudworks.au1a.app2.anaplan.com"}, "au1a.app2.anaplan.com"},
	}
	if len(tests) != len(regionNames()) {
		t.Errorf("%d regions tested, %d known", len(tests), len(regionNames()))
	}
	for _, tt := range tests {
		t.Run(tt.region, func(t *testing.T) {
			cfg, err := Load("", envOf(map[string]string{"ANAPLAN_PROXY_REGION": strings.ToUpper(tt.region)}), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := cfg.OAuth.DeviceAuthorizationURL, tt.oauth+"/oauth/device/code"; got != want {
				t.Errorf("device_authorization_url = %s, want %s", got, want)
			}
			if got, want := cfg.OAuth.TokenURL, tt.oauth+"/oauth/token"; got != want {
				t.Errorf("token_url = %s, want %s", got, want)
			}
			if !reflect.DeepEqual(HostStrings(cfg.Inject.Hosts), tt.inject) {
				t.Errorf("inject.hosts = %v, want %v", cfg.Inject.Hosts, tt.inject)
			}
			r, _ := lookupRegion(tt.region)
			if r.authHost != tt.classicAuth {
				t.Errorf("classic auth host = %s, want %s", r.authHost, tt.classicAuth)
			}
		})
	}
}

func TestRegionExplicitKeysWin(t *testing.T) {
	cfg, err := Load("", envOf(map[string]string{
		"ANAPLAN_PROXY_REGION":       "gb1",
		"ANAPLAN_PROXY_INJECT_HOSTS": "localhost:8443",
	}), flagsFor(t, "--oauth-token-url=https://login.example/token"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OAuth.TokenURL != "https://login.example/token" {
		t.Errorf("token_url = %s; the flag must win over the region", cfg.OAuth.TokenURL)
	}
	if !reflect.DeepEqual(HostStrings(cfg.Inject.Hosts), []string{"localhost:8443"}) {
		t.Errorf("inject.hosts = %v; the environment must win over the region", cfg.Inject.Hosts)
	}
	if cfg.OAuth.DeviceAuthorizationURL != "https://gb1.app.anaplan.com/oauth/device/code" {
		t.Errorf("device_authorization_url = %s; the region must fill what is not set", cfg.OAuth.DeviceAuthorizationURL)
	}
}

func TestRegionUnsetKeepsDefaults(t *testing.T) {
	cfg, err := Load("", noEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	def := Default(noEnv)
	if cfg.OAuth.TokenURL != def.OAuth.TokenURL || !reflect.DeepEqual(cfg.Inject.Hosts, def.Inject.Hosts) {
		t.Errorf("without region: token_url %s, inject.hosts %v; want the defaults", cfg.OAuth.TokenURL, cfg.Inject.Hosts)
	}
}

func TestRegionUnknown(t *testing.T) {
	_, err := Load("", envOf(map[string]string{"ANAPLAN_PROXY_REGION": "mars1"}), nil)
	want := `environment ANAPLAN_PROXY_REGION: region: "mars1" is not an Anaplan region; use one of ae1, ap1, au1, ca1, eu1, eu2, eu3, eu4, eu5, gb1, id1, in1, me1, sg1, us1, us2, us5, us7, us9, or leave it out and set oauth.*_url and inject.hosts`
	if err == nil || err.Error() != want {
		t.Fatalf("error\n got: %v\nwant: %s", err, want)
	}
}
