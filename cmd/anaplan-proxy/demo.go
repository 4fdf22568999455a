package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/config"
)

func cmdCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newCommandFlags("ca", "Print the local CA certificate (PEM) that clients must trust, creating the CA on first use.", stderr)
	cfg, err := cf.parse(args)
	if err != nil {
		return err
	}
	// The certificate is public: printing an existing one reads neither the
	// key nor the session, and needs no write access to the state directory.
	// A shared store keeps the CA itself.
	if cfg.Store.Type == config.StoreFile {
		pem, err := os.ReadFile(filepath.Join(cfg.StateDir, "ca.crt"))
		if err == nil {
			_, err = stdout.Write(pem)
			return err
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("reading the CA certificate: %w", err)
		}
	}
	store, err := openStore(ctx, cfg, nil, nil)
	if err != nil {
		return err
	}
	defer store.close()
	ca, err := store.loadCA(ctx, cfg.InterceptedHosts())
	if err != nil {
		return err
	}
	_, err = stdout.Write(ca.CertPEM())
	return err
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("demo", flag.ContinueOnError)
	fset.SetOutput(stderr)
	listen := fset.String("listen", "127.0.0.1:3128", "proxy listen `address`")
	adminListen := fset.String("admin-listen", "127.0.0.1:9464", "admin listen `address`")
	lifetime := fset.Duration("token-lifetime", 2*time.Minute, "access-token lifetime of the fake Anaplan (short, to show refreshes)")
	logFormat := fset.String("log-format", "text", "text or json")
	logLevel := fset.String("log-level", "info", "debug, info, warn or error")
	fset.Usage = func() {
		fmt.Fprintf(stderr, "Usage: anaplan-proxy demo [flags]\n\nStart a fake Anaplan in this process, log in to it, and serve the real proxy in front of it.\n\nFlags:\n")
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return usageError{}
		}
		return usageError{err}
	}

	fake, err := anaplantest.Start(anaplantest.Options{
		AccessTokenLifetime: *lifetime,
		Interval:            time.Second,
		AutoApprove:         true,
	})
	if err != nil {
		return fmt.Errorf("starting the fake Anaplan: %w", err)
	}
	defer fake.Close()
	dir, err := os.MkdirTemp("", "anaplan-proxy-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fakeCA, err := fake.WriteCAFile(dir)
	if err != nil {
		return err
	}

	cfg, err := config.FromValues(map[string]string{
		"listen":                         *listen,
		"admin_listen":                   *adminListen,
		"log_format":                     *logFormat,
		"log_level":                      *logLevel,
		"state_dir":                      filepath.Join(dir, "state"),
		"oauth.client_id":                fake.ClientID(),
		"oauth.device_authorization_url": fake.DeviceAuthURL(),
		"oauth.token_url":                fake.TokenURL(),
		"oauth.revocation_url":           fake.RevokeURL(),
		"oauth.ca_file":                  fakeCA,
		"inject.hosts":                   fake.APIHost(),
		"upstream.ca_file":               fakeCA,
		// The fake Anaplan listens on loopback, which the proxy refuses by
		// default.
		"upstream.allow_private": "true",
	}, "demo")
	if err != nil {
		return err
	}

	logger, level := newLogger(cfg, stderr)
	store, err := openStore(ctx, cfg, logger, nil)
	if err != nil {
		return err
	}
	defer store.close()
	oc, err := oauthConfig(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "anaplan-proxy demo: a fake Anaplan runs at %s; it approves its own device codes.\n\n", fake.APIURL())
	if err := login(ctx, oc, store, stdout); err != nil {
		return err
	}
	return serve(ctx, cfg, serveOptions{loginHint: "anaplan-proxy demo", logger: logger, level: level, onListening: func(proxyAddr, adminAddr string) {
		caPath := filepath.Join(cfg.StateDir, "ca.crt")
		fmt.Fprintf(stdout, "\nThe proxy listens on %s. In another terminal, run:\n\n", proxyAddr)
		fmt.Fprintf(stdout, "    curl -sS --proxy http://%s --cacert %s %s/2/0/users/me\n\n", proxyAddr, caPath, fake.APIURL())
		fmt.Fprintf(stdout, "curl sends no token; the fake API answers only because the proxy added one.\n")
		fmt.Fprintf(stdout, "Session state: curl http://%s/status    Metrics: curl http://%s/metrics\n", adminAddr, adminAddr)
		fmt.Fprintf(stdout, "Access tokens last %s here, so you can watch them being refreshed. Press Ctrl-C to stop.\n", *lifetime)
	}})
}
