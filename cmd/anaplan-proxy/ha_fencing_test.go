package main

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// uncertainCause is what /status and `status` say when a refresh that
// another instance began never finished.
const uncertainCause = "did not finish and its outcome is unknown"

// A refresh holder stops (SIGSTOP, as a VM freeze would) at each point of
// its refresh: after its intent write, with the request on the wire, and
// with the answer received but not written. A second instance finds the
// refresh in flight past its deadline and ends the session
// (login_required, saying why) instead of sending the refresh token again.
// Then the holder is either killed (the session stays ended until a new
// login) or continued (its result write lands over the uncertain mark and
// rescues the session for both). The fake never sees a refresh token twice.
func TestHAStoppedHolderNeverReplays(t *testing.T) {
	t.Parallel()
	for _, point := range []string{"after_intent", "token_sent", "token_answered"} {
		for _, then := range []string{"killed", "continued"} {
			t.Run(point+"/"+then, func(t *testing.T) {
				t.Parallel()
				testStoppedHolder(t, point, then == "killed")
			})
		}
	}
}

func testStoppedHolder(t *testing.T, point string, kill bool) {
	const lifetime = 2 * time.Second
	h := newHAEnv(t, anaplantest.Options{AccessTokenLifetime: lifetime}, 2, 500*time.Millisecond, "")
	h.login()
	// The holder runs alone until it stops inside its first refresh, so
	// that it, and not the other instance, is the one that stops.
	a := h.serveInstance(0, "ANAPLAN_PROXY_FAILPOINTS="+point+"=stop")
	a.continueOnCleanup(t)
	a.awaitStopped(t, 15*time.Second, "at "+point)
	h.writeCA()
	// With the request on the wire the fake answers (and rotates) while
	// the holder is stopped.
	sent := 0
	if point != "after_intent" {
		sent = 1
	}
	if !waitFor(func() bool { return h.fake.Refreshes() == sent }) {
		t.Fatalf("the fake answered %d refreshes with the holder stopped %s, want %d", h.fake.Refreshes(), point, sent)
	}

	b := h.serveInstance(1)
	st := b.awaitStatus(t, 15*time.Second, "login_required: the stopped holder's refresh is uncertain", func(st sessionStatus) bool {
		return st.State == "login_required"
	})
	holder := ":" + strconv.Itoa(a.cmd.Process.Pid) // instance names are host:pid:random
	if !strings.Contains(st.LastError, uncertainCause) || !strings.Contains(st.LastError, holder) {
		t.Errorf("last_error %q: want it to name the holder (%s) and say its refresh %s", st.LastError, holder, uncertainCause)
	}
	h.assertNoReplay("after the takeover")

	if kill {
		a.kill(t)
		// Nobody may send the refresh token the holder may have used:
		// the session stays ended, in the daemon and in the store.
		<-time.After(1500 * time.Millisecond)
		if n := h.fake.Refreshes(); n != sent {
			t.Errorf("%d refreshes after the holder died, want %d: the uncertain refresh token was sent", n, sent)
		}
		if st := b.status(t); st.State != "login_required" {
			t.Errorf("after the holder died: /status %+v, want login_required", st)
		}
		code, out, errOut := h.command("status")
		if code != statusLoginRequired || !strings.Contains(out, uncertainCause) || !strings.Contains(out, "anaplan-proxy login") {
			t.Errorf("status with the store alone: exit %d, want %d, the cause and the login hint:\n%s%s", code, statusLoginRequired, out, errOut)
		}
		// A new login is the way out.
		h.login()
		b.awaitReady(t, 15*time.Second)
		h.awaitServesNewest(t, b, 10*time.Second)
	} else {
		a.signal(t, syscall.SIGCONT)
		// The holder's result write is the one refresh that follows; the
		// other instance takes it (or, a lifetime on, refreshes itself).
		for i, d := range []*daemon{a, b} {
			d.awaitStatus(t, 15*time.Second, fmt.Sprintf("instance %d valid with the holder's token", i), func(sessionStatus) bool {
				st := d.haStatus(t)
				return (st.State == "valid" || st.State == "refreshing") &&
					(strings.Contains(st.Refresher, holder+":") || h.fake.Refreshes() > 1)
			})
		}
		for _, d := range []*daemon{a, b} {
			h.awaitServesNewest(t, d, 10*time.Second)
		}
	}
	// The session goes on rotating without a replay.
	n := h.fake.Refreshes()
	if !waitFor(func() bool { return h.fake.Refreshes() >= n+1 }) {
		t.Fatalf("no refresh after the session went on\nlogs:\n%s", b.logs)
	}
	h.assertNoReplay("at the end")
	h.assertNoSecrets()
}

