package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"
)

// hijackTunnel relays a CONNECT to a tunnel host byte for byte: no
// interception and no token. The connection is tracked for Shutdown.
func (p *Proxy) hijackTunnel(req *http.Request, client net.Conn, ctx *goproxy.ProxyCtx) {
	t := ctx.UserData.(*target)
	start := time.Now()
	if !p.trackTunnel(client) {
		writeRaw(client, req, shuttingDown())
		return
	}
	defer p.untrackTunnel(client)

	dialCtx, cancel := context.WithTimeout(p.baseCtx, dialTimeout)
	upstream, err := p.dialer.DialContext(dialCtx, "tcp", t.hostport)
	cancel()
	if err != nil {
		f := classifyUpstream(err)
		p.obs.UpstreamError(f.reason)
		p.log.Warn("tunnel dial failed", "client", req.RemoteAddr, "host", t.hostport, "error_type", f.errType, "error", oneLine(f.cause))
		writeRaw(client, req, f.answer(t.hostport))
		return
	}
	if !p.trackTunnel(upstream) {
		_ = upstream.Close()
		writeRaw(client, req, shuttingDown())
		return
	}
	defer p.untrackTunnel(upstream)
	_ = client.SetWriteDeadline(time.Now().Add(p.limits.ReadHeaderTimeout))
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		_ = client.Close()
		_ = upstream.Close()
		return
	}
	up, down := relay(client, upstream, p.limits.TunnelIdleTimeout)
	p.log.LogAttrs(context.Background(), slog.LevelInfo, "tunnel",
		slog.String("client", req.RemoteAddr),
		slog.String("user", t.user),
		slog.String("host", t.hostport),
		slog.Int64("bytes_up", up),
		slog.Int64("bytes_down", down),
		slog.Int64("duration_ms", time.Since(start).Milliseconds()),
		slog.String("decision", actionTunnel.String()),
	)
}

// trackTunnel registers a tunnelled connection; false once Shutdown began.
func (p *Proxy) trackTunnel(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.tunnelConns[c] = struct{}{}
	p.tunnels.add()
	return true
}

func (p *Proxy) untrackTunnel(c net.Conn) {
	p.mu.Lock()
	delete(p.tunnelConns, c)
	p.mu.Unlock()
	p.tunnels.done()
}

func (p *Proxy) closeTunnels() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.tunnelConns {
		_ = c.Close()
	}
}

// relay copies between a and b until both directions end, an error occurs,
// or neither direction moved a byte for idle. It closes both connections
// and returns the bytes copied from a to b and from b to a.
func relay(a, b net.Conn, idle time.Duration) (aToB, bToA int64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = a.Close()
			_ = b.Close()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		bToA = copyIdle(a, b, &last, idle, closeBoth)
	}()
	aToB = copyIdle(b, a, &last, idle, closeBoth)
	<-done
	closeBoth()
	return aToB, bToA
}

// copyIdle copies src to dst. A clean end of src half-closes dst; an error
// or an idle period on both directions closes both connections.
func copyIdle(dst, src net.Conn, last *atomic.Int64, idle time.Duration, closeBoth func()) int64 {
	buf := make([]byte, copyBufferSize)
	var n int64
	for {
		_ = src.SetReadDeadline(time.Now().Add(idle))
		nr, rerr := src.Read(buf)
		if nr > 0 {
			last.Store(time.Now().UnixNano())
			_ = dst.SetWriteDeadline(time.Now().Add(idle))
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				closeBoth()
				return n
			}
		}
		if rerr == nil {
			continue
		}
		if errors.Is(rerr, os.ErrDeadlineExceeded) &&
			time.Since(time.Unix(0, last.Load())) < idle {
			continue // the other direction is busy: not idle
		}
		if errors.Is(rerr, io.EOF) {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
				return n
			}
		}
		closeBoth()
		return n
	}
}
