package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/anaplan-proxy/anaplan-proxy/proxy"
)

// Config is the whole configuration: one YAML file whose keys can each be
// overridden by an ANAPLAN_PROXY_* environment variable and by a flag.
type Config struct {
	Listen      string         `yaml:"listen"`
	AdminListen string         `yaml:"admin_listen"`
	StateDir    string         `yaml:"state_dir"`
	Region      string         `yaml:"region"`
	LogLevel    string         `yaml:"log_level"`
	LogFormat   string         `yaml:"log_format"`
	OAuth       OAuthConfig    `yaml:"oauth"`
	Inject      InjectConfig   `yaml:"inject"`
	Tunnel      TunnelConfig   `yaml:"tunnel"`
	Compat      CompatConfig   `yaml:"compat"`
	Clients     ClientsConfig  `yaml:"clients"`
	Upstream    UpstreamConfig `yaml:"upstream"`
	Limits      LimitsConfig   `yaml:"limits"`

	// origin says where each key's value came from, for error messages.
	origin *origins
}

// OAuthConfig is the oauth section: the device-grant client and its
// endpoints.
type OAuthConfig struct {
	ClientID               string   `yaml:"client_id"`
	DeviceAuthorizationURL string   `yaml:"device_authorization_url"`
	TokenURL               string   `yaml:"token_url"`
	RevocationURL          string   `yaml:"revocation_url"`
	Scopes                 []string `yaml:"scopes"`
	RequestEncoding        string   `yaml:"request_encoding"`
	CAFile                 string   `yaml:"ca_file"`
}

// InjectConfig is the inject section: the hosts whose requests get the
// access token, and how.
type InjectConfig struct {
	Hosts               []string `yaml:"hosts"`
	Scheme              string   `yaml:"scheme"`
	ClientAuthorization string   `yaml:"client_authorization"`
	// PlainHTTP lets loopback clients send plain http:// requests for
	// inject hosts, which the proxy sends on over HTTPS with the token.
	PlainHTTP bool `yaml:"plain_http"`
}

// TunnelConfig is the tunnel section: hosts passed through untouched.
type TunnelConfig struct {
	Hosts []string `yaml:"hosts"`
}

// CompatConfig is the compat section: Anaplan's classic authentication
// hosts, whose /token/ calls the proxy answers itself with a placeholder
// token, so that scripts written for Basic or certificate authentication
// run unchanged and their credentials go nowhere.
type CompatConfig struct {
	Enabled bool     `yaml:"enabled"`
	Hosts   []string `yaml:"hosts"`
}

// defaultCompatHosts are Anaplan's classic authentication hosts. On
// au1a.app2.anaplan.com (also Australia's OAuth host) only /token/ is
// answered; nothing is forwarded to any of them.
var defaultCompatHosts = []string{"auth.anaplan.com", "*.auth.anaplan.com", "au1a.app2.anaplan.com"}

// ClientsConfig is the clients section: who may use the proxy listener.
// With neither key set, only loopback clients may, and listen must be a
// loopback address.
type ClientsConfig struct {
	AllowCIDRs []string `yaml:"allow_cidrs,omitempty"`
	UsersFile  string   `yaml:"users_file"`
}

// UpstreamConfig is the upstream section: how inject hosts are reached,
// which destination addresses the proxy may connect to, and the corporate
// proxy that outbound connections (OAuth and API) go through.
type UpstreamConfig struct {
	CAFile       string   `yaml:"ca_file"`
	AllowPrivate bool     `yaml:"allow_private"`
	AllowCIDRs   []string `yaml:"allow_cidrs,omitempty"`
	Proxy        string   `yaml:"proxy"`
	NoProxy      []string `yaml:"no_proxy,omitempty"`
}

// LimitsConfig is the limits section.
type LimitsConfig struct {
	MaxConnections int `yaml:"max_connections"`
}

// defaultStateDir is used when systemd did not name a state directory.
const defaultStateDir = "/var/lib/anaplan-proxy"

// maxConfigSize bounds what is read as a config file; a real one is a
// few hundred bytes, so anything this large is the wrong file.
const maxConfigSize = 1 << 20

