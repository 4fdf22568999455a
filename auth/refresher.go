package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
)

// Tuning of one refresh cycle.
const (
	// flightMargin is how long past a holder's deadline a successor still
	// waits for its result before it marks the refresh uncertain.
	flightMargin = time.Second
	// minBudget is the least lease time left that still allows starting
	// a refresh.
	minBudget = 100 * time.Millisecond
	// busyRetry is how soon to look again after the store changed under
	// a cycle.
	busyRetry = 50 * time.Millisecond
)

// Failpoints, named for tests that stop or kill a process at that point of
// a refresh (see ManagerOptions.Failpoint).
const (
	FailpointBeforeIntent  = "before_intent"  // the lease is held and the record read, the in-flight mark not yet written
	FailpointAfterIntent   = "after_intent"   // the in-flight mark is written, nothing sent yet
	FailpointTokenSent     = "token_sent"     // the token endpoint has the request and its answer is arriving, unread
	FailpointTokenAnswered = "token_answered" // new tokens received, the result not yet written
)

// Events reported to ManagerOptions.OnEvent, for metrics.
const (
	// EventLeaseBusy: another process held the refresh lease when this
	// one wanted to refresh.
	EventLeaseBusy = "lease_busy"
	// EventInFlight: another process's refresh was in flight.
	EventInFlight = "refresh_in_flight"
	// EventFenced: the store refused a write because the lease or the
	// record had passed on (a fence loss); the cycle reloaded.
	EventFenced = "fenced"
	// EventUncertain: this process found a refresh that did not finish by
	// its deadline and marked the session uncertain.
	EventUncertain = "uncertain"
	// EventAdopted: this process took a token that another one refreshed.
	EventAdopted = "adopted"
)

// outcomeKind says how a refresh cycle ended, and so what the Manager
// publishes.
type outcomeKind int

const (
	outRefreshed outcomeKind = iota // new tokens are in the store: rec
	outUnsaved                      // new tokens exist only in memory: pending
	outAdopt                        // the store holds a newer session: rec
	outBusy                         // another process is refreshing: look again after retry
	outTransient                    // no refresh now; may succeed later: err
	outEnded                        // the session cannot be refreshed any more: err, rec if known
	outLoggedOut                    // nothing is stored
	outFatal                        // the store is unsafe: stop
)

// outcome is what one refresh cycle returns to the Manager.
type outcome struct {
	kind outcomeKind
	rec  Record
	// pending is a result write that failed and must be retried: new
	// tokens, or (abort) the old session whose in-flight mark is cleared.
	pending *pendingWrite
	// lease is kept by the Manager when non-nil (a file lock held until
	// pending is written); otherwise the cycle released it.
	lease *Lease
	err   error
	retry time.Duration
	// sent is when the token request was sent; result is what to report
	// to OnRefresh ("" when the token endpoint was not called).
	sent   time.Time
	result string
	// event is what to report to OnEvent, if anything.
	event string
}

// pendingWrite is a result write not yet in the store.
type pendingWrite struct {
	base Flight
	sess *Session
	// abort: sess is the session as it was (nothing was rotated); writing
	// it only clears the in-flight mark.
	abort bool
}

// refresher does the I/O of one refresh cycle: lease, load, intent write,
// token call, result write. It keeps no session state between cycles:
// the Manager passes in what it serves and publishes what comes out.
type refresher struct {
	cfg       OAuthConfig
	conf      *oauth2.Config
	client    *http.Client
	store     Store
	holder    string
	log       *slog.Logger
	leaseWait time.Duration
	// callTimeout bounds the wait for the token endpoint's answer. It is
	// long on purpose: an answer given up on may have rotated the refresh
	// token, and then the session ends.
	callTimeout time.Duration
	failpoint   func(string)
	// Owned by the goroutine that runs cycles:
	//
	// leaseWarned: the warning about a lease too long for the token's
	// lifetime was logged.
	leaseWarned bool
	// unsent is an intent write whose outcome is unknown: if the store
	// holds it, nothing was sent under it.
	unsent *Flight
}

