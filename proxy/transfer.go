package proxy

import (
	"errors"
	"io"
	"sync/atomic"
)

// byteReportStep is how many bytes a transfer accumulates before it reports
// them to the Observer, so that a long upload or download shows up in the
// byte counters while it streams, at one Observer call per MiB.
const byteReportStep = 1 << 20

// Directions passed to Observer.Bytes.
const (
	directionUpload   = "upload"
	directionDownload = "download"
)

// byteCounter accumulates the body bytes of one request in one direction.
// The transport may read a request body on another goroutine than the
// handler's, so the count is atomic.
type byteCounter struct {
	obs       Observer
	direction string
	pending   atomic.Int64
}

func (c *byteCounter) add(n int) {
	if n <= 0 {
		return
	}
	if c.pending.Add(int64(n)) >= byteReportStep {
		c.flush()
	}
}

// flush reports what has not been reported yet.
func (c *byteCounter) flush() {
	if n := c.pending.Swap(0); n > 0 {
		c.obs.Bytes(c.direction, n)
	}
}

// countingBody is the request body sent upstream: it counts the bytes
// read through it. Close does not close the client's body, which the
// server drains or closes after the handler; it only ends reading, since
// the transport may read on after a failed round trip has returned.
type countingBody struct {
	io.ReadCloser
	counter *byteCounter
	closed  atomic.Bool
}

// errBodyClosed is what a read of a closed countingBody returns.
var errBodyClosed = errors.New("read of the request body after its request ended")

func (b *countingBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyClosed
	}
	n, err := b.ReadCloser.Read(p)
	b.counter.add(n)
	return n, err
}

func (b *countingBody) Close() error {
	b.closed.Store(true)
	return nil
}
