package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/internal/config"
)

// Outcomes of a doctor check.
const (
	checkPass = "pass"
	checkFail = "fail"
	checkSkip = "skip" // not applicable here, or nothing to check yet
)

// checkResult is one line of `anaplan-proxy doctor`.
type checkResult struct {
	Check  string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	// Fix says what to do when the check fails.
	Fix string `json:"fix,omitempty"`
}

// maxClockSkew is how far the local clock may be from the token endpoint's.
const maxClockSkew = time.Minute

// doctorProbeTimeout bounds each network probe.
const doctorProbeTimeout = 10 * time.Second

func cmdDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cf := newCommandFlags("doctor", "Check the set-up, in order, one line per check with what to do when it fails: the config, the state files'\n"+
		"owners and modes, the session, DNS and TLS to the OAuth and inject hosts, the clock, the proxy listener, a request through it,\n"+
		"and whether curl, Python and a Java truststore trust the local CA. Run it as the service user. Exit 0 when every check passes.", stderr)
	asJSON := cf.fs.Bool("json", false, "print the checks as JSON")
	truststore := cf.fs.String("truststore", "", "Java truststore `file` (JKS or PKCS12) to check for the local CA")
	storepass := cf.fs.String("truststore-password", "changeit", "`password` of the Java truststore")
	offline := cf.fs.Bool("skip-network", false, "skip the checks that reach the OAuth and inject hosts (DNS, TLS, clock)")
	cfg, err := cf.parse(args)
	var results []checkResult
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			if ue.err != nil {
				fmt.Fprintf(stderr, "anaplan-proxy doctor: %v\n", ue.err)
			}
			return exitUsage
		}
		results = append(results, checkResult{Check: "config", Status: checkFail, Detail: err.Error(),
			Fix: "correct the key named above (in the file, the ANAPLAN_PROXY_* variable or the flag it names)"})
	} else {
		d := doctor{cfg: cfg, configPath: cf.configPath, truststore: *truststore, storepass: *storepass, offline: *offline, getenv: os.Getenv}
		results = d.run(ctx)
	}
	failed := false
	for _, r := range results {
		failed = failed || r.Status == checkFail
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			OK     bool          `json:"ok"`
			Checks []checkResult `json:"checks"`
		}{!failed, results})
	} else {
		printChecks(stdout, results)
	}
	if failed {
		return exitError
	}
	return exitOK
}

// printChecks writes one line per check, and the fix under a failed one.
func printChecks(w io.Writer, results []checkResult) {
	for _, r := range results {
		mark := map[string]string{checkPass: "ok  ", checkFail: "FAIL", checkSkip: "skip"}[r.Status]
		lines := strings.Split(r.Detail, "\n")
		fmt.Fprintf(w, "%s %-16s %s\n", mark, r.Check, lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(w, "     %-16s %s\n", "", l)
		}
		if r.Status == checkFail && r.Fix != "" {
			fmt.Fprintf(w, "     %-16s fix: %s\n", "", r.Fix)
		}
	}
}

// doctor runs the checks against one configuration.
type doctor struct {
	cfg        *config.Config
	configPath string
	truststore string
	storepass  string
	offline    bool // skip DNS, TLS and clock checks
	getenv     func(string) string
}

func (d *doctor) run(ctx context.Context) []checkResult {
	cfg := d.cfg
	src := "defaults, environment and flags (no --config)"
	if d.configPath != "" {
		src = d.configPath
	}
	out := []checkResult{{Check: "config", Status: checkPass, Detail: src + ": parsed, every value checked"}}
	if strings.TrimSpace(cfg.OAuth.ClientID) == "" {
		out[0] = checkResult{Check: "config", Status: checkFail, Detail: src + ": oauth.client_id is not set",
			Fix: "put the device-grant client's ID in oauth.client_id (Administration > Security > OAuth Clients)"}
	}
	out = append(out, d.checkStateDir())
	out = append(out, d.checkFiles()...)
	session := d.checkSession(ctx)
	out = append(out, session)

	if d.offline {
		out = append(out, checkResult{Check: "network", Status: checkSkip, Detail: "--skip-network: DNS, TLS and the clock not checked"})
	} else {
		out = append(out, d.checkNetwork(ctx)...)
	}
	listening := d.checkListener(ctx)
	out = append(out, listening)
	out = append(out, d.checkThroughProxy(ctx, session.Status == checkPass && listening.Status == checkPass))
	out = append(out, d.checkTrust(ctx)...)
	return out
}