// checkLease warns, once, when the lease is too long for s's token: a
// takeover must finish while the token still lives, so the lease must stay
// well under a quarter of its lifetime.
func (r *refresher) checkLease(l Lease, s *Session) {
	if r.leaseWarned || !l.Lapses() {
		return
	}
	issued := s.RefreshedAt
	if issued.IsZero() || s.LoggedInAt.After(issued) {
		issued = s.LoggedInAt
	}
	if life := s.Expiry.Sub(issued); life > 0 && l.TTL > life/4 {
		r.leaseWarned = true
		r.log.Warn("the store lease is too long for the access token's lifetime: another instance could not take over before the token runs out",
			"lease", l.TTL.String(), "access_token_lifetime", life.Round(time.Second).String(), "action", "set store.lease below a quarter of the lifetime")
	}
}

func (r *refresher) fail(point string) {
	if r.failpoint != nil {
		r.failpoint(point)
	}
}

// cycle refreshes the session the Manager serves (mem, read from the store
// at version ver), unless the store shows another process did or is doing
// it. bad is an access token the API refused: a stored session that still
// holds it is refreshed even if it is fresh. held is a lease kept from an
// earlier cycle.
func (r *refresher) cycle(ctx context.Context, held *Lease, ver int64, mem *Session, bad string) (out outcome) {
	bg := context.WithoutCancel(ctx)
	acquired := time.Now()
	l := held
	if l == nil {
		actx, cancel := context.WithTimeout(ctx, r.leaseWait)
		got, err := r.store.Acquire(actx, r.holder)
		cancel()
		if err != nil {
			var lh *LeaseHeldError
			if errors.As(err, &lh) {
				return outcome{kind: outBusy, err: lh, retry: max(lh.Remaining, busyRetry), event: EventLeaseBusy}
			}
			if ctx.Err() != nil {
				return outcome{kind: outBusy, retry: busyRetry}
			}
			return outcome{kind: outTransient, err: fmt.Errorf("taking the refresh lease: %w", err)}
		}
		l = &got
	}
	defer func() {
		if out.lease != nil {
			return
		}
		if err := r.store.Release(bg, *l); err != nil {
			r.log.Warn("releasing the refresh lease failed", "cause", err.Error())
		}
	}()

	rec, err := r.store.Load(bg)
	switch {
	case errors.Is(err, ErrNoSession):
		return outcome{kind: outLoggedOut}
	case errors.Is(err, securefile.ErrUnsafe):
		return outcome{kind: outFatal, err: err}
	case err != nil:
		return outcome{kind: outTransient, err: err}
	}
	s := rec.Session
	r.checkLease(*l, s)
	if s.Ended != "" {
		return outcome{kind: outEnded, rec: rec, err: errors.New(s.Ended)}
	}
	if f := rec.Flight; f != nil {
		if u := r.unsent; u != nil && f.Fence == u.Fence && f.Holder == u.Holder && !f.Uncertain {
			// This process's own mark, under which nothing was sent.
			if _, err := r.store.Finish(bg, *f, s); err != nil && !errors.Is(err, ErrConflict) {
				return outcome{kind: outTransient, err: fmt.Errorf("clearing an unused in-flight mark: %w", err)}
			}
			r.unsent = nil
			return outcome{kind: outBusy, retry: busyRetry}
		}
		return r.inFlight(bg, *l, rec)
	}
	r.unsent = nil
	if rec.Version != ver && (mem == nil || s.AccessToken != mem.AccessToken) && s.AccessToken != bad {
		return outcome{kind: outAdopt, rec: rec}
	}
	if s.RefreshToken == "" {
		return outcome{kind: outEnded, rec: rec, err: errors.New("the access token expired and the server issued no refresh token")}
	}

	// The intent write. Its deadline is what a successor waits for; the
	// token call itself may take longer, and a late result may still be
	// written.
	timeout := r.callTimeout
	if l.Lapses() {
		budget := l.TTL - time.Since(acquired)
		if budget < minBudget {
			return outcome{kind: outBusy, retry: busyRetry}
		}
		timeout = budget * 2 / 3
	}
	base := Flight{Version: rec.Version}
	// A pause here outlives the lease check above: only the fence on the
	// intent write stops this process now.
	r.fail(FailpointBeforeIntent)
	brec, err := r.store.Begin(bg, *l, rec.Version, timeout)
	switch {
	case err == nil:
		base = *brec.Flight
	case errors.Is(err, ErrConflict), errors.Is(err, ErrFenced):
		return outcome{kind: outBusy, retry: busyRetry, event: EventFenced}
	case !l.Lapses():
		// A store whose lease cannot lapse (a file lock) but that cannot be
		// written: nobody else can refresh while the lock is held, so
		// refresh unmarked and hold the lock until the result is written.
		r.log.Debug("refreshing without an in-flight mark", "cause", err.Error())
	default:
		// The mark may have been written all the same (an answer lost
		// with the connection). Nothing is sent under it, so this process
		// may clear it when it finds it.
		r.unsent = &Flight{Fence: l.Fence, Holder: l.Holder}
		return outcome{kind: outTransient, err: fmt.Errorf("marking the refresh in flight: %w", err)}
	}
	r.fail(FailpointAfterIntent)
	return r.call(bg, l, base, s)
}

