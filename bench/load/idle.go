package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/bench/internal/benchtls"
)

// holdIdle opens n connections to the target, through the proxy's CONNECT
// if one is set, cfg.workers at a time, sends one GET on each and reads its
// answer, then keeps them all open and idle: what a proxy holds for clients
// that keep their connections between calls. Once all are idle it writes
// "idle=n" to ready (a file), and it closes them when ctx ends.
func holdIdle(ctx context.Context, cfg config, n int, ready string) error {
	u, err := url.Parse(cfg.target)
	if err != nil {
		return fmt.Errorf("-url: %w", err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "443")
	}
	tlsCfg := &tls.Config{ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}}
	if len(cfg.caFiles) > 0 {
		if tlsCfg.RootCAs, err = benchtls.LoadPool(cfg.caFiles...); err != nil {
			return err
		}
	}
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(cfg.workers, 1) {
		wg.Go(func() {
			for i := range next {
				conns[i], errs[i] = idleConn(ctx, cfg.proxy, target, u.RequestURI(), u.Host, tlsCfg)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.WriteFile(ready, fmt.Appendf(nil, "idle=%d\n", n), 0o644); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// idleConn opens one connection, sends one GET for path on it and reads
// the whole answer.
func idleConn(ctx context.Context, proxy, target, path, host string, tlsCfg *tls.Config) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var d net.Dialer
	addr := target
	if proxy != "" {
		pu, err := url.Parse(proxy)
		if err != nil {
			return nil, fmt.Errorf("-proxy: %w", err)
		}
		addr = pu.Host
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dialling %s: %w", addr, err)
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	br := bufio.NewReader(conn)
	if proxy != "" {
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusOK {
			conn.Close()
			return nil, fmt.Errorf("CONNECT %s: %v %v", target, resp, err)
		}
	}
	tc := tls.Client(conn, tlsCfg)
	if _, err := fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
		conn.Close()
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("the answer to GET %s: %w", path, err)
	}
	conn.SetDeadline(time.Time{})
	return tc, nil
}