// checkNetwork checks the OAuth host and each inject host, then the clock
// against the token endpoint's Date.
func (d *doctor) checkNetwork(ctx context.Context) []checkResult {
	cfg := d.cfg
	var out []checkResult
	oauthRoots, oerr := config.RootPool(cfg.OAuth.CAFile, "oauth.ca_file")
	apiRoots, aerr := config.RootPool(cfg.Upstream.CAFile, "upstream.ca_file")
	var tokenDate time.Time
	if u, err := url.Parse(cfg.OAuth.TokenURL); err == nil && oerr == nil {
		r, date := d.checkHost(ctx, "oauth host", u.Host, u.String(), oauthRoots, "oauth.ca_file")
		out = append(out, r)
		tokenDate = date
	}
	for _, h := range cfg.Inject.Hosts {
		if aerr != nil {
			break
		}
		hostport := h.String()
		if strings.HasPrefix(hostport, "*.") {
			out = append(out, checkResult{Check: "inject host", Status: checkSkip,
				Detail: hostport + ": a wildcard; a host under it is checked when a script calls it"})
			continue
		}
		r, _ := d.checkHost(ctx, "inject host", hostport, "https://"+hostport+"/", apiRoots, "upstream.ca_file")
		out = append(out, r)
	}
	return append(out, checkClock(tokenDate, time.Now()))
}

// serviceUserHint is how the checks tell an operator to run as the owner.
const serviceUserHint = "run doctor as the service user: sudo -u anaplan-proxy anaplan-proxy doctor"

// checkStateDir: the state directory exists, is a directory, is 0700 and is
// owned by the user running the check (the service user).
func (d *doctor) checkStateDir() checkResult {
	dir := d.cfg.StateDir
	r := checkResult{Check: "state dir"}
	if d.cfg.Store.Type != config.StoreFile {
		r.Status, r.Detail = checkSkip, "not used: the session and the CA are kept in "+d.cfg.Store.Type+" ("+d.cfg.Store.PostgresDSN.String()+")"
		return r
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		r.Status, r.Detail = checkFail, dir+": does not exist"
		r.Fix = "sudo install -d -m 0700 -o anaplan-proxy -g anaplan-proxy " + dir
		return r
	case err != nil:
		r.Status, r.Detail, r.Fix = checkFail, dir+": "+err.Error(), serviceUserHint
		return r
	case !fi.IsDir():
		r.Status, r.Detail, r.Fix = checkFail, dir+": not a directory", "point state_dir at a directory"
		return r
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		r.Status, r.Detail = checkFail, fmt.Sprintf("%s: mode %04o lets other users see or change the session and the CA key", dir, perm)
		r.Fix = "chmod 700 " + dir
		return r
	}
	if uid, ok := fileOwner(fi); ok && uid != os.Geteuid() {
		r.Status, r.Detail = checkFail, fmt.Sprintf("%s: owned by uid %d, but doctor runs as uid %d", dir, uid, os.Geteuid())
		r.Fix = serviceUserHint + " (or chown the directory to the user serve runs as)"
		return r
	}
	r.Status, r.Detail = checkPass, dir+": 0700, owned by this user"
	return r
}