// defaultConfig returns the built-in defaults. The state directory is
// $STATE_DIRECTORY when systemd sets it (StateDirectory=), else
// /var/lib/anaplan-proxy.
func defaultConfig(lookupEnv func(string) (string, bool)) Config {
	c := Config{
		Listen:      "127.0.0.1:3128",
		AdminListen: "127.0.0.1:9464",
		StateDir:    defaultStateDir,
		LogLevel:    "info",
		LogFormat:   "text",
		OAuth: OAuthConfig{
			DeviceAuthorizationURL: "https://us1a.app.anaplan.com/oauth/device/code",
			TokenURL:               "https://us1a.app.anaplan.com/oauth/token",
			Scopes:                 []string{"openid", "profile", "email", "offline_access"},
			RequestEncoding:        "json",
		},
		Inject: InjectConfig{
			Hosts:               []string{"api.anaplan.com", "*.api.anaplan.com", "api.au1a.app2.anaplan.com", "api.cloudworks.anaplan.com", "audit.anaplan.com"},
			Scheme:              "AnaplanAuthToken",
			ClientAuthorization: "replace",
		},
		Compat: CompatConfig{Enabled: true, Hosts: slices.Clone(defaultCompatHosts)},
		Limits: LimitsConfig{MaxConnections: proxy.DefaultMaxConnections},
		origin: &origins{},
	}
	if v, ok := lookupEnv("STATE_DIRECTORY"); ok && v != "" {
		// systemd separates several StateDirectory= entries with colons;
		// the first is ours.
		c.StateDir, _, _ = strings.Cut(v, ":")
		c.origin.set("state_dir", "environment STATE_DIRECTORY")
	}
	return c
}

// setting is one configuration key. Exactly one of str, list, boolean
// and integer is set.
type setting struct {
	key     string // dotted path in the file: "oauth.client_id"
	usage   string
	str     func(*Config) *string
	list    func(*Config) *[]string
	boolean func(*Config) *bool
	integer func(*Config) *int
}

// settings lists every key in file order. Flags, environment variables and
// the file's schema are all derived from it.
var settings = []setting{
	{key: "listen", usage: "`host:port` the proxy listens on (loopback only)",
		str: func(c *Config) *string { return &c.Listen }},
	{key: "admin_listen", usage: "`host:port` for /metrics, /healthz, /readyz and /status",
		str: func(c *Config) *string { return &c.AdminListen }},
	{key: "state_dir", usage: "`directory` for the session, the local CA and its key (default $STATE_DIRECTORY, else " + defaultStateDir + ")",
		str: func(c *Config) *string { return &c.StateDir }},
	{key: "region", usage: "Anaplan `region` (us1, eu3, gb1, ca1, au1, …): sets the OAuth URLs and inject hosts that are not set explicitly",
		str: func(c *Config) *string { return &c.Region }},
	{key: "log_level", usage: "log `level`: debug, info, warn or error",
		str: func(c *Config) *string { return &c.LogLevel }},
	{key: "log_format", usage: "log `format`: text or json",
		str: func(c *Config) *string { return &c.LogFormat }},
	{key: "oauth.client_id", usage: "`ID` of the Anaplan device-grant OAuth client",
		str: func(c *Config) *string { return &c.OAuth.ClientID }},
	{key: "oauth.device_authorization_url", usage: "device authorization endpoint (RFC 8628) `URL`",
		str: func(c *Config) *string { return &c.OAuth.DeviceAuthorizationURL }},
	{key: "oauth.token_url", usage: "token endpoint `URL`",
		str: func(c *Config) *string { return &c.OAuth.TokenURL }},
	{key: "oauth.revocation_url", usage: "token revocation endpoint (RFC 7009) `URL` used by logout; empty: none",
		str: func(c *Config) *string { return &c.OAuth.RevocationURL }},
	{key: "oauth.scopes", usage: "comma-separated `scopes` to request",
		list: func(c *Config) *[]string { return &c.OAuth.Scopes }},
	{key: "oauth.request_encoding", usage: "token request body `encoding`: json (Anaplan) or form (RFC 6749 servers)",
		str: func(c *Config) *string { return &c.OAuth.RequestEncoding }},
	{key: "oauth.ca_file", usage: "PEM `file` of extra CA certificates to trust for the OAuth endpoints",
		str: func(c *Config) *string { return &c.OAuth.CAFile }},
	{key: "inject.hosts", usage: "comma-separated host `patterns` that get the access token (name, *.suffix or IP, optional :port)",
		list: func(c *Config) *[]string { return &c.Inject.Hosts }},
	{key: "inject.scheme", usage: "Authorization `scheme`: AnaplanAuthToken or Bearer",
		str: func(c *Config) *string { return &c.Inject.Scheme }},
	{key: "inject.client_authorization", usage: "what to do with an Authorization header a client sends: replace, keep or reject",
		str: func(c *Config) *string { return &c.Inject.ClientAuthorization }},
	{key: "inject.plain_http", usage: "let loopback clients send plain http:// requests for inject hosts, sent on over HTTPS with the token (for tools that cannot trust the CA): true or false",
		boolean: func(c *Config) *bool { return &c.Inject.PlainHTTP }},
	{key: "tunnel.hosts", usage: "comma-separated host `patterns` passed through untouched, without a token",
		list: func(c *Config) *[]string { return &c.Tunnel.Hosts }},
	{key: "compat.enabled", usage: "answer Anaplan's classic authentication API (/token/...) locally with a placeholder token: true or false",
		boolean: func(c *Config) *bool { return &c.Compat.Enabled }},
	{key: "compat.hosts", usage: "comma-separated classic authentication host `patterns` answered locally, never contacted",
		list: func(c *Config) *[]string { return &c.Compat.Hosts }},
	{key: "clients.allow_cidrs", usage: "comma-separated client address `prefixes` (CIDR) that may use the proxy; default: loopback only",
		list: func(c *Config) *[]string { return &c.Clients.AllowCIDRs }},
	{key: "clients.users_file", usage: "htpasswd `file` of proxy users (bcrypt, htpasswd -B); clients then send Proxy-Authorization: Basic",
		str: func(c *Config) *string { return &c.Clients.UsersFile }},
	{key: "upstream.ca_file", usage: "PEM `file` of extra CA certificates to trust for inject hosts",
		str: func(c *Config) *string { return &c.Upstream.CAFile }},
	{key: "upstream.allow_private", usage: "let the proxy connect to loopback, private, link-local and other non-public addresses: true or false",
		boolean: func(c *Config) *bool { return &c.Upstream.AllowPrivate }},
	{key: "upstream.allow_cidrs", usage: "comma-separated non-public destination address `prefixes` (CIDR) the proxy may connect to",
		list: func(c *Config) *[]string { return &c.Upstream.AllowCIDRs }},
	{key: "upstream.proxy", usage: "corporate proxy `URL` (http://[user:password@]host:port) for the OAuth and API connections; never taken from HTTPS_PROXY",
		str: func(c *Config) *string { return &c.Upstream.Proxy }},
	{key: "upstream.no_proxy", usage: "comma-separated destination `patterns` reached without the corporate proxy (name, .domain, *.domain, IP or CIDR, optional :port)",
		list: func(c *Config) *[]string { return &c.Upstream.NoProxy }},
	{key: "limits.max_connections", usage: "maximum `number` of client connections served at once",
		integer: func(c *Config) *int { return &c.Limits.MaxConnections }},
}