// inFlight handles a record another process marked in flight: wait for its
// result until the holder's deadline has passed, then mark it uncertain.
// Its refresh token is never sent again.
func (r *refresher) inFlight(ctx context.Context, l Lease, rec Record) outcome {
	f := rec.Flight
	if f.Uncertain {
		return outcome{kind: outEnded, rec: rec, err: uncertainError(f.Holder)}
	}
	if f.Remaining > -flightMargin {
		return outcome{kind: outBusy, retry: f.Remaining + flightMargin, event: EventInFlight}
	}
	urec, err := r.store.MarkUncertain(ctx, l, *f)
	switch {
	case errors.Is(err, ErrConflict), errors.Is(err, ErrFenced):
		return outcome{kind: outBusy, retry: busyRetry, event: EventFenced}
	case err != nil:
		return outcome{kind: outTransient, err: fmt.Errorf("marking an unfinished refresh: %w", err)}
	}
	r.log.Error("a refresh did not finish before its deadline; its refresh token may have been used, so it is never sent again",
		"refresh_holder", f.Holder, "action", "run `anaplan-proxy login` unless that process still writes its result")
	return outcome{kind: outEnded, rec: urec, err: uncertainError(f.Holder), event: EventUncertain}
}

func uncertainError(holder string) error {
	return fmt.Errorf("a refresh by %s did not finish and its outcome is unknown", holder)
}

// chained refreshes a session whose newest tokens are not in the store
// yet. Its refresh token exists only in this process, so it is sent
// without a store round trip; the result joins the pending write.
func (r *refresher) chained(ctx context.Context, held *Lease, p *pendingWrite) outcome {
	out := r.call(context.WithoutCancel(ctx), held, p.base, p.sess)
	if out.kind == outTransient && out.pending == nil {
		out.pending = p
	}
	return out
}