// checkFiles checks the owner and mode of each file that holds a secret
// (0600, owned by the state directory's owner) and of the CA certificate
// (writable by its owner only).
func (d *doctor) checkFiles() []checkResult {
	dirOwner := -1
	if fi, err := os.Stat(d.cfg.StateDir); err == nil {
		dirOwner, _ = fileOwner(fi)
	}
	type file struct {
		path    string
		secret  bool
		missing string // why it may not exist yet
	}
	var files []file
	if d.cfg.Store.Type == config.StoreFile {
		// A shared store keeps the session and the CA in the database.
		files = []file{
			{sessionPath(d.cfg), true, "created by login"},
			{filepath.Join(d.cfg.StateDir, "ca.key"), true, "created when serve first starts"},
			{filepath.Join(d.cfg.StateDir, "ca.crt"), false, "created when serve first starts"},
		}
	}
	if d.cfg.Store.KeyFile != "" {
		files = append(files, file{d.cfg.Store.KeyFile, true, ""})
	}
	var out []checkResult
	for _, f := range files {
		r := checkResult{Check: "file"}
		fi, err := os.Lstat(f.path)
		switch {
		case errors.Is(err, fs.ErrNotExist) && f.missing != "":
			r.Status, r.Detail = checkSkip, f.path+": not there yet ("+f.missing+")"
		case err != nil:
			r.Status, r.Detail, r.Fix = checkFail, f.path+": "+err.Error(), serviceUserHint
		case !fi.Mode().IsRegular():
			r.Status, r.Detail = checkFail, f.path+": not a regular file (a link or device is never trusted with a secret)"
			r.Fix = "replace it with the file itself"
		case f.secret && fi.Mode().Perm()&0o077 != 0:
			r.Status, r.Detail = checkFail, fmt.Sprintf("%s: mode %04o lets other users read it", f.path, fi.Mode().Perm())
			r.Fix = "chmod 600 " + f.path
		case !f.secret && fi.Mode().Perm()&0o022 != 0:
			r.Status, r.Detail = checkFail, fmt.Sprintf("%s: mode %04o lets other users change it", f.path, fi.Mode().Perm())
			r.Fix = "chmod 644 " + f.path
		default:
			uid, _ := fileOwner(fi)
			if dirOwner >= 0 && uid != dirOwner && filepath.Dir(f.path) == filepath.Clean(d.cfg.StateDir) {
				r.Status, r.Detail = checkFail, fmt.Sprintf("%s: owned by uid %d, the state directory by uid %d", f.path, uid, dirOwner)
				r.Fix = fmt.Sprintf("chown %d %s", dirOwner, f.path)
			} else {
				r.Status, r.Detail = checkPass, fmt.Sprintf("%s: %04o, uid %d", f.path, fi.Mode().Perm(), uid)
			}
		}
		out = append(out, r)
	}
	return out
}

func fileOwner(fi fs.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}

// checkSession reports the session's state, from the running daemon when it
// answers, else from the stored session.
func (d *doctor) checkSession(ctx context.Context) checkResult {
	r := checkResult{Check: "session"}
	if _, err := os.Stat(d.cfg.StateDir); err != nil && d.cfg.Store.Type == config.StoreFile {
		r.Status, r.Detail = checkFail, "no state directory, so no session (see above)"
		r.Fix = "create the state directory, then run: " + loginCommand(d.configPath)
		return r
	}
	doc, source, err := readStatus(ctx, d.cfg)
	if err != nil {
		r.Status, r.Detail, r.Fix = checkFail, err.Error(), serviceUserHint
		return r
	}
	st := doc.Status
	login := loginCommand(d.configPath)
	switch st.State {
	case auth.StateLoggedOut:
		r.Status, r.Detail, r.Fix = checkFail, "no session yet ("+source+")", "run: "+login
		return r
	case auth.StateLoginRequired:
		r.Status, r.Detail, r.Fix = checkFail, "login required: "+st.LastError+" ("+source+")", "run: "+login
		return r
	case auth.StateDegraded:
		r.Status, r.Detail = checkFail, "degraded: refreshing fails ("+st.LastError+"); the access token still works until "+st.AccessTokenExpiry.Local().Format(time.RFC3339)
		r.Fix = "check the network path to " + d.cfg.OAuth.TokenURL + "; the proxy retries on its own"
		return r
	}
	lines := []string{fmt.Sprintf("%s (%s); access token valid until %s", st.State, source, st.AccessTokenExpiry.Local().Format(time.RFC3339))}
	if !st.RefreshTokenIssuedAt.IsZero() {
		lines = append(lines, fmt.Sprintf("refresh token issued %s (%s ago); Anaplan does not say when it expires: the tenant administrator sets it (rotatable tokens: 12 hours by default)",
			st.RefreshTokenIssuedAt.Local().Format(time.RFC3339), time.Since(st.RefreshTokenIssuedAt).Round(time.Second)))
	}
	r.Status, r.Detail = checkPass, strings.Join(lines, "\n")
	return r
}

