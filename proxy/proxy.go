package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/anaplan-proxy/anaplan-proxy/proxy/internal/h1"
)

// Timeouts and limits of the proxy. They are generous: Anaplan uploads and
// downloads move chunks of up to 50 MB, and scripts keep connections open.
const (
	dialTimeout           = 30 * time.Second
	tlsHandshakeTimeout   = 15 * time.Second
	responseHeaderTimeout = 5 * time.Minute
	maxReplayBody         = 1 << 20
	copyBufferSize        = 32 << 10
	upstreamWriteBuffer   = 16 << 10
	forcedCloseGrace      = 5 * time.Second
)

// Config configures a Proxy. Inject and Tunnel take host patterns as
// described at ValidateHostPattern; a CONNECT to any other host is refused.
type Config struct {
	// Inject lists the hosts whose TLS is intercepted and whose requests
	// get the Authorization header, e.g. "api.anaplan.com",
	// "*.api.anaplan.com". A pattern without a port allows port 443 only.
	Inject []string
	// Tunnel lists the hosts whose CONNECTs are passed through untouched:
	// no interception, no token.
	Tunnel []string
	// Compat lists Anaplan's classic authentication hosts, e.g.
	// "auth.anaplan.com": TLS is intercepted and the proxy answers
	// /token/authenticate, refresh, validate and logout itself with a
	// placeholder token that inject hosts swap for the access token.
	// Nothing is ever sent to these hosts.
	Compat []string
	// Scheme is the authorization scheme: "AnaplanAuthToken" (default) or
	// "Bearer".
	Scheme string
	// ClientAuthorization says what happens to an Authorization header the
	// client sent to an inject host: "replace" (default) replaces it with
	// the proxy's, "keep" forwards the client's and adds none, "reject"
	// refuses the request with 403.
	ClientAuthorization string
	// Tokens supplies the access token. Required.
	Tokens TokenSource
	// CA signs the certificates shown to clients of inject hosts. Required
	// when Inject is not empty; it must permit every Inject host.
	CA *CA
	// UpstreamRoots verifies the upstream servers' certificates; nil means
	// the system roots. Verification is never skipped.
	UpstreamRoots *x509.CertPool
	// Logger receives the access log and errors; nil discards them.
	Logger *slog.Logger
	// Observer receives events for metrics; may be nil.
	Observer Observer

	// AllowCIDRs lists the client addresses that may use the proxy. With
	// neither AllowCIDRs nor Users, only loopback clients are served;
	// with Users alone, any address that authenticates.
	AllowCIDRs []netip.Prefix
	// Users, when set, requires every client to send Basic credentials of
	// one of them in Proxy-Authorization; see LoadHTPasswd.
	Users *Users

	// AllowPrivateUpstream lets the proxy connect to loopback, private,
	// link-local, CGNAT, unique-local and other non-public addresses,
	// which it refuses by default after resolving a destination.
	AllowPrivateUpstream bool
	// UpstreamAllowCIDRs lists non-public destination addresses the proxy
	// may connect to even without AllowPrivateUpstream.
	UpstreamAllowCIDRs []netip.Prefix
	// Resolver resolves destination names; nil means net.DefaultResolver.
	Resolver Resolver
	// UpstreamProxy, when set, is the corporate proxy that connections to
	// inject and tunnel hosts go through (except those its no-proxy
	// patterns match). An https:// one is verified with UpstreamRoots.
	UpstreamProxy *UpstreamProxy

	// PlainHTTP lets loopback clients send plain-HTTP requests for inject
	// hosts (GET http://api.anaplan.com/... to the proxy): the proxy sends
	// them on over verified HTTPS with the token, for tools that cannot
	// trust the local CA. Off, such requests are refused with a reason.
	PlainHTTP bool

	// Limits bounds connections, header sizes and idle times.
	Limits Limits
	// Pool bounds the idle upstream connections that intercepted
	// requests share.
	Pool PoolLimits
}

// Client authorization modes.
const (
	clientAuthReplace = "replace"
	clientAuthKeep    = "keep"
	clientAuthReject  = "reject"
)

