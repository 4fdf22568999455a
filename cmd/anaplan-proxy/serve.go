package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/internal/config"
	"github.com/anaplan-proxy/anaplan-proxy/metrics"
	"github.com/anaplan-proxy/anaplan-proxy/proxy"
)

// shutdownGrace bounds how long in-flight requests may run after SIGTERM.
const shutdownGrace = 25 * time.Second

// initialLoadWait bounds how long start-up waits for the stored session to
// be read before it logs the session state.
const initialLoadWait = 5 * time.Second

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newCommandFlags("serve", "Run the proxy with the stored session. A later `anaplan-proxy login` is picked up without a restart;\n"+
		"SIGHUP reloads the configuration (hosts, client controls, log level) without dropping the session.", stderr)
	cfg, err := cf.parse(args)
	if err != nil {
		return err
	}
	logger, level := newLogger(cfg, stderr)
	return serve(ctx, cfg, serveOptions{
		loginHint: loginCommand(cf.configPath),
		logger:    logger,
		level:     level,
		reload:    cf.load,
	})
}

// serveOptions are what serve needs besides the configuration.
type serveOptions struct {
	loginHint string // the login command to suggest
	logger    *slog.Logger
	level     *slog.LevelVar // the logger's level, changed on reload; may be nil
	// reload reads the configuration again on SIGHUP; nil ignores SIGHUP.
	reload func() (*config.Config, error)
	// onListening, when set, is called with the bound addresses once both
	// listeners accept connections.
	onListening func(proxyAddr, adminAddr string)
}

// statusDoc is the JSON document of /status: the session plus what an
// operator needs to check the set-up.
type statusDoc struct {
	auth.Status
	Version       string    `json:"version"`
	ProxyListen   string    `json:"proxy_listen"`
	CAFingerprint string    `json:"ca_fingerprint"`
	CANotAfter    time.Time `json:"ca_not_after"`
	InjectHosts   []string  `json:"inject_hosts"`
	TunnelHosts   []string  `json:"tunnel_hosts"`
	CompatHosts   []string  `json:"compat_hosts"`
	// UpstreamProxy is the corporate proxy without its credentials.
	UpstreamProxy string `json:"upstream_proxy,omitempty"`
}

// generation is one loaded configuration and the proxy built from it. A
// reload builds a new generation and swaps it in; connections already
// served by the old one finish on it.
type generation struct {
	cfg   *config.Config
	ca    *proxy.CA
	proxy *proxy.Proxy
}

// liveHandler sends each new proxy request to the current generation.
type liveHandler struct{ cur atomic.Pointer[generation] }

func (h *liveHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.cur.Load().proxy.ServeHTTP(w, r)
}

// buildGeneration creates (or checks) the CA for cfg's hosts and the proxy
// that serves them. The session, metrics and listeners are shared.
func buildGeneration(ctx context.Context, cfg *config.Config, store *sessionStore, tokens proxy.TokenSource, logger *slog.Logger, obs proxy.Observer) (*generation, error) {
	var users *proxy.Users
	if cfg.Clients.UsersFile != "" {
		var err error
		if users, err = proxy.LoadHTPasswd(cfg.Clients.UsersFile); err != nil {
			return nil, fmt.Errorf("clients.users_file: %w", err)
		}
	}
	ca, err := store.loadCA(ctx, cfg.InterceptedHosts())
	if err != nil {
		return nil, err
	}
	upstreamRoots, err := config.RootPool(cfg.Upstream.CAFile, "upstream.ca_file")
	if err != nil {
		return nil, err
	}
	p, err := proxy.New(proxy.Config{
		Inject:               config.HostStrings(cfg.Inject.Hosts),
		Tunnel:               config.HostStrings(cfg.Tunnel.Hosts),
		Compat:               config.HostStrings(cfg.CompatHosts()),
		Scheme:               cfg.Inject.Scheme,
		ClientAuthorization:  cfg.Inject.ClientAuthorization,
		Tokens:               tokens,
		CA:                   ca,
		UpstreamRoots:        upstreamRoots,
		Logger:               logger,
		Observer:             obs,
		AllowCIDRs:           cfg.Clients.AllowCIDRs,
		Users:                users,
		AllowPrivateUpstream: cfg.Upstream.AllowPrivate,
		UpstreamAllowCIDRs:   cfg.Upstream.AllowCIDRs,
		UpstreamProxy:        cfg.Upstream.Proxy,
		Pool: proxy.PoolLimits{MaxIdlePerHost: cfg.Upstream.MaxIdlePerHost, MaxIdle: cfg.Upstream.MaxIdle,
			IdleTimeout: cfg.Upstream.IdleTimeout, KeepWarm: cfg.Upstream.KeepWarm},
		PlainHTTP: cfg.Inject.PlainHTTP,
		Limits:    proxy.Limits{MaxConnections: cfg.Limits.MaxConnections, MaxBodyWaits: cfg.Limits.MaxBodyWaits, BodyTimeout: cfg.Limits.BodyTimeout},
	})
	if err != nil {
		return nil, err
	}
	return &generation{cfg: cfg, ca: ca, proxy: p}, nil
}