// checkHost resolves hostport (directly, or leaves it to the corporate
// proxy) and sends one HEAD request to target over verified TLS. It returns
// the answer's Date header for the clock check.
func (d *doctor) checkHost(ctx context.Context, check, hostport, target string, roots *x509.CertPool, caKey string) (checkResult, time.Time) {
	r := checkResult{Check: check}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, "443"
	}
	up := d.cfg.Upstream.Proxy
	via := ""
	if up != nil && !up.Bypass(host, atoiOr(port, 443)) {
		via = " through the corporate proxy " + up.String()
	} else {
		up = nil
		rctx, cancel := context.WithTimeout(ctx, doctorProbeTimeout)
		_, err := net.DefaultResolver.LookupHost(rctx, host)
		cancel()
		if err != nil {
			r.Status, r.Detail = checkFail, fmt.Sprintf("%s: does not resolve: %v", hostport, err)
			r.Fix = "check DNS on this machine (/etc/resolv.conf), or set upstream.proxy when only the corporate proxy resolves outside names"
			return r, time.Time{}
		}
	}
	tr := &http.Transport{
		Proxy:               nil,
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: doctorProbeTimeout,
		DisableKeepAlives:   true,
	}
	if up != nil {
		tr.Proxy = up.ProxyFunc()
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: doctorProbeTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, target, nil)
	if err != nil {
		r.Status, r.Detail = checkFail, fmt.Sprintf("%s: %v", hostport, err)
		return r, time.Time{}
	}
	resp, err := client.Do(req)
	if err != nil {
		var cv *tls.CertificateVerificationError
		var ua x509.UnknownAuthorityError
		var hn x509.HostnameError
		switch {
		case errors.As(err, &cv), errors.As(err, &ua), errors.As(err, &hn):
			r.Status, r.Detail = checkFail, fmt.Sprintf("%s: the certificate does not verify%s: %v", hostport, via, err)
			r.Fix = "if a TLS-inspecting firewall re-signs this traffic, put its CA in " + caKey
		default:
			r.Status, r.Detail = checkFail, fmt.Sprintf("%s: unreachable%s: %v", hostport, via, err)
			r.Fix = "allow outbound TCP to " + net.JoinHostPort(host, port) + " from this machine, or set upstream.proxy (README: Corporate proxy and what to allow-list)"
		}
		return r, time.Time{}
	}
	resp.Body.Close()
	date, _ := http.ParseTime(resp.Header.Get("Date"))
	r.Status, r.Detail = checkPass, fmt.Sprintf("%s: resolves, TLS verified%s (HTTP %d)", hostport, via, resp.StatusCode)
	return r, date
}

func atoiOr(s string, def int) int {
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	return def
}

