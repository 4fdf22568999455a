// Package anaplantest runs a fake Anaplan over TLS on loopback: an OAuth 2.0
// service with the device authorization grant (RFC 8628), refresh-token
// rotation with replay detection (RFC 9700), token revocation (RFC 7009), an
// Integration API that accepts only live access tokens, and the classic
// authentication API, which only records what reaches it.
//
// Each listener presents a certificate for "localhost", 127.0.0.1 and ::1
// signed by a CA generated at Start; clients trust it through CACertPEM,
// CertPool or WriteCAFile. The server keeps every token it issues and a
// record of every request, so tests can assert what a client really sent.
package anaplantest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
)

// DefaultClientID is the client_id the server accepts when Options.ClientID
// is empty: 32 hex characters, the shape of an Anaplan OAuth client id.
const DefaultClientID = "0123456789abcdef0123456789abcdef"

// Options configures a Server. The zero value gives Anaplan's documented
// defaults with rotating refresh tokens.
type Options struct {
	// AccessTokenLifetime is how long an access token is accepted. The
	// default is 35m (Anaplan's expires_in 2100). Sub-second lifetimes work;
	// expires_in then says 1.
	AccessTokenLifetime time.Duration

	// NonRotating makes a refresh answer without a refresh_token; the
	// presented refresh token keeps working. By default every refresh
	// rotates it and the old one dies.
	NonRotating bool

	// DeviceCodeLifetime is how long a device code can be approved and
	// exchanged. The default is 15m.
	DeviceCodeLifetime time.Duration

	// Interval is the device-flow polling interval, sent as whole seconds
	// (rounded up, at least 1). The default is 5s.
	Interval time.Duration

	// AutoApprove approves every device code as soon as it is issued.
	AutoApprove bool

	// ClientID is the only client_id accepted. The default is
	// DefaultClientID.
	ClientID string

	// Logf, if set, receives one line per notable event. Tokens never
	// appear in it.
	Logf func(format string, args ...any)

	// Now, if set, is the server's clock for token and device-code expiry,
	// poll timing and call records, so tests can move time without waiting.
	// Certificates always use the real clock.
	Now func() time.Time
}

// Server is a running fake Anaplan. Its methods are safe for concurrent use.
type Server struct {
	opts     Options
	interval time.Duration // effective device poll interval, whole seconds

	caPEM []byte
	pool  *x509.CertPool

	oauthPort, apiPort, classicPort int
	servers                         []*http.Server
	wg                              sync.WaitGroup // serve loops, connections and handlers

	closeOnce sync.Once
	done      chan struct{}

	mu      sync.Mutex
	state   oauthState
	calls   []Call
	outage  int
	secrets []string
}

// Start generates a CA and a leaf certificate and starts the OAuth, API and
// classic-auth listeners on 127.0.0.1 with random ports. When [::1] is
// available it also listens there on the same ports, so "localhost" works
// whichever address a client tries first.
func Start(opts Options) (*Server, error) {
	if opts.AccessTokenLifetime <= 0 {
		opts.AccessTokenLifetime = 35 * time.Minute
	}
	if opts.DeviceCodeLifetime <= 0 {
		opts.DeviceCodeLifetime = 15 * time.Minute
	}
	if opts.Interval <= 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}

	s := &Server{
		opts:     opts,
		interval: wholeSeconds(opts.Interval),
		done:     make(chan struct{}),
		state:    newOAuthState(),
	}

	ca, err := newCA()
	if err != nil {
		return nil, fmt.Errorf("anaplantest: %w", err)
	}
	s.caPEM = ca.certPEM
	s.pool = x509.NewCertPool()
	s.pool.AddCert(ca.cert)
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{ca.leaf},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"},
	}

	listeners := make([][]net.Listener, 3)
	ports := make([]int, 3)
	for i := range listeners {
		lns, port, err := listenLoopback()
		if err != nil {
			for _, group := range listeners {
				for _, ln := range group {
					ln.Close()
				}
			}
			return nil, fmt.Errorf("anaplantest: %w", err)
		}
		listeners[i] = lns
		ports[i] = port
	}
	s.oauthPort, s.apiPort, s.classicPort = ports[0], ports[1], ports[2]

	handlers := []http.Handler{
		s.recording(listenerOAuth, s.oauthMux()),
		s.recording(listenerAPI, http.HandlerFunc(s.serveAPI)),
		s.recording(listenerClassic, http.HandlerFunc(s.serveClassic)),
	}
	errLog := log.New(logfWriter(opts.Logf), "anaplantest: ", 0)
	for i, h := range handlers {
		srv := &http.Server{
			Handler:           h,
			TLSConfig:         tlsConf,
			TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // HTTP/1.1 only
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          errLog,
			ConnState:         s.trackConn,
		}
		s.servers = append(s.servers, srv)
		for _, ln := range listeners[i] {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				srv.Serve(tls.NewListener(ln, tlsConf))
			}()
		}
	}
	opts.Logf("listening: oauth=%s api=%s classic=%s", s.OAuthURL(), s.APIURL(), s.ClassicAuthURL())
	return s, nil
}

