package pgtest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Cutter is a TCP relay between clients and a PostgreSQL server that cuts
// a client's connection at a chosen point of a transaction, to test what
// a client makes of a write whose fate it cannot know. TCP alone cannot
// tell where a transaction stands, so the Cutter reads the protocol
// messages the client sends: the text of each simple Query, and of each
// prepared statement (seen once, at Parse) when a Bind binds it to run.
// When a statement matches the armed Point, the Cutter either drops its
// message, so the server never runs it, or forwards it and then, in place
// of the server's answer, closes both sides, so the server has run it and
// the client sees a broken connection.
//
// The Cutter speaks neither TLS nor GSS encryption: it declines both, so
// clients must allow a plain connection (sslmode=disable or prefer).
// Its methods may be called from several goroutines.
type Cutter struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup // the accept loop and both relay goroutines of each connection
	closed sync.Once

	// mu guards the fields below; they are read and written by the
	// relay goroutines and by the test's calls.
	mu        sync.Mutex
	closing   bool                  // Close has begun: no more connections
	conns     map[net.Conn]struct{} // open connections, both sides
	points    []Point               // what to cut at; nil: nothing
	repeat    bool                  // start over after the last point
	gap       time.Duration         // at least this long between cuts
	next      int                   // index into points of the next cut
	notBefore time.Time             // no cut before this
	counts    map[string]int        // cuts made, by Point.Name
	total     int                   // cuts made
}

// Mode says what the Cutter does with the message of a statement that
// matches.
type Mode int

const (
	// CutBefore drops the statement's message and closes both sides:
	// the server never runs the statement.
	CutBefore Mode = iota + 1
	// CutAfter forwards the statement's message and the rest of its
	// request (up to the Sync that asks the server to answer), then
	// waits until the server has answered and closes both sides instead
	// of forwarding the answer: the server has run the statement, the
	// client sees a broken connection.
	CutAfter
)

// A Statement is what a client asks the server to run: a simple Query,
// or a Bind of a prepared statement.
type Statement struct {
	SQL string
	// Params are a Bind's parameters as sent (text or binary, as the
	// client chose), nil for NULL; none for a simple Query.
	Params [][]byte
	// Tx are the statements run before this one in the same
	// transaction, oldest first, as far as the server has reported a
	// transaction open; empty outside a transaction.
	Tx []Statement
}

// A Point is a place to cut a connection: at the first statement Match
// accepts. Match runs on the relay's goroutines with the Cutter locked and
// must not call the Cutter.
type Point struct {
	Name  string // the key of the Point's count in Counts
	Mode  Mode
	Match func(Statement) bool
}

// Containing matches a statement whose text contains sub.
func Containing(sub string) func(Statement) bool {
	return func(s Statement) bool { return strings.Contains(s.SQL, sub) }
}

// Exactly matches a statement whose text is sql, ignoring case, spaces and
// a final semicolon; Exactly("commit") finds a transaction's COMMIT.
func Exactly(sql string) func(Statement) bool {
	norm := func(s string) string { return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), ";")) }
	sql = norm(sql)
	return func(s Statement) bool { return strings.EqualFold(norm(s.SQL), sql) }
}

// NewCutter starts a Cutter in front of the server at target (host:port),
// cutting nothing until Arm or Cycle. It is closed when t ends.
func NewCutter(t testing.TB, target string) *Cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("starting the PostgreSQL cutter: %v", err)
	}
	c := &Cutter{ln: ln, target: target, conns: map[net.Conn]struct{}{}, counts: map[string]int{}}
	c.wg.Go(c.accept)
	t.Cleanup(c.Close)
	return c
}

// DSN rewrites a DSN naming the target to go through the Cutter.
func (c *Cutter) DSN(dsn string) string {
	return strings.Replace(dsn, c.target, c.ln.Addr().String(), 1)
}

// Arm makes the Cutter cut once, at the next statement p matches on any
// connection. It replaces what was armed before.
func (c *Cutter) Arm(p Point) { c.plan(false, 0, []Point{p}) }

// Cycle makes the Cutter cut at each of points in turn, over and over,
// with at least gap between cuts: a statement is matched only against
// the point whose turn it is. It replaces what was armed before.
func (c *Cutter) Cycle(gap time.Duration, points ...Point) { c.plan(true, gap, points) }

func (c *Cutter) plan(repeat bool, gap time.Duration, points []Point) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.points, c.repeat, c.gap, c.next, c.notBefore = points, repeat, gap, 0, time.Time{}
}

