// Package config reads anaplan-proxy's configuration: one YAML file whose
// keys can each be overridden by an ANAPLAN_PROXY_* environment variable and
// by a flag. Every value is parsed once, where it is read, into the type the
// program uses (address prefixes, host patterns, durations, the corporate
// proxy), so that every command works from the same checked values and a bad
// value is reported with its key and where it came from: the file and line,
// the variable or the flag.
package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/proxy"
)

// Config is the whole configuration, parsed and checked. A Config returned
// by Load is never changed by this package afterwards.
type Config struct {
	Listen      string // host:port of the proxy listener
	AdminListen string // host:port of /metrics, /healthz, /readyz, /status
	StateDir    string
	Region      string // "" or a region name lookupRegion knows
	LogLevel    string // debug, info, warn or error
	LogFormat   string // text or json
	OAuth       OAuth
	Inject      Inject
	Tunnel      Tunnel
	Compat      Compat
	Clients     Clients
	Upstream    Upstream
	Limits      Limits
	Store       Store

	// origin says where each key's value came from, for error messages.
	origin origins
}

// OAuth is the oauth section: the device-grant client and its endpoints.
type OAuth struct {
	ClientID               string
	DeviceAuthorizationURL string
	TokenURL               string
	RevocationURL          string // "" when logout revokes nothing
	Scopes                 []string
	RequestEncoding        string // json or form
	CAFile                 string
}

// Inject is the inject section: the hosts whose requests get the access
// token, and how.
type Inject struct {
	Hosts               []HostPattern
	Scheme              string // AnaplanAuthToken or Bearer
	ClientAuthorization string // replace, keep or reject
	// PlainHTTP lets loopback clients send plain http:// requests for
	// inject hosts, which the proxy sends on over HTTPS with the token.
	PlainHTTP bool
}

// Tunnel is the tunnel section: hosts passed through untouched.
type Tunnel struct {
	Hosts []HostPattern
}

// Compat is the compat section: Anaplan's classic authentication hosts,
// whose /token/ calls the proxy answers itself with a placeholder token, so
// that scripts written for Basic or certificate authentication run
// unchanged and their credentials go nowhere.
type Compat struct {
	Enabled bool
	Hosts   []HostPattern
}

// Clients is the clients section: who may use the proxy listener. With
// neither key set, only loopback clients may, and listen must be a loopback
// address.
type Clients struct {
	AllowCIDRs []netip.Prefix
	UsersFile  string
}

// Upstream is the upstream section: how inject hosts are reached, which
// destination addresses the proxy may connect to, and the corporate proxy
// that outbound connections (OAuth and API) go through.
type Upstream struct {
	CAFile       string
	AllowPrivate bool
	AllowCIDRs   []netip.Prefix
	// ProxyURL is upstream.proxy as written, credentials included; nil
	// when no corporate proxy is set. Show it with Redacted only.
	ProxyURL *url.URL
	NoProxy  []string
	// Proxy is ProxyURL and NoProxy compiled; nil when ProxyURL is.
	Proxy *proxy.UpstreamProxy
	// The pool of warm upstream connections shared by client connections:
	// idle connections kept per host and in all, how long one may stay
	// idle, and how long after a host's last call one is kept warm (0:
	// none).
	MaxIdlePerHost int
	MaxIdle        int
	IdleTimeout    time.Duration
	KeepWarm       time.Duration
}

// Limits is the limits section.
type Limits struct {
	MaxConnections int
	// MaxBodyWaits bounds the requests whose body is still arriving; 0
	// means the proxy's default (half of MaxConnections).
	MaxBodyWaits int
	// BodyTimeout cuts off a client request body that makes no progress
	// for this long.
	BodyTimeout time.Duration
}

// Store is the store section: where the session is kept and, with several
// proxies sharing one session, who may refresh it.
type Store struct {
	Type        string // StoreFile or StorePostgres
	PostgresDSN DSN
	// SessionName is the session's key: proxies with the same name share
	// one session.
	SessionName string
	// KeyFile holds the 32-byte key that encrypts the shared session; see
	// ReadKeyFile.
	KeyFile string
	// Lease is how long a holder that stops renewing keeps the right to
	// refresh.
	Lease time.Duration
}

// Store types.
const (
	StoreFile     = "file"
	StorePostgres = "postgres"
)

// DefaultStateDir is used when systemd did not name a state directory.
const DefaultStateDir = "/var/lib/anaplan-proxy"

// AnaplanAccessTokenLifetime is how long Anaplan's access tokens last. A
// store lease must stay well under it, so that another proxy can take a
// silent holder's place before the token runs out.
const AnaplanAccessTokenLifetime = 35 * time.Minute

// maxConfigSize bounds what is read as a config file; a real one is a few
// hundred bytes, so anything this large is the wrong file.
const maxConfigSize = 1 << 20

// LookupEnv looks up an environment variable, like os.LookupEnv.
type LookupEnv func(string) (string, bool)

// Default returns the built-in defaults. The state directory is
// $STATE_DIRECTORY when systemd sets it (StateDirectory=), else
// /var/lib/anaplan-proxy.
func Default(lookupEnv LookupEnv) *Config {
	c := &Config{}
	for _, s := range settings {
		if err := s.apply(c, s.def, "default"); err != nil {
			panic(fmt.Sprintf("config: the default of %s does not parse: %v", s.key, err))
		}
	}
	c.origin = origins{}
	if lookupEnv != nil {
		if v, ok := lookupEnv("STATE_DIRECTORY"); ok && v != "" {
			// systemd separates several StateDirectory= entries with
			// colons; the first is ours.
			first, _, _ := strings.Cut(v, ":")
			c.set(lookupSetting("state_dir"), first, "environment STATE_DIRECTORY")
		}
	}
	return c
}

