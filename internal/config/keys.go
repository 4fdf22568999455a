package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy"
)

// setting is one configuration key: its dotted path, its help text, its
// default as it would be written in an environment variable, and how a
// value is parsed into its field. Flags, environment variables, the file's
// schema and the defaults are all derived from the settings table.
type setting struct {
	key   string // dotted path in the file: "oauth.client_id"
	usage string
	def   string // lists: comma-separated
	// Exactly one of scalar and list is set.
	scalar func(c *Config, text string) error
	// list parses the items of a list; each error is an itemError.
	list func(c *Config, items []string) []itemError
}

// itemError is the problem with item i of a list.
type itemError struct {
	i   int
	err error
}

func (s setting) isList() bool { return s.list != nil }

// apply parses text (from the defaults, the environment or a flag) into c.
// A list is comma-separated; spaces around items and empty items are
// dropped, so "" is the empty list. The error names where and the key.
func (s setting) apply(c *Config, text, where string) error {
	if !s.isList() {
		if err := s.scalar(c, text); err != nil {
			return fmt.Errorf("%s: %s: %w", where, s.key, err)
		}
		return nil
	}
	return s.applyItems(c, splitList(text), where, nil)
}

// applyItems parses the items of a list from where; itemWhere, when not
// nil, names each item's own place.
func (s setting) applyItems(c *Config, items []string, where string, itemWhere []string) error {
	var errs []error
	for _, ie := range s.list(c, items) {
		w := where
		if ie.i < len(itemWhere) {
			w = itemWhere[ie.i]
		}
		errs = append(errs, fmt.Errorf("%s: %s: %w", w, s.key, ie.err))
	}
	return errors.Join(errs...)
}

// splitList parses a comma-separated list as given in an environment
// variable or flag.
func splitList(s string) []string {
	out := []string{}
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// str is a string key whose value check returns an error message, or nil.
func str(field func(*Config) *string, check func(string) error) func(*Config, string) error {
	return func(c *Config, v string) error {
		if check != nil {
			if err := check(v); err != nil {
				return err
			}
		}
		*field(c) = v
		return nil
	}
}

// boolean is a true/false key.
func boolean(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := parseBool(v)
		if err != nil {
			return err
		}
		*field(c) = b
		return nil
	}
}

// parseBool accepts what strconv.ParseBool accepts and YAML 1.1's yes, no,
// on and off, in any case.
func parseBool(v string) (bool, error) {
	t := strings.TrimSpace(v)
	if b, err := strconv.ParseBool(t); err == nil {
		return b, nil
	}
	switch strings.ToLower(t) {
	case "yes", "y", "on":
		return true, nil
	case "no", "n", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not true or false", v)
}

// positive is a whole number of at least 1; def is shown in the error.
func positive(field func(*Config) *int, def int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%q is not a whole number", v)
		}
		if n < 1 && def > 0 {
			return fmt.Errorf("%d is not a positive number (the default is %d)", n, def)
		}
		if n < 1 {
			return fmt.Errorf("%d is not a positive number", n)
		}
		*field(c) = n
		return nil
	}
}

// duration is a positive Go duration ("15s", "1m30s"); check, when set,
// adds a bound.
func duration(field func(*Config) *time.Duration, check func(time.Duration) error) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%q is not a duration like 15s, 2m or 1m30s", v)
		}
		if d <= 0 {
			return fmt.Errorf("%s is not a positive duration", d)
		}
		if check != nil {
			if err := check(d); err != nil {
				return err
			}
		}
		*field(c) = d
		return nil
	}
}

// listOf is a list key whose items parse into T. The field is set only when
// every item parses.
func listOf[T any](field func(*Config) *[]T, parse func(string) (T, error)) func(*Config, []string) []itemError {
	return func(c *Config, items []string) []itemError {
		out := make([]T, 0, len(items))
		var errs []itemError
		for i, item := range items {
			v, err := parse(item)
			if err != nil {
				errs = append(errs, itemError{i, err})
				continue
			}
			out = append(out, v)
		}
		if errs == nil {
			*field(c) = out
		}
		return errs
	}
}

// oneOf checks that v is one of allowed.
func oneOf(allowed ...string) func(string) error {
	return func(v string) error {
		if slices.Contains(allowed, v) {
			return nil
		}
		return fmt.Errorf("%q is not one of %s", v, strings.Join(allowed, ", "))
	}
}