// listenLoopback listens on 127.0.0.1 with a random port and, when possible,
// on [::1] with the same port.
func listenLoopback() ([]net.Listener, int, error) {
	ln4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, 0, fmt.Errorf("listening on 127.0.0.1: %w", err)
	}
	port := ln4.Addr().(*net.TCPAddr).Port
	lns := []net.Listener{ln4}
	if ln6, err := net.Listen("tcp6", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		lns = append(lns, ln6)
	}
	return lns, port, nil
}

// trackConn counts every connection until it is closed, so Close can wait
// for the goroutine serving it.
func (s *Server) trackConn(_ net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		s.wg.Add(1)
	case http.StateClosed, http.StateHijacked:
		s.wg.Done()
	}
}

// Close stops every listener, closes every connection and returns once no
// goroutine of the server is left. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		for _, srv := range s.servers {
			srv.Close()
		}
		s.wg.Wait()
	})
}

// ClientID returns the client_id the server accepts.
func (s *Server) ClientID() string { return s.opts.ClientID }

// OAuthURL returns the base URL of the OAuth service, "https://localhost:PORT".
func (s *Server) OAuthURL() string { return "https://localhost:" + strconv.Itoa(s.oauthPort) }

// DeviceAuthURL returns the device authorization endpoint.
func (s *Server) DeviceAuthURL() string { return s.OAuthURL() + "/oauth/device/code" }

// TokenURL returns the token endpoint.
func (s *Server) TokenURL() string { return s.OAuthURL() + "/oauth/token" }

// RevokeURL returns the RFC 7009 revocation endpoint.
func (s *Server) RevokeURL() string { return s.OAuthURL() + "/oauth/revoke" }

// APIHost returns "localhost:PORT" of the Integration API listener, which is
// not the OAuth listener.
func (s *Server) APIHost() string { return "localhost:" + strconv.Itoa(s.apiPort) }

// APIURL returns "https://" + APIHost().
func (s *Server) APIURL() string { return "https://" + s.APIHost() }

// ClassicAuthHost returns "localhost:PORT" of the classic authentication API
// listener (/token/authenticate and friends).
func (s *Server) ClassicAuthHost() string { return "localhost:" + strconv.Itoa(s.classicPort) }

// ClassicAuthURL returns "https://" + ClassicAuthHost().
func (s *Server) ClassicAuthURL() string { return "https://" + s.ClassicAuthHost() }

// CACertPEM returns the PEM encoding of the CA that signed the server's
// certificate.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.caPEM...) }

// CertPool returns a new pool holding only the server's CA.
func (s *Server) CertPool() *x509.CertPool { return s.pool.Clone() }

// Client returns an HTTP client that trusts the server's CA and ignores any
// proxy named by the environment.
func (s *Server) Client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{RootCAs: s.CertPool(), MinVersion: tls.VersionTLS12},
	}}
}

// WriteCAFile writes the CA certificate to dir/anaplantest-ca.pem
// atomically, for clients that read trust anchors from a file (curl
// --cacert, SSL_CERT_FILE, REQUESTS_CA_BUNDLE), and returns the path.
func (s *Server) WriteCAFile(dir string) (string, error) {
	path := filepath.Join(dir, "anaplantest-ca.pem")
	if err := securefile.WriteFile(path, s.caPEM, 0o644); err != nil {
		return "", fmt.Errorf("anaplantest: writing CA file: %w", err)
	}
	return path, nil
}

// SetTokenOutage makes /oauth/token answer every request with status and
// {"error":"temporarily_unavailable"}; 0 restores normal service.
func (s *Server) SetTokenOutage(status int) {
	s.mu.Lock()
	s.outage = status
	s.mu.Unlock()
	s.opts.Logf("token endpoint outage: status=%d", status)
}

// IssuedSecrets returns every access token, refresh token and device code
// issued so far, so a test can check that none of them leaked into logs or
// answers.
func (s *Server) IssuedSecrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.secrets...)
}

// WaitForPendingCode returns the user code of the newest device code that is
// neither approved, denied nor expired, waiting for one to be issued if
// there is none. It fails when ctx ends or the server is closed. With
// Options.AutoApprove no code is ever pending, so it only waits.
func (s *Server) WaitForPendingCode(ctx context.Context) (string, error) {
	for {
		s.mu.Lock()
		code, ok := s.state.newestPending(s.opts.Now())
		issued := s.state.issued
		s.mu.Unlock()
		if ok {
			return code, nil
		}
		select {
		case <-issued:
		case <-ctx.Done():
			return "", fmt.Errorf("anaplantest: waiting for a device code: %w", ctx.Err())
		case <-s.done:
			return "", errors.New("anaplantest: waiting for a device code: server closed")
		}
	}
}

// now returns the server's clock.
func (s *Server) now() time.Time { return s.opts.Now() }

// wholeSeconds rounds d up to whole seconds, at least one.
func wholeSeconds(d time.Duration) time.Duration {
	secs := (d + time.Second - 1) / time.Second
	if secs < 1 {
		secs = 1
	}
	return secs * time.Second
}

// seconds returns d in whole seconds rounded down, at least one: the value
// an expires_in field carries.
func seconds(d time.Duration) int64 {
	if n := int64(d / time.Second); n > 1 {
		return n
	}
	return 1
}

// logfWriter adapts Logf to the io.Writer that http.Server's error log needs.
type logfWriter func(format string, args ...any)

func (f logfWriter) Write(p []byte) (int, error) {
	msg := string(p)
	if len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	f("%s", msg)
	return len(p), nil
}
