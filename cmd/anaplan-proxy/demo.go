package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/proxy"
	"software.sslmate.com/src/go-pkcs12"
)

func cmdCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newCommandFlags("ca", "Print the local CA certificate (PEM) that clients must trust, creating the CA on first use;\n"+
		"with --pkcs12, write it as a PKCS#12 truststore for one Java application instead.", stderr)
	trustStore := cf.fs.String("pkcs12", "", "write the CA certificate, and nothing else, to this PKCS#12 truststore `file` for Java "+
		"(-Djavax.net.ssl.trustStore=FILE -Djavax.net.ssl.trustStoreType=PKCS12) instead of printing it")
	cfg, err := cf.parse(args)
	if err != nil {
		return err
	}
	pem, err := caCertPEM(cfg)
	if err != nil {
		return err
	}
	if *trustStore == "" {
		_, err = stdout.Write(pem)
		return err
	}
	if err := writeTrustStore(*trustStore, pem); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s: a PKCS#12 truststore holding only the proxy's CA. Give it to the one Java application that uses the proxy:\n"+
		"  java -Djavax.net.ssl.trustStore=%s -Djavax.net.ssl.trustStoreType=PKCS12 ...\n"+
		"Java does not enforce the CA's name constraints: never import it into the JVM's cacerts or the system store.\n", *trustStore, *trustStore)
	return nil
}

// caCertPEM returns the local CA certificate, creating the CA on first use.
func caCertPEM(cfg *Config) ([]byte, error) {
	// The certificate is public: reading an existing one reads neither the
	// key nor the session, and needs no write access to the state directory.
	if pem, err := os.ReadFile(filepath.Join(cfg.StateDir, "ca.crt")); err == nil {
		return pem, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the CA certificate: %w", err)
	}
	if _, err := openStore(cfg); err != nil {
		return nil, err
	}
	ca, err := proxy.LoadOrCreateCA(cfg.StateDir, cfg.interceptedHosts())
	if err != nil {
		return nil, err
	}
	return ca.CertPEM(), nil
}

// writeTrustStore writes the certificate in certPEM to file as a PKCS#12
// truststore that Java reads without a password: the certificate is
// public, so the file has neither encryption nor a MAC, and is readable
// by all (0644).
func writeTrustStore(file string, certPEM []byte) error {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return errors.New("the CA certificate file ca.crt holds no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("parsing the CA certificate: %w", err)
	}
	der, err := pkcs12.Passwordless.EncodeTrustStoreEntries([]pkcs12.TrustStoreEntry{{Cert: cert, FriendlyName: "anaplan-proxy"}}, "")
	if err != nil {
		return fmt.Errorf("encoding the truststore: %w", err)
	}
	if err := os.WriteFile(file, der, 0o644); err != nil {
		return fmt.Errorf("writing the truststore: %w", err)
	}
	return nil
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

	cfg := defaultConfig(func(string) (string, bool) { return "", false })
	cfg.Listen = *listen
	cfg.AdminListen = *adminListen
	cfg.LogFormat = *logFormat
	cfg.LogLevel = *logLevel
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.OAuth.ClientID = fake.ClientID()
	cfg.OAuth.DeviceAuthorizationURL = fake.DeviceAuthURL()
	cfg.OAuth.TokenURL = fake.TokenURL()
	cfg.OAuth.RevocationURL = fake.RevokeURL()
	cfg.OAuth.CAFile = fakeCA
	cfg.Inject.Hosts = []string{fake.APIHost()}
	cfg.Upstream.CAFile = fakeCA
	// The fake Anaplan listens on loopback, which the proxy refuses by
	// default.
	cfg.Upstream.AllowPrivate = true

	logger, level := newLogger(&cfg, stderr)
	store, err := openStore(&cfg)
	if err != nil {
		return err
	}
	oc, err := oauthConfig(&cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "anaplan-proxy demo: a fake Anaplan runs at %s; it approves its own device codes.\n\n", fake.APIURL())
	if err := login(ctx, oc, store, stdout); err != nil {
		return err
	}
	return serve(ctx, &cfg, serveOptions{loginHint: "anaplan-proxy demo", logger: logger, level: level, onListening: func(proxyAddr, adminAddr string) {
		caPath := filepath.Join(cfg.StateDir, "ca.crt")
		fmt.Fprintf(stdout, "\nThe proxy listens on %s. In another terminal, run:\n\n", proxyAddr)
		fmt.Fprintf(stdout, "    curl -sS --proxy http://%s --cacert %s %s/2/0/users/me\n\n", proxyAddr, caPath, fake.APIURL())
		fmt.Fprintf(stdout, "curl sends no token; the fake API answers only because the proxy added one.\n")
		fmt.Fprintf(stdout, "Session state: curl http://%s/status    Metrics: curl http://%s/metrics\n", adminAddr, adminAddr)
		fmt.Fprintf(stdout, "Access tokens last %s here, so you can watch them being refreshed. Press Ctrl-C to stop.\n", *lifetime)
	}})
}