// settings lists every key in file order.
var settings = []setting{
	{key: "listen", usage: "`host:port` the proxy listens on (loopback only)", def: "127.0.0.1:3128",
		scalar: str(func(c *Config) *string { return &c.Listen }, checkListen)},
	{key: "admin_listen", usage: "`host:port` for /metrics, /healthz, /readyz and /status", def: "127.0.0.1:9464",
		scalar: str(func(c *Config) *string { return &c.AdminListen }, checkListen)},
	{key: "state_dir", usage: "`directory` for the session, the local CA and its key (default $STATE_DIRECTORY, else " + DefaultStateDir + ")", def: DefaultStateDir,
		scalar: str(func(c *Config) *string { return &c.StateDir }, func(v string) error {
			if strings.TrimSpace(v) == "" {
				return fmt.Errorf("must name a directory (the default is %s)", DefaultStateDir)
			}
			return nil
		})},
	{key: "region", usage: "Anaplan `region` (us1, eu3, gb1, ca1, au1, …): sets the OAuth URLs and inject hosts that are not set explicitly",
		scalar: str(func(c *Config) *string { return &c.Region }, func(v string) error {
			if _, ok := lookupRegion(v); v != "" && !ok {
				return fmt.Errorf("%q is not an Anaplan region; use one of %s, or leave it out and set oauth.*_url and inject.hosts", v, strings.Join(regionNames(), ", "))
			}
			return nil
		})},
	{key: "log_level", usage: "log `level`: debug, info, warn or error", def: "info",
		scalar: str(func(c *Config) *string { return &c.LogLevel }, oneOf("debug", "info", "warn", "error"))},
	{key: "log_format", usage: "log `format`: text or json", def: "text",
		scalar: str(func(c *Config) *string { return &c.LogFormat }, oneOf("text", "json"))},
	{key: "oauth.client_id", usage: "`ID` of the Anaplan device-grant OAuth client",
		scalar: str(func(c *Config) *string { return &c.OAuth.ClientID }, func(v string) error {
			if v != "" && strings.TrimSpace(v) == "" {
				return errors.New("is blank; set the device-grant client's ID or leave the key out")
			}
			return nil
		})},
	{key: "oauth.device_authorization_url", usage: "device authorization endpoint (RFC 8628) `URL`", def: "https://us1a.app.anaplan.com/oauth/device/code",
		scalar: str(func(c *Config) *string { return &c.OAuth.DeviceAuthorizationURL }, checkURL(true))},
	{key: "oauth.token_url", usage: "token endpoint `URL`", def: "https://us1a.app.anaplan.com/oauth/token",
		scalar: str(func(c *Config) *string { return &c.OAuth.TokenURL }, checkURL(true))},
	{key: "oauth.revocation_url", usage: "token revocation endpoint (RFC 7009) `URL` used by logout; empty: none",
		scalar: str(func(c *Config) *string { return &c.OAuth.RevocationURL }, checkURL(false))},
	{key: "oauth.scopes", usage: "comma-separated `scopes` to request", def: "openid,profile,email,offline_access",
		list: listOf(func(c *Config) *[]string { return &c.OAuth.Scopes }, parseScope)},
	{key: "oauth.request_encoding", usage: "token request body `encoding`: json (Anaplan) or form (RFC 6749 servers)", def: "json",
		scalar: str(func(c *Config) *string { return &c.OAuth.RequestEncoding }, oneOf("json", "form"))},
	{key: "oauth.ca_file", usage: "PEM `file` of extra CA certificates to trust for the OAuth endpoints",
		scalar: str(func(c *Config) *string { return &c.OAuth.CAFile }, checkCAFile)},
	{key: "inject.hosts", usage: "comma-separated host `patterns` that get the access token (name, *.suffix or IP, optional :port)",
		def: "api.anaplan.com,*.api.anaplan.com,api.au1a.app2.anaplan.com,api.cloudworks.anaplan.com,audit.anaplan.com",
		list: func(c *Config, items []string) []itemError {
			if len(items) == 0 {
				return []itemError{{0, errors.New("is empty; name at least one Anaplan API host (like api.anaplan.com)")}}
			}
			return listOf(func(c *Config) *[]HostPattern { return &c.Inject.Hosts }, ParseHostPattern)(c, items)
		}},
	{key: "inject.scheme", usage: "Authorization `scheme`: AnaplanAuthToken or Bearer", def: "AnaplanAuthToken",
		scalar: str(func(c *Config) *string { return &c.Inject.Scheme }, oneOf("AnaplanAuthToken", "Bearer"))},
	{key: "inject.client_authorization", usage: "what to do with an Authorization header a client sends: replace, keep or reject", def: "replace",
		scalar: str(func(c *Config) *string { return &c.Inject.ClientAuthorization }, oneOf("replace", "keep", "reject"))},
	{key: "inject.plain_http", usage: "let loopback clients send plain http:// requests for inject hosts, sent on over HTTPS with the token (for tools that cannot trust the CA): true or false", def: "false",
		scalar: boolean(func(c *Config) *bool { return &c.Inject.PlainHTTP })},
	{key: "tunnel.hosts", usage: "comma-separated host `patterns` passed through untouched, without a token",
		list: listOf(func(c *Config) *[]HostPattern { return &c.Tunnel.Hosts }, ParseHostPattern)},
	{key: "compat.enabled", usage: "answer Anaplan's classic authentication API (/token/...) locally with a placeholder token: true or false", def: "true",
		scalar: boolean(func(c *Config) *bool { return &c.Compat.Enabled })},
	{key: "compat.hosts", usage: "comma-separated classic authentication host `patterns` answered locally, never contacted",
		def:  strings.Join(defaultCompatHosts, ","),
		list: listOf(func(c *Config) *[]HostPattern { return &c.Compat.Hosts }, ParseHostPattern)},
	{key: "clients.allow_cidrs", usage: "comma-separated client address `prefixes` (CIDR) that may use the proxy; default: loopback only",
		list: listOf(func(c *Config) *[]netip.Prefix { return &c.Clients.AllowCIDRs }, parsePrefix)},
	{key: "clients.users_file", usage: "htpasswd `file` of proxy users (bcrypt, htpasswd -B); clients then send Proxy-Authorization: Basic",
		scalar: str(func(c *Config) *string { return &c.Clients.UsersFile }, checkUsersFile)},
	{key: "upstream.ca_file", usage: "PEM `file` of extra CA certificates to trust for inject hosts",
		scalar: str(func(c *Config) *string { return &c.Upstream.CAFile }, checkCAFile)},
	{key: "upstream.allow_private", usage: "let the proxy connect to loopback, private, link-local and other non-public addresses: true or false", def: "false",
		scalar: boolean(func(c *Config) *bool { return &c.Upstream.AllowPrivate })},
	{key: "upstream.allow_cidrs", usage: "comma-separated non-public destination address `prefixes` (CIDR) the proxy may connect to",
		list: listOf(func(c *Config) *[]netip.Prefix { return &c.Upstream.AllowCIDRs }, parsePrefix)},
	{key: "upstream.proxy", usage: "corporate proxy `URL` (http://[user:password@]host:port) for the OAuth and API connections; never taken from HTTPS_PROXY",
		scalar: func(c *Config, v string) error {
			if v == "" {
				c.Upstream.ProxyURL = nil
				return nil
			}
			if _, err := proxy.ParseUpstreamProxy(v, nil); err != nil {
				return err
			}
			u, err := url.Parse(v)
			if err != nil {
				return err // not reached: ParseUpstreamProxy parsed it
			}
			c.Upstream.ProxyURL = u
			return nil
		}},
	{key: "upstream.no_proxy", usage: "comma-separated destination `patterns` reached without the corporate proxy (name, .domain, *.domain, IP or CIDR, optional :port)",
		list: listOf(func(c *Config) *[]string { return &c.Upstream.NoProxy }, func(p string) (string, error) {
			return p, proxy.ValidateNoProxyPattern(p)
		})},
	{key: "upstream.max_idle_per_host", usage: "idle upstream `connections` kept per host for the next client connection", def: "64",
		scalar: positive(func(c *Config) *int { return &c.Upstream.MaxIdlePerHost }, 64)},
	{key: "upstream.max_idle", usage: "idle upstream `connections` kept in all", def: "256",
		scalar: positive(func(c *Config) *int { return &c.Upstream.MaxIdle }, 256)},
	{key: "upstream.idle_timeout", usage: "`duration` an idle upstream connection is kept; below the upstream's own idle timeout", def: "50s",
		scalar: duration(func(c *Config) *time.Duration { return &c.Upstream.IdleTimeout }, nil)},
	{key: "upstream.keep_warm", usage: "`duration` after a host's last call during which one connection to it is kept open while the session is valid (0: none)", def: "0s",
		scalar: func(c *Config, v string) error {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil || d < 0 {
				return fmt.Errorf("%q is not a duration like 0s, 8h or 24h", v)
			}
			c.Upstream.KeepWarm = d
			return nil
		}},
	{key: "limits.max_connections", usage: "maximum `number` of client connections served at once", def: strconv.Itoa(proxy.DefaultMaxConnections),
		scalar: positive(func(c *Config) *int { return &c.Limits.MaxConnections }, proxy.DefaultMaxConnections)},
	{key: "limits.max_body_waits", usage: "maximum `number` of requests whose body is still arriving from the client (default: half of limits.max_connections); one more with a body gets 503",
		scalar: func(c *Config, v string) error {
			if strings.TrimSpace(v) == "" {
				return nil // the proxy's default, from limits.max_connections
			}
			return positive(func(c *Config) *int { return &c.Limits.MaxBodyWaits }, 0)(c, v)
		}},
	{key: "limits.body_timeout", usage: "`duration` after which a client request body that makes no progress is cut off", def: "60s",
		scalar: duration(func(c *Config) *time.Duration { return &c.Limits.BodyTimeout }, nil)},
	{key: "store.type", usage: "where the session is kept: file (the state directory) or postgres (shared by the proxies with the same store.session_name)", def: StoreFile,
		scalar: str(func(c *Config) *string { return &c.Store.Type }, oneOf(StoreFile, StorePostgres))},
	{key: "store.postgres_dsn", usage: "PostgreSQL connection `string` (postgres://user@host/db?sslmode=verify-full); required when store.type is postgres",
		scalar: func(c *Config, v string) error {
			d, err := ParseDSN(v)
			if err != nil {
				return err
			}
			c.Store.PostgresDSN = d
			return nil
		}},
	{key: "store.session_name", usage: "the session's `name`: proxies with the same name share one session", def: "default",
		scalar: str(func(c *Config) *string { return &c.Store.SessionName }, checkSessionName)},
	{key: "store.key_file", usage: "`file` of 32 random bytes, raw or base64 (openssl rand -base64 32), that encrypts the shared session; required when store.type is postgres",
		scalar: str(func(c *Config) *string { return &c.Store.KeyFile }, func(v string) error {
			if v == "" {
				return nil
			}
			_, err := ReadKeyFile(v)
			return err
		})},
	{key: "store.lease", usage: "`duration` a proxy that stops renewing keeps the right to refresh the shared session", def: "15s",
		scalar: duration(func(c *Config) *time.Duration { return &c.Store.Lease }, checkLease)},
}