// checkClock compares the local clock with the token endpoint's Date.
func checkClock(tokenDate, now time.Time) checkResult {
	r := checkResult{Check: "clock"}
	if tokenDate.IsZero() {
		r.Status, r.Detail = checkSkip, "the token endpoint sent no Date to compare with"
		return r
	}
	skew := now.Sub(tokenDate)
	abs := skew.Abs()
	if abs <= maxClockSkew {
		r.Status, r.Detail = checkPass, fmt.Sprintf("within %s of the token endpoint's Date", maxClockSkew)
		return r
	}
	dir := "ahead of"
	if skew < 0 {
		dir = "behind"
	}
	r.Status = checkFail
	r.Detail = fmt.Sprintf("this machine's clock is %s %s the token endpoint's Date: tokens would be refreshed at the wrong time", abs.Round(time.Second), dir)
	r.Fix = "synchronise the clock: timedatectl set-ntp true (or chronyc makestep)"
	return r
}

// clientAddr is the address a local client dials for a listen address.
func clientAddr(listen string) (string, bool) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" {
		return "", false
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), true
}

// checkListener: something accepts connections on the proxy port.
func (d *doctor) checkListener(ctx context.Context) checkResult {
	r := checkResult{Check: "proxy listener"}
	addr, ok := clientAddr(d.cfg.Listen)
	if !ok {
		r.Status, r.Detail = checkSkip, d.cfg.Listen+": port 0 is chosen when serve starts; see its start-up line"
		return r
	}
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	if err != nil {
		r.Status, r.Detail = checkFail, addr+": nothing is listening: "+err.Error()
		r.Fix = "start the proxy (after login): sudo systemctl enable --now anaplan-proxy; journalctl -u anaplan-proxy says why it stopped"
		return r
	}
	conn.Close()
	r.Status, r.Detail = checkPass, addr+": listening"
	return r
}

// checkThroughProxy sends one request through the proxy to the first inject
// host that is not a wildcard and reports whether it went out with the
// token: the host answers, and does not refuse the token.
func (d *doctor) checkThroughProxy(ctx context.Context, ready bool) checkResult {
	r := checkResult{Check: "through proxy"}
	if !ready {
		r.Status, r.Detail = checkSkip, "needs a session and a listening proxy (see above)"
		return r
	}
	if d.cfg.Clients.UsersFile != "" {
		r.Status, r.Detail = checkSkip, "the proxy asks for a user (clients.users_file); try: curl -U USER --proxy http://"+d.cfg.Listen+" https://HOST/2/0/users/me"
		return r
	}
	var host string
	for _, h := range d.cfg.Inject.Hosts {
		if !strings.HasPrefix(h.String(), "*.") {
			host = h.String()
			break
		}
	}
	if host == "" {
		r.Status, r.Detail = checkSkip, "every inject host is a wildcard"
		return r
	}
	caPEM, err := d.caPEM(ctx)
	pool := x509.NewCertPool()
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		r.Status, r.Detail, r.Fix = checkFail, "cannot read the local CA certificate", "start serve once; it creates ca.crt"
		return r
	}
	addr, _ := clientAddr(d.cfg.Listen)
	proxyURL := &url.URL{Scheme: "http", Host: addr}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * doctorProbeTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	target := "https://" + host + "/2/0/users/me"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		r.Status, r.Detail = checkFail, err.Error()
		return r
	}
	resp, err := client.Do(req)
	if err != nil {
		r.Status, r.Detail = checkFail, "GET "+target+" through "+addr+": "+err.Error()
		r.Fix = "anaplan-proxy status and the journal say why; a CONNECT refusal names its reason"
		return r
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if ps := resp.Header.Get("Proxy-Status"); ps != "" && resp.StatusCode >= 400 {
		r.Status = checkFail
		r.Detail = fmt.Sprintf("GET %s: the proxy answered %d: %s", target, resp.StatusCode, strings.TrimSpace(firstLine(body)))
		r.Fix = "follow the proxy's answer above"
		return r
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		r.Status = checkFail
		r.Detail = fmt.Sprintf("GET %s: %s refused the token (HTTP %d)", target, host, resp.StatusCode)
		r.Fix = "check that the integration user may use this host, and that inject.scheme suits it"
	default:
		r.Status, r.Detail = checkPass, fmt.Sprintf("GET %s: HTTP %d with the session's token", target, resp.StatusCode)
	}
	return r
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return string(line)
}