// Cuts returns how many cuts the Cutter has made.
func (c *Cutter) Cuts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Counts returns the cuts made so far by Point name.
func (c *Cutter) Counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.counts))
	for k, v := range c.counts {
		m[k] = v
	}
	return m
}

// Close stops accepting connections, closes the open ones and waits for
// the relay's goroutines. A closed Cutter refuses connections, as an
// unreachable server would.
func (c *Cutter) Close() {
	c.closed.Do(func() { c.ln.Close() })
	c.mu.Lock()
	c.closing = true
	for conn := range c.conns {
		conn.Close()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// take reports whether to cut at st, and how, counting the cut.
func (c *Cutter) take(st Statement) (Mode, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if len(c.points) == 0 || now.Before(c.notBefore) {
		return 0, false
	}
	p := c.points[c.next%len(c.points)]
	if !p.Match(st) {
		return 0, false
	}
	c.next++
	if !c.repeat && c.next >= len(c.points) {
		c.points = nil
	}
	c.notBefore = now.Add(c.gap)
	c.counts[p.Name]++
	c.total++
	return p.Mode, true
}

// track adds (or removes) both sides of a connection to those Close
// closes. It refuses to add once Close has begun, and reports whether
// the connection may be relayed.
func (c *Cutter) track(client, server net.Conn, add bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !add {
		delete(c.conns, client)
		delete(c.conns, server)
		return false
	}
	if c.closing {
		return false
	}
	c.conns[client], c.conns[server] = struct{}{}, struct{}{}
	return true
}

func (c *Cutter) accept() {
	for {
		client, err := c.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", c.target)
		if err != nil {
			client.Close()
			continue
		}
		if !c.track(client, server, true) {
			client.Close()
			server.Close()
			return
		}
		r := &relayConn{c: c, client: client, server: server, prepared: map[string]string{}}
		c.wg.Go(r.fromClient)
		c.wg.Go(r.fromServer)
	}
}

// relayConn is one relayed connection.
type relayConn struct {
	c              *Cutter
	client, server net.Conn
	closeOnce      sync.Once

	// Owned by fromClient.
	prepared map[string]string // statement name → text
	requests int64             // requests sent that the server answers with ReadyForQuery

	// cutAt is the request whose answer ends the connection (0: none):
	// set by fromClient before it forwards the request, read by
	// fromServer.
	cutAt atomic.Int64

	// mu guards tx, appended to by fromClient and trimmed by fromServer
	// when the server reports no transaction open.
	mu sync.Mutex
	tx []txStatement
}

// txStatement is a statement and the request that ran it.
type txStatement struct {
	request int64
	Statement
}

func (r *relayConn) close() {
	r.closeOnce.Do(func() {
		r.client.Close()
		r.server.Close()
		r.c.track(r.client, r.server, false)
	})
}

// Codes of the untyped messages a client sends before the typed ones.
const (
	protocol3     = 3 << 16 // the startup message of protocol 3.0
	sslRequest    = 80877103
	gssencRequest = 80877104
)

// maxMessageSize bounds the messages the relay reads.
const maxMessageSize = 64 << 20

// startup relays what the client sends before its typed messages:
// requests for TLS or GSS encryption, declined (the client goes on in
// plain text or gives up), then the startup message. It reports whether
// typed messages follow.
func (r *relayConn) startup(br *bufio.Reader, bw *bufio.Writer) bool {
	for {
		msg, err := readMessage(br, false)
		if err != nil {
			return false
		}
		code := binary.BigEndian.Uint32(msg[4:8])
		if code == sslRequest || code == gssencRequest {
			if _, err := r.client.Write([]byte{'N'}); err != nil {
				return false
			}
			continue
		}
		if _, err := bw.Write(msg); err != nil {
			return false
		}
		if code != protocol3 {
			// A cancel request, or a protocol this relay does not
			// read: passed on as it is.
			bw.Flush()
			io.Copy(r.server, br)
			return false
		}
		r.requests++ // the server answers the startup with ReadyForQuery
		return true
	}
}

// fromClient forwards the client's messages one by one, and cuts where
// the plan says.
func (r *relayConn) fromClient() {
	br := bufio.NewReader(r.client)
	bw := bufio.NewWriter(r.server)
	keep := false // the connection stays open until fromServer sees the answer
	defer func() {
		bw.Flush()
		if !keep {
			r.close()
		}
	}()
	if !r.startup(br, bw) {
		return
	}
	cutAtSync := false
	for {
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return
			}
		}
		msg, err := readMessage(br, true)
		if err != nil {
			return
		}
		body := msg[5:]
		// The request this message belongs to: the one the next Sync
		// or this Query completes.
		req := r.requests + 1
		var st *Statement
		switch msg[0] {
		case 'P': // Parse: name, text, parameter types
			name, rest := cString(body)
			text, _ := cString(rest)
			r.prepared[name] = text
		case 'B': // Bind: portal, statement, formats, parameters
			_, rest := cString(body)
			name, rest := cString(rest)
			st = &Statement{SQL: r.prepared[name], Params: bindParams(rest)}
		case 'Q': // simple Query: text
			text, _ := cString(body)
			st = &Statement{SQL: text}
		}
		answered := msg[0] == 'S' || msg[0] == 'Q' || msg[0] == 'F' // Sync, Query, FunctionCall
		if answered {
			r.requests = req
		}
		if st != nil {
			st.Tx = r.txSoFar()
			r.record(req, *st)
			if !cutAtSync { // one cut per request
				mode, ok := r.c.take(*st)
				if ok && mode == CutBefore {
					return
				}
				cutAtSync = ok
			}
		}
		if cutAtSync && answered {
			r.cutAt.Store(r.requests)
		}
		if _, err := bw.Write(msg); err != nil {
			return
		}
		if cutAtSync && answered {
			keep = true
			return
		}
	}
}

