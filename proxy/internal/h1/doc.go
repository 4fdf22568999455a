// Package h1 is the proxy's HTTP/1.1 engine: the server side that serves
// an intercepted client connection, the client side that sends its
// requests upstream on pooled connections, and the wire format both
// speak. The two sides meet only through request and response data, as
// net/http's server.go and transport.go do: the client side tells the
// server side what it waits for through a hook in the request's context
// (ClientTrace), never by calling into the client connection. The package
// knows nothing of tokens, policy or the proxy's answers: those come in
// through the Server's hooks and the Client's Dial, and a request the
// server refuses goes out as a *RequestError for the proxy to answer.
//
// Where each part is:
//
//   - server.go: Server and ServerConn, the connection loop (TLS
//     handshake, header and idle timeouts, keep-alive, pipelining, the
//     watch of a client that goes away while its request waits), the
//     request body (100-continue, the body timeout, the drain after the
//     answer) and the ResponseWriter that frames the answer. FastExchange
//     is the hook through which the proxy may serve a request from the
//     bytes of its head, or hand it back to the general way.
//   - framing.go: the guard in front of the server's parser, which follows
//     the framing of the client's stream and refuses, before any parser
//     sees them, requests whose length two parsers could read differently.
//   - client.go: Client, with RoundTrip (a request, its body and the
//     retry rule of net/http, once) and SendHead (a head written by the
//     caller, for the fast path); the answer body whose Close gives the
//     connection back to the pool only after a cleanly framed exchange;
//     and Holder, the one context registration of a client connection's
//     exchanges.
//   - conn.go: Conn, one upstream connection with its buffers and
//     deadlines, and the waits for an answer (WriteAndAwait,
//     AwaitWhileSending, ReadFinalHead).
//   - body.go: BodySender, which writes a request body on its own goroutine
//     while the answer is awaited.
//   - pool.go: Pool, the idle upstream connections that every client
//     connection draws from, with its bounds, idle timeout, keep-warm, and
//     the look at an idle connection that closes it when anything arrived
//     on it; records.go lets that look skip a read of TLS when TLS can hold
//     nothing, and a connection it found quiet has its request written from
//     within the wait for the answer (socketProbe.sendAndWait).
//   - head.go, write.go, response.go, hop.go: one parser and one writer of
//     message heads per direction, the reading of an upstream answer head,
//     and the hop-by-hop fields.
//   - trace.go: ClientTrace.
//
// The rule for fields that would break the framing is one for both
// directions: a field whose name is not a token, or whose value holds a
// CR, an LF or another control character, is never written, and never
// rewritten: the head writers leave it out and report it (*FieldError).
// A request head with such a field is not sent (as net/http's transport
// refuses it); an answer goes without it (as net/http's server drops a
// field name that is not a token). Field names, values and tokens are
// checked with golang.org/x/net/http/httpguts, as net/http checks them.
package h1
