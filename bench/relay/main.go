// Command relay is the ceiling that the benchmark measures anaplan-proxy
// against: the least work a TLS-intercepting proxy can do. It accepts a
// CONNECT, answers 200, terminates the client's TLS with a leaf from its own
// ECDSA P-256 CA (one leaf per host, kept), opens a verified TLS connection
// to the CONNECT target and copies bytes both ways. It parses no HTTP inside
// the tunnel and adds no header, so both TLS legs speak HTTP/1.1 only.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/bench/internal/benchtls"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "`host:port` to accept CONNECT on")
	caOut := flag.String("ca-out", "", "write the relay's CA certificate to this `file`")
	addrOut := flag.String("addr-out", "", "write the listening host:port to this `file`")
	upstreamCA := flag.String("upstream-ca", "", "PEM `file` of the CA that upstream certificates are verified against")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, logger, *listen, *caOut, *addrOut, *upstreamCA); err != nil {
		logger.Error("relay failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, logger *slog.Logger, listen, caOut, addrOut, upstreamCA string) error {
	if upstreamCA == "" {
		return errors.New("-upstream-ca is required")
	}
	roots, err := benchtls.LoadPool(upstreamCA)
	if err != nil {
		return err
	}
	ca, err := benchtls.NewCA("bench relay CA")
	if err != nil {
		return err
	}
	if caOut != "" {
		if err := ca.WriteCert(caOut); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	r := newRelay(ca, roots, logger)
	if addrOut != "" {
		if err := benchtls.WriteAddr(addrOut, ln.Addr().String()); err != nil {
			ln.Close()
			return err
		}
	}
	logger.Info("relay listening", "addr", ln.Addr().String())
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	err = r.serve(ln)
	r.closeAll()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// relay holds what every tunnel shares: the leaf cache and the upstream
// trust anchors, plus the open connections so that shutdown can end them.
type relay struct {
	ca     *benchtls.CA
	roots  *x509.CertPool
	logger *slog.Logger
	dialer net.Dialer

	mu     sync.Mutex
	leaves map[string]*tls.Certificate
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newRelay(ca *benchtls.CA, roots *x509.CertPool, logger *slog.Logger) *relay {
	return &relay{
		ca:     ca,
		roots:  roots,
		logger: logger,
		dialer: net.Dialer{Timeout: 10 * time.Second},
		leaves: make(map[string]*tls.Certificate),
		conns:  make(map[net.Conn]struct{}),
	}
}

func (r *relay) serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("accepting: %w", err)
		}
		if !r.track(c, true) {
			c.Close()
			continue
		}
		r.wg.Go(func() {
			defer r.track(c, false)
			defer c.Close()
			if err := r.tunnel(c); err != nil {
				r.logger.Debug("tunnel ended", "err", err)
			}
		})
	}
}

// track adds or removes an open connection; it refuses new ones once
// closeAll has run.
func (r *relay) track(c net.Conn, add bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !add {
		delete(r.conns, c)
		return true
	}
	if r.conns == nil {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

// closeAll ends every tunnel and waits for their goroutines.
func (r *relay) closeAll() {
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.wg.Wait()
}

// leaf returns the cached leaf for host, signing it on first use. Signing
// under the lock makes concurrent first handshakes share one leaf.
func (r *relay) leaf(host string) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.leaves[host]; ok {
		return c, nil
	}
	c, err := r.ca.Leaf(host)
	if err != nil {
		return nil, err
	}
	r.leaves[host] = c
	return c, nil
}

// tunnel serves one client connection: CONNECT, TLS on both sides, copy.
func (r *relay) tunnel(c net.Conn) error {
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	req, err := http.ReadRequest(br)
	if err != nil {
		return fmt.Errorf("reading CONNECT: %w", err)
	}
	c.SetReadDeadline(time.Time{})
	if req.Method != http.MethodConnect {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return fmt.Errorf("method %s is not CONNECT", req.Method)
	}
	target := req.Host
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return fmt.Errorf("CONNECT target %q: %w", target, err)
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return fmt.Errorf("answering CONNECT: %w", err)
	}

	client := tls.Server(&bufferedConn{Conn: c, r: br}, &tls.Config{
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.leaf(host)
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("client handshake: %w", err)
	}
	raw, err := r.dialer.DialContext(ctx, "tcp", target)
	if err != nil {
		return fmt.Errorf("dialling %s: %w", target, err)
	}
	if !r.track(raw, true) {
		raw.Close()
		return errors.New("shutting down")
	}
	defer r.track(raw, false)
	up := tls.Client(raw, &tls.Config{ServerName: host, RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
	defer up.Close()
	if err := up.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("upstream handshake with %s: %w", target, err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(up, client)
		up.CloseWrite()
		done <- err
	}()
	_, err = io.Copy(client, up)
	client.CloseWrite()
	if err2 := <-done; err == nil {
		err = err2
	}
	return err
}

// bufferedConn reads first what the CONNECT parser buffered, then the
// connection itself.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