// Proxy is an HTTPS forward proxy. It serves CONNECT requests: for inject
// hosts it terminates TLS with a certificate from the local CA, adds the
// Authorization header and forwards each request over verified TLS; for
// tunnel hosts it relays bytes; everything else is refused with a reason.
type Proxy struct {
	scheme     string
	clientAuth string
	plainHTTP  bool
	tokens     TokenSource
	access     *access
	limits     Limits
	log        *slog.Logger
	obs        Observer
	policy     *policy
	certs      *leafCache

	gp             *goproxy.ProxyHttpServer
	injectAction   *goproxy.ConnectAction
	tunnelAction   *goproxy.ConnectAction
	dialer         *guardedDialer
	transport      *http.Transport
	buffers        *sync.Pool // *[]byte of copyBufferSize
	client         *h1.Client // sends intercepted requests upstream, on pooled connections
	upstreamTLS    *tls.Config
	auth           atomic.Pointer[authValue]
	clientTLS      *tls.Config
	baseCtx        context.Context
	cancelBase     context.CancelFunc
	handlers       tracker
	tunnels        tracker
	intercepts     tracker
	engine         *h1.Server // serves intercepted connections
	mu             sync.Mutex
	closing        bool
	tunnelConns    map[net.Conn]struct{}
	interceptConns map[*h1.ServerConn]struct{}
	shutdownOnce   sync.Once
	shutdownError  error

	// generalOnly turns the fast path off, for tests that compare it
	// with the general way.
	generalOnly bool
	// transportOnly sends every request through the shared transport,
	// for tests that compare it with the direct path.
	transportOnly bool
	// bodyWaits bounds the requests whose body is still arriving.
	bodyWaits bodyWaits
}

// New checks cfg and returns a Proxy. Serve it with an http.Server (its
// ServeHTTP is the handler for the proxy listener) and stop it with
// Shutdown after shutting that server down.
func New(cfg Config) (*Proxy, error) {
	if cfg.Tokens == nil {
		return nil, errors.New("proxy: Config.Tokens is required")
	}
	pl, err := newPolicy(cfg.Inject, cfg.Tunnel)
	if err == nil {
		err = pl.addCompat(cfg.Compat)
	}
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	scheme, err := canonicalScheme(cfg.Scheme)
	if err != nil {
		return nil, err
	}
	clientAuth := strings.ToLower(cfg.ClientAuthorization)
	switch clientAuth {
	case "":
		clientAuth = clientAuthReplace
	case clientAuthReplace, clientAuthKeep, clientAuthReject:
	default:
		return nil, fmt.Errorf("proxy: client authorization mode %q is not one of replace, keep, reject", cfg.ClientAuthorization)
	}
	if intercepted := slices.Concat(pl.inject, pl.compat); len(intercepted) > 0 {
		if cfg.CA == nil {
			return nil, errors.New("proxy: Config.CA is required to intercept the inject and compat hosts")
		}
		for _, hp := range intercepted {
			if !cfg.CA.permits(hp) {
				return nil, fmt.Errorf("proxy: the local CA is not allowed to sign for %s: remove ca.crt and ca.key to create a new CA for the configured hosts, then redistribute it to clients", hp.text)
			}
		}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	obs := cfg.Observer
	if obs == nil {
		obs = nopObserver{}
	}

	for _, list := range [][]netip.Prefix{cfg.AllowCIDRs, cfg.UpstreamAllowCIDRs} {
		for _, pfx := range list {
			if !pfx.IsValid() {
				return nil, errors.New("proxy: an address prefix in the configuration is not valid")
			}
		}
	}
	resolver := cfg.Resolver
	if resolver == nil {
		resolver = net.DefaultResolver
	}

	p := &Proxy{
		scheme:     scheme,
		clientAuth: clientAuth,
		plainHTTP:  cfg.PlainHTTP,
		tokens:     cfg.Tokens,
		access:     &access{allow: masked(cfg.AllowCIDRs), users: cfg.Users},
		limits:     cfg.Limits.withDefaults(),
		log:        logger,
		obs:        obs,
		policy:     pl,
		dialer: &guardedDialer{
			dialer:       &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second},
			resolver:     resolver,
			allowPrivate: cfg.AllowPrivateUpstream,
			allow:        masked(cfg.UpstreamAllowCIDRs),
			via:          cfg.UpstreamProxy,
			viaRoots:     cfg.UpstreamRoots,
		},
		tunnelConns:    make(map[net.Conn]struct{}),
		interceptConns: make(map[*h1.ServerConn]struct{}),
	}
	p.bodyWaits.max = int64(p.limits.MaxBodyWaits)
	p.baseCtx, p.cancelBase = context.WithCancel(context.Background())
	if cfg.CA != nil {
		p.certs = newLeafCache(leafCacheSize, cfg.CA.signLeaf, obs.CertCache)
	}
	// HTTP/1.1 only, one connection per concurrent request: measured on
	// loopback, HTTP/2 to the upstream costs CPU per request and holds
	// uploads to its flow-control window, while each HTTP/1.1 connection
	// streams at TLS speed. Anaplan's API hosts speak both.
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	p.transport = &http.Transport{
		Proxy:       nil, // never chain through the environment's proxy
		DialContext: p.dialer.DialContext,
		TLSClientConfig: &tls.Config{
			RootCAs:            cfg.UpstreamRoots,
			MinVersion:         tls.VersionTLS12,
			ClientSessionCache: tls.NewLRUClientSessionCache(256),
		},
		Protocols:             protocols,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		ResponseHeaderTimeout: responseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		MaxIdleConns:          200,
		MaxIdleConnsPerHost:   100,
		IdleConnTimeout:       90 * time.Second,
		// Request bodies leave in TLS records of up to 16 KiB, not in
		// the 4 KiB pieces of the default buffer.
		WriteBufferSize: upstreamWriteBuffer,
	}
	p.upstreamTLS = p.transport.TLSClientConfig.Clone()
	p.upstreamTLS.NextProtos = []string{"http/1.1"}
	// The same TLS as the direct path's, on connections that keep the
	// raw head of each answer, and the same bound on a head (see
	// roundTripShared, which also bounds the informational answers).
	p.transport.DialTLSContext = p.dialShared
	p.transport.MaxResponseHeaderBytes = h1.MaxResponseHead
	p.buffers = newBufferPool()
	p.client = p.newClient(cfg.Pool)
	p.clientTLS = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
		GetCertificate: p.leafFor,
	}
	p.engine = p.newEngine()
	gp := goproxy.NewProxyHttpServer()
	// NewProxyHttpServer copies HTTPS_PROXY into ConnectDial and uses an
	// unverified, environment-proxied transport: replace both at once.
	gp.Tr = p.transport
	gp.ConnectDial = func(network, addr string) (net.Conn, error) {
		return p.dialer.DialContext(p.baseCtx, network, addr)
	}
	gp.ConnectDialWithReq = nil
	gp.Logger = goproxyLogger{logger.With("component", "goproxy")}
	gp.Verbose = false
	gp.AllowHTTP2 = false
	gp.KeepAcceptEncoding = true
	gp.NonproxyHandler = http.HandlerFunc(p.refuseNonConnect)
	gp.OnRequest().HandleConnectFunc(p.handleConnect)
	p.gp = gp
	p.injectAction = &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: p.hijackInject}
	p.tunnelAction = &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: p.hijackTunnel}
	return p, nil
}