// call sends the refresh token of s and writes the result as base allows.
// l is kept (returned in the outcome) while a result write is pending on a
// store whose lease cannot lapse.
func (r *refresher) call(ctx context.Context, l *Lease, base Flight, s *Session) outcome {
	rt := s.RefreshToken
	var written atomic.Bool
	trace := &httptrace.ClientTrace{
		// Called once the request is in the connection's write buffer,
		// which may be before it leaves the process: "may have been sent".
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				written.Store(true)
			}
		},
		// The server has the request and is answering; nothing of the
		// answer has been read. Only now is a pause or death certain to
		// come after the server acted on the request.
		GotFirstResponseByte: func() { r.fail(FailpointTokenSent) },
	}
	sent := time.Now()
	rctx, cancel := context.WithTimeout(httptrace.WithClientTrace(ctx, trace), r.callTimeout)
	tok, err := r.conf.TokenSource(withClient(rctx, r.client), &oauth2.Token{RefreshToken: rt}).Token()
	cancel()
	keep := func(o outcome) outcome {
		if o.pending != nil && l != nil && !l.Lapses() {
			o.lease = l
		}
		return o
	}
	if err != nil {
		err = sanitize("token", err, rt)
		var ee *EndpointError
		answered := errors.As(err, &ee)
		if answered && ee.Permanent() {
			rej := &rejectionError{e: ee}
			ended := *s
			ended.Ended = rej.Error()
			out := outcome{kind: outEnded, err: rej, sent: sent, result: "rejected"}
			if rec, werr := r.store.Finish(ctx, base, &ended); werr == nil {
				out.rec = rec
			}
			return out
		}
		if answered || !written.Load() || s.Rotation == RotationFixed {
			// Nothing was rotated (the server answered, or never got the
			// request), or the refresh token does not rotate: the same
			// token may be sent again. Clear the in-flight mark.
			out := outcome{kind: outTransient, err: err, sent: sent, result: "transient_error"}
			if base.Fence != 0 {
				if _, werr := r.store.Finish(ctx, base, s); werr != nil && !errors.Is(werr, ErrConflict) {
					out.pending = &pendingWrite{base: base, sess: s, abort: true}
				}
			}
			return keep(out)
		}
		// The request went out and no answer came back: the server may
		// have rotated the refresh token. Sending it again could be a
		// replay, which revokes the grant, so the session ends here.
		ended := *s
		ended.Ended = "the outcome of a refresh is unknown (the request was sent and no answer came back: " + err.Error() + ")"
		out := outcome{kind: outEnded, err: errors.New(ended.Ended), sent: sent, result: "uncertain"}
		if rec, werr := r.store.Finish(ctx, base, &ended); werr == nil {
			out.rec = rec
		}
		return out
	}
	r.fail(FailpointTokenAnswered)

	now := time.Now()
	// The server starts the token's lifetime when it answers, which under
	// load can be long before the answer arrives here: count expires_in
	// from when the request was sent, so that the token is never handed
	// out after the server has already expired it.
	if !tok.Expiry.IsZero() {
		tok.Expiry = tok.Expiry.Add(-now.Sub(sent))
	}
	ns := *s
	fresh := sessionFromToken(r.cfg, tok, now)
	ns.AccessToken = fresh.AccessToken
	if fresh.TokenType != "" {
		ns.TokenType = fresh.TokenType
	}
	ns.Expiry = fresh.Expiry
	if fresh.IDToken != "" {
		ns.IDToken = fresh.IDToken
	}
	ns.RefreshedAt = now
	ns.RefreshedBy = r.holder
	ns.Rotation = RotationFixed
	if tok.RefreshToken != "" && tok.RefreshToken != rt {
		ns.RefreshToken = tok.RefreshToken
		ns.RefreshTokenIssuedAt = now
		ns.Rotation = RotationRotating
	}
	rec, err := r.store.Finish(ctx, base, &ns)
	switch {
	case err == nil:
		return outcome{kind: outRefreshed, rec: rec, sent: sent, result: "success"}
	case errors.Is(err, ErrConflict):
		// A login replaced the session while this refresh ran: the new
		// login wins and these tokens are dropped.
		r.log.Warn("a new login replaced the session during a refresh; using the new login")
		return outcome{kind: outBusy, retry: busyRetry, sent: sent, result: "success", event: EventFenced}
	}
	return keep(outcome{kind: outUnsaved, pending: &pendingWrite{base: base, sess: &ns}, err: err, sent: sent, result: "success"})
}