// flagName is the key path with "." and "_" turned into "-".
func flagName(key string) string {
	return strings.NewReplacer(".", "-", "_", "-").Replace(key)
}

// envName is ANAPLAN_PROXY_ and the key path in upper case with "_".
func envName(key string) string {
	return "ANAPLAN_PROXY_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// splitList parses a comma-separated list as given in an environment
// variable or flag. Spaces around items and empty items are dropped, so
// "" is the empty list.
func splitList(s string) []string {
	out := []string{}
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// configFlags registers one flag per configuration key on fs. The returned
// function applies only the flags that were set on the command line, so
// that an unset flag never hides the file or the environment.
func configFlags(fs *flag.FlagSet) func(*Config) error {
	defaults := defaultConfig(func(string) (string, bool) { return "", false })
	type flagValue struct {
		s setting
		v *string
	}
	values := make(map[string]flagValue, len(settings))
	for _, s := range settings {
		def := ""
		switch {
		case s.key == "state_dir":
			// The usage text names both possible defaults.
		case s.str != nil:
			def = *s.str(&defaults)
		case s.boolean != nil:
			def = strconv.FormatBool(*s.boolean(&defaults))
		case s.integer != nil:
			def = strconv.Itoa(*s.integer(&defaults))
		default:
			def = strings.Join(*s.list(&defaults), ",")
		}
		name := flagName(s.key)
		values[name] = flagValue{s, fs.String(name, def, s.usage)}
	}
	return func(c *Config) error {
		fs.Visit(func(f *flag.Flag) {
			if fv, ok := values[f.Name]; ok {
				fv.s.apply(c, *fv.v, "flag --"+f.Name)
			}
		})
		return nil
	}
}

// apply sets s on c from the text of an environment variable or flag.
func (s setting) apply(c *Config, v, where string) {
	switch {
	case s.str != nil:
		*s.str(c) = v
	case s.boolean != nil:
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			// Reported by validate, with every other problem.
			c.origins().set(s.key, where)
			c.origins().invalid(s.key, v)
			return
		}
		*s.boolean(c) = b
	case s.integer != nil:
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			c.origins().set(s.key, where)
			c.origins().invalid(s.key, v)
			return
		}
		*s.integer(c) = n
	default:
		*s.list(c) = splitList(v)
	}
	c.origins().set(s.key, where)
}