// Load builds the configuration: the defaults, then the YAML file at path
// (if path is not empty; a file named but missing is an error), then the
// ANAPLAN_PROXY_* environment variables, then the flags (nil: none), and
// checks the result. Every error names the key, where its value came from
// and what is allowed; all of them are returned at once, one per line.
func Load(path string, lookupEnv LookupEnv, flags *Flags) (*Config, error) {
	var data []byte
	if path != "" {
		var err error
		if data, err = readFile(path); err != nil {
			return nil, err
		}
	}
	return Parse(path, data, lookupEnv, flags)
}

// Parse is Load with the file's content already read; data is ignored when
// path is empty.
func Parse(path string, data []byte, lookupEnv LookupEnv, flags *Flags) (*Config, error) {
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	c := Default(lookupEnv)
	if path != "" {
		if err := c.decodeFile(path, data); err != nil {
			return nil, err
		}
	}
	for _, s := range settings {
		if v, ok := lookupEnv(envName(s.key)); ok {
			c.set(s, v, "environment "+envName(s.key))
		}
	}
	if flags != nil {
		flags.applyTo(c)
	}
	c.applyRegion()
	c.applyCompatDefaults()
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// FromValues builds a configuration from the defaults (without the
// environment) and values, each given by key as it would be written in an
// environment variable, for a command that sets up its own configuration
// (demo). where names the values' source in errors.
func FromValues(values map[string]string, where string) (*Config, error) {
	c := Default(nil)
	for key := range values {
		if _, kind := lookupKey(key); kind != keySetting {
			return nil, fmt.Errorf("%s: unknown key %q", where, key)
		}
	}
	for _, s := range settings {
		if v, ok := values[s.key]; ok {
			c.set(s, v, where)
		}
	}
	c.applyRegion()
	c.applyCompatDefaults()
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// readFile reads at most maxConfigSize bytes of path.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: cannot read: %w", path, unwrapPathError(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: cannot read: %w", path, unwrapPathError(err))
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("config %s: larger than %d bytes; is it the right file?", path, maxConfigSize)
	}
	return data, nil
}

// unwrapPathError drops the operation and path that the message already
// names ("open /x: no such file" → "no such file").
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// origins records, per key, where its value came from: "config FILE: line
// N", "environment NAME" or "flag --NAME", and the errors found in that
// value. Keys not recorded have their default.
type origins struct {
	where     map[string]string
	itemWhere map[string][]string // for a list from a file: each item's line
	errs      map[string][]error  // the value's problems, each naming key and place
}

// set parses text as the value of s from where. A value that does not
// parse leaves the field as it was and records the error, which a later
// source (an environment variable over the file, a flag over both) clears
// by setting the key again.
func (c *Config) set(s setting, text, where string) {
	c.record(s.key, where, nil)
	if err := s.apply(c, text, where); err != nil {
		c.fail(s.key, err)
	}
}

// setItems is set for a list read item by item from a file.
func (c *Config) setItems(s setting, items []string, where string, itemWhere []string) {
	c.record(s.key, where, itemWhere)
	if err := s.applyItems(c, items, where, itemWhere); err != nil {
		c.fail(s.key, err)
	}
}

func (c *Config) record(key, where string, itemWhere []string) {
	if c.origin.where == nil {
		c.origin.where = map[string]string{}
		c.origin.itemWhere = map[string][]string{}
		c.origin.errs = map[string][]error{}
	}
	c.origin.where[key] = where
	if itemWhere != nil {
		c.origin.itemWhere[key] = itemWhere
	} else {
		delete(c.origin.itemWhere, key)
	}
	delete(c.origin.errs, key)
}

func (c *Config) fail(key string, err error) {
	c.origin.errs[key] = append(c.origin.errs[key], err)
}

// Where names the source of key's value: "config FILE: line N",
// "environment NAME", "flag --NAME", "region R (…)" or "default".
func (c *Config) Where(key string) string {
	if w, ok := c.origin.where[key]; ok {
		return w
	}
	return "default"
}

// whereItem names the source of item i of the list key: its own line when
// the list came from a file.
func (c *Config) whereItem(key string, i int) string {
	if items := c.origin.itemWhere[key]; i < len(items) {
		return items[i]
	}
	return c.Where(key)
}

// keyError is a problem with one key's value.
func (c *Config) keyError(key, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %s", c.Where(key), key, fmt.Sprintf(format, args...))
}

// CompatHosts returns the hosts answered locally: none when compat is off.
func (c *Config) CompatHosts() []HostPattern {
	if !c.Compat.Enabled {
		return nil
	}
	return c.Compat.Hosts
}

// InterceptedHosts are the hosts whose TLS the proxy terminates, and so
// those the local CA's name constraints must permit.
func (c *Config) InterceptedHosts() []string {
	return HostStrings(slices.Concat(c.Inject.Hosts, c.CompatHosts()))
}

// ShownUpstreamProxy is upstream.proxy as logs and status show it: without
// user name or password; "" when none is set.
func (c *Config) ShownUpstreamProxy() string {
	return c.Upstream.Proxy.String()
}