// checkTrust reports whether curl, Python and the Java truststore trust the
// local CA.
func (d *doctor) checkTrust(ctx context.Context) []checkResult {
	caPath := filepath.Join(d.cfg.StateDir, "ca.crt")
	caPEM, err := d.caPEM(ctx)
	if err != nil {
		return []checkResult{{Check: "trust", Status: checkSkip, Detail: "no local CA yet (serve creates it): " + err.Error()}}
	}
	block, _ := pem.Decode(caPEM)
	if block == nil {
		return []checkResult{{Check: "trust", Status: checkFail, Detail: "the local CA certificate is not PEM", Fix: "see anaplan-proxy ca"}}
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return []checkResult{{Check: "trust", Status: checkFail, Detail: "the local CA certificate does not parse: " + err.Error(), Fix: "see anaplan-proxy ca"}}
	}
	if d.cfg.Store.Type != config.StoreFile {
		caPath = "the file that `anaplan-proxy ca` writes"
	}
	systemFix := "add it to the system store: sudo cp " + caPath + " /usr/local/share/ca-certificates/anaplan-proxy.crt && sudo update-ca-certificates" +
		" (RHEL: /etc/pki/ca-trust/source/anchors/ and update-ca-trust)"
	var out []checkResult

	// curl: CURL_CA_BUNDLE, SSL_CERT_FILE, else the distribution's bundle.
	bundle, from := d.getenv("CURL_CA_BUNDLE"), "CURL_CA_BUNDLE"
	if bundle == "" {
		bundle, from = d.getenv("SSL_CERT_FILE"), "SSL_CERT_FILE"
	}
	if bundle == "" {
		from = "the system bundle"
		for _, p := range []string{"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem"} {
			if _, err := os.Stat(p); err == nil {
				bundle = p
				break
			}
		}
	}
	out = append(out, trustResult("trust: curl", bundle, from, ca, systemFix+", or give curl --cacert "+caPath))

	// Python: the ssl module's default store, and certifi (requests).
	if py, err := exec.LookPath("python3"); err != nil {
		out = append(out, checkResult{Check: "trust: python", Status: checkSkip, Detail: "python3 is not installed"})
	} else {
		files, err := pythonStores(ctx, py)
		if err != nil {
			out = append(out, checkResult{Check: "trust: python", Status: checkFail, Detail: "python3 did not say where its CA store is: " + err.Error()})
		} else {
			out = append(out, trustResult("trust: python", files.SSL, "ssl's default store", ca, systemFix+", or export SSL_CERT_FILE="+caPath+" for the scripts"))
			rb := d.getenv("REQUESTS_CA_BUNDLE")
			switch {
			case rb != "":
				out = append(out, trustResult("trust: requests", rb, "REQUESTS_CA_BUNDLE", ca, "add the CA to "+rb+", or point REQUESTS_CA_BUNDLE at a bundle that holds it"))
			case files.Certifi != "":
				out = append(out, trustResult("trust: requests", files.Certifi, "certifi", ca,
					"requests trusts certifi, not the system store: export REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt after adding the CA there"))
			default:
				out = append(out, checkResult{Check: "trust: requests", Status: checkSkip, Detail: "certifi is not installed (requests is not either)"})
			}
		}
	}

	// Java: a truststore given on the command line.
	if d.truststore == "" {
		out = append(out, checkResult{Check: "trust: java", Status: checkSkip, Detail: "give --truststore FILE to check a Java truststore"})
	} else {
		out = append(out, javaTrust(ctx, d.truststore, d.storepass, ca, caPath))
	}
	return out
}