func canonicalScheme(s string) (string, error) {
	switch strings.ToLower(s) {
	case "", "anaplanauthtoken":
		return "AnaplanAuthToken", nil
	case "bearer":
		return "Bearer", nil
	}
	return "", fmt.Errorf("proxy: authorization scheme %q is not AnaplanAuthToken or Bearer", s)
}

// masked drops the host bits of each prefix and unmaps IPv4-mapped ones,
// so that Contains compares like with like.
func masked(in []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		a := p.Addr()
		bits := p.Bits()
		if a.Is4In6() {
			a, bits = a.Unmap(), max(bits-96, 0)
		}
		out = append(out, netip.PrefixFrom(a, bits).Masked())
	}
	return out
}

// ServeHTTP is the handler for the proxy listener. It first checks that
// the client may use the proxy (address, then credentials). CONNECT
// requests are then handled by policy; any other request is refused,
// because a token is only ever sent over TLS that the proxy verified.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user, refusal, reason := p.access.admit(r)
	if refusal != nil {
		start := time.Now()
		if reason == "auth_failed" || reason == "auth_rate_limited" {
			p.obs.ProxyAuthFailure()
		}
		if r.Method == http.MethodConnect {
			p.obs.Connect(actionDeny.String(), reason)
		}
		if refusal.status != http.StatusProxyAuthRequired {
			// Only a 407 invites another attempt on this connection.
			*refusal = refusal.closing()
		}
		refusal.write(w)
		p.finishDenied(r, r.Host, refusal.status, start, reason)
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), userKey{}, user))
	if r.Method != http.MethodConnect {
		if r.URL.IsAbs() && strings.EqualFold(r.URL.Scheme, "http") {
			p.servePlain(w, r)
			return
		}
		p.refuseNonConnect(w, r)
		return
	}
	if p.isClosing() {
		start := time.Now()
		a := shuttingDown()
		a.write(w)
		p.obs.Connect(actionDeny.String(), reasonShuttingDown)
		p.finishDenied(r, r.Host, a.status, start, reasonShuttingDown)
		return
	}
	p.gp.ServeHTTP(w, r)
}

