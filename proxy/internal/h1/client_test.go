package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// signalConn closes first when its first Read returns bytes.
type signalConn struct {
	net.Conn
	once  sync.Once
	first chan struct{}
}

func (c *signalConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.once.Do(func() { close(c.first) })
	}
	return n, err
}

// TestFinalAnswerAfterInterimIsBounded: an upstream that sends 100
// Continue while a client's body is still being sent, then takes the
// whole body and never answers, is given the response-header timeout
// from the end of the body, as one that sends nothing is; the client
// connection is watched only once its body has been read to its end.
func TestFinalAnswerAfterInterimIsBounded(t *testing.T) {
	nc, server := tcpPair(t)
	conn := &signalConn{Conn: nc, first: make(chan struct{})}
	p := NewPool(PoolLimits{}, newPoolCounts(), nil)
	t.Cleanup(p.Close)
	cl := &Client{Pool: p, Dial: func(context.Context, Route) (net.Conn, error) { return conn, nil },
		Waits: Waits{First: 50 * time.Millisecond, Head: 300 * time.Millisecond}}

	const size = 256 << 10
	upstreamDone := make(chan error, 1)
	go func() {
		br := bufio.NewReader(server)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				upstreamDone <- err
				return
			}
			if line == "\r\n" {
				break
			}
		}
		if _, err := io.WriteString(server, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			upstreamDone <- err
			return
		}
		_, err := io.CopyN(io.Discard, br, size) // the whole body, and no answer
		upstreamDone <- err
	}()

	body, bodyW := io.Pipe()
	t.Cleanup(func() { _ = bodyW.Close() })
	var mu sync.Mutex
	var awaiting []bool // for each AwaitingAnswer: whether the body had been read to its end
	bodyRead := false
	trace := &ClientTrace{AwaitingAnswer: func() {
		mu.Lock()
		awaiting = append(awaiting, bodyRead)
		mu.Unlock()
	}}
	ctx := WithClientTrace(context.Background(), trace)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://upstream.example/upload", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	req.Header.Set("Expect", "100-continue")
	done := make(chan error, 1)
	go func() {
		resp, err := cl.RoundTrip(ctx, Route{Key: "r"}, req)
		if resp != nil {
			_ = resp.Body.Close()
		}
		done <- err
	}()

	// The first part of the body goes; the 100 Continue comes while the
	// rest is still to come from the client.
	if _, err := bodyW.Write(make([]byte, size/2)); err != nil {
		t.Fatal(err)
	}
	<-conn.first
	if _, err := bodyW.Write(make([]byte, size/2)); err != nil {
		t.Fatal(err)
	}
	// The body's end, which the sender reads only after the Close.
	mu.Lock()
	bodyRead = true
	mu.Unlock()
	_ = bodyW.Close()

	select {
	case err := <-done:
		if !errors.Is(err, ErrResponseHeaderTimeout) {
			t.Errorf("RoundTrip: %v, want the response-header timeout", err)
		}
	case <-time.After(10 * time.Second):
		_ = nc.Close()
		<-done
		t.Fatal("RoundTrip still waited for the final answer 10 s after a 300 ms bound")
	}
	if err := <-upstreamDone; err != nil {
		t.Errorf("upstream: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(awaiting) == 0 {
		t.Error("the client connection was never watched while the final answer was slow")
	}
	for i, read := range awaiting {
		if !read {
			t.Errorf("AwaitingAnswer call %d came before the client's body was read", i+1)
		}
	}
}
