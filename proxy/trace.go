package proxy

import "context"

// exchangeTrace is how the upstream side of an exchange tells the side
// that serves the client what it is doing, instead of calling into the
// client connection: it rides in the request's context, as an
// httptrace.ClientTrace does. A request without one (plain HTTP, which
// net/http's server serves) has nobody to tell. The functions are the
// server side's; the upstream side calls them on the goroutine that waits
// for the answer, or (bodyAbandoned) the one that ends the exchange.
type exchangeTrace struct {
	// awaitingAnswer: the whole request has gone upstream and its answer
	// is slow to come. The server side may then watch its client for a
	// close, which ends the request's context.
	awaitingAnswer func()
	// awaitingAfterBody: as awaitingAnswer, but from the end of the
	// request body on, for a sender that cannot tell when it waits (the
	// shared transport).
	awaitingAfterBody func()
	// bodyAbandoned: the upstream takes no more of the request body; a
	// read of it in progress on another goroutine is to end now.
	bodyAbandoned func()
}

type exchangeTraceKey struct{}

// withExchangeTrace returns ctx carrying tr.
func withExchangeTrace(ctx context.Context, tr *exchangeTrace) context.Context {
	return context.WithValue(ctx, exchangeTraceKey{}, tr)
}

// exchangeTraceFrom returns the trace that ctx carries, or nil.
func exchangeTraceFrom(ctx context.Context) *exchangeTrace {
	tr, _ := ctx.Value(exchangeTraceKey{}).(*exchangeTrace)
	return tr
}