// refuseNonConnect answers plain-HTTP proxy requests and requests aimed at
// the proxy itself.
func (p *Proxy) refuseNonConnect(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var a answer
	if r.URL.IsAbs() {
		a = requestDenied(http.StatusForbidden, fmt.Sprintf("plain-HTTP request to %s refused: use https:// (the proxy adds the token only inside verified TLS)", r.URL.Host))
	} else {
		a = requestError(http.StatusBadRequest, "this is a forward proxy: set HTTPS_PROXY to its address and request https:// URLs through it")
	}
	a.write(w)
	p.finishDenied(r, r.URL.Host, a.status, start, "not_connect")
}

// finishDenied records a request that the proxy answered itself before any
// interception.
func (p *Proxy) finishDenied(r *http.Request, host string, status int, start time.Time, reason string) {
	user, _ := r.Context().Value(userKey{}).(string)
	p.record(r.Context(), &requestRecord{
		client: r.RemoteAddr, user: user, method: r.Method, host: host, pattern: "denied",
		status: status, duration: time.Since(start), decision: actionDeny.String(), reason: reason,
	})
}

// userKey carries the authenticated proxy user in a request context.
type userKey struct{}

// target is the destination named by one CONNECT.
type target struct {
	user      string // the proxy user who sent the CONNECT, "" without users
	host      string // lower case, no trailing dot, IPv6 without brackets
	port      int
	authority string // for the upstream URL and Host: port only when not 443
	hostport  string // host:port, for dialing and logs
	pattern   string // the configured pattern that allowed it
	compat    bool   // a Compat host: answered locally, never dialled
	plain     bool   // a plain-HTTP request, not a CONNECT (Config.PlainHTTP)
	// route is the route of its upstream connections (see
	// Proxy.route), set on first use by the goroutine serving the
	// client connection, which alone uses it.
	route h1.Route
}

func newTarget(host string, port int, pattern string) *target {
	host, _ = normalizeHost(host)
	t := &target{host: host, port: port, pattern: pattern, hostport: net.JoinHostPort(host, strconv.Itoa(port))}
	t.authority = t.hostport
	if port == defaultPort {
		t.authority = host
		if strings.Contains(host, ":") {
			t.authority = "[" + host + "]"
		}
	}
	return t
}

// handleConnect applies the policy to one CONNECT. It is goproxy's only
// CONNECT handler, so nothing is ever tunnelled by default.
func (p *Proxy) handleConnect(authority string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	start := time.Now()
	v := verdict{action: actionDeny, reason: reasonBadTarget, detail: "the CONNECT target is not host:port"}
	host, port, ok := splitTarget(authority)
	if ok {
		v = p.policy.decide(host, port)
	}
	p.obs.Connect(v.action.String(), v.reason)
	user, _ := ctx.Req.Context().Value(userKey{}).(string)
	switch v.action {
	case actionInject, actionCompat:
		t := newTarget(host, port, v.pattern)
		t.user = user
		t.compat = v.action == actionCompat
		ctx.UserData = t
		return p.injectAction, authority
	case actionTunnel:
		t := newTarget(host, port, v.pattern)
		t.user = user
		ctx.UserData = t
		return p.tunnelAction, authority
	}
	a := requestDenied(http.StatusForbidden, fmt.Sprintf("CONNECT to %s refused: %s", authority, v.detail))
	ctx.Resp = a.response(ctx.Req)
	p.finishDenied(ctx.Req, authority, a.status, start, v.reason)
	// ConnectReject with ctx.Resp set writes that response, then closes.
	return &goproxy.ConnectAction{Action: goproxy.ConnectReject}, authority
}

// writeRaw writes an answer on a hijacked connection and closes it.
func writeRaw(conn net.Conn, req *http.Request, a answer) {
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_ = a.writeOn(conn, req.Method)
	_ = conn.Close()
}

// hijackInject takes over a CONNECT to an inject host: it confirms the
// tunnel and serves the requests inside it, on this goroutine, over TLS
// with a leaf from the local CA.
func (p *Proxy) hijackInject(req *http.Request, conn net.Conn, ctx *goproxy.ProxyCtx) {
	t := ctx.UserData.(*target)
	if p.isClosing() {
		writeRaw(conn, req, shuttingDown())
		return
	}
	_ = conn.SetWriteDeadline(time.Now().Add(p.limits.ReadHeaderTimeout))
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		_ = conn.Close()
		return
	}
	p.serveInterceptedConn(conn, t)
}