// serve runs the daemon until ctx is done.
func serve(ctx context.Context, cfg *config.Config, opts serveOptions) error {
	logger := opts.logger
	if err := requireClientID(cfg); err != nil {
		return err
	}
	if err := requireClientControls(cfg); err != nil {
		return err
	}
	oc, err := oauthConfig(cfg)
	if err != nil {
		return err
	}
	states := make([]string, len(auth.States))
	for i, s := range auth.States {
		states[i] = string(s)
	}
	m := metrics.New(buildVersion(), states)
	store, err := openStore(ctx, cfg, logger, m.StoreOp)
	if err != nil {
		return err
	}
	defer store.close()
	// A corrupt, foreign-owned or readable store stops the daemon here, with
	// the file's name and the fix; it is never replaced.
	if _, err := store.Load(ctx); err != nil && !errors.Is(err, auth.ErrNoSession) {
		return err
	}
	m.SetStore(store.typ)
	mgr := auth.NewManager(oc, store, auth.ManagerOptions{
		Logger:    logger,
		OnRefresh: m.Refresh,
		OnState: func(s auth.Status) {
			m.SetSession(string(s.State), s.AccessTokenExpiry, s.LastRefresh)
		},
		OnForcedRefresh: m.ForcedRefresh,
		OnEvent:         m.SessionEvent,
		OnNewToken:      m.TokenHandover,
		Failpoint:       failpoint(),
	})
	tokens := sessionTokens{mgr}
	gen, err := buildGeneration(ctx, cfg, store, tokens, logger, m)
	if err != nil {
		return err
	}
	live := &liveHandler{}
	live.cur.Store(gen)

	proxyLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	adminLn, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		proxyLn.Close()
		return fmt.Errorf("admin_listen: %w", err)
	}

	errLog := slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	// The first generation's server settings (header and idle timeouts,
	// header size) and connection limit hold for the process's life;
	// requests go to whichever generation is current.
	proxySrv := gen.proxy.Server()
	proxySrv.Handler = live
	status := func() any {
		g := live.cur.Load()
		return statusDoc{
			Status:        mgr.Status(),
			Version:       buildVersion(),
			ProxyListen:   proxyLn.Addr().String(),
			CAFingerprint: g.ca.Fingerprint(),
			CANotAfter:    g.ca.NotAfter(),
			InjectHosts:   config.HostStrings(g.cfg.Inject.Hosts),
			TunnelHosts:   config.HostStrings(g.cfg.Tunnel.Hosts),
			CompatHosts:   config.HostStrings(g.cfg.CompatHosts()),
			UpstreamProxy: g.cfg.ShownUpstreamProxy(),
		}
	}
	adminSrv := &http.Server{
		Handler: metrics.NewAdminHandler(metrics.AdminConfig{
			Metrics: m,
			Status:  status,
			Ready:   mgr.Ready,
			// Derived from the status, never by asking for a token: a probe
			// must not wait for a refresh in flight.
			ReadyReason: func() string { return readyReason(mgr.Status(), opts.loginHint) },
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          errLog,
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() {
		if err := mgr.Run(runCtx); err != nil {
			errc <- fmt.Errorf("session: %w", err)
		}
	})
	wg.Go(func() {
		if err := proxySrv.Serve(gen.proxy.Listener(proxyLn)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("proxy listener: %w", err)
		}
	})
	wg.Go(func() {
		if err := adminSrv.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin listener: %w", err)
		}
	})

	// Report the stored session's state, not the state before it was read.
	loadWait := time.NewTimer(initialLoadWait)
	select {
	case <-mgr.Loaded():
	case <-loadWait.C:
		logger.Warn("the stored session was not read in time; the state below may be out of date", "waited", initialLoadWait.String())
	}
	loadWait.Stop()
	st := mgr.Status()
	logger.Info("anaplan-proxy started",
		"version", buildVersion(),
		"proxy_listen", proxyLn.Addr().String(),
		"admin_listen", adminLn.Addr().String(),
		"state_dir", cfg.StateDir,
		"session_state", string(st.State),
		"ca_fingerprint", gen.ca.Fingerprint(),
		"inject_hosts", config.HostStrings(cfg.Inject.Hosts),
		"tunnel_hosts", config.HostStrings(cfg.Tunnel.Hosts),
		"compat_hosts", config.HostStrings(cfg.CompatHosts()),
		"upstream_proxy", cfg.ShownUpstreamProxy(),
	)
	if st.State == auth.StateLoggedOut {
		logger.Warn("no Anaplan session yet: requests to inject hosts get 511 until you run the login command; serve picks it up without a restart",
			"login_command", opts.loginHint)
	}
	if opts.onListening != nil {
		opts.onListening(proxyLn.Addr().String(), adminLn.Addr().String())
	}

	hup := make(chan os.Signal, 1)
	if opts.reload != nil {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	// Generations replaced by a reload drain in the background.
	var retired sync.WaitGroup
	drainCtx, stopDraining := context.WithCancel(context.Background())
	defer stopDraining()

	var runErr error
wait:
	for {
		select {
		case <-ctx.Done():
			logger.Info("shutting down", "grace", shutdownGrace.String())
			break wait
		case runErr = <-errc:
			logger.Error("stopping", "error", runErr.Error())
			break wait
		case <-hup:
			old, err := reloadGeneration(runCtx, live, opts, store, tokens, m)
			if err != nil {
				logger.Error("configuration not reloaded; the running configuration stays in force", "error", err.Error())
				continue
			}
			retired.Go(func() {
				dctx, dcancel := context.WithTimeout(drainCtx, shutdownGrace)
				defer dcancel()
				old.proxy.Shutdown(dctx)
			})
		}
	}
	sctx, scancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer scancel()
	if err := proxySrv.Shutdown(sctx); err != nil {
		logger.Warn("proxy listener did not drain in time", "error", err.Error())
	}
	if err := live.cur.Load().proxy.Shutdown(sctx); err != nil {
		logger.Warn("intercepted connections did not drain in time", "error", err.Error())
	}
	stopDraining()
	retired.Wait()
	adminSrv.Shutdown(sctx)
	cancel()
	wg.Wait()
	logger.Info("stopped")
	return runErr
}

// reloadGeneration reads the configuration again and, when it is valid,
// makes a proxy from it the current one. It returns the replaced generation.
// The session is untouched: keys that the session or the listeners were
// built from take effect only after a restart, and the log says which.
func reloadGeneration(ctx context.Context, live *liveHandler, opts serveOptions, store *sessionStore, tokens proxy.TokenSource, obs proxy.Observer) (*generation, error) {
	logger := opts.logger
	cfg, err := opts.reload()
	if err != nil {
		return nil, err
	}
	old := live.cur.Load()
	if restart := restartOnlyChanges(old.cfg, cfg); len(restart) > 0 {
		logger.Warn("these settings change only on restart; the running values stay in force", "keys", restart)
		cfg.Listen, cfg.AdminListen, cfg.StateDir = old.cfg.Listen, old.cfg.AdminListen, old.cfg.StateDir
		cfg.OAuth, cfg.Limits, cfg.Store = old.cfg.OAuth, old.cfg.Limits, old.cfg.Store
		// The OAuth client was built with the corporate proxy: keep API and
		// OAuth traffic on the same path until the restart.
		cfg.Upstream.ProxyURL, cfg.Upstream.NoProxy, cfg.Upstream.Proxy = old.cfg.Upstream.ProxyURL, old.cfg.Upstream.NoProxy, old.cfg.Upstream.Proxy
	}
	if err := requireClientControls(cfg); err != nil {
		return nil, err
	}
	gen, err := buildGeneration(ctx, cfg, store, tokens, logger, obs)
	if err != nil {
		return nil, err
	}
	live.cur.Store(gen)
	if opts.level != nil {
		opts.level.Set(logLevel(cfg.LogLevel))
	}
	logger.Info("configuration reloaded",
		"inject_hosts", config.HostStrings(cfg.Inject.Hosts),
		"tunnel_hosts", config.HostStrings(cfg.Tunnel.Hosts),
		"compat_hosts", config.HostStrings(cfg.CompatHosts()),
		"log_level", cfg.LogLevel,
	)
	return old, nil
}

// restartOnlyChanges lists the keys whose new values a reload cannot apply.
func restartOnlyChanges(old, cur *config.Config) []string {
	var keys []string
	if old.Listen != cur.Listen {
		keys = append(keys, "listen")
	}
	if old.AdminListen != cur.AdminListen {
		keys = append(keys, "admin_listen")
	}
	if old.StateDir != cur.StateDir {
		keys = append(keys, "state_dir")
	}
	if !reflect.DeepEqual(old.OAuth, cur.OAuth) {
		keys = append(keys, "oauth")
	}
	if !reflect.DeepEqual(old.Upstream.ProxyURL, cur.Upstream.ProxyURL) || !reflect.DeepEqual(old.Upstream.NoProxy, cur.Upstream.NoProxy) {
		keys = append(keys, "upstream.proxy")
	}
	if old.Limits != cur.Limits {
		keys = append(keys, "limits")
	}
	if old.Store != cur.Store {
		keys = append(keys, "store")
	}
	if old.LogFormat != cur.LogFormat {
		keys = append(keys, "log_format")
	}
	return keys
}

// readyReason is the one line /readyz gives when no usable token exists.
func readyReason(st auth.Status, loginHint string) string {
	switch {
	case st.State == auth.StateLoggedOut:
		return "no Anaplan session: run `" + loginHint + "`"
	case st.LastError != "":
		return string(st.State) + ": " + st.LastError
	default:
		return string(st.State)
	}
}

// requireClientControls refuses a proxy listener that other hosts could
// reach unless clients are restricted: anyone who can use the proxy acts
// as the Anaplan integration user.
func requireClientControls(cfg *config.Config) error {
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %q is not host:port: %w", cfg.Listen, err)
	}
	if len(cfg.Clients.AllowCIDRs) > 0 || cfg.Clients.UsersFile != "" {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen: %s is not a loopback address; anyone who can reach the proxy acts as the Anaplan integration user, "+
			"so listening beyond loopback needs clients.allow_cidrs (the client networks) and/or clients.users_file (proxy users, htpasswd -B), "+
			"or listen on 127.0.0.1 or [::1]", cfg.Listen)
	}
	return nil
}

// loginCommand is the login command an operator should run, with the
// same config file as the running command.
func loginCommand(configPath string) string {
	if configPath != "" {
		return "anaplan-proxy login --config " + configPath
	}
	return "anaplan-proxy login"
}
