package proxy

import (
	"net/http"
)

// send sends req upstream: through p.client, on a pooled upstream
// connection, for an intercepted request; through the shared transport
// for plain HTTP. The client's exchange ends with the answer's Body: its
// Close gives the connection back to the pool or closes it.
func (p *Proxy) send(req *http.Request, x *exchange) (*http.Response, error) {
	t := x.target
	if t.plain || p.transportOnly {
		if x.trace != nil {
			// The shared transport gives no sign that it waits.
			x.trace.AwaitingAfterBody()
		}
		return p.roundTripShared(req)
	}
	return p.client.RoundTrip(req.Context(), p.route(t), req)
}