// A paused instance that had the refresh lease comes back after another
// instance refreshed in its place: whatever it would still write is
// refused (the fence), it takes the other's token from the store, and no
// refresh token is sent twice. It is paused either holding the lease, just
// before its intent write (where only the fence stops it), or idle right
// after a refresh of its own.
func TestHAPausedHolderIsFenced(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// stop pauses one instance of h and returns it and the other.
		stop func(t *testing.T, h *haEnv) (paused, other *daemon)
		// fenced: the paused instance must report a refused write.
		fenced bool
	}{
		{"holding the lease before its intent write", func(t *testing.T, h *haEnv) (*daemon, *daemon) {
			a := h.serveInstance(0, "ANAPLAN_PROXY_FAILPOINTS=before_intent=stop")
			a.continueOnCleanup(t)
			a.awaitStopped(t, 15*time.Second, "before its intent write")
			return a, h.serveInstance(1)
		}, true},
		{"idle after its refresh", func(t *testing.T, h *haEnv) (*daemon, *daemon) {
			a, b := h.serveInstance(0), h.serveInstance(1)
			a.continueOnCleanup(t)
			b.continueOnCleanup(t)
			if !waitFor(func() bool { return h.fake.Refreshes() >= 1 }) {
				t.Fatalf("no refresh\nlogs:\n%s", a.logs)
			}
			// The refresher is stopped as soon as its refresh is seen.
			var paused, other *daemon
			if !waitFor(func() bool {
				st := a.haStatus(t)
				switch st.Refresher {
				case st.Instance:
					paused, other = a, b
				case b.haStatus(t).Instance:
					paused, other = b, a
				default:
					return false
				}
				return true
			}) {
				t.Fatal("no instance reports the refresh")
			}
			paused.signal(t, syscall.SIGSTOP)
			return paused, other
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHAEnv(t, anaplantest.Options{AccessTokenLifetime: 2 * time.Second}, 2, 500*time.Millisecond, "")
			h.login()
			h.writeCA()
			paused, other := tc.stop(t, h)
			// Instance names are host:pid:random.
			pausedName := ":" + strconv.Itoa(paused.cmd.Process.Pid) + ":"
			otherName := ":" + strconv.Itoa(other.cmd.Process.Pid) + ":"
			// The other instance refreshes twice while it is paused: past
			// its lease and past its own refresh time.
			n := h.fake.Refreshes()
			if !waitFor(func() bool { return h.fake.Refreshes() >= n+2 }) {
				t.Fatalf("the other instance did not refresh while one was paused\nlogs:\n%s", other.logs)
			}
			if st := other.haStatus(t); !strings.Contains(st.Refresher, otherName) {
				t.Fatalf("/status of the running instance %+v: want its own refresh", st)
			}
			paused.signal(t, syscall.SIGCONT)
			paused.awaitStatus(t, 10*time.Second, "valid with the other's token", func(st sessionStatus) bool {
				s := paused.haStatus(t)
				return st.State == "valid" && !strings.Contains(s.Refresher, pausedName)
			})
			for _, d := range []*daemon{paused, other} {
				h.awaitServesNewest(t, d, 10*time.Second)
			}
			if tc.fenced {
				if v := paused.metric(t, `anaplan_proxy_session_events_total{event="fenced"}`); v < 1 {
					t.Errorf("the paused instance counted %v refused writes, want its intent write refused", v)
				}
			}
			// Both go on; the session is refreshed, never replayed.
			n = h.fake.Refreshes()
			if !waitFor(func() bool { return h.fake.Refreshes() >= n+2 }) {
				t.Fatalf("no refresh after the pause\nlogs:\n%s", paused.logs)
			}
			h.assertNoReplay("after the pause")
			for _, d := range []*daemon{paused, other} {
				d.awaitReady(t, 5*time.Second)
			}
			h.assertNoSecrets()
		})
	}
}
