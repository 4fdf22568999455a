package h1

import "net"

// The look at an idle connection (see Conn.idleFault) must know that no
// byte arrived on it while it was idle: none on the socket, and none that
// TLS had already read from the socket and not handed on. A read of TLS
// with a deadline in the past tells the second, for two deadline changes
// and a failed read per request. A recordConn under the TLS connection
// tells it without them, in the usual case: it follows the
// TLS record framing of the bytes TLS reads, and knows when TLS's last
// read from the socket ended exactly with the one record TLS read it
// for. TLS reads from the socket only when it holds less than the record
// it needs next, and processes that record at once, so it then holds no
// raw bytes; and when TLS's last read handed on less plaintext than
// asked for (see HeadSource.drained), it holds none of that either.

// tlsHeaderLen is the length of a TLS record header: type, version, and
// the length of the record's body in its last two bytes.
const tlsHeaderLen = 5

// recordConn is the connection under an upstream TLS connection, which
// follows the TLS record framing of what is read from it (see
// WatchRecords).
//
// Its fields are the goroutine's that reads the TLS connection: the
// exchange's that holds the connection, or the pool's while it checks an
// idle one.
type recordConn struct {
	net.Conn
	header int  // bytes of the current record's header seen, up to tlsHeaderLen
	left   int  // bytes of the current record's body still to come, once its header is seen
	whole  bool // the last read ended exactly at the end of the one record it completed
}

// WatchRecords returns c, the connection that a TLS client is about to
// be made on, with what the pool needs to check the TLS connection
// without reading it: the TLS connection of a Conn should run over it.
func WatchRecords(c net.Conn) net.Conn { return &recordConn{Conn: c} }

// NetConn returns the connection under the recordConn.
func (r *recordConn) NetConn() net.Conn { return r.Conn }

func (r *recordConn) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	if n > 0 {
		r.scan(p[:n])
	}
	return n, err
}

// scan follows the records through b, the bytes of one read.
func (r *recordConn) scan(b []byte) {
	ends := 0
	for len(b) > 0 {
		if r.header < tlsHeaderLen {
			for len(b) > 0 && r.header < tlsHeaderLen {
				switch r.header {
				case 3:
					r.left = int(b[0]) << 8
				case 4:
					r.left |= int(b[0])
				}
				r.header++
				b = b[1:]
			}
			if r.header < tlsHeaderLen || r.left > 0 {
				continue
			}
		} else {
			take := min(r.left, len(b))
			r.left -= take
			b = b[take:]
			if r.left > 0 {
				continue
			}
		}
		ends++
		r.header = 0
	}
	r.whole = ends == 1 && r.header == 0
}

// drained reports whether TLS over r holds no raw bytes (see above).
func (r *recordConn) drained() bool { return r.whole }

// atRecordEnd reports whether the bytes read so far end with a whole
// record: no record is partly read.
func (r *recordConn) atRecordEnd() bool { return r.header == 0 && r.left == 0 }