// loadConfig builds the configuration: the defaults, then the YAML file at
// path (if path is not empty; a file named but missing is an error), then
// the ANAPLAN_PROXY_* environment variables, then the flags, and validates
// the result. Every error names the key, where its value came from and
// what is allowed.
func loadConfig(path string, lookupEnv func(string) (string, bool), applyFlags func(*Config) error) (*Config, error) {
	var data []byte
	if path != "" {
		var err error
		data, err = readConfigFile(path)
		if err != nil {
			return nil, err
		}
	}
	return buildConfig(path, data, lookupEnv, applyFlags)
}

// readConfigFile reads at most maxConfigSize bytes of path.
func readConfigFile(path string) ([]byte, error) {
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

// buildConfig is loadConfig after the file has been read; data is the file
// content (nil when there is no file).
func buildConfig(path string, data []byte, lookupEnv func(string) (string, bool), applyFlags func(*Config) error) (*Config, error) {
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	c := defaultConfig(lookupEnv)
	if path != "" {
		if err := c.decodeFile(path, data); err != nil {
			return nil, err
		}
	}
	for _, s := range settings {
		if v, ok := lookupEnv(envName(s.key)); ok {
			s.apply(&c, v, "environment "+envName(s.key))
		}
	}
	if applyFlags != nil {
		if err := applyFlags(&c); err != nil {
			return nil, err
		}
	}
	c.applyRegion()
	c.applyCompatDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// origins records, per key, where its value came from: "config FILE: line
// N", "environment NAME" or "flag --NAME". Keys not recorded have their
// default. For lists read from a file it also keeps each item's line.
type origins struct {
	where     map[string]string
	itemWhere map[string][]string
	bad       map[string]string // key: text that is not a valid value
}

func (o *origins) set(key, where string) {
	if o.where == nil {
		o.where = map[string]string{}
	}
	o.where[key] = where
	delete(o.itemWhere, key)
	delete(o.bad, key)
}

// invalid records text given for key that cannot be parsed (a boolean).
func (o *origins) invalid(key, text string) {
	if o.bad == nil {
		o.bad = map[string]string{}
	}
	o.bad[key] = text
}

func (c *Config) origins() *origins {
	if c.origin == nil {
		c.origin = &origins{}
	}
	return c.origin
}

// where names the source of key's value.
func (c *Config) where(key string) string {
	if w, ok := c.origins().where[key]; ok {
		return w
	}
	return "default"
}

// whereItem names the source of item i of the list key: its own line when
// the list came from a file.
func (c *Config) whereItem(key string, i int) string {
	if items := c.origins().itemWhere[key]; i < len(items) {
		return items[i]
	}
	return c.where(key)
}

// keyError is a problem with one key's value.
func (c *Config) keyError(key, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %s", c.where(key), key, fmt.Sprintf(format, args...))
}

// decodeFile applies a YAML document on top of c. The schema walk gives
// precise messages (key path, line, suggestion); the strict decoder is the
// authority on what is accepted.
func (c *Config) decodeFile(path string, data []byte) error {
	prefix := "config " + path
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file (or only comments) changes nothing
		}
		return fmt.Errorf("%s: not valid YAML: %s", prefix, yamlMessage(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		line := extra.Line
		if err != nil {
			return fmt.Errorf("%s: not valid YAML: %s", prefix, yamlMessage(err))
		}
		return fmt.Errorf("%s: line %d: a second YAML document; the file must hold one", prefix, line)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil
	}

	w := schemaWalker{prefix: prefix, origin: c.origins(), seen: map[*yaml.Node]bool{}}
	w.section(root, "")
	if len(w.errs) > 0 {
		return errors.Join(w.errs...)
	}

	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(c); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.TrimPrefix(msg, "unmarshal errors:\n  ")
		return fmt.Errorf("%s: %s", prefix, strings.ReplaceAll(msg, "\n  ", "; "))
	}
	return nil
}

// schemaWalker checks a YAML node tree against settings and records the line
// of every key it sees.
type schemaWalker struct {
	prefix string
	origin *origins
	errs   []error
	seen   map[*yaml.Node]bool // alias targets already checked
}

func (w *schemaWalker) fail(line int, format string, args ...any) {
	w.errs = append(w.errs, fmt.Errorf("%s: line %d: %s", w.prefix, line, fmt.Sprintf(format, args...)))
}

// deref follows an alias. Each alias target is checked once, so a document
// built of nested aliases cannot make the walk exponential.
func (w *schemaWalker) deref(n *yaml.Node) (target *yaml.Node, again bool) {
	if n.Kind != yaml.AliasNode || n.Alias == nil {
		return n, false
	}
	t := n.Alias
	if w.seen[t] {
		return t, true
	}
	w.seen[t] = true
	return t, false
}

// section checks a mapping whose keys are the settings under path
// ("" for the top level).
func (w *schemaWalker) section(n *yaml.Node, path string) {
	n, again := w.deref(n)
	if again {
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // "oauth:" with nothing under it changes nothing
	}
	if n.Kind != yaml.MappingNode {
		if path == "" {
			w.fail(n.Line, "the file must be a mapping of keys (like \"listen: 127.0.0.1:3128\"), not %s", kindName(n))
		} else {
			w.fail(n.Line, "%s: must be a mapping of keys, not %s", path, kindName(n))
		}
		return
	}
	firstLine := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		full := key
		if path != "" {
			full = path + "." + key
		}
		if k.Kind != yaml.ScalarNode {
			w.fail(k.Line, "a key must be a plain name, not %s", kindName(k))
			continue
		}
		if first, dup := firstLine[key]; dup {
			w.fail(k.Line, "key %q appears twice (first at line %d)", full, first)
			continue
		}
		firstLine[key] = k.Line
		switch s, kind := lookupKey(full); kind {
		case keySection:
			w.section(v, full)
		case keySetting:
			w.value(v, s)
		default:
			msg := fmt.Sprintf("unknown key %q", full)
			if hint := suggestKey(full); hint != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", hint)
			} else {
				msg += fmt.Sprintf(" (known keys here: %s)", strings.Join(keysUnder(path), ", "))
			}
			w.fail(k.Line, "%s", msg)
		}
	}
}