// defaultCompatHosts are Anaplan's classic authentication hosts. On
// au1a.app2.anaplan.com (also Australia's OAuth host) only /token/ is
// answered; nothing is forwarded to any of them.
var defaultCompatHosts = []string{"auth.anaplan.com", "*.auth.anaplan.com", "au1a.app2.anaplan.com"}

// lookupSetting returns the setting of a known key.
func lookupSetting(key string) setting {
	for _, s := range settings {
		if s.key == key {
			return s
		}
	}
	panic("config: no setting " + key)
}

// flagName is the key path with "." and "_" turned into "-".
func flagName(key string) string {
	return strings.NewReplacer(".", "-", "_", "-").Replace(key)
}

// envName is ANAPLAN_PROXY_ and the key path in upper case with "_".
func envName(key string) string {
	return "ANAPLAN_PROXY_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// checkListen accepts host:port with a numeric port (0 picks a free one).
// Whether the host may be reached from other machines is decided when the
// listener starts.
func checkListen(v string) error {
	_, port, err := net.SplitHostPort(v)
	if err == nil {
		if n, perr := strconv.Atoi(port); perr == nil && n >= 0 && n <= 65535 && port == strconv.Itoa(n) {
			return nil
		}
	}
	return fmt.Errorf("%q is not host:port with a port from 0 to 65535 (like 127.0.0.1:3128)", v)
}

// checkLease keeps a lease under a quarter of the access token's lifetime:
// when a holder goes silent, another proxy waits out the lease and still
// refreshes well before the token expires.
func checkLease(d time.Duration) error {
	if limit := AnaplanAccessTokenLifetime / 4; d >= limit {
		return fmt.Errorf("%s is too long: a lease must be shorter than %s, a quarter of Anaplan's %s access token, "+
			"so that another proxy can take over from a silent one before the token expires (the default is 15s)", d, limit, AnaplanAccessTokenLifetime)
	}
	return nil
}

// checkSessionName accepts 1 to 64 letters, digits, '.', '_' and '-'.
func checkSessionName(v string) error {
	ok := v != "" && len(v) <= 64
	for _, r := range v {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("%q is not a session name: use 1 to 64 letters, digits, '.', '_' or '-' (like prod-workspace)", v)
	}
	return nil
}

// parseScope accepts an RFC 6749 scope token: printable ASCII without
// spaces, quotes or backslashes.
func parseScope(s string) (string, error) {
	ok := s != ""
	for _, r := range s {
		if r <= ' ' || r > '~' || r == '"' || r == '\\' {
			ok = false
		}
	}
	if !ok {
		return "", fmt.Errorf("%q is not a scope (printable ASCII without spaces, quotes or backslashes)", s)
	}
	return s, nil
}
