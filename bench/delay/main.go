// Command delay stands for the wide-area network between a proxy and
// Anaplan: a TCP relay on loopback that delivers every byte half a round
// trip late in each direction, so that the benchmark can show what a
// round trip costs a call, which loopback hides. A new connection's first
// bytes towards the target are held one round trip more, for the TCP
// handshake that a real connection pays before it can send; the client's
// own connect returns at once, so a call pays the same round trips in
// all as over a real network.
//
// Bandwidth is not limited, and the bytes read are forwarded in the same
// pieces, each at its own time: the delay holds a stream back without
// slowing it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "`host:port` on loopback; the same port is also taken on ::1 when possible")
	target := flag.String("target", "", "`host:port` to relay to")
	rtt := flag.Duration("rtt", 40*time.Millisecond, "round trip `time` to add")
	addrOut := flag.String("addr-out", "", "write \"localhost:PORT\" to this `file` once listening")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *listen, *target, *rtt, *addrOut); err != nil {
		logger.Error("delay failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, listen, target string, rtt time.Duration, addrOut string) error {
	if target == "" {
		return errors.New("-target is required")
	}
	if rtt < 0 {
		return errors.New("-rtt must not be negative")
	}
	lns, err := listenLoopback(listen)
	if err != nil {
		return err
	}
	port := lns[0].Addr().(*net.TCPAddr).Port
	if addrOut != "" {
		if err := os.WriteFile(addrOut, []byte("localhost:"+strconv.Itoa(port)), 0o644); err != nil {
			return err
		}
	}
	d := &delayer{target: target, rtt: rtt}
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.serve(ln)
		}()
	}
	<-ctx.Done()
	for _, ln := range lns {
		_ = ln.Close()
	}
	d.closeAll()
	wg.Wait()
	return nil
}

// listenLoopback listens on addr and, where it can, on ::1 with the same
// port, so that "localhost" reaches the relay whichever address a client
// tries first.
func listenLoopback(addr string) ([]net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	lns := []net.Listener{ln}
	port := ln.Addr().(*net.TCPAddr).Port
	if ln6, err := net.Listen("tcp", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		lns = append(lns, ln6)
	}
	return lns, nil
}

// delayer relays connections to target with rtt added.
type delayer struct {
	target string
	rtt    time.Duration

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (d *delayer) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.relay(c)
		}()
	}
}

func (d *delayer) track(cs ...net.Conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conns == nil {
		d.conns = map[net.Conn]struct{}{}
	}
	for _, c := range cs {
		d.conns[c] = struct{}{}
	}
}

func (d *delayer) untrack(cs ...net.Conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range cs {
		delete(d.conns, c)
	}
}

func (d *delayer) closeAll() {
	d.mu.Lock()
	for c := range d.conns {
		_ = c.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// relay copies both ways between the client c and a new connection to
// the target, each piece delivered half a round trip after it was read;
// towards the target, not before the handshake's round trip has passed.
func (d *delayer) relay(c net.Conn) {
	start := time.Now()
	s, err := net.Dial("tcp", d.target)
	if err != nil {
		_ = c.Close()
		return
	}
	d.track(c, s)
	defer d.untrack(c, s)
	half := d.rtt / 2
	done := make(chan struct{}, 2)
	go func() {
		pipe(s, c, half, start.Add(d.rtt))
		done <- struct{}{}
	}()
	go func() {
		pipe(c, s, half, time.Time{})
		done <- struct{}{}
	}()
	<-done
	<-done
	_ = c.Close()
	_ = s.Close()
}

// piece is what one read brought, and when to write it.
type piece struct {
	b  []byte
	at time.Time
	// eof: the source ended (err is nil) or failed; the destination is
	// shut for writing, or closed, at the piece's time.
	eof bool
	err error
}

// pipe copies src to dst, each piece half later than it was read and not
// before notBefore.
func pipe(dst, src net.Conn, half time.Duration, notBefore time.Time) {
	pieces := make(chan piece, 4096)
	go func() {
		defer close(pieces)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			read := time.Now()
			if read.Before(notBefore) {
				read = notBefore
			}
			at := read.Add(half)
			if n > 0 {
				pieces <- piece{b: buf[:n], at: at}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				pieces <- piece{at: at, eof: true, err: err}
				return
			}
		}
	}()
	for p := range pieces {
		if wait := time.Until(p.at); wait > 0 {
			time.Sleep(wait)
		}
		if p.eof {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && p.err == nil {
				_ = cw.CloseWrite()
			} else {
				_ = dst.Close()
			}
			continue
		}
		if _, err := dst.Write(p.b); err != nil {
			_ = src.Close()
			for range pieces {
			}
			return
		}
	}
}

func init() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: delay -target host:port [-rtt 40ms] [-listen 127.0.0.1:0] [-addr-out file]\n")
		flag.PrintDefaults()
	}
}