// caPEM returns the local CA certificate: ca.crt in the state directory,
// or, with a shared store, the one kept in it. It never creates a CA in the
// state directory.
func (d *doctor) caPEM(ctx context.Context) ([]byte, error) {
	if d.cfg.Store.Type == config.StoreFile {
		return os.ReadFile(filepath.Join(d.cfg.StateDir, "ca.crt"))
	}
	return caCertPEM(ctx, d.cfg)
}

// pythonFiles are the CA files Python uses.
type pythonFiles struct {
	SSL     string `json:"ssl"`
	Certifi string `json:"certifi"`
}

func pythonStores(ctx context.Context, py string) (pythonFiles, error) {
	const script = `import json, ssl
p = ssl.get_default_verify_paths()
c = ""
try:
    import certifi
    c = certifi.where()
except Exception:
    pass
print(json.dumps({"ssl": p.cafile or p.openssl_cafile or "", "certifi": c}))`
	ctx, cancel := context.WithTimeout(ctx, doctorProbeTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c", script).Output()
	if err != nil {
		return pythonFiles{}, err
	}
	var f pythonFiles
	if err := json.Unmarshal(out, &f); err != nil {
		return pythonFiles{}, err
	}
	return f, nil
}

// trustResult checks whether the PEM bundle at path holds ca.
func trustResult(check, path, from string, ca *x509.Certificate, fix string) checkResult {
	r := checkResult{Check: check}
	if path == "" {
		r.Status, r.Detail, r.Fix = checkFail, "no CA bundle found", fix
		return r
	}
	data, err := os.ReadFile(path)
	if err != nil {
		r.Status, r.Detail, r.Fix = checkFail, fmt.Sprintf("%s (%s): %v", path, from, err), fix
		return r
	}
	if holdsCert(data, ca) {
		r.Status, r.Detail = checkPass, fmt.Sprintf("%s (%s) holds the local CA", path, from)
		return r
	}
	r.Status, r.Detail, r.Fix = checkFail, fmt.Sprintf("%s (%s) does not hold the local CA", path, from), fix
	return r
}

// holdsCert reports whether PEM data holds cert.
func holdsCert(data []byte, cert *x509.Certificate) bool {
	for len(data) > 0 {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if b.Type == "CERTIFICATE" && bytes.Equal(b.Bytes, cert.Raw) {
			return true
		}
	}
	return false
}

// javaTrust lists a truststore with keytool and looks for ca in it.
func javaTrust(ctx context.Context, store, pass string, ca *x509.Certificate, caPath string) checkResult {
	r := checkResult{Check: "trust: java"}
	fix := "keytool -importcert -noprompt -alias anaplan-proxy -file " + caPath + " -keystore " + store
	keytool, err := exec.LookPath("keytool")
	if err != nil {
		r.Status, r.Detail = checkFail, "keytool is not installed; it is needed to read "+store
		r.Fix = "install a JDK or JRE (Debian: default-jre-headless)"
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, 2*doctorProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, keytool, "-list", "-rfc", "-keystore", store, "-storepass:env", "ANAPLAN_PROXY_TRUSTSTORE_PASSWORD")
	cmd.Env = append(os.Environ(), "ANAPLAN_PROXY_TRUSTSTORE_PASSWORD="+pass)
	out, err := cmd.Output()
	if err != nil {
		r.Status, r.Detail = checkFail, fmt.Sprintf("keytool cannot read %s: %s", store, strings.TrimSpace(firstLine(out)))
		r.Fix = "check the file and --truststore-password"
		return r
	}
	if holdsCert(out, ca) {
		r.Status, r.Detail = checkPass, store+" holds the local CA"
		return r
	}
	r.Status, r.Detail, r.Fix = checkFail, store+" does not hold the local CA", fix
	return r
}