// value checks the node of one setting and records where it is.
func (w *schemaWalker) value(n *yaml.Node, s setting) {
	line := n.Line
	n, _ = w.deref(n)
	isNull := n.Kind == yaml.ScalarNode && n.Tag == "!!null"
	if s.str != nil || s.boolean != nil || s.integer != nil {
		if isNull {
			return // "listen:" with no value keeps the default
		}
		if n.Kind != yaml.ScalarNode {
			w.fail(line, "%s: must be a string, not %s", s.key, kindName(n))
			return
		}
		w.origin.set(s.key, fmt.Sprintf("%s: line %d", w.prefix, line))
		return
	}
	if !isNull && n.Kind != yaml.SequenceNode {
		w.fail(line, "%s: must be a list of strings (like [a, b]), not %s", s.key, kindName(n))
		return
	}
	var items []string
	for _, item := range n.Content {
		itemLine := item.Line
		item, _ = w.deref(item)
		if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
			w.fail(itemLine, "%s: each item must be a string, not %s", s.key, kindName(item))
			return
		}
		items = append(items, fmt.Sprintf("%s: line %d", w.prefix, itemLine))
	}
	w.origin.set(s.key, fmt.Sprintf("%s: line %d", w.prefix, line))
	if w.origin.itemWhere == nil {
		w.origin.itemWhere = map[string][]string{}
	}
	w.origin.itemWhere[s.key] = items
}

// kindName describes a node for an error message.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	if n.Tag == "!!null" {
		return "empty"
	}
	return "a string"
}

type keyKind int

const (
	keyUnknown keyKind = iota
	keySection
	keySetting
)

// lookupKey says whether a dotted path is a setting, a section holding
// settings, or unknown.
func lookupKey(path string) (setting, keyKind) {
	for _, s := range settings {
		if s.key == path {
			return s, keySetting
		}
	}
	for _, s := range settings {
		if strings.HasPrefix(s.key, path+".") {
			return setting{}, keySection
		}
	}
	return setting{}, keyUnknown
}

