package h1

import "context"

// ClientTrace is how the upstream (client) side of an exchange tells the
// side that serves the client what it is doing, instead of calling into
// the client connection: it rides in the request's context, as an
// httptrace.ClientTrace does. A request without one (plain HTTP, which
// net/http's server serves) has nobody to tell. The functions are the
// server side's; the upstream side calls them on the goroutine that waits
// for the answer, or (BodyAbandoned) the one that ends the exchange.
type ClientTrace struct {
	// AwaitingAnswer: the whole request has gone upstream and its answer
	// is slow to come. The server side may then watch its client for a
	// close, which ends the request's context.
	AwaitingAnswer func()
	// AwaitingAfterBody: as AwaitingAnswer, but from the end of the
	// request body on, for a sender that cannot tell when it waits (the
	// shared transport).
	AwaitingAfterBody func()
	// BodyAbandoned: the upstream takes no more of the request body; a
	// read of it in progress on another goroutine is to end now.
	BodyAbandoned func()
}

type clientTraceKey struct{}

// WithClientTrace returns ctx carrying tr.
func WithClientTrace(ctx context.Context, tr *ClientTrace) context.Context {
	return context.WithValue(ctx, clientTraceKey{}, tr)
}

// ContextClientTrace returns the trace that ctx carries, or nil.
func ContextClientTrace(ctx context.Context) *ClientTrace {
	tr, _ := ctx.Value(clientTraceKey{}).(*ClientTrace)
	return tr
}
