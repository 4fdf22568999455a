package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/internal/config"
)

// Exit codes of `anaplan-proxy status`.
const (
	statusUsable        = 0 // valid or refreshing: requests get a token
	statusDegraded      = 1 // a token is injected, but refreshing it fails
	statusLoginRequired = 2 // no session, or Anaplan rejected it: run login
	statusError         = 3 // not configured, or the state could not be read
)

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cf := newCommandFlags("status", "Show the session state, from the running daemon's admin listener when it answers, else from the stored session.\n"+
		"Exit codes: 0 usable, 1 degraded (refresh failing, token still valid), 2 login required or no session, 3 not configured or error.", stderr)
	quiet := cf.fs.Bool("quiet", false, "print nothing; report by exit code only")
	asJSON := cf.fs.Bool("json", false, "print the status as JSON")
	cfg, err := cf.parse(args)
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) && ue.err == nil {
			return exitUsage
		}
		fmt.Fprintf(stderr, "anaplan-proxy status: %v\n", err)
		return statusError
	}
	out := stdout
	if *quiet {
		out = io.Discard
	}

	doc, source, err := readStatus(ctx, cfg)
	if err != nil {
		if !*quiet {
			fmt.Fprintf(stderr, "anaplan-proxy status: %v\n", err)
		}
		return statusError
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			statusDoc
			Source string `json:"source"`
		}{doc, source})
	} else {
		printStatus(out, doc, source, cfg, loginCommand(cf.configPath))
	}
	switch doc.State {
	case auth.StateValid, auth.StateRefreshing:
		return statusUsable
	case auth.StateDegraded:
		return statusDegraded
	default:
		return statusLoginRequired
	}
}

// readStatus asks the running daemon first; when nothing answers on the
// admin listener it reads the stored session.
func readStatus(ctx context.Context, cfg *config.Config) (statusDoc, string, error) {
	if doc, err := daemonStatus(ctx, cfg.AdminListen); err == nil {
		return doc, "daemon at " + cfg.AdminListen, nil
	}
	store, err := openStore(ctx, cfg, nil, nil)
	if err != nil {
		return statusDoc{}, "", err
	}
	defer store.close()
	// Without the daemon, the set-up comes from the configuration and the
	// CA certificate on disk (which serve creates on its first start).
	doc := statusDoc{
		Version:     buildVersion(),
		ProxyListen: cfg.Listen,
		InjectHosts: config.HostStrings(cfg.Inject.Hosts),
		TunnelHosts: config.HostStrings(cfg.Tunnel.Hosts),

		UpstreamProxy: cfg.ShownUpstreamProxy(),
	}
	if cert, err := readCACert(filepath.Join(cfg.StateDir, "ca.crt")); err == nil {
		doc.CAFingerprint, doc.CANotAfter = fingerprint(cert), cert.NotAfter
	}
	rec, err := store.Load(ctx)
	if errors.Is(err, auth.ErrNoSession) {
		doc.Status = auth.Status{State: auth.StateLoggedOut}
		return doc, "store (" + store.String() + ")", nil
	}
	if err != nil {
		return statusDoc{}, "", err
	}
	sess := rec.Session
	st := auth.Status{
		State:                auth.StateValid,
		Since:                sess.LoggedInAt,
		AccessTokenExpiry:    sess.Expiry,
		LastRefresh:          sess.RefreshedAt,
		RefreshTokenIssuedAt: sess.RefreshTokenIssuedAt,
	}
	if !sess.RefreshTokenIssuedAt.IsZero() {
		st.RefreshTokenAge = time.Since(sess.RefreshTokenIssuedAt).Round(time.Second).String()
	}
	// Without the daemon an expired access token is still a usable session
	// when a refresh token exists: serve refreshes it on start.
	switch {
	case sess.Ended != "":
		st.State = auth.StateLoginRequired
		st.LastError = sess.Ended
	case rec.Flight != nil && rec.Flight.Uncertain:
		st.State = auth.StateLoginRequired
		st.LastError = "a refresh by " + rec.Flight.Holder + " did not finish and its outcome is unknown"
	case !time.Now().Before(sess.Expiry) && sess.RefreshToken == "":
		st.State = auth.StateLoginRequired
		st.LastError = "the access token expired and there is no refresh token"
	}
	st.Store = store.String()
	st.Refresher = sess.RefreshedBy
	doc.Status = st
	return doc, "store (" + store.String() + "); serve is not answering on " + cfg.AdminListen, nil
}

