package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/bench/internal/benchtls"
)

// probeHandshakes opens n connections to the target one after another, each
// through the proxy's CONNECT if one is set, and times each until its TLS
// handshake with the target's name is done. It returns the first time and
// the median of the others: on a proxy that has not seen the host before,
// their difference is the cost of making the host's certificate.
func probeHandshakes(ctx context.Context, cfg config, n int) (first, later time.Duration, err error) {
	if n < 2 {
		return 0, 0, fmt.Errorf("-handshakes must be at least 2, got %d", n)
	}
	u, err := url.Parse(cfg.target)
	if err != nil {
		return 0, 0, fmt.Errorf("-url: %w", err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "443")
	}
	tlsCfg := &tls.Config{ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}}
	if len(cfg.caFiles) > 0 {
		if tlsCfg.RootCAs, err = benchtls.LoadPool(cfg.caFiles...); err != nil {
			return 0, 0, err
		}
	}
	// The first TLS handshake in a process also pays for the client's own
	// one-time set-up (P-256 tables, cipher state); do it here first so
	// that the figures are the server's.
	if err := warmClient(ctx); err != nil {
		return 0, 0, err
	}
	times := make([]time.Duration, 0, n)
	for range n {
		d, err := handshakeOnce(ctx, cfg.proxy, target, tlsCfg)
		if err != nil {
			return 0, 0, err
		}
		times = append(times, d)
	}
	rest := times[1:]
	slices.Sort(rest)
	return times[0], rest[len(rest)/2], nil
}

// handshakeOnce times one fresh connection from dial to completed handshake.
func handshakeOnce(ctx context.Context, proxy, target string, tlsCfg *tls.Config) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	var d net.Dialer
	addr := target
	if proxy != "" {
		pu, err := url.Parse(proxy)
		if err != nil {
			return 0, fmt.Errorf("-proxy: %w", err)
		}
		addr = pu.Host
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("dialling %s: %w", addr, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	if proxy != "" {
		if _, err := fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
			return 0, fmt.Errorf("sending CONNECT: %w", err)
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			return 0, fmt.Errorf("reading the CONNECT answer: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("CONNECT %s: %s", target, resp.Status)
		}
		if br.Buffered() > 0 {
			return 0, fmt.Errorf("CONNECT %s: data after the answer", target)
		}
	}
	tc := tls.Client(conn, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return 0, fmt.Errorf("TLS handshake with %s: %w", target, err)
	}
	elapsed := time.Since(start)
	tc.Close()
	return elapsed, nil
}

// warmClient runs one TLS handshake with an in-process P-256 server over a
// pipe, exercising the same client code as the measured handshakes.
func warmClient(ctx context.Context) error {
	ca, err := benchtls.NewCA("warm-up")
	if err != nil {
		return err
	}
	leaf, err := ca.Leaf("localhost")
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM())
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	srvErr := make(chan error, 1)
	go func() {
		srvErr <- tls.Server(s, &tls.Config{Certificates: []tls.Certificate{*leaf}}).HandshakeContext(ctx)
	}()
	err = tls.Client(c, &tls.Config{ServerName: "localhost", RootCAs: roots}).HandshakeContext(ctx)
	if err2 := <-srvErr; err == nil {
		err = err2
	}
	if err != nil {
		return fmt.Errorf("warm-up handshake: %w", err)
	}
	return nil
}