// txSoFar returns the statements of the open transaction.
func (r *relayConn) txSoFar() []Statement {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Statement, len(r.tx))
	for i, s := range r.tx {
		out[i] = s.Statement
	}
	return out
}

// record adds st, sent in request req, to the open transaction.
func (r *relayConn) record(req int64, st Statement) {
	st.Tx = nil
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tx = append(r.tx, txStatement{request: req, Statement: st})
}

// fromServer forwards the server's messages, notes where transactions
// end, and closes the connection in place of the answer that ends a
// CutAfter.
func (r *relayConn) fromServer() {
	defer r.close()
	br := bufio.NewReader(r.server)
	bw := bufio.NewWriter(r.client)
	var ready int64 // ReadyForQuery messages seen: requests answered
	for {
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return
			}
		}
		msg, err := readMessage(br, true)
		if err != nil {
			return
		}
		// The message answers request ready+1; the cut request's
		// answer is withheld.
		cut := r.cutAt.Load()
		withheld := cut != 0 && ready+1 >= cut
		if msg[0] == 'Z' { // ReadyForQuery: status I (idle), T or E (in a transaction)
			ready++
			if len(msg) > 5 && msg[5] == 'I' {
				r.endTx(ready)
			}
			if cut != 0 && ready >= cut {
				bw.Flush()
				return
			}
		}
		if withheld {
			continue
		}
		if _, err := bw.Write(msg); err != nil {
			return
		}
	}
}

// endTx forgets the statements of requests up to and including request,
// which ended with no transaction open.
func (r *relayConn) endTx(request int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := 0
	for i < len(r.tx) && r.tx[i].request <= request {
		i++
	}
	r.tx = append(r.tx[:0], r.tx[i:]...)
}

// readMessage reads one protocol message: a type byte (none for the
// messages before startup) and a length that counts itself.
func readMessage(br *bufio.Reader, typed bool) ([]byte, error) {
	head := 4
	if typed {
		head = 5
	}
	msg := make([]byte, head, head+64)
	if _, err := io.ReadFull(br, msg); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(msg[head-4:]))
	if n < 4 || n > maxMessageSize || (!typed && n < 8) {
		return nil, fmt.Errorf("bad PostgreSQL message length %d", n)
	}
	msg = append(msg, make([]byte, n-4)...)
	if _, err := io.ReadFull(br, msg[head:]); err != nil {
		return nil, errors.Join(errors.New("short PostgreSQL message"), err)
	}
	return msg, nil
}

// cString splits a NUL-terminated string off b.
func cString(b []byte) (string, []byte) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return string(b), nil
	}
	return string(b[:i]), b[i+1:]
}

// bindParams returns the parameters of a Bind message's rest after the
// statement name (nil for NULL), as many as the message holds whole.
func bindParams(b []byte) [][]byte {
	if len(b) < 2 {
		return nil
	}
	nf := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+2*nf+2 {
		return nil
	}
	b = b[2+2*nf:]
	np := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	params := make([][]byte, 0, np)
	for range np {
		if len(b) < 4 {
			break
		}
		n := int(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		var p []byte
		if n >= 0 {
			if n > len(b) {
				break
			}
			p, b = b[:n:n], b[n:]
		}
		params = append(params, p)
	}
	return params
}