// keysUnder lists the names directly under a section ("" for the top
// level), in file order.
func keysUnder(path string) []string {
	var names []string
	for _, s := range settings {
		rest, ok := s.key, path == ""
		if !ok {
			rest, ok = strings.CutPrefix(s.key, path+".")
		}
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, ".")
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// yamlMessage is a YAML parser error without the package's "yaml: " prefix.
func yamlMessage(err error) string {
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// suggestKey returns the known key closest to an unknown one: a key at the
// same level within a small edit distance, or the same name in exactly one
// other section (a top-level "client_id" is "oauth.client_id").
func suggestKey(unknown string) string {
	parent, name := "", unknown
	if i := strings.LastIndex(unknown, "."); i >= 0 {
		parent, name = unknown[:i], unknown[i+1:]
	}
	name = strings.ReplaceAll(strings.ToLower(name), "-", "_")
	var candidates []string
	for _, s := range settings {
		candidates = append(candidates, s.key)
		if i := strings.Index(s.key, "."); i >= 0 && !slices.Contains(candidates, s.key[:i]) {
			candidates = append(candidates, s.key[:i])
		}
	}
	best, bestDist := "", 0
	var elsewhere []string
	for _, cand := range candidates {
		cParent, cName := "", cand
		if i := strings.LastIndex(cand, "."); i >= 0 {
			cParent, cName = cand[:i], cand[i+1:]
		}
		if cParent != parent {
			if cName == name {
				elsewhere = append(elsewhere, cand)
			}
			continue
		}
		d := editDistance(name, cName)
		if d <= max(2, len(cName)/3) && (best == "" || d < bestDist) {
			best, bestDist = cand, d
		}
	}
	if len(elsewhere) == 1 {
		return elsewhere[0] // "hosts" alone could be inject's or tunnel's
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b))
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// validate checks every value and returns all problems at once, one per
// line, each naming the key, where the value came from and what is allowed.
func (c *Config) validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(c.checkListen("listen", c.Listen))
	add(c.checkListen("admin_listen", c.AdminListen))
	if strings.TrimSpace(c.StateDir) == "" {
		add(c.keyError("state_dir", "must name a directory (the default is %s)", defaultStateDir))
	}
	if _, ok := lookupRegion(c.Region); c.Region != "" && !ok {
		add(c.keyError("region", "%q is not an Anaplan region; use one of %s, or leave it out and set oauth.*_url and inject.hosts", c.Region, strings.Join(regionNames(), ", ")))
	}
	add(c.checkOneOf("log_level", c.LogLevel, "debug", "info", "warn", "error"))
	add(c.checkOneOf("log_format", c.LogFormat, "text", "json"))

	if c.OAuth.ClientID != "" && strings.TrimSpace(c.OAuth.ClientID) == "" {
		add(c.keyError("oauth.client_id", "is blank; set the device-grant client's ID or leave the key out"))
	}
	add(c.checkURL("oauth.device_authorization_url", c.OAuth.DeviceAuthorizationURL, true))
	add(c.checkURL("oauth.token_url", c.OAuth.TokenURL, true))
	add(c.checkURL("oauth.revocation_url", c.OAuth.RevocationURL, false))
	add(c.checkScopes())
	add(c.checkOneOf("oauth.request_encoding", c.OAuth.RequestEncoding, "json", "form"))
	add(c.checkCAFile("oauth.ca_file", c.OAuth.CAFile))

	if len(c.Inject.Hosts) == 0 {
		add(c.keyError("inject.hosts", "is empty; name at least one Anaplan API host (like api.anaplan.com)"))
	}
	errs = append(errs, c.checkHosts("inject.hosts", c.Inject.Hosts)...)
	add(c.checkOneOf("inject.scheme", c.Inject.Scheme, "AnaplanAuthToken", "Bearer"))
	add(c.checkOneOf("inject.client_authorization", c.Inject.ClientAuthorization, "replace", "keep", "reject"))
	if text, ok := c.origins().bad["inject.plain_http"]; ok {
		add(c.keyError("inject.plain_http", "%q is not true or false", text))
	}
	errs = append(errs, c.checkHosts("tunnel.hosts", c.Tunnel.Hosts)...)
	errs = append(errs, c.checkOverlap()...)
	errs = append(errs, c.checkCompat()...)
	errs = append(errs, c.checkCIDRs("clients.allow_cidrs", c.Clients.AllowCIDRs)...)
	add(c.checkUsersFile())
	add(c.checkCAFile("upstream.ca_file", c.Upstream.CAFile))
	if text, ok := c.origins().bad["upstream.allow_private"]; ok {
		add(c.keyError("upstream.allow_private", "%q is not true or false", text))
	}
	errs = append(errs, c.checkCIDRs("upstream.allow_cidrs", c.Upstream.AllowCIDRs)...)
	if c.Upstream.Proxy != "" {
		if _, err := proxy.ParseUpstreamProxy(c.Upstream.Proxy, nil); err != nil {
			add(c.keyError("upstream.proxy", "%v", err))
		}
	}
	for i, p := range c.Upstream.NoProxy {
		if err := proxy.ValidateNoProxyPattern(p); err != nil {
			errs = append(errs, fmt.Errorf("%s: upstream.no_proxy: %w", c.whereItem("upstream.no_proxy", i), err))
		}
	}
	if text, ok := c.origins().bad["limits.max_connections"]; ok {
		add(c.keyError("limits.max_connections", "%q is not a whole number", text))
	} else if c.Limits.MaxConnections < 1 {
		add(c.keyError("limits.max_connections", "%d is not a positive number (the default is %d)", c.Limits.MaxConnections, proxy.DefaultMaxConnections))
	}
	return errors.Join(errs...)
}

func (c *Config) checkOneOf(key, v string, allowed ...string) error {
	if slices.Contains(allowed, v) {
		return nil
	}
	return c.keyError(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
}

// checkListen accepts host:port with a numeric port (0 picks a free one).
// Whether the host may be reached from other machines is decided when the
// listener starts.
func (c *Config) checkListen(key, v string) error {
	_, port, err := net.SplitHostPort(v)
	if err == nil {
		if n, perr := strconv.Atoi(port); perr == nil && n >= 0 && n <= 65535 && port == strconv.Itoa(n) {
			return nil
		}
	}
	return c.keyError(key, "%q is not host:port with a port from 0 to 65535 (like 127.0.0.1:3128)", v)
}

// checkURL accepts an absolute https URL, or http for a loopback host (a
// test or local stand-in). The value is shown with any password redacted.
func (c *Config) checkURL(key, v string, required bool) error {
	if v == "" {
		if required {
			return c.keyError(key, "is empty; give an absolute https:// URL")
		}
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return c.keyError(key, "%q is not an absolute https:// URL", redactURL(v, u))
	}
	if u.User != nil {
		return c.keyError(key, "%q must not hold a user name or password", u.Redacted())
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopbackHost(u.Hostname()):
	default:
		return c.keyError(key, "%q must be an https:// URL (http:// only for a loopback host)", u.Redacted())
	}
	if u.Fragment != "" || strings.HasSuffix(v, "#") {
		return c.keyError(key, "%q must not have a #fragment", u.Redacted())
	}
	return nil
}

// redactURL shows v unless it parsed with a password, which is hidden.
func redactURL(v string, u *url.URL) string {
	if u != nil && u.User != nil {
		return u.Redacted()
	}
	return v
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

// checkScopes accepts RFC 6749 scope tokens: printable ASCII without
// spaces, quotes or backslashes.
func (c *Config) checkScopes() error {
	for _, s := range c.OAuth.Scopes {
		ok := s != ""
		for _, r := range s {
			if r <= ' ' || r > '~' || r == '"' || r == '\\' {
				ok = false
			}
		}
		if !ok {
			return c.keyError("oauth.scopes", "%q is not a scope (printable ASCII without spaces, quotes or backslashes)", s)
		}
	}
	return nil
}

// checkCAFile accepts an empty path or a readable file holding at least one
// PEM certificate.
func (c *Config) checkCAFile(key, path string) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return c.keyError(key, "cannot read %s: %v", path, unwrapPathError(err))
	}
	for len(data) > 0 {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err == nil {
			return nil
		}
	}
	return c.keyError(key, "%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path)
}

// checkHosts validates each host pattern of a list.
func (c *Config) checkHosts(key string, hosts []string) []error {
	var errs []error
	for i, h := range hosts {
		if err := validateHostPattern(h); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", c.whereItem(key, i), key, err))
		}
	}
	return errs
}

// validateHostPattern is the proxy's own rule, so that what loads is what
// the proxy can serve.
func validateHostPattern(p string) error { return proxy.ValidateHostPattern(p) }

// checkOverlap refuses a host pattern listed both for injection and for
// tunnelling: the proxy could not tell which the user meant.
func (c *Config) checkOverlap() []error {
	inject := map[string]int{}
	for i, h := range c.Inject.Hosts {
		inject[hostKey(h)] = i
	}
	var errs []error
	for i, h := range c.Tunnel.Hosts {
		if j, ok := inject[hostKey(h)]; ok {
			errs = append(errs, fmt.Errorf("%s: tunnel.hosts: %q is also in inject.hosts (%s); a host is either injected or tunnelled, not both",
				c.whereItem("tunnel.hosts", i), h, c.whereItem("inject.hosts", j)))
		}
	}
	return errs
}

// hostKey normalises a host pattern for comparison: lower case, no
// trailing dot, explicit port (443 when none is given).
func hostKey(p string) string {
	host, port := p, "443"
	if _, err := netip.ParseAddr(p); err != nil {
		if h, pt, err := net.SplitHostPort(p); err == nil {
			host, port = h, pt
		}
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
	}
	return net.JoinHostPort(host, port)
}

// checkCompat validates the compat section: a boolean that parsed, host
// patterns, and no host that is also injected or tunnelled.
func (c *Config) checkCompat() []error {
	var errs []error
	if text, ok := c.origins().bad["compat.enabled"]; ok {
		errs = append(errs, c.keyError("compat.enabled", "%q is not true or false", text))
	}
	errs = append(errs, c.checkHosts("compat.hosts", c.Compat.Hosts)...)
	if !c.Compat.Enabled {
		return errs
	}
	for _, other := range []struct {
		key   string
		hosts []string
		what  string
	}{{"inject.hosts", c.Inject.Hosts, "injected"}, {"tunnel.hosts", c.Tunnel.Hosts, "tunnelled"}} {
		taken := map[string]int{}
		for j, h := range other.hosts {
			taken[hostKey(h)] = j
		}
		for i, h := range c.Compat.Hosts {
			if j, ok := taken[hostKey(h)]; ok {
				errs = append(errs, fmt.Errorf("%s: compat.hosts: %q is also in %s (%s); a host is either answered locally or %s, not both",
					c.whereItem("compat.hosts", i), h, other.key, c.whereItem(other.key, j), other.what))
			}
		}
	}
	return errs
}

// applyCompatDefaults lets an explicit choice win over the built-in compat
// hosts: a default compat host that inject.hosts or tunnel.hosts names
// (au1a.app2.anaplan.com tunnelled for Australia's OAuth pages, say) is
// left to that list. An explicit compat.hosts is taken as written.
func (c *Config) applyCompatDefaults() {
	if c.where("compat.hosts") != "default" {
		return
	}
	named := map[string]bool{}
	for _, h := range slices.Concat(c.Inject.Hosts, c.Tunnel.Hosts) {
		named[hostKey(h)] = true
	}
	c.Compat.Hosts = slices.DeleteFunc(c.Compat.Hosts, func(h string) bool { return named[hostKey(h)] })
}

// compatHosts returns the hosts answered locally: none when compat is off.
func (c *Config) compatHosts() []string {
	if !c.Compat.Enabled {
		return nil
	}
	return c.Compat.Hosts
}

// interceptedHosts are the hosts whose TLS the proxy terminates, and so
// those the local CA's name constraints must permit.
func (c *Config) interceptedHosts() []string {
	return slices.Concat(c.Inject.Hosts, c.compatHosts())
}

// checkCIDRs validates each address prefix of a list ("10.0.0.0/8",
// "2001:db8::/32"; a bare address means just that address).
func (c *Config) checkCIDRs(key string, list []string) []error {
	var errs []error
	for i, v := range list {
		if _, err := parsePrefix(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %q is not an address prefix like 10.0.0.0/8 or 2001:db8::/32", c.whereItem(key, i), key, v))
		}
	}
	return errs
}

// parsePrefix parses a CIDR prefix, or a single address as its /32 or /128.
func parsePrefix(v string) (netip.Prefix, error) {
	v = strings.TrimSpace(v)
	if a, err := netip.ParseAddr(v); err == nil && a.Zone() == "" {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// parsePrefixes parses a list that validate has accepted.
func parsePrefixes(list []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(list))
	for _, v := range list {
		if p, err := parsePrefix(v); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// checkUsersFile accepts an empty path or an existing regular file; its
// content and mode are checked when the proxy starts.
func (c *Config) checkUsersFile() error {
	path := c.Clients.UsersFile
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return c.keyError("clients.users_file", "cannot read %s: %v", path, unwrapPathError(err))
	}
	if !fi.Mode().IsRegular() {
		return c.keyError("clients.users_file", "%s is not a regular file", path)
	}
	return nil
}
