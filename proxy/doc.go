package proxy

// The way of an intercepted request
//
// This is the map of one request sent inside an intercepted CONNECT, from
// the client's bytes to the access-log line: each stage, the file and
// function that own it, and who reads the client connection when.
//
// The wire format of message heads, in both directions, is in internal/h1:
// the field-line and start-line parsers (SplitField, EachField, RequestLine,
// StatusLine), the head writers (WriteRequestHead, WriteResponseHead,
// WriteField, CopyFields for lines already checked), the reading of an
// upstream answer head (ReadResponseHead), and the one rule for a field that
// would break the framing: never written, never rewritten, reported as an
// h1.FieldError. Field names, values and tokens are checked with
// golang.org/x/net/http/httpguts. The hop-by-hop fields are known there once
// too (h1.RemoveHopByHop, h1.IsHopByHopName).
//
//  1. CONNECT (proxy.go). The listener's net/http server calls
//     Proxy.ServeHTTP, which admits the client (access.go: access.admit)
//     and hands the CONNECT to goproxy, whose only CONNECT handler is
//     handleConnect: it asks the policy (policy.go: policy.decide) and
//     returns a hijack action. For an inject or compat host, hijackInject
//     writes "200 Connection established" and calls serveInterceptedConn
//     on the same goroutine; tunnel hosts go to tunnel.go (hijackTunnel).
//     A refused CONNECT is logged by finishDenied.
//
//  2. TLS and the connection loop (intercept.go, then h1/server.go).
//     serveInterceptedConn makes the connection an h1.ServerConn of the
//     proxy's engine (newEngine: an h1.Server whose fields are the
//     proxy's limits and whose hooks are the proxy's handler, fast path,
//     body admission and refusal answers), tracks it for Shutdown, and
//     calls its Serve with a context that carries the target. Serve
//     completes the TLS handshake with a leaf from the local CA
//     (certcache.go, through the targetConn that leafFor sees), wraps the
//     TLS stream in the framing guard and a bufio.Reader, and loops: next
//     waits for the first byte of a request (header timeout, then idle
//     timeout), serveOne serves it. The goroutine that runs this loop is
//     the connection's serving goroutine; it does the whole of each
//     request, except where noted below.
//
//  3. The framing guard (h1/framing.go). Every read of the client stream
//     goes through guardConn.Read, which follows the HTTP/1.1 framing
//     (heads, Content-Length bodies, chunks, trailers) and refuses,
//     before any parser sees them, requests whose length is ambiguous;
//     each field line is split by h1.SplitField, so a line that is not a
//     valid field is refused here. A refusal is an h1.RequestError,
//     answered by the serving loop when it next reads a request head,
//     never in the middle of another answer: the engine's Refused hook
//     (intercept.go: Proxy.refused) writes the proxy's answer for it
//     (refusalAnswer) and records it (logRefused).
//
//  4. The fast path (fast.go). serveOne first offers the buffered head to
//     the engine's Fast hook, Proxy.serveFast, through an
//     h1.FastExchange. A GET without a body whose head holds nothing the
//     proxy acts on (fastEligible) is forwarded from its bytes:
//     FastExchange.Take keeps the head, sendFast has the upstream client
//     send it (h1.Client.SendHead, with writeFastHead, the client's field
//     lines copied by h1.CopyFields), which takes an upstream connection,
//     applies the retry rule and returns the connection with the first
//     byte of the answer in its buffer. A plain answer (simpleAnswer) is
//     copied back by relayFast to the FastExchange's writer, which then
//     gives the connection back (h1.Conn.Release); serveFast records the
//     request (accesslog.go: Proxy.record). Anything else, a 401
//     included, goes on the general way from there (Proxy.general,
//     through FastExchange.ServeGeneral, which parses the kept head with
//     http.ReadRequest and runs the given handler with the connection's
//     ResponseWriter), where h1.Client.ReadResponse reads the answer
//     already waiting, and joins stage 6.
//
//  5. The request head and body (h1/server.go). Otherwise serveOne reads
//     the head with http.ReadRequest, checks the protocol, Host and
//     Expect (refusing with an h1.RequestError, as in stage 3), admits a
//     body through the EnterBody hook (Proxy.enterBody, which counts
//     against Limits.MaxBodyWaits) and wraps it in a reqBody, which sends
//     100 Continue on its first read and applies the body timeout
//     (h1.BodyClock). The handler gets the connection's
//     http.ResponseWriter (h1's response), which frames the answer
//     (writeHead, whose head h1.WriteResponseHead writes, and finish).
//
//  6. The handler (forward.go). serveIntercepted refuses TRACE and
//     CONNECT (refuseMethod) and a Host other than the CONNECT target
//     (checkHost), hands a compat host to compat.go (serveCompat),
//     applies client_authorization, and calls forward: outgoing builds
//     the upstream request (hop-by-hop, forwarding and underscored fields
//     removed, the query cleaned), roundTrip adds the token and sends it.
//     The upstream side never calls into the client connection: it
//     reports through the h1.ClientTrace (h1/trace.go) that the
//     connection puts in every request's context, as an
//     httptrace.ClientTrace.
//
//  7. The 401 replay (forward.go). roundTrip buffers a small body for a
//     replay (bufferForReplay); afterFirstAttempt answers a 401 by asking
//     the TokenSource for a newer token and sending the request once more
//     with it. The fast path's 401 reaches the same afterFirstAttempt
//     through Proxy.general.
//
//  8. The upstream exchange (forward.go: Proxy.send, and pool.go; the
//     client side of the engine is h1's: client.go, conn.go, pool.go,
//     body.go).
//     Proxy.send picks the way: p.client (an h1.Client) for an
//     intercepted request, roundTripShared (shared.go, the shared
//     http.Transport) for plain HTTP. The proxy gives the client what it
//     does not know (pool.go): the dial (Proxy.dialRoute: the guarded
//     dialer, the corporate proxy, the upstream TLS), the route of a
//     target (Proxy.route), the metrics (its Observer is the
//     h1.PoolObserver), and whether to keep a connection warm
//     (Proxy.warm). h1.Client.RoundTrip takes a connection from the
//     pool (h1.Pool, which closes one on which anything arrived
//     while it was idle) or dials one, writes the head
//     (h1.WriteRequestHead) and a small in-memory body (h1.MemoryBody)
//     inline and awaits the answer (h1.Conn.WriteAndAwait), or starts a
//     goroutine running an h1.BodySender for any other body and awaits
//     the answer meanwhile (h1.Conn.AwaitWhileSending). A request that
//     may be sent twice goes once more on another connection when a
//     reused one turns out stale, by net/http's rule (h1/client.go:
//     attempt). It reads the final answer's head (h1.Conn.ReadFinalHead:
//     http.ReadResponse bounded by h1.MaxResponseHead, the Connection
//     field as sent, informational answers skipped) and gives it a Body
//     that owns the connection: its Close gives the connection back to
//     the pool (h1.Conn.Release) when the exchange was cleanly framed to
//     its end, and closes it otherwise, ending a body sender that still
//     runs. The client connection's h1.Holder (in its context) ends the
//     held connection's reads and writes when the context ends, and
//     closes it when the client connection ends before the exchange did.
//
//  9. The answer (forward.go). answer relays the upstream's response
//     (relayResponse: hop-by-hop fields removed, trailer filtered, body
//     copied by copyBody) or, after a failure, the proxy's own
//     (roundTripError). Every answer the proxy gives itself, on any path,
//     is made by a constructor in answer.go (requestError, requestDenied,
//     internalError, unavailable, shuttingDown, tokenAnswer,
//     upstreamFailure.answer). finishIntercepted, deferred by the
//     handler, flushes the byte counts and records the request
//     (Proxy.record). Back in serveOne, the ResponseWriter is finished, what
//     the handler left of the request body is drained, and the loop goes
//     on.
//
// Who reads the client connection when (all of it in h1/server.go): the
// serving goroutine reads the request head (next, serveOne, or the Fast
// hook). A request body is read by
// whoever reads reqBody: the serving goroutine for a small body buffered for
// the replay or sent inline, the h1.BodySender's goroutine for a streamed
// upload (h1.Client.RoundTrip). Once the body has been read to its end, or for a
// request without one, a request whose answer has not come within
// h1.WatchDelay starts a watch goroutine (ServerConn.startWatch, which
// the upstream side reaches through h1.ClientTrace.AwaitingAnswer from
// h1.Conn.WriteAndAwait, AwaitWhileSending and ReadFinalHead, and through
// AwaitingAfterBody from Proxy.send for the shared transport): it peeks at
// the client connection to notice a close, which cancels the request's
// context. stopWatch ends it before the serving goroutine reads again. When
// an upstream answers before it has taken the whole body, the Close of the
// answer's Body (or a failed h1.Client.RoundTrip) ends a read of it in
// progress through h1.ClientTrace.BodyAbandoned (ServerConn.cutBody).
// After the answer, the serving goroutine drains the
// rest of the body (reqBody.drain) or, when the connection ends,
// ServerConn.close reads and drops what the client still sends for half a
// second.
//
// The access-log line and the request metric of every request are written in
// one place, Proxy.record (accesslog.go), from a requestRecord that each
// path fills: serveFast (the fast path), finishIntercepted (every request a
// handler served, the fast path's general way included), logRefused (a
// request the engine refused, through Proxy.refused) and finishDenied
// (answered before any interception).
