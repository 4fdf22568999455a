package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// countingConn counts the read deadlines set and the reads made on a
// TCP connection.
type countingConn struct {
	*net.TCPConn
	mu        sync.Mutex
	deadlines int
	reads     int
}

func (c *countingConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadlines++
	c.mu.Unlock()
	return c.TCPConn.SetReadDeadline(t)
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.TCPConn.Read(p)
}

func (c *countingConn) counts() (deadlines, reads int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadlines, c.reads
}

// heldWrites holds what is written until flush, so that several TLS
// records reach the peer in one segment.
type heldWrites struct {
	net.Conn
	mu   sync.Mutex
	held []byte
	hold bool
}

func (h *heldWrites) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hold {
		h.held = append(h.held, p...)
		return len(p), nil
	}
	return h.Conn.Write(p)
}

func (h *heldWrites) flush() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hold = false
	_, err := h.Conn.Write(h.held)
	h.held = nil
	return err
}

// tlsPooled returns a TLS connection of route "r" over a recordConn over
// a counted TCP connection, after its handshake, the upstream's end
// (whose writes are held by hold until flushed), and the counter.
func tlsPooled(t testing.TB, p *Pool) (*Conn, *tls.Conn, *heldWrites, *countingConn) {
	t.Helper()
	nc, sc := tcpPair(t)
	counted := &countingConn{TCPConn: nc.(*net.TCPConn)}
	held := &heldWrites{Conn: sc}
	cert, _ := selfSigned(t)
	server := tls.Server(held, &tls.Config{Certificates: []tls.Certificate{cert}})
	client := tls.Client(WatchRecords(counted), &tls.Config{InsecureSkipVerify: true})
	done := make(chan error, 1)
	go func() { done <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c := NewConn(client)
	c.pool, c.route = p, Route{Key: "r"}
	return c, server, held, counted
}

// exchange has the upstream send writes, each written by itself or all
// together, and reads the first n bytes from c, as an exchange reads
// its answer.
func exchange(t testing.TB, c *Conn, server *tls.Conn, held *heldWrites, together bool, n int, writes ...string) {
	t.Helper()
	held.mu.Lock()
	held.hold = together
	held.mu.Unlock()
	for _, w := range writes {
		if _, err := io.WriteString(server, w); err != nil {
			t.Fatal(err)
		}
	}
	if together {
		if err := held.flush(); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.Net.SetReadDeadline(time.Time{})
	got := make([]byte, n)
	if _, err := io.ReadFull(c.R, got); err != nil || string(got) != writes[0][:n] {
		t.Fatalf("the answer: %q, %v", got, err)
	}
}

// TestIdleCheckWithoutTLSRead: a connection whose last answer was the
// whole of the last TLS record read, alone in its read from the socket,
// is checked without a read of TLS or a deadline change; any byte beyond
// the answer, in the same record, in a record read with it, or in one that
// arrives later, still closes it.
func TestIdleCheckWithoutTLSRead(t *testing.T) {
	const answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	const smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
	tests := []struct {
		name       string
		send       func(t *testing.T, c *Conn, server *tls.Conn, held *heldWrites)
		wantReused bool
	}{
		{"the answer alone", func(t *testing.T, c *Conn, server *tls.Conn, held *heldWrites) {
			exchange(t, c, server, held, false, len(answer), answer)
		}, true},
		{"more in the answer's record", func(t *testing.T, c *Conn, server *tls.Conn, held *heldWrites) {
			exchange(t, c, server, held, false, len(answer), answer+smuggled)
		}, false},
		{"a record read with the answer's", func(t *testing.T, c *Conn, server *tls.Conn, held *heldWrites) {
			exchange(t, c, server, held, true, len(answer), answer, smuggled)
		}, false},
		{"a record that arrives while idle", func(t *testing.T, c *Conn, server *tls.Conn, held *heldWrites) {
			exchange(t, c, server, held, false, len(answer), answer)
			c.idleAt = time.Now()
			_, _ = io.WriteString(server, smuggled)
			waitPending(t, c)
		}, false},
		{"the first part of a record that arrives while idle", func(t *testing.T, c *Conn, server *tls.Conn, held *heldWrites) {
			// TLS takes the part and waits for the rest, which
			// would come later, as the next request's answer.
			exchange(t, c, server, held, false, len(answer), answer)
			c.idleAt = time.Now()
			held.mu.Lock()
			held.hold = true
			held.mu.Unlock()
			_, _ = io.WriteString(server, smuggled)
			held.mu.Lock()
			record := held.held
			held.held, held.hold = nil, false
			held.mu.Unlock()
			if _, err := held.Conn.Write(record[:20]); err != nil {
				t.Fatal(err)
			}
			waitPending(t, c)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, obs := testPool(t, PoolLimits{})
			c, server, held, counted := tlsPooled(t, p)
			// The upstream's end is read by nobody: its TLS needs no
			// reads to write.
			tt.send(t, c, server, held)
			if c.R.Buffered() > 0 && tt.wantReused {
				t.Fatal("bytes left in the read buffer")
			}
			c.idleAt = time.Now()
			// Put, as a cleanly ended exchange does, unless the
			// read buffer shows the extra bytes already.
			p.put(c)
			deadlines, reads := counted.counts()
			got := p.get("r")
			if (got == c) != tt.wantReused {
				_, _, closed := obs.get()
				t.Fatalf("reused %v, want %v (closed %v)", got == c, tt.wantReused, closed)
			}
			if tt.wantReused {
				if d, r := counted.counts(); d != deadlines || r != reads {
					t.Errorf("the idle check made %d deadline changes and %d reads, want none", d-deadlines, r-reads)
				}
			}
		})
	}
}

// TestRecordConnScan: the record framing is followed across reads that
// split headers and bodies anywhere.
func TestRecordConnScan(t *testing.T) {
	rec := func(n int) []byte {
		b := []byte{23, 3, 3, byte(n >> 8), byte(n)}
		return append(b, make([]byte, n)...)
	}
	two := append(rec(300), rec(20)...)
	tests := []struct {
		name   string
		chunks [][]byte
		whole  []bool // after each chunk
	}{
		{"one record, one read", [][]byte{rec(300)}, []bool{true}},
		{"two records, one read", [][]byte{two}, []bool{false}},
		{"header split", [][]byte{two[:3], two[3:305], two[305:]}, []bool{false, true, true}},
		{"a record and the next's header", [][]byte{two[:308], two[308:]}, []bool{false, true}},
		{"body split", [][]byte{two[:100], two[100:305]}, []bool{false, true}},
		{"empty record", [][]byte{rec(0)}, []bool{true}},
	}
	for _, tt := range tests {
		r := &recordConn{}
		for i, chunk := range tt.chunks {
			r.scan(chunk)
			if r.whole != tt.whole[i] {
				t.Errorf("%s: after read %d, whole = %v, want %v", tt.name, i+1, r.whole, tt.whole[i])
			}
		}
	}
}

// BenchmarkPoolReuse measures handing back and taking again an idle TLS
// connection, whose check looks at the socket and, without what the
// recordConn under TLS knows, reads TLS with a deadline in the past.
func BenchmarkPoolReuse(b *testing.B) {
	for _, records := range []bool{true, false} {
		name := "records"
		if !records {
			name = "tls_read"
		}
		b.Run(name, func(b *testing.B) {
			p, obs := testPool(b, PoolLimits{})
			c, server, held, _ := tlsPooled(b, p)
			exchange(b, c, server, held, false, 2, "ok")
			c.probe = newSocketProbe(c.Net)
			if !records {
				c.probe.records = nil
			}
			b.ReportAllocs()
			for b.Loop() {
				p.put(c)
				if p.get("r") != c {
					_, _, closed := obs.get()
					b.Fatalf("the connection was not reused (closed %v)", closed)
				}
			}
		})
	}
}

// TestRequestOnQuietConnectionAwaitsAnswerParked: on a connection that
// the idle check found quiet, the request is written and its answer
// awaited without a read beforehand (see socketProbe.sendAndWait). The
// answer is seen however it comes: at once, after the first wait (which
// the trace hears of), or not at all, when the upstream closes the
// connection instead, which is the stale connection the retry rule sends
// the request again for.
func TestRequestOnQuietConnectionAwaitsAnswerParked(t *testing.T) {
	const answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	// The first wait is long enough that an answer sent at once never
	// outlasts it on a loaded machine, unless its arrival was missed.
	const first = 300 * time.Millisecond
	tests := []struct {
		name         string
		upstream     func(server *tls.Conn) // after the request has arrived
		wantAwaiting int
		wantRedial   bool
	}{
		{"answer at once", func(server *tls.Conn) { _, _ = io.WriteString(server, answer) }, 0, false},
		{"answer after the first wait", func(server *tls.Conn) {
			time.Sleep(2 * first)
			_, _ = io.WriteString(server, answer)
		}, 1, false},
		{"close instead", func(server *tls.Conn) { _ = server.Close() }, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := testPool(t, PoolLimits{})
			c, server, held, _ := tlsPooled(t, p)
			exchange(t, c, server, held, false, len(answer), answer)
			c.idleAt = time.Now()
			p.put(c)

			redialed := make(chan struct{}, 1)
			cl := &Client{Pool: p, Waits: Waits{First: first, Head: 5 * time.Second},
				Dial: func(context.Context, Route) (net.Conn, error) {
					redialed <- struct{}{}
					return nil, errors.New("no second connection in this test")
				}}
			var mu sync.Mutex
			awaiting := 0
			ctx := WithClientTrace(context.Background(), &ClientTrace{AwaitingAnswer: func() {
				mu.Lock()
				awaiting++
				mu.Unlock()
			}})

			// The upstream reads the request, then acts.
			upstreamDone := make(chan error, 1)
			go func() {
				br := bufio.NewReader(server)
				req, err := http.ReadRequest(br)
				if err == nil && req.URL.Path != "/again" {
					err = fmt.Errorf("the upstream got %s %s", req.Method, req.URL)
				}
				if err == nil {
					tt.upstream(server)
				}
				upstreamDone <- err
			}()
			got, err := cl.SendHead(ctx, Route{Key: "r"}, func(bw *bufio.Writer) error {
				_, err := bw.WriteString("GET /again HTTP/1.1\r\nHost: localhost\r\n\r\n")
				return err
			})
			if err := <-upstreamDone; err != nil {
				t.Fatal(err)
			}
			if c.probe == nil || !c.probe.sent {
				t.Fatal("the request was not written by the parked wait: the test does not test it")
			}
			select {
			case <-redialed:
				if !tt.wantRedial {
					t.Fatalf("the request was sent again on a new connection (SendHead: %v)", err)
				}
				return
			default:
				if tt.wantRedial {
					t.Fatalf("the upstream's close was not met: SendHead returned %v, %v", got, err)
				}
			}
			if err != nil || got != c {
				t.Fatalf("SendHead: %v, %v; want the pooled connection", got, err)
			}
			line, err := got.R.ReadString('\n')
			if err != nil || line != "HTTP/1.1 200 OK\r\n" {
				t.Errorf("the answer begins %q, %v", line, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if awaiting != tt.wantAwaiting {
				t.Errorf("AwaitingAnswer was called %d times, want %d", awaiting, tt.wantAwaiting)
			}
			got.Release(false)
		})
	}
}
