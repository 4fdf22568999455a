package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/auth/pgstore"
	"github.com/anaplan-proxy/anaplan-proxy/internal/config"
	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
	"github.com/anaplan-proxy/anaplan-proxy/proxy"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// commandFlags is the flag set every config-reading command shares: --config
// plus one flag per configuration key.
type commandFlags struct {
	fs         *flag.FlagSet
	configPath string
	flags      *config.Flags
}

func newCommandFlags(name, synopsis string, stderr io.Writer) *commandFlags {
	cf := &commandFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	cf.fs.SetOutput(stderr)
	cf.fs.StringVar(&cf.configPath, "config", os.Getenv("ANAPLAN_PROXY_CONFIG"),
		"YAML configuration `file` (default $ANAPLAN_PROXY_CONFIG; none: defaults, environment and flags only)")
	cf.flags = config.RegisterFlags(cf.fs)
	cf.fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: anaplan-proxy %s [flags]\n\n%s\n\nFlags (each also settable in the config file and as ANAPLAN_PROXY_<KEY>):\n", name, synopsis)
		cf.fs.PrintDefaults()
	}
	return cf
}

// parse parses args and loads the configuration they point at.
func (cf *commandFlags) parse(args []string) (*config.Config, error) {
	if err := cf.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, usageError{}
		}
		return nil, usageError{err}
	}
	if cf.fs.NArg() > 0 {
		return nil, usageError{fmt.Errorf("unexpected argument %q", cf.fs.Arg(0))}
	}
	return cf.load()
}

// load reads the configuration again with the same file, environment and
// flags, as a reload does.
func (cf *commandFlags) load() (*config.Config, error) {
	return config.Load(cf.configPath, os.LookupEnv, cf.flags)
}

// newLogger returns the process logger: text or JSON on w, at the
// configured level. The level is a LevelVar so that a reload can change it.
func newLogger(cfg *config.Config, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	level := new(slog.LevelVar)
	level.Set(logLevel(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), level
	}
	return slog.New(slog.NewTextHandler(w, opts)), level
}

// logLevel maps the log_level key to a slog level.
func logLevel(name string) slog.Level {
	switch name {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// sessionPath is where the token store lives inside the state directory.
func sessionPath(cfg *config.Config) string { return filepath.Join(cfg.StateDir, "session.json") }

// sessionStore is where the session is kept and, with a shared store,
// the local CA too.
type sessionStore struct {
	auth.Store
	// typ is config.StoreFile or config.StorePostgres.
	typ string
	// loadCA returns the local CA for hosts, creating it on first use: in
	// the state directory, or in the shared store so that clients trust
	// one CA whichever instance they reach.
	loadCA func(ctx context.Context, hosts []string) (*proxy.CA, error)
	// close releases the store's connections.
	close func()
}

// openStore returns the session store that cfg names: the session file in
// the state directory (created 0700, owned by us), or the session shared
// through PostgreSQL. observe, when set, is told of each store operation.
func openStore(ctx context.Context, cfg *config.Config, logger *slog.Logger, observe func(op string, d time.Duration, err error)) (*sessionStore, error) {
	if cfg.Store.Type != config.StorePostgres {
		if err := securefile.MkdirPrivate(cfg.StateDir); err != nil {
			return nil, fmt.Errorf("state directory (state_dir): %w", err)
		}
		return &sessionStore{
			Store: auth.NewFileStore(sessionPath(cfg)),
			typ:   config.StoreFile,
			loadCA: func(_ context.Context, hosts []string) (*proxy.CA, error) {
				return proxy.LoadOrCreateCA(cfg.StateDir, hosts)
			},
			close: func() {},
		}, nil
	}
	key, err := pgstore.LoadKeyFile(cfg.Store.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("store.key_file: %w", err)
	}
	ps, err := pgstore.Open(ctx, pgstore.Options{
		DSN:         cfg.Store.PostgresDSN.Value(),
		SessionName: cfg.Store.SessionName,
		Key:         key,
		Lease:       cfg.Store.Lease,
		Logger:      logger,
		Observe:     observe,
	})
	if err != nil {
		return nil, fmt.Errorf("store.postgres_dsn (%s): %w", cfg.Store.PostgresDSN, err)
	}
	return &sessionStore{
		Store: ps,
		typ:   config.StorePostgres,
		loadCA: func(ctx context.Context, hosts []string) (*proxy.CA, error) {
			return proxy.LoadOrCreateSharedCA(ctx, ps, ps.String(), hosts)
		},
		close: ps.Close,
	}, nil
}

// oauthConfig turns the oauth section into the auth package's settings, with
// an HTTP client that verifies TLS against the system roots plus
// oauth.ca_file and never inherits a proxy from the environment.
func oauthConfig(cfg *config.Config) (auth.OAuthConfig, error) {
	roots, err := config.RootPool(cfg.OAuth.CAFile, "oauth.ca_file")
	if err != nil {
		return auth.OAuthConfig{}, err
	}
	up := cfg.Upstream.Proxy
	tr := &http.Transport{
		// Never a proxy from the environment; upstream.proxy when set.
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   2,
		ForceAttemptHTTP2:     true,
	}
	var rt http.RoundTripper = tr
	if up != nil {
		tr.Proxy = up.ProxyFunc()
		rt = viaUpstreamProxy{tr, up}
	}
	return auth.OAuthConfig{
		ClientID:      cfg.OAuth.ClientID,
		DeviceAuthURL: cfg.OAuth.DeviceAuthorizationURL,
		TokenURL:      cfg.OAuth.TokenURL,
		RevokeURL:     cfg.OAuth.RevocationURL,
		Scopes:        cfg.OAuth.Scopes,
		Encoding:      auth.Encoding(cfg.OAuth.RequestEncoding),
		HTTPClient:    &http.Client{Transport: rt, Timeout: 90 * time.Second},
	}, nil
}

// viaUpstreamProxy names the corporate proxy in the errors of requests
// sent through it, so that a login or refresh failure points at it.
type viaUpstreamProxy struct {
	tr *http.Transport
	up *proxy.UpstreamProxy
}

func (v viaUpstreamProxy) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := v.tr.RoundTrip(r)
	if err != nil {
		if u, _ := v.tr.Proxy(r); u != nil {
			err = fmt.Errorf("through the corporate proxy %s (upstream.proxy): %w", v.up, err)
		}
	}
	return resp, err
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// transport.
func (v viaUpstreamProxy) CloseIdleConnections() { v.tr.CloseIdleConnections() }

// requireClientID explains where to set the client ID when it is missing.
func requireClientID(cfg *config.Config) error {
	if strings.TrimSpace(cfg.OAuth.ClientID) == "" {
		return errors.New("oauth.client_id is not set: put the device-grant client's ID (Administration > Security > OAuth Clients) " +
			"in the config file, or pass --oauth-client-id, or set ANAPLAN_PROXY_OAUTH_CLIENT_ID")
	}
	return nil
}

// sessionTokens is the session as the proxy sees it: the Manager, plus the
// expiry of its access token, which the classic authentication answers
// report to scripts as expiresAt.
type sessionTokens struct{ *auth.Manager }

// AccessTokenExpiry implements proxy.TokenExpiry.
func (s sessionTokens) AccessTokenExpiry() time.Time { return s.Status().AccessTokenExpiry }
