package config

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// envOf returns a lookupEnv function backed by vars.
func envOf(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

var noEnv = envOf(nil)

// flagsFor registers the config flags on a new FlagSet and parses args.
func flagsFor(t *testing.T, args ...string) *Flags {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags := RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return flags
}

// writeConfig writes a YAML file for one test and returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// plain drops the record of where values came from and the compiled
// corporate proxy (compared by its URL), for comparisons.
func plain(c *Config) Config {
	out := *c
	out.origin = origins{}
	out.Upstream.Proxy = nil
	return out
}

// mustDSN parses a connection string that a test knows to be valid.
func mustDSN(t *testing.T, v string) DSN {
	t.Helper()
	d, err := ParseDSN(v)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// hosts parses host patterns that a test knows to be valid.
func hosts(t *testing.T, list ...string) []HostPattern {
	t.Helper()
	out := []HostPattern{}
	for _, h := range list {
		p, err := ParseHostPattern(h)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// prefixes parses address prefixes that a test knows to be valid.
func prefixes(t *testing.T, list ...string) []netip.Prefix {
	t.Helper()
	out := []netip.Prefix{}
	for _, v := range list {
		p, err := parsePrefix(v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// mustURL parses a URL that a test knows to be valid.
func mustURL(t *testing.T, v string) *url.URL {
	t.Helper()
	u, err := url.Parse(v)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestConfigBadFiles loads each bad file in testdata and checks the exact
// message a user reads.
func TestConfigBadFiles(t *testing.T) {
	tests := []struct {
		file string
		want string
	}{
		{"unknown_key.yaml", `config testdata/unknown_key.yaml: line 3: unknown key "listn" (did you mean "listen"?)`},
		{"unknown_nested_key.yaml", `config testdata/unknown_nested_key.yaml: line 2: unknown key "oauth.clientid" (did you mean "oauth.client_id"?)`},
		{"misplaced_key.yaml", `config testdata/misplaced_key.yaml: line 1: unknown key "client_id" (did you mean "oauth.client_id"?)`},
		{"unknown_section.yaml", `config testdata/unknown_section.yaml: line 1: unknown key "server" (known keys here: listen, admin_listen, state_dir, region, log_level, log_format, oauth, inject, tunnel, compat, clients, upstream, limits, store)`},
		{"bad_cidr.yaml", `config testdata/bad_cidr.yaml: line 3: clients.allow_cidrs: "10.0.0.0/33" is not an address prefix like 10.0.0.0/8 or 2001:db8::/32`},
		{"users_file_missing.yaml", `config testdata/users_file_missing.yaml: line 2: clients.users_file: cannot read testdata/no-such-users: no such file or directory`},
		{"upstream_proxy_scheme.yaml", `config testdata/upstream_proxy_scheme.yaml: line 2: upstream.proxy: "socks5://10.0.0.1:1080": the scheme must be http:// or https://, not socks5://`},
		{"upstream_proxy_no_port.yaml", `config testdata/upstream_proxy_no_port.yaml: line 2: upstream.proxy: "http://proxy.corp.example" must name a host and a port (like http://proxy.example.com:8080)`},
		{"upstream_proxy_path.yaml", `config testdata/upstream_proxy_path.yaml: line 2: upstream.proxy: "http://svc-anaplan:xxxxx@proxy.corp.example:8080/proxy" must be scheme://host:port only, without a path, query or fragment`},
		{"upstream_proxy_not_url.yaml", `config testdata/upstream_proxy_not_url.yaml: line 2: upstream.proxy: "proxy.corp.example:8080" is not a URL like http://proxy.example.com:8080`},
		{"upstream_no_proxy_bad.yaml", `config testdata/upstream_no_proxy_bad.yaml: line 5: upstream.no_proxy: no-proxy pattern "*" would bypass the corporate proxy for everything: leave upstream.proxy empty instead`},
		{"plain_http_not_bool.yaml", `config testdata/plain_http_not_bool.yaml: line 2: inject.plain_http: "loopback" is not true or false`},
		{"max_connections_zero.yaml", `config testdata/max_connections_zero.yaml: line 2: limits.max_connections: 0 is not a positive number (the default is 1024)`},
		{"wrong_type_string.yaml", `config testdata/wrong_type_string.yaml: line 1: listen: must be a string, not a list`},
		{"wrong_type_list.yaml", `config testdata/wrong_type_list.yaml: line 3: inject.hosts: must be a list of strings (like [a, b]), not a string`},
		{"wrong_type_list_item.yaml", `config testdata/wrong_type_list_item.yaml: line 4: tunnel.hosts: each item must be a string, not a mapping`},
		{"wrong_type_section.yaml", `config testdata/wrong_type_section.yaml: line 1: oauth: must be a mapping of keys, not a string`},
		{"not_a_mapping.yaml", `config testdata/not_a_mapping.yaml: line 1: the file must be a mapping of keys (like "listen: 127.0.0.1:3128"), not a list`},
		{"duplicate_key.yaml", `config testdata/duplicate_key.yaml: line 3: key "log_level" appears twice (first at line 1)`},
		{"syntax_error.yaml", `config testdata/syntax_error.yaml: not valid YAML: line 3: found unexpected end of stream`},
		{"two_documents.yaml", `config testdata/two_documents.yaml: line 2: a second YAML document; the file must hold one`},
		{"bad_listen.yaml", `config testdata/bad_listen.yaml: line 1: listen: "localhost" is not host:port with a port from 0 to 65535 (like 127.0.0.1:3128)`},
		{"bad_admin_listen_port.yaml", `config testdata/bad_admin_listen_port.yaml: line 1: admin_listen: "127.0.0.1:94640" is not host:port with a port from 0 to 65535 (like 127.0.0.1:3128)`},
		{"http_token_url.yaml", `config testdata/http_token_url.yaml: line 2: oauth.token_url: "http://us1a.app.anaplan.com/oauth/token" must be an https:// URL (http:// only for a loopback host)`},
		{"relative_device_url.yaml", `config testdata/relative_device_url.yaml: line 2: oauth.device_authorization_url: "/oauth/device/code" is not an absolute https:// URL`},
		{"empty_token_url.yaml", `config testdata/empty_token_url.yaml: line 2: oauth.token_url: is empty; give an absolute https:// URL`},
		{"url_with_password.yaml", `config testdata/url_with_password.yaml: line 2: oauth.revocation_url: "https://integration:xxxxx@us1a.app.anaplan.com/oauth/revoke" must not hold a user name or password`},
		{"bad_request_encoding.yaml", `config testdata/bad_request_encoding.yaml: line 2: oauth.request_encoding: "xml" is not one of json, form`},
		{"bad_scope.yaml", `config testdata/bad_scope.yaml: line 2: oauth.scopes: "openid profile" is not a scope (printable ASCII without spaces, quotes or backslashes)`},
		{"blank_client_id.yaml", `config testdata/blank_client_id.yaml: line 2: oauth.client_id: is blank; set the device-grant client's ID or leave the key out`},
		{"missing_ca_file.yaml", `config testdata/missing_ca_file.yaml: line 2: oauth.ca_file: cannot read testdata/no-such-ca.pem: no such file or directory`},
		{"ca_file_not_pem.yaml", `config testdata/ca_file_not_pem.yaml: line 2: upstream.ca_file: testdata/not-a-certificate.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)`},
		{"bad_scheme.yaml", `config testdata/bad_scheme.yaml: line 2: inject.scheme: "Basic" is not one of AnaplanAuthToken, Bearer`},
		{"bad_client_authorization.yaml", `config testdata/bad_client_authorization.yaml: line 2: inject.client_authorization: "drop" is not one of replace, keep, reject`},
		{"bad_log_level.yaml", `config testdata/bad_log_level.yaml: line 1: log_level: "verbose" is not one of debug, info, warn, error`},
		{"bad_log_format.yaml", `config testdata/bad_log_format.yaml: line 1: log_format: "logfmt" is not one of text, json`},
		{"empty_state_dir.yaml", `config testdata/empty_state_dir.yaml: line 1: state_dir: must name a directory (the default is /var/lib/anaplan-proxy)`},
		{"empty_inject_hosts.yaml", `config testdata/empty_inject_hosts.yaml: line 2: inject.hosts: is empty; name at least one Anaplan API host (like api.anaplan.com)`},
		{"inject_host_is_url.yaml", `config testdata/inject_host_is_url.yaml: line 4: inject.hosts: host pattern "https://api.anaplan.com/2/0": give a host name such as api.anaplan.com, not a URL`},
		{"inject_host_bad_wildcard.yaml", `config testdata/inject_host_bad_wildcard.yaml: line 2: inject.hosts: host pattern "api.*.anaplan.com": only a leading "*." wildcard is allowed`},
		{"compat_and_inject.yaml", `config testdata/compat_and_inject.yaml: line 7: compat.hosts: "AUTH.anaplan.com." is also in inject.hosts (config testdata/compat_and_inject.yaml: line 4); a host is either answered locally or injected, not both`},
		{"compat_enabled_not_bool.yaml", `config testdata/compat_enabled_not_bool.yaml: line 2: compat.enabled: "sometimes" is not true or false`},
		{"allow_private_not_bool.yaml", `config testdata/allow_private_not_bool.yaml: line 3: upstream.allow_private: "10.0.0.0/8" is not true or false`},
		{"max_connections_not_number.yaml", `config testdata/max_connections_not_number.yaml: line 2: limits.max_connections: "1k" is not a whole number`},
		{"body_timeout_not_duration.yaml", `config testdata/body_timeout_not_duration.yaml: line 2: limits.body_timeout: "60" is not a duration like 15s, 2m or 1m30s`},
		{"keep_warm_negative.yaml", `config testdata/keep_warm_negative.yaml: line 2: upstream.keep_warm: "-1h" is not a duration like 0s, 8h or 24h`},
		{"max_body_waits_zero.yaml", `config testdata/max_body_waits_zero.yaml: line 2: limits.max_body_waits: 0 is not a positive number`},
		{"body_timeout_zero.yaml", `config testdata/body_timeout_zero.yaml: line 3: limits.body_timeout: 0s is not a positive duration`},
		{"store_type_bad.yaml", `config testdata/store_type_bad.yaml: line 2: store.type: "mysql" is not one of file, postgres`},
		{"store_postgres_incomplete.yaml", `config testdata/store_postgres_incomplete.yaml: line 3: store.postgres_dsn: is empty, but store.type is postgres (config testdata/store_postgres_incomplete.yaml: line 2); give the connection string, like postgres://anaplan_proxy@db.example/anaplan?sslmode=verify-full
default: store.key_file: is empty, but store.type is postgres (config testdata/store_postgres_incomplete.yaml: line 2); create one with: openssl rand -base64 32 > /etc/anaplan-proxy/store.key`},
		{"store_dsn_scheme.yaml", `config testdata/store_dsn_scheme.yaml: line 4: store.postgres_dsn: "mysql://anaplan_proxy:xxxxx@db.example/anaplan": the scheme must be postgres:// or postgresql://`},
		{"store_dsn_not_words.yaml", `config testdata/store_dsn_not_words.yaml: line 3: store.postgres_dsn: "host=db.example password=xxxxx user" is not a PostgreSQL connection string: give a URL (postgres://user@host/db?sslmode=verify-full) or key=value words (host=db dbname=anaplan)`},
		{"store_key_file_short.yaml", `config testdata/store_key_file_short.yaml: line 4: store.key_file: testdata/short.key holds 17 bytes, not a key: it must hold 32 random bytes, raw or base64 (openssl rand -base64 32 > testdata/short.key)`},
		{"store_key_file_missing.yaml", `config testdata/store_key_file_missing.yaml: line 4: store.key_file: cannot read testdata/no-such.key: no such file or directory`},
		{"store_session_name_bad.yaml", `config testdata/store_session_name_bad.yaml: line 2: store.session_name: "prod workspace" is not a session name: use 1 to 64 letters, digits, '.', '_' or '-' (like prod-workspace)`},
		{"store_lease_too_long.yaml", `config testdata/store_lease_too_long.yaml: line 2: store.lease: 8m45s is too long: a lease must be shorter than 8m45s, a quarter of Anaplan's 35m0s access token, so that another proxy can take over from a silent one before the token expires (the default is 15s)`},
		{"store_lease_negative.yaml", `config testdata/store_lease_negative.yaml: line 2: store.lease: -5s is not a positive duration`},
		{"store_lease_no_unit.yaml", `config testdata/store_lease_no_unit.yaml: line 2: store.lease: "15" is not a duration like 15s, 2m or 1m30s`},
		{"tunnel_host_bad_port.yaml", `config testdata/tunnel_host_bad_port.yaml: line 2: tunnel.hosts: host pattern "auth.anaplan.com:0": port "0" is not a number from 1 to 65535`},
		{"inject_and_tunnel.yaml", `config testdata/inject_and_tunnel.yaml: line 8: tunnel.hosts: "API.anaplan.com:443" is also in inject.hosts (config testdata/inject_and_tunnel.yaml: line 3); a host is either injected or tunnelled, not both`},
		{"several_errors.yaml", `config testdata/several_errors.yaml: line 1: listen: "3128" is not host:port with a port from 0 to 65535 (like 127.0.0.1:3128)
config testdata/several_errors.yaml: line 2: log_level: "trace" is not one of debug, info, warn, error
config testdata/several_errors.yaml: line 4: inject.scheme: "bearer" is not one of AnaplanAuthToken, Bearer`},
	}
	covered := map[string]bool{"good.yaml": true}
	for _, tc := range tests {
		covered[tc.file] = true
		t.Run(tc.file, func(t *testing.T) {
			cfg, err := Load(filepath.Join("testdata", tc.file), noEnv, nil)
			if err == nil {
				t.Fatalf("loaded without error: %+v", plain(cfg))
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", got, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error shows a password: %s", err)
			}
		})
	}
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, f := range files {
		if !covered[filepath.Base(f)] {
			t.Errorf("%s has no test case", f)
		}
	}
}

func TestConfigGoodFile(t *testing.T) {
	cfg, err := Load("testdata/good.yaml", noEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen:      "127.0.0.1:3129",
		AdminListen: "[::1]:9465",
		StateDir:    "/srv/anaplan-proxy",
		LogLevel:    "debug",
		LogFormat:   "json",
		OAuth: OAuth{
			ClientID:               "0123456789abcdef0123456789abcdef",
			DeviceAuthorizationURL: "https://au1a.app2.anaplan.com/oauth/device/code",
			TokenURL:               "https://au1a.app2.anaplan.com/oauth/token",
			RevocationURL:          "https://au1a.app2.anaplan.com/oauth/revoke",
			Scopes:                 []string{"openid", "offline_access"},
			RequestEncoding:        "form",
			CAFile:                 "testdata/ca.pem",
		},
		Inject: Inject{
			Hosts:               hosts(t, "api.au1a.app2.anaplan.com", "*.api.anaplan.com", "127.0.0.1:8443"),
			Scheme:              "Bearer",
			ClientAuthorization: "reject",
			PlainHTTP:           true,
		},
		Tunnel:  Tunnel{Hosts: hosts(t, "au1a.app2.anaplan.com")},
		Compat:  Compat{Enabled: false, Hosts: hosts(t, "eu3.auth.anaplan.com")},
		Clients: Clients{AllowCIDRs: prefixes(t, "10.0.0.0/8", "2001:db8::/32"), UsersFile: "testdata/users.htpasswd"},
		Upstream: Upstream{CAFile: "testdata/ca.pem", AllowPrivate: true, AllowCIDRs: prefixes(t, "192.168.10.0/24"),
			ProxyURL: mustURL(t, "http://corp-user:corp-pass@10.1.2.3:8080"), NoProxy: []string{".corp.example.com", "10.0.0.0/8"},
			MaxIdlePerHost: 64, MaxIdle: 256, IdleTimeout: 50 * time.Second},
		Limits: Limits{MaxConnections: 200, BodyTimeout: 90 * time.Second},
		Store: Store{Type: StorePostgres, PostgresDSN: mustDSN(t, "postgres://anaplan_proxy:hunter2@db.example/anaplan?sslmode=verify-full"),
			SessionName: "prod-workspace", KeyFile: "testdata/store.key", Lease: 500 * time.Millisecond},
	}
	if got := plain(cfg); !reflect.DeepEqual(got, want) {
		t.Errorf("loaded\n %+v\nwant\n %+v", got, want)
	}
}

func TestConfigDefaults(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		stateDir string
	}{
		{"no environment", nil, "/var/lib/anaplan-proxy"},
		{"systemd state directory", map[string]string{"STATE_DIRECTORY": "/var/lib/anaplan-proxy-test"}, "/var/lib/anaplan-proxy-test"},
		{"several systemd state directories", map[string]string{"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a"},
		{"empty STATE_DIRECTORY", map[string]string{"STATE_DIRECTORY": ""}, "/var/lib/anaplan-proxy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load("", envOf(tc.env), nil)
			if err != nil {
				t.Fatal(err)
			}
			want := Default(noEnv)
			want.StateDir = tc.stateDir
			if got := plain(cfg); !reflect.DeepEqual(got, plain(want)) {
				t.Errorf("defaults\n %+v\nwant\n %+v", got, plain(want))
			}
		})
	}
	d := Default(noEnv)
	if d.Listen != "127.0.0.1:3128" || d.AdminListen != "127.0.0.1:9464" || d.OAuth.RequestEncoding != "json" ||
		d.Inject.Scheme != "AnaplanAuthToken" || d.Inject.ClientAuthorization != "replace" || len(d.Tunnel.Hosts) != 0 ||
		!slices.Equal(d.OAuth.Scopes, []string{"openid", "profile", "email", "offline_access"}) || !d.Compat.Enabled ||
		!slices.Equal(HostStrings(d.Compat.Hosts), []string{"auth.anaplan.com", "*.auth.anaplan.com", "au1a.app2.anaplan.com"}) ||
		d.Limits.MaxConnections != 1024 || d.Limits.BodyTimeout != 60*time.Second || d.Store.Type != "file" ||
		d.Store.SessionName != "default" || d.Store.Lease != 15*time.Second || !d.Store.PostgresDSN.IsZero() || d.Store.KeyFile != "" ||
		!slices.Equal(HostStrings(d.Inject.Hosts), []string{"api.anaplan.com", "*.api.anaplan.com", "api.au1a.app2.anaplan.com", "api.cloudworks.anaplan.com", "audit.anaplan.com"}) {
		t.Errorf("defaults differ from the documented ones: %+v", plain(d))
	}
}

func TestConfigPrecedence(t *testing.T) {
	file := writeConfig(t, "listen: 127.0.0.1:1001\noauth:\n  client_id: from-file\n  revocation_url: https://file.example/revoke\n")
	tests := []struct {
		name       string
		path       string
		env        map[string]string
		args       []string
		listen     string
		clientID   string
		revocation string
	}{
		{"defaults only", "", nil, nil, "127.0.0.1:3128", "", ""},
		{"file over defaults", file, nil, nil, "127.0.0.1:1001", "from-file", "https://file.example/revoke"},
		{"environment over file", file,
			map[string]string{"ANAPLAN_PROXY_LISTEN": "127.0.0.1:2002", "ANAPLAN_PROXY_OAUTH_CLIENT_ID": "from-env"},
			nil, "127.0.0.1:2002", "from-env", "https://file.example/revoke"},
		{"flags over environment", file,
			map[string]string{"ANAPLAN_PROXY_LISTEN": "127.0.0.1:2002", "ANAPLAN_PROXY_OAUTH_CLIENT_ID": "from-env"},
			[]string{"--listen", "127.0.0.1:3003"}, "127.0.0.1:3003", "from-env", "https://file.example/revoke"},
		{"flags over file", file, nil,
			[]string{"--oauth-client-id=from-flag", "--oauth-revocation-url="}, "127.0.0.1:1001", "from-flag", ""},
		{"empty environment variable clears the file's value", file,
			map[string]string{"ANAPLAN_PROXY_OAUTH_REVOCATION_URL": ""}, nil, "127.0.0.1:1001", "from-file", ""},
		{"unrelated variables are ignored", file,
			map[string]string{"LISTEN": "x", "ANAPLAN_PROXY_LISTENER": "x", "anaplan_proxy_listen": "x"}, nil,
			"127.0.0.1:1001", "from-file", "https://file.example/revoke"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(tc.path, envOf(tc.env), flagsFor(t, tc.args...))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Listen != tc.listen || cfg.OAuth.ClientID != tc.clientID || cfg.OAuth.RevocationURL != tc.revocation {
				t.Errorf("listen %q, client_id %q, revocation_url %q; want %q, %q, %q",
					cfg.Listen, cfg.OAuth.ClientID, cfg.OAuth.RevocationURL, tc.listen, tc.clientID, tc.revocation)
			}
		})
	}
}

// TestConfigEveryKeyFromEveryPlace sets each key through the environment
// and through a flag, proving both names exist and reach the right field.
func TestConfigEveryKeyFromEveryPlace(t *testing.T) {
	values := map[string]string{
		"listen":                         "127.0.0.1:1",
		"admin_listen":                   "127.0.0.1:2",
		"state_dir":                      "/tmp/state",
		"region":                         "eu3",
		"log_level":                      "warn",
		"log_format":                     "json",
		"oauth.client_id":                "abc",
		"oauth.device_authorization_url": "https://oauth.example/device",
		"oauth.token_url":                "https://oauth.example/token",
		"oauth.revocation_url":           "https://oauth.example/revoke",
		"oauth.scopes":                   "openid,offline_access",
		"oauth.request_encoding":         "form",
		"oauth.ca_file":                  "testdata/ca.pem",
		"inject.hosts":                   "a.example,*.b.example",
		"inject.scheme":                  "Bearer",
		"inject.client_authorization":    "keep",
		"inject.plain_http":              "true",
		"tunnel.hosts":                   "c.example:8443",
		"compat.enabled":                 "false",
		"compat.hosts":                   "auth.example,*.auth.example",
		"clients.allow_cidrs":            "10.0.0.0/8,192.0.2.1",
		"clients.users_file":             "testdata/users.htpasswd",
		"upstream.ca_file":               "testdata/ca.pem",
		"upstream.allow_private":         "true",
		"upstream.allow_cidrs":           "fd00::/8",
		"upstream.proxy":                 "https://10.0.0.1:3128",
		"upstream.no_proxy":              "login.example.com,*.corp.example",
		"upstream.max_idle_per_host":     "8",
		"upstream.max_idle":              "32",
		"upstream.idle_timeout":          "20s",
		"upstream.keep_warm":             "8h",
		"limits.max_connections":         "50",
		"limits.max_body_waits":          "20",
		"limits.body_timeout":            "2m",
		"store.type":                     "postgres",
		"store.postgres_dsn":             "host=db.example user=anaplan_proxy password='hunter2 x'",
		"store.session_name":             "test-tenant",
		"store.key_file":                 "testdata/store.key.b64",
		"store.lease":                    "30s",
	}
	flags := []string{"--listen", "--admin-listen", "--state-dir", "--region", "--log-level", "--log-format", "--oauth-client-id",
		"--oauth-device-authorization-url", "--oauth-token-url", "--oauth-revocation-url", "--oauth-scopes",
		"--oauth-request-encoding", "--oauth-ca-file", "--inject-hosts", "--inject-scheme",
		"--inject-client-authorization", "--inject-plain-http", "--tunnel-hosts", "--compat-enabled", "--compat-hosts", "--clients-allow-cidrs", "--clients-users-file",
		"--upstream-ca-file", "--upstream-allow-private", "--upstream-allow-cidrs", "--upstream-proxy", "--upstream-no-proxy",
		"--upstream-max-idle-per-host", "--upstream-max-idle", "--upstream-idle-timeout", "--upstream-keep-warm", "--limits-max-connections",
		"--limits-max-body-waits", "--limits-body-timeout", "--store-type", "--store-postgres-dsn", "--store-session-name", "--store-key-file", "--store-lease"}
	want := Config{
		Listen: "127.0.0.1:1", AdminListen: "127.0.0.1:2", StateDir: "/tmp/state", Region: "eu3", LogLevel: "warn", LogFormat: "json",
		OAuth: OAuth{ClientID: "abc", DeviceAuthorizationURL: "https://oauth.example/device",
			TokenURL: "https://oauth.example/token", RevocationURL: "https://oauth.example/revoke",
			Scopes: []string{"openid", "offline_access"}, RequestEncoding: "form", CAFile: "testdata/ca.pem"},
		Inject:  Inject{Hosts: hosts(t, "a.example", "*.b.example"), Scheme: "Bearer", ClientAuthorization: "keep", PlainHTTP: true},
		Tunnel:  Tunnel{Hosts: hosts(t, "c.example:8443")},
		Compat:  Compat{Enabled: false, Hosts: hosts(t, "auth.example", "*.auth.example")},
		Clients: Clients{AllowCIDRs: prefixes(t, "10.0.0.0/8", "192.0.2.1"), UsersFile: "testdata/users.htpasswd"},
		Upstream: Upstream{CAFile: "testdata/ca.pem", AllowPrivate: true, AllowCIDRs: prefixes(t, "fd00::/8"),
			ProxyURL: mustURL(t, "https://10.0.0.1:3128"), NoProxy: []string{"login.example.com", "*.corp.example"},
			MaxIdlePerHost: 8, MaxIdle: 32, IdleTimeout: 20 * time.Second, KeepWarm: 8 * time.Hour},
		Limits: Limits{MaxConnections: 50, MaxBodyWaits: 20, BodyTimeout: 2 * time.Minute},
		Store: Store{Type: StorePostgres, PostgresDSN: mustDSN(t, "host=db.example user=anaplan_proxy password='hunter2 x'"),
			SessionName: "test-tenant", KeyFile: "testdata/store.key.b64", Lease: 30 * time.Second},
	}
	if len(values) != len(settings) || len(flags) != len(settings) {
		t.Fatalf("%d keys tested, %d flags, %d settings", len(values), len(flags), len(settings))
	}

	vars := map[string]string{}
	var args []string
	for i, s := range settings {
		v, ok := values[s.key]
		if !ok {
			t.Fatalf("no test value for %s", s.key)
		}
		vars[envName(s.key)] = v
		if flags[i] != "--"+flagName(s.key) {
			t.Errorf("flag for %s is --%s, want %s", s.key, flagName(s.key), flags[i])
		}
		args = append(args, flags[i]+"="+v)
	}
	for _, name := range []string{"ANAPLAN_PROXY_LISTEN", "ANAPLAN_PROXY_OAUTH_CLIENT_ID", "ANAPLAN_PROXY_INJECT_HOSTS", "ANAPLAN_PROXY_UPSTREAM_CA_FILE"} {
		if _, ok := vars[name]; !ok {
			t.Errorf("no environment variable %s", name)
		}
	}

	fromEnv, err := Load("", envOf(vars), nil)
	if err != nil {
		t.Fatalf("environment: %v", err)
	}
	if got := plain(fromEnv); !reflect.DeepEqual(got, want) {
		t.Errorf("from the environment\n %+v\nwant\n %+v", got, want)
	}
	fromFlags, err := Load("", noEnv, flagsFor(t, args...))
	if err != nil {
		t.Fatalf("flags: %v", err)
	}
	if got := plain(fromFlags); !reflect.DeepEqual(got, want) {
		t.Errorf("from flags\n %+v\nwant\n %+v", got, want)
	}
}

func TestConfigEnvLists(t *testing.T) {
	tests := []struct {
		value string
		want  []string
	}{
		{"auth.anaplan.com", []string{"auth.anaplan.com"}},
		{"auth.anaplan.com,us1a.app.anaplan.com", []string{"auth.anaplan.com", "us1a.app.anaplan.com"}},
		{" auth.anaplan.com , us1a.app.anaplan.com ", []string{"auth.anaplan.com", "us1a.app.anaplan.com"}},
		{"auth.anaplan.com,,us1a.app.anaplan.com,", []string{"auth.anaplan.com", "us1a.app.anaplan.com"}},
		{"[::1]:8443,127.0.0.1", []string{"[::1]:8443", "127.0.0.1"}},
		{"", []string{}},
		{" , ", []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			cfg, err := Load("", envOf(map[string]string{"ANAPLAN_PROXY_TUNNEL_HOSTS": tc.value}), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(HostStrings(cfg.Tunnel.Hosts), tc.want) {
				t.Errorf("tunnel.hosts = %q, want %q", cfg.Tunnel.Hosts, tc.want)
			}
		})
	}
	cfg, err := Load("", envOf(map[string]string{
		"ANAPLAN_PROXY_INJECT_HOSTS": "eu1.api.anaplan.com, api.anaplan.com",
		"ANAPLAN_PROXY_OAUTH_SCOPES": "openid,offline_access",
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(HostStrings(cfg.Inject.Hosts), []string{"eu1.api.anaplan.com", "api.anaplan.com"}) ||
		!slices.Equal(cfg.OAuth.Scopes, []string{"openid", "offline_access"}) {
		t.Errorf("inject.hosts %q, oauth.scopes %q: the environment lists replace the defaults", cfg.Inject.Hosts, cfg.OAuth.Scopes)
	}
}

// TestConfigErrorNamesSource: the same bad value names the place it came
// from, so the user knows what to edit.
func TestConfigErrorNamesSource(t *testing.T) {
	file := writeConfig(t, "inject:\n  hosts:\n    - api.anaplan.com\n")
	tests := []struct {
		name string
		path string
		env  map[string]string
		args []string
		want string
	}{
		{"environment", "", map[string]string{"ANAPLAN_PROXY_LISTEN": "3128"}, nil,
			`environment ANAPLAN_PROXY_LISTEN: listen: "3128" is not host:port with a port from 0 to 65535 (like 127.0.0.1:3128)`},
		{"flag", "", map[string]string{"ANAPLAN_PROXY_LISTEN": "3128"}, []string{"--listen", ":x"},
			`flag --listen: listen: ":x" is not host:port with a port from 0 to 65535 (like 127.0.0.1:3128)`},
		{"environment list", file, map[string]string{"ANAPLAN_PROXY_TUNNEL_HOSTS": "api.anaplan.com"}, nil,
			`environment ANAPLAN_PROXY_TUNNEL_HOSTS: tunnel.hosts: "api.anaplan.com" is also in inject.hosts (config ` + file + `: line 3); a host is either injected or tunnelled, not both`},
		{"flag list", "", nil, []string{"--inject-hosts", "api.anaplan.com,*"},
			`flag --inject-hosts: inject.hosts: host pattern "*": only a leading "*." wildcard is allowed`},
		{"default list against environment", "", map[string]string{"ANAPLAN_PROXY_TUNNEL_HOSTS": "audit.anaplan.com"}, nil,
			`environment ANAPLAN_PROXY_TUNNEL_HOSTS: tunnel.hosts: "audit.anaplan.com" is also in inject.hosts (default); a host is either injected or tunnelled, not both`},
		{"systemd state directory", "", map[string]string{"STATE_DIRECTORY": ":/var/lib/b"}, nil,
			`environment STATE_DIRECTORY: state_dir: must name a directory (the default is /var/lib/anaplan-proxy)`},
		{"missing file", "testdata/no-such-file.yaml", nil, nil,
			`config testdata/no-such-file.yaml: cannot read: no such file or directory`},
		{"file is a directory", "testdata", nil, nil,
			`config testdata: cannot read: is a directory`},
		{"blank client ID from a flag", "", nil, []string{"--oauth-client-id", " "},
			`flag --oauth-client-id: oauth.client_id: is blank; set the device-grant client's ID or leave the key out`},
		{"bad boolean from the environment", "", map[string]string{"ANAPLAN_PROXY_UPSTREAM_ALLOW_PRIVATE": "sure"}, nil,
			`environment ANAPLAN_PROXY_UPSTREAM_ALLOW_PRIVATE: upstream.allow_private: "sure" is not true or false`},
		{"bad number from a flag", "", nil, []string{"--limits-max-connections", "many"},
			`flag --limits-max-connections: limits.max_connections: "many" is not a whole number`},
		{"bad duration from the environment", "", map[string]string{"ANAPLAN_PROXY_STORE_LEASE": "1h"}, nil,
			`environment ANAPLAN_PROXY_STORE_LEASE: store.lease: 1h0m0s is too long: a lease must be shorter than 8m45s, a quarter of Anaplan's 35m0s access token, so that another proxy can take over from a silent one before the token expires (the default is 15s)`},
		{"postgres from a flag, DSN from nowhere", "", map[string]string{"ANAPLAN_PROXY_STORE_KEY_FILE": "testdata/store.key"}, []string{"--store-type=postgres"},
			`default: store.postgres_dsn: is empty, but store.type is postgres (flag --store-type); give the connection string, like postgres://anaplan_proxy@db.example/anaplan?sslmode=verify-full`},
		{"bad DSN from the environment", "", map[string]string{"ANAPLAN_PROXY_STORE_POSTGRES_DSN": "mysql://u:hunter2@db/x"}, nil,
			`environment ANAPLAN_PROXY_STORE_POSTGRES_DSN: store.postgres_dsn: "mysql://u:xxxxx@db/x": the scheme must be postgres:// or postgresql://`},
		{"http to a non-loopback host", "", map[string]string{"ANAPLAN_PROXY_OAUTH_TOKEN_URL": "http://localhost.example/token"}, nil,
			`environment ANAPLAN_PROXY_OAUTH_TOKEN_URL: oauth.token_url: "http://localhost.example/token" must be an https:// URL (http:// only for a loopback host)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.path, envOf(tc.env), flagsFor(t, tc.args...))
			if err == nil {
				t.Fatal("loaded without error")
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tc.want)
			}
		})
	}
}

func TestConfigMissingFileIsNotExist(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"), noEnv, nil)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v does not wrap fs.ErrNotExist", err)
	}
}

func TestConfigAcceptedValues(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(*Config) bool
	}{
		{"empty file", "", func(c *Config) bool { return c.Listen == "127.0.0.1:3128" }},
		{"only comments", "# nothing yet\n", func(c *Config) bool { return c.Listen == "127.0.0.1:3128" }},
		{"null string keeps the default", "listen:\n", func(c *Config) bool { return c.Listen == "127.0.0.1:3128" }},
		{"null section keeps the defaults", "oauth:\n", func(c *Config) bool { return c.OAuth.RequestEncoding == "json" }},
		{"null list is empty", "tunnel:\n  hosts:\n", func(c *Config) bool { return len(c.Tunnel.Hosts) == 0 }},
		{"port 0 picks a free port", "listen: 127.0.0.1:0\nadmin_listen: '[::1]:0'\n", func(c *Config) bool { return c.Listen == "127.0.0.1:0" }},
		{"http to 127.0.0.1", "oauth:\n  token_url: http://127.0.0.1:8080/oauth/token\n", func(c *Config) bool { return c.OAuth.TokenURL == "http://127.0.0.1:8080/oauth/token" }},
		{"http to localhost", "oauth:\n  device_authorization_url: http://localhost/device\n", func(c *Config) bool { return c.OAuth.DeviceAuthorizationURL == "http://localhost/device" }},
		{"http to ::1", "oauth:\n  revocation_url: http://[::1]:9/revoke\n", func(c *Config) bool { return c.OAuth.RevocationURL == "http://[::1]:9/revoke" }},
		{"number as client ID keeps its digits", "oauth:\n  client_id: 0123\n", func(c *Config) bool { return c.OAuth.ClientID == "0123" }},
		{"IPv6 inject host with port", "inject:\n  hosts: ['[::1]:8443']\n", func(c *Config) bool { return c.Inject.Hosts[0].String() == "[::1]:8443" }},
		{"same name on another port is not an overlap", "tunnel:\n  hosts: ['api.anaplan.com:8443']\n", func(c *Config) bool { return len(c.Tunnel.Hosts) == 1 }},
		{"anchors and aliases", "inject:\n  hosts: &h [a.example]\n  scheme: &s Bearer\noauth:\n  request_encoding: form\n", func(c *Config) bool { return c.Inject.Scheme == "Bearer" }},
		{"empty scopes", "oauth:\n  scopes: []\n", func(c *Config) bool { return len(c.OAuth.Scopes) == 0 }},
		{"lease just under a quarter of the token", "store:\n  lease: 8m44s\n", func(c *Config) bool { return c.Store.Lease == 8*time.Minute+44*time.Second }},
		{"sub-second lease for tests", "store:\n  lease: 200ms\n", func(c *Config) bool { return c.Store.Lease == 200*time.Millisecond }},
		{"postgres with key=value DSN and base64 key", "store:\n  type: postgres\n  postgres_dsn: host=db dbname=anaplan\n  key_file: testdata/store.key.b64\n",
			func(c *Config) bool {
				return c.Store.Type == StorePostgres && c.Store.PostgresDSN.Value() == "host=db dbname=anaplan"
			}},
		{"YAML 1.1 booleans", "inject:\n  plain_http: yes\ncompat:\n  enabled: off\n", func(c *Config) bool { return c.Inject.PlainHTTP && !c.Compat.Enabled }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(writeConfig(t, tc.yaml), noEnv, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(cfg) {
				t.Errorf("unexpected result %+v", plain(cfg))
			}
		})
	}
}

func TestConfigFlagDefaultsInHelp(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var help strings.Builder
	fs.SetOutput(&help)
	RegisterFlags(fs)
	fs.PrintDefaults()
	for _, want := range []string{
		"-listen host:port",
		`(default "127.0.0.1:3128")`,
		`(default "openid,profile,email,offline_access")`,
		"default $STATE_DIRECTORY, else /var/lib/anaplan-proxy",
		"-inject-client-authorization",
	} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, help.String())
		}
	}
}

func TestSuggestKey(t *testing.T) {
	for unknown, want := range map[string]string{
		"listn":                 "listen",
		"Listen":                "listen",
		"admin-listen":          "admin_listen",
		"oauth.tokenurl":        "oauth.token_url",
		"oauth.scope":           "oauth.scopes",
		"token_url":             "oauth.token_url",
		"hosts":                 "",
		"client-id":             "oauth.client_id",
		"scopes":                "oauth.scopes",
		"inject.host":           "inject.hosts",
		"injet":                 "inject",
		"completely_different":  "",
		"upstream.proxi":        "upstream.proxy",
		"upstream.proxy_url":    "",
		"tunnel.client_id":      "oauth.client_id",
		"oauth.device_auth_url": "",
	} {
		if got := suggestKey(unknown); got != want {
			t.Errorf("suggestKey(%q) = %q, want %q", unknown, got, want)
		}
	}
}

// TestConfigLaterSourceClearsError: a bad value is an error where it is
// read, unless a source that wins sets the key again.
func TestConfigLaterSourceClearsError(t *testing.T) {
	file := writeConfig(t, "limits:\n  max_connections: lots\n  body_timeout: soon\nstore:\n  lease: 1h\n")
	env := map[string]string{"ANAPLAN_PROXY_LIMITS_MAX_CONNECTIONS": "10", "ANAPLAN_PROXY_INJECT_PLAIN_HTTP": "perhaps"}
	cfg, err := Load(file, envOf(env), flagsFor(t, "--limits-body-timeout=5s", "--store-lease=250ms", "--inject-plain-http=yes"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.MaxConnections != 10 || cfg.Limits.BodyTimeout != 5*time.Second || cfg.Store.Lease != 250*time.Millisecond || !cfg.Inject.PlainHTTP {
		t.Errorf("max_connections %d, body_timeout %s, lease %s, plain_http %t; want 10, 5s, 250ms, true",
			cfg.Limits.MaxConnections, cfg.Limits.BodyTimeout, cfg.Store.Lease, cfg.Inject.PlainHTTP)
	}
	if got := cfg.Where("store.lease"); got != "flag --store-lease" {
		t.Errorf("store.lease comes from %q", got)
	}
	_, err = Load(file, envOf(env), nil)
	want := `environment ANAPLAN_PROXY_INJECT_PLAIN_HTTP: inject.plain_http: "perhaps" is not true or false
config ` + file + `: line 3: limits.body_timeout: "soon" is not a duration like 15s, 2m or 1m30s
config ` + file + `: line 5: store.lease: 1h0m0s is too long: a lease must be shorter than 8m45s, a quarter of Anaplan's 35m0s access token, so that another proxy can take over from a silent one before the token expires (the default is 15s)`
	if err == nil || err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
}

// TestDSNHidesPassword: a connection string's password shows in no error,
// log value or formatted Config, in either form.
func TestDSNHidesPassword(t *testing.T) {
	tests := []struct {
		raw, shown string
	}{
		{"postgres://anaplan_proxy:hunter2@db.example/anaplan?sslmode=verify-full", "postgres://anaplan_proxy:xxxxx@db.example/anaplan?sslmode=verify-full"},
		{"postgresql://db.example/anaplan?user=u&password=hunter2", "postgresql://db.example/anaplan?password=xxxxx&user=u"},
		{"postgres://anaplan_proxy@db.example/anaplan", "postgres://anaplan_proxy@db.example/anaplan"},
		{"host=db.example user=u password=hunter2 dbname=anaplan", "host=db.example user=u password=xxxxx dbname=anaplan"},
		{"host=db.example password = 'hunter2 \\' x' sslmode=require", "host=db.example password = xxxxx sslmode=require"},
		{"PASSWORD=hunter2", "PASSWORD=xxxxx"},
	}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			d, err := ParseDSN(tc.raw)
			if err != nil {
				t.Fatal(err)
			}
			if d.Value() != tc.raw {
				t.Errorf("Value() = %q, want the connection string as given", d.Value())
			}
			if d.String() != tc.shown {
				t.Errorf("String() = %q, want %q", d.String(), tc.shown)
			}
			cfg := Default(noEnv)
			cfg.Store.PostgresDSN = d
			for _, out := range []string{fmt.Sprint(d), fmt.Sprintf("%v %+v %#v %s %q", cfg, cfg, d, d, d)} {
				if strings.Contains(out, "hunter2") {
					t.Errorf("formatted output shows the password: %s", out)
				}
			}
		})
	}
	for _, bad := range []string{"mysql://u:hunter2@db/x", "postgres://u:hunter2@db:port/x", "host=db password=hunter2 user", "password='hunter2"} {
		_, err := ParseDSN(bad)
		if err == nil {
			t.Errorf("ParseDSN(%q) accepted it", bad)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
}

// TestReadKeyFile accepts 32 raw bytes or their base64, and nothing else.
func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	raw := []byte("0123456789abcdef0123456789ABCDEF")
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for name, data := range map[string][]byte{
		"raw":              raw,
		"base64":           []byte(base64.StdEncoding.EncodeToString(raw)),
		"base64 + newline": []byte(base64.StdEncoding.EncodeToString(raw) + "\n"),
	} {
		key, err := ReadKeyFile(write(name, data))
		if err != nil || string(key) != string(raw) {
			t.Errorf("%s: key %q, error %v", name, key, err)
		}
	}
	for name, data := range map[string][]byte{
		"raw + newline": append(slices.Clone(raw), '\n', '\n'),
		"short base64":  []byte(base64.StdEncoding.EncodeToString(raw[:16])),
		"empty":         nil,
		"hex":           []byte("30313233343536373839616263646566303132333435363738396162636465460a"),
	} {
		path := write(name, data)
		_, err := ReadKeyFile(path)
		if err == nil || !strings.Contains(err.Error(), "openssl rand -base64 32 > "+path) {
			t.Errorf("%s: error %v, want one that says how to make a key", name, err)
		}
	}
}

// TestFromValues: a command's own values go through the same parsers and
// checks, and an error names the command.
func TestFromValues(t *testing.T) {
	cfg, err := FromValues(map[string]string{"listen": "127.0.0.1:0", "inject.hosts": "127.0.0.1:8443", "upstream.allow_private": "true"}, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:0" || !slices.Equal(HostStrings(cfg.Inject.Hosts), []string{"127.0.0.1:8443"}) || !cfg.Upstream.AllowPrivate {
		t.Errorf("unexpected result %+v", plain(cfg))
	}
	for values, want := range map[string]string{
		"log_level=loud": `demo: log_level: "loud" is not one of debug, info, warn, error`,
		"loglevel=info":  `demo: unknown key "loglevel"`,
	} {
		k, v, _ := strings.Cut(values, "=")
		if _, err := FromValues(map[string]string{k: v}, "demo"); err == nil || err.Error() != want {
			t.Errorf("error %v, want %s", err, want)
		}
	}
}

// FuzzLoadConfig feeds arbitrary file content to the loader: it must never
// panic, every failure must say something, and whatever loads must pass
// validation again unchanged.
func FuzzLoadConfig(f *testing.F) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files: %v", err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("a: &a [*a, *a]\nb: &b [*a, *a]\nlisten: *b\n"))
	f.Add([]byte("<<: {listen: 127.0.0.1:1}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, noEnv, nil)
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if err := cfg.check(); err != nil {
			t.Fatalf("loaded a configuration that does not check again: %v", err)
		}
	})
}

// TestConfigCompat covers the compat section: its defaults, how an explicit
// inject or tunnel host takes a default compat host over, and the boolean.
func TestConfigCompat(t *testing.T) {
	defaults := []string{"auth.anaplan.com", "*.auth.anaplan.com", "au1a.app2.anaplan.com"}
	tests := []struct {
		name    string
		file    string
		env     map[string]string
		args    []string
		want    []string // compatHosts()
		wantErr string
	}{
		{name: "defaults", want: defaults},
		{name: "an explicit tunnel host takes the default over", file: "tunnel:\n  hosts: [au1a.app2.anaplan.com]\n",
			want: []string{"auth.anaplan.com", "*.auth.anaplan.com"}},
		{name: "an explicit inject host takes the default over", file: "inject:\n  hosts: [api.anaplan.com, Auth.Anaplan.com:443]\n",
			want: []string{"*.auth.anaplan.com", "au1a.app2.anaplan.com"}},
		{name: "an explicit list replaces the defaults", file: "compat:\n  hosts: [eu3.auth.anaplan.com]\n",
			want: []string{"eu3.auth.anaplan.com"}},
		{name: "an empty list answers nothing", file: "compat:\n  hosts: []\n", want: []string{}},
		{name: "disabled in the file", file: "compat:\n  enabled: false\n", want: nil},
		{name: "disabled by the environment", env: map[string]string{"ANAPLAN_PROXY_COMPAT_ENABLED": "0"}, want: nil},
		{name: "disabled by a flag", args: []string{"--compat-enabled=false"}, want: nil},
		{name: "a flag overrides a bad environment value", env: map[string]string{"ANAPLAN_PROXY_COMPAT_ENABLED": "nope"},
			args: []string{"--compat-enabled", "true"}, want: defaults},
		{name: "hosts from the environment", env: map[string]string{"ANAPLAN_PROXY_COMPAT_HOSTS": "auth.anaplan.com, localhost:8443"},
			want: []string{"auth.anaplan.com", "localhost:8443"}},
		{name: "an explicit list that is also tunnelled", file: "tunnel:\n  hosts: [au1a.app2.anaplan.com]\ncompat:\n  hosts: [au1a.app2.anaplan.com]\n",
			wantErr: `compat.hosts: "au1a.app2.anaplan.com" is also in tunnel.hosts`},
		{name: "disabled hosts may overlap", file: "tunnel:\n  hosts: [auth.anaplan.com]\ncompat:\n  enabled: false\n  hosts: [auth.anaplan.com]\n", want: nil},
		{name: "a bad boolean in the environment", env: map[string]string{"ANAPLAN_PROXY_COMPAT_ENABLED": "maybe"},
			wantErr: `environment ANAPLAN_PROXY_COMPAT_ENABLED: compat.enabled: "maybe" is not true or false`},
		{name: "a bad host pattern", args: []string{"--compat-hosts", "https://auth.anaplan.com/token"},
			wantErr: `flag --compat-hosts: compat.hosts: host pattern "https://auth.anaplan.com/token": give a host name`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.file != "" {
				path = writeConfig(t, tc.file)
			}
			cfg, err := Load(path, envOf(tc.env), flagsFor(t, tc.args...))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			if ch := cfg.CompatHosts(); ch != nil {
				got = HostStrings(ch)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("compat hosts %q, want %q", got, tc.want)
			}
			if got, want := cfg.InterceptedHosts(), slices.Concat(HostStrings(cfg.Inject.Hosts), tc.want); !slices.Equal(got, want) {
				t.Errorf("intercepted hosts %q, want %q", got, want)
			}
		})
	}
}
