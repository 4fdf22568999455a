package proxy

import (
	"io"
	"net/http"
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

// countingBody counts the bytes read through it.
type countingBody struct {
	io.ReadCloser
	counter *byteCounter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.counter.add(n)
	return n, err
}

// countDownload is the ReverseProxy's ModifyResponse: it counts the bytes
// of the upstream's response body as the proxy relays them. Protocol
// switches keep their body untouched: the reverse proxy needs it writable.
func countDownload(resp *http.Response) error {
	if resp.StatusCode == http.StatusSwitchingProtocols || resp.Body == nil || resp.Body == http.NoBody || resp.Request == nil {
		return nil
	}
	x, _ := resp.Request.Context().Value(exchangeKey{}).(*exchange)
	if x == nil || x.download == nil {
		return nil
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, counter: x.download}
	return nil
}