// readCACert reads the local CA certificate (never its key).
func readCACert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return x509.ParseCertificate(block.Bytes)
}

// fingerprint is the SHA-256 digest of cert in the form serve reports:
// upper-case hex pairs separated by colons.
func fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	parts := make([]string, len(sum))
	for i, v := range sum {
		parts[i] = fmt.Sprintf("%02X", v)
	}
	return strings.Join(parts, ":")
}

func daemonStatus(ctx context.Context, adminListen string) (statusDoc, error) {
	host, port, err := net.SplitHostPort(adminListen)
	if err != nil {
		return statusDoc{}, err
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/status", nil)
	if err != nil {
		return statusDoc{}, err
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return statusDoc{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusDoc{}, fmt.Errorf("admin /status answered %s", resp.Status)
	}
	var doc statusDoc
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&doc); err != nil {
		return statusDoc{}, fmt.Errorf("admin /status: %w", err)
	}
	if doc.State == "" {
		return statusDoc{}, errors.New("admin /status has no state")
	}
	return doc, nil
}

func printStatus(w io.Writer, doc statusDoc, source string, cfg *config.Config, loginHint string) {
	fmt.Fprintf(w, "state:               %s\n", doc.State)
	fmt.Fprintf(w, "source:              %s\n", source)
	if !doc.Since.IsZero() {
		fmt.Fprintf(w, "since:               %s\n", doc.Since.Local().Format(time.RFC3339))
	}
	if !doc.AccessTokenExpiry.IsZero() {
		fmt.Fprintf(w, "access token expiry: %s (%s)\n", doc.AccessTokenExpiry.Local().Format(time.RFC3339), relative(doc.AccessTokenExpiry))
	}
	if !doc.LastRefresh.IsZero() {
		fmt.Fprintf(w, "last refresh:        %s\n", doc.LastRefresh.Local().Format(time.RFC3339))
	}
	if doc.RefreshTokenAge != "" {
		fmt.Fprintf(w, "refresh token age:   %s\n", doc.RefreshTokenAge)
	}
	if doc.LastError != "" {
		fmt.Fprintf(w, "last error:          %s\n", doc.LastError)
	}
	if doc.Store != "" {
		fmt.Fprintf(w, "store:               %s\n", doc.Store)
	}
	if doc.Instance != "" {
		fmt.Fprintf(w, "instance:            %s\n", doc.Instance)
	}
	if doc.Refresher != "" {
		fmt.Fprintf(w, "last refreshed by:   %s\n", doc.Refresher)
	}
	if doc.CAFingerprint != "" {
		fmt.Fprintf(w, "CA fingerprint:      %s (valid until %s)\n", doc.CAFingerprint, doc.CANotAfter.Local().Format("2006-01-02"))
	}
	fmt.Fprintf(w, "inject hosts:        %s\n", hostList(doc.InjectHosts))
	fmt.Fprintf(w, "tunnel hosts:        %s\n", hostList(doc.TunnelHosts))
	if doc.UpstreamProxy != "" {
		fmt.Fprintf(w, "corporate proxy:     %s\n", doc.UpstreamProxy)
	}
	switch doc.State {
	case auth.StateLoggedOut, auth.StateLoginRequired:
		fmt.Fprintf(w, "action:              run `%s`\n", loginHint)
	case auth.StateDegraded:
		fmt.Fprintf(w, "action:              check the network path to %s; the proxy retries on its own\n", cfg.OAuth.TokenURL)
	}
}

func hostList(hosts []string) string {
	if len(hosts) == 0 {
		return "(none)"
	}
	return strings.Join(hosts, ", ")
}

func relative(t time.Time) string {
	d := time.Until(t).Round(time.Second)
	if d < 0 {
		return "expired " + (-d).String() + " ago"
	}
	return "in " + d.String()
}
