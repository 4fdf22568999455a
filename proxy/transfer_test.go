package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func (o *recObserver) InFlight(delta int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.inFlight += delta
}

func (o *recObserver) Bytes(direction string, n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.bytes == nil {
		o.bytes = map[string]int64{}
	}
	o.bytes[direction] += n
}

// transfer returns the requests in flight and the bytes counted so far.
func (o *recObserver) transfer() (inFlight int, upload, download int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.inFlight, o.bytes[directionUpload], o.bytes[directionDownload]
}

func TestTransferCounts(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	const reply = 5000
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		_, _ = w.Write(bytes.Repeat([]byte("d"), reply))
		return true
	})
	c := h.client(t)

	tests := []struct {
		name         string
		method       string
		body         string
		chunked      bool
		wantUpload   int64
		wantDownload int64
	}{
		{"get", "GET", "", false, 0, reply},
		{"put with length", "PUT", strings.Repeat("u", 3000), false, 3000, reply},
		{"put chunked", "PUT", strings.Repeat("u", 70000), true, 70000, reply},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, up0, down0 := h.obs.transfer()
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
				if tc.chunked {
					body = io.MultiReader(body) // hides the length
				}
			}
			req, _ := http.NewRequest(tc.method, "https://"+up.hostport+"/2/0/files", body)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if got := readBody(t, resp); len(got) != reply {
				t.Fatalf("client got %d bytes, want %d", len(got), reply)
			}
			// The counts are final once the handler has returned.
			eventually(t, 10*time.Second, "no request in flight", func() bool {
				n, _, _ := h.obs.transfer()
				return n == 0
			})
			_, up1, down1 := h.obs.transfer()
			if up1-up0 != tc.wantUpload || down1-down0 != tc.wantDownload {
				t.Errorf("counted upload %d, download %d; want %d, %d", up1-up0, down1-down0, tc.wantUpload, tc.wantDownload)
			}
		})
	}
}

// A long download is counted while it streams, not only at its end, and
// the request is in flight until it finishes.
func TestTransferCountedWhileStreaming(t *testing.T) {
	pki := newTestPKI(t)
	up := startUpstream(t, pki)
	h := startProxy(t, Config{Inject: []string{up.hostport}, UpstreamRoots: up.roots})
	const first = 3 * byteReportStep
	release := make(chan struct{})
	up.setHandler(func(w http.ResponseWriter, r *http.Request, s seen) bool {
		_, _ = w.Write(bytes.Repeat([]byte("d"), first))
		w.(http.Flusher).Flush()
		<-release
		_, _ = w.Write([]byte("end"))
		return true
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	resp, err := h.client(t).Get("https://" + up.hostport + "/2/0/files/1/chunks/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, first)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the first MiBs counted", func() bool {
		_, _, down := h.obs.transfer()
		return down >= first-byteReportStep
	})
	if n, _, _ := h.obs.transfer(); n != 1 {
		t.Errorf("in flight during the download = %d, want 1", n)
	}
	close(release)
	if rest, _ := io.ReadAll(resp.Body); string(rest) != "end" {
		t.Fatalf("rest of the body = %q", rest)
	}
	eventually(t, 10*time.Second, "the download to finish", func() bool {
		n, _, down := h.obs.transfer()
		return n == 0 && down == first+3
	})
}
