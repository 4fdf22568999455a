package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/metrics"
	"github.com/anaplan-proxy/anaplan-proxy/proxy"
)

// shutdownGrace bounds how long in-flight requests may run after SIGTERM.
const shutdownGrace = 25 * time.Second

// initialLoadWait bounds how long start-up waits for the stored session to
// be read before it logs the session state.
const initialLoadWait = 5 * time.Second

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newCommandFlags("serve", "Run the proxy with the stored session. A later `anaplan-proxy login` is picked up without a restart.", stderr)
	cfg, err := cf.parse(args)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, loginCommand(cf.configPath), newLogger(cfg, stderr), nil)
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
}

// serve runs the daemon until ctx is done. onListening, when set, is called
// with the bound addresses once both listeners accept connections.
func serve(ctx context.Context, cfg *Config, loginHint string, logger *slog.Logger, onListening func(proxyAddr, adminAddr string)) error {
	if err := requireClientID(cfg); err != nil {
		return err
	}
	if err := requireClientControls(cfg); err != nil {
		return err
	}
	var users *proxy.Users
	if cfg.Clients.UsersFile != "" {
		var err error
		if users, err = proxy.LoadHTPasswd(cfg.Clients.UsersFile); err != nil {
			return fmt.Errorf("clients.users_file: %w", err)
		}
	}
	store, err := openStore(cfg)
	if err != nil {
		return err
	}
	// A corrupt, foreign-owned or readable store stops the daemon here, with
	// the file's name and the fix; it is never replaced.
	if _, err := store.Load(ctx); err != nil && !errors.Is(err, auth.ErrNoSession) {
		return err
	}
	ca, err := proxy.LoadOrCreateCA(cfg.StateDir, cfg.interceptedHosts())
	if err != nil {
		return err
	}
	oc, err := oauthConfig(cfg)
	if err != nil {
		return err
	}
	upstreamRoots, err := rootPool(cfg.Upstream.CAFile, "upstream.ca_file")
	if err != nil {
		return err
	}

	states := make([]string, len(auth.States))
	for i, s := range auth.States {
		states[i] = string(s)
	}
	m := metrics.New(buildVersion(), states)
	mgr := auth.NewManager(oc, store, auth.ManagerOptions{
		Logger:    logger,
		OnRefresh: m.Refresh,
		OnState: func(s auth.Status) {
			m.SetSession(string(s.State), s.AccessTokenExpiry, s.LastRefresh)
		},
	})
	p, err := proxy.New(proxy.Config{
		Inject:               cfg.Inject.Hosts,
		Tunnel:               cfg.Tunnel.Hosts,
		Compat:               cfg.compatHosts(),
		Scheme:               cfg.Inject.Scheme,
		ClientAuthorization:  cfg.Inject.ClientAuthorization,
		Tokens:               sessionTokens{mgr},
		CA:                   ca,
		UpstreamRoots:        upstreamRoots,
		Logger:               logger,
		Observer:             m,
		AllowCIDRs:           parsePrefixes(cfg.Clients.AllowCIDRs),
		Users:                users,
		AllowPrivateUpstream: cfg.Upstream.AllowPrivate,
		UpstreamAllowCIDRs:   parsePrefixes(cfg.Upstream.AllowCIDRs),
		Limits:               proxy.Limits{MaxConnections: cfg.Limits.MaxConnections},
	})
	if err != nil {
		return err
	}

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
	// The proxy's own server: its header and idle timeouts and header
	// size limit; served on p.Listener for the connection limit.
	proxySrv := p.Server()
	status := func() any {
		return statusDoc{
			Status:        mgr.Status(),
			Version:       buildVersion(),
			ProxyListen:   proxyLn.Addr().String(),
			CAFingerprint: ca.Fingerprint(),
			CANotAfter:    ca.NotAfter(),
			InjectHosts:   nonNil(cfg.Inject.Hosts),
			TunnelHosts:   nonNil(cfg.Tunnel.Hosts),
			CompatHosts:   nonNil(cfg.compatHosts()),
		}
	}
	adminSrv := &http.Server{
		Handler: metrics.NewAdminHandler(metrics.AdminConfig{
			Metrics: m,
			Status:  status,
			Ready:   mgr.Ready,
			ReadyReason: func() string {
				if _, err := mgr.AccessToken(ctx); err != nil {
					return err.Error()
				}
				return "ready"
			},
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
		if err := proxySrv.Serve(p.Listener(proxyLn)); err != nil && !errors.Is(err, http.ErrServerClosed) {
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
		"ca_fingerprint", ca.Fingerprint(),
		"inject_hosts", cfg.Inject.Hosts,
		"tunnel_hosts", cfg.Tunnel.Hosts,
		"compat_hosts", cfg.compatHosts(),
	)
	if st.State == auth.StateLoggedOut {
		logger.Warn("no Anaplan session yet: requests to inject hosts get 511 until you run the login command; serve picks it up without a restart",
			"login_command", loginHint)
	}
	if onListening != nil {
		onListening(proxyLn.Addr().String(), adminLn.Addr().String())
	}

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down", "grace", shutdownGrace.String())
	case runErr = <-errc:
		logger.Error("stopping", "error", runErr.Error())
	}
	sctx, scancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer scancel()
	if err := proxySrv.Shutdown(sctx); err != nil {
		logger.Warn("proxy listener did not drain in time", "error", err.Error())
	}
	if err := p.Shutdown(sctx); err != nil {
		logger.Warn("intercepted connections did not drain in time", "error", err.Error())
	}
	adminSrv.Shutdown(sctx)
	cancel()
	wg.Wait()
	logger.Info("stopped")
	return runErr
}

// requireClientControls refuses a proxy listener that other hosts could
// reach unless clients are restricted: anyone who can use the proxy acts
// as the Anaplan integration user.
func requireClientControls(cfg *Config) error {
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

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