func (p *Proxy) isClosing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}

// leafFor returns the certificate for the CONNECT target of the
// connection being handshaken, whatever name the client sent in SNI.
func (p *Proxy) leafFor(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	tc, ok := hello.Conn.(*targetConn)
	if !ok {
		return nil, errors.New("connection without a CONNECT target")
	}
	return p.certs.get(tc.target.host)
}

// targetConn is a hijacked client connection with its CONNECT target.
type targetConn struct {
	net.Conn
	target *target
}

// CloseWrite shuts the connection for writing, if it can be.
func (c *targetConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// targetKey carries the CONNECT target in the context of the requests
// served inside it.
type targetKey struct{}

// Shutdown stops accepting CONNECTs, lets intercepted requests and tunnels
// finish until ctx is done, then closes whatever is left and waits for its
// goroutines to end. Call it after the listener's http.Server has shut
// down. It returns ctx's error if connections had to be cut.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.shutdownOnce.Do(func() { p.shutdownError = p.shutdown(ctx) })
	return p.shutdownError
}

func (p *Proxy) shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closing = true
	p.engine.Stop()
	p.mu.Unlock()

	var errs []error
	// Connections waiting for a request close now; the others after
	// their current answer.
	p.closeIdleIntercepted()
	if err := p.intercepts.wait(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := p.tunnels.wait(ctx); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		// Out of time: cut what is left.
		p.cancelBase()
		p.closeIntercepted()
		p.closeTunnels()
	}
	// Everything is closed or finished now; what remains are goroutines
	// on their way out.
	grace, cancel := context.WithTimeout(context.Background(), forcedCloseGrace)
	defer cancel()
	if err := p.intercepts.wait(grace); err != nil {
		errs = append(errs, fmt.Errorf("intercepted connections still open: %w", err))
	}
	if err := p.handlers.wait(grace); err != nil {
		errs = append(errs, fmt.Errorf("intercepted requests still running: %w", err))
	}
	if err := p.tunnels.wait(grace); err != nil {
		errs = append(errs, fmt.Errorf("tunnels still running: %w", err))
	}
	p.cancelBase()
	p.transport.CloseIdleConnections()
	p.client.Pool.Close()
	if len(errs) > 0 {
		return fmt.Errorf("proxy shutdown: %w", errors.Join(errs...))
	}
	return nil
}

// tracker counts running units of work so that Shutdown can wait for them.
type tracker struct {
	mu      sync.Mutex
	n       int
	waiters []chan struct{}
}

func (t *tracker) add() {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

func (t *tracker) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 {
		for _, w := range t.waiters {
			close(w)
		}
		t.waiters = nil
	}
}

// wait returns when the count is zero or ctx is done.
func (t *tracker) wait(ctx context.Context) error {
	t.mu.Lock()
	if t.n == 0 {
		t.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	t.waiters = append(t.waiters, ch)
	t.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// goproxyLogger routes goproxy's messages into slog. Only the CONNECT path
// of goproxy is used, whose messages name hosts and errors, never headers.
type goproxyLogger struct{ log *slog.Logger }

func (l goproxyLogger) Printf(format string, v ...any) {
	msg := strings.TrimSpace(fmt.Sprintf(format, v...))
	level := slog.LevelDebug
	if strings.Contains(msg, "WARN:") {
		level = slog.LevelWarn
	}
	l.log.Log(context.Background(), level, "goproxy", "message", oneLine(msg))
}

type nopObserver struct{}

func (nopObserver) Request(string, string, int, time.Duration) {}
func (nopObserver) Connect(string, string)                     {}
func (nopObserver) UpstreamError(string)                       {}
func (nopObserver) Replay(string)                              {}
func (nopObserver) CertCache(string)                           {}
func (nopObserver) ProxyAuthFailure()                          {}
func (nopObserver) InFlight(int)                               {}
func (nopObserver) Bytes(string, int64)                        {}
func (nopObserver) UpstreamPool(string)                        {}
func (nopObserver) UpstreamIdle(int)                           {}
func (nopObserver) UpstreamClosed(string)                      {}

// methodLabel keeps metric labels to the standard methods.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "OTHER"
}
