package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDelay: through the relay, a new connection's first exchange takes
// two round trips (the TCP handshake's and its own), later ones one, and
// the bytes arrive unchanged, as do both ends' closes.
func TestDelay(t *testing.T) {
	const rtt = 30 * time.Millisecond
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	addrFile := filepath.Join(t.TempDir(), "addr")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, "127.0.0.1:0", echo.Addr().String(), rtt, addrFile) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	var addr string
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			addr = string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the relay did not write its address")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, port, _ := net.SplitHostPort(addr)
	start := time.Now()
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	exchange := func(msg string) time.Duration {
		t.Helper()
		begin := time.Now()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != msg {
			t.Fatalf("echo: %q, want %q", got, msg)
		}
		return time.Since(begin)
	}
	exchange("hello")
	if d := time.Since(start); d < 2*rtt {
		t.Errorf("first exchange on a new connection took %v, want at least two round trips (%v)", d, 2*rtt)
	}
	if d := exchange("again"); d < rtt {
		t.Errorf("a later exchange took %v, want at least one round trip (%v)", d, rtt)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Errorf("after closing for writing: read %q, %v; want the end of the stream", b, err)
	}
}
