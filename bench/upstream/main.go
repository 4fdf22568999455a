// Command upstream is the HTTPS server behind the benchmark: it stands in for
// Anaplan's API on loopback, with a certificate from a CA of its own.
//
//	GET /small              a fixed 100-byte body
//	GET /stream?bytes=N     N bytes, streamed from a reused buffer
//	PUT /upload             reads and discards the body, answers with its size
//
// Every answer carries Bench-Auth-Scheme: the first word of the request's
// Authorization header (never the credential), so a run can check that the
// proxy injected a token and that the relay did not.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/bench/internal/benchtls"
)

const bufSize = 256 << 10

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "`host:port` on 127.0.0.1; the same port is also taken on ::1 when possible")
	caOut := flag.String("ca-out", "", "write the CA certificate to this `file`")
	addrOut := flag.String("addr-out", "", "write \"localhost:PORT\" to this `file` once listening")
	h2 := flag.Bool("h2", true, "offer HTTP/2 as well as HTTP/1.1")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, logger, *listen, *caOut, *addrOut, *h2); err != nil {
		logger.Error("upstream failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, logger *slog.Logger, listen, caOut, addrOut string, h2 bool) error {
	ca, err := benchtls.NewCA("bench upstream CA")
	if err != nil {
		return err
	}
	leaf, err := ca.Leaf("localhost", "127.0.0.1", "::1")
	if err != nil {
		return err
	}
	if caOut != "" {
		if err := ca.WriteCert(caOut); err != nil {
			return err
		}
	}
	lns, err := listenLoopback(listen)
	if err != nil {
		return err
	}
	port := lns[0].Addr().(*net.TCPAddr).Port

	protos := []string{"http/1.1"}
	if h2 {
		protos = []string{"h2", "http/1.1"}
	}
	srv := &http.Server{
		Handler:           newHandler(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: protos},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	if !h2 {
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}

	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errc <- srv.ServeTLS(ln, "", "") }()
	}
	addr := "localhost:" + strconv.Itoa(port)
	if addrOut != "" {
		if err := benchtls.WriteAddr(addrOut, addr); err != nil {
			srv.Close()
			return err
		}
	}
	logger.Info("upstream listening", "addr", addr, "h2", h2)

	select {
	case <-ctx.Done():
	case err := <-errc:
		srv.Close()
		return fmt.Errorf("serving: %w", err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
	}
	return nil
}

// listenLoopback listens on the IPv4 address of listen and, when it can, on
// ::1 with the same port, so that "localhost" reaches the server whichever
// address a client tries first.
func listenLoopback(listen string) ([]net.Listener, error) {
	ln4, err := net.Listen("tcp4", listen)
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	port := ln4.Addr().(*net.TCPAddr).Port
	lns := []net.Listener{ln4}
	if ln6, err := net.Listen("tcp6", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		lns = append(lns, ln6)
	}
	return lns, nil
}

// newHandler returns the upstream's routes.
func newHandler() http.Handler {
	small := []byte(strings.Repeat("anaplan-proxy bench ", 5)) // 100 bytes
	pattern := make([]byte, bufSize)
	for i := range pattern {
		pattern[i] = byte('a' + i%26)
	}
	bufs := sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /small", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Bench-Auth-Scheme", authScheme(r))
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", strconv.Itoa(len(small)))
		w.Write(small)
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bytes must be a non-negative integer", http.StatusBadRequest)
			return
		}
		h := w.Header()
		h.Set("Bench-Auth-Scheme", authScheme(r))
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			chunk := pattern[:min(n, int64(len(pattern)))]
			if _, err := w.Write(chunk); err != nil {
				return
			}
			n -= int64(len(chunk))
		}
	})
	mux.HandleFunc("PUT /upload", func(w http.ResponseWriter, r *http.Request) {
		bp := bufs.Get().(*[]byte)
		defer bufs.Put(bp)
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, r.Body, *bp)
		if err != nil && !errors.Is(err, io.EOF) {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Bench-Auth-Scheme", authScheme(r))
		fmt.Fprintf(w, "received %d bytes\n", n)
	})
	return mux
}

// authScheme returns the scheme word of the Authorization header, or
// "none"; the credential itself never leaves this function.
func authScheme(r *http.Request) string {
	v := r.Header.Get("Authorization")
	if v == "" {
		return "none"
	}
	scheme, _, _ := strings.Cut(v, " ")
	return scheme
}
