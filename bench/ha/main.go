// Command ha measures how instances of anaplan-proxy that share one
// session through PostgreSQL hand a refreshed token to each other and take
// over from one another. It starts a throw-away PostgreSQL server (the one
// internal/pgtest runs for tests), the fake Anaplan of internal/anaplantest
// with rotating refresh tokens, and N `anaplan-proxy serve` processes of
// the binary given, logs them in, and measures, from the processes' own
// logs (one clock, one host):
//
//   - handover: from the refreshing instance taking its new token into use
//     to each other instance taking the same token (p50, p99, max);
//   - failover when the lease holder dies: an instance started with the
//     failpoint before_intent=exit dies right after it took the lease for
//     a due refresh, before its intent write; from its death to the first
//     new token a survivor serves (p50, max);
//   - failover when an instance is SIGKILLed just before a refresh is due
//     (without the lease): from the kill to the first new token a
//     survivor serves (p50, max).
//
// The binary must be built with -tags failpoints (bench/ha.sh does).
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
	"github.com/anaplan-proxy/anaplan-proxy/internal/pgtest"
)

func main() {
	bin := flag.String("bin", "", "the anaplan-proxy `binary`, built with -tags failpoints")
	instances := flag.Int("instances", 3, "serve processes sharing the session")
	lifetime := flag.Duration("lifetime", 2*time.Second, "access-token lifetime of the fake Anaplan")
	lease := flag.Duration("lease", 500*time.Millisecond, "store.lease of every instance")
	refreshes := flag.Int("refreshes", 50, "refreshes whose handover is measured")
	kills := flag.Int("kills", 10, "deaths of the lease holder, and SIGKILLs before a due refresh, measured")
	keep := flag.Bool("keep", false, "keep the work directory (configurations, logs)")
	flag.Parse()
	if *bin == "" || *instances < 2 {
		fmt.Fprintln(os.Stderr, "usage: ha -bin path/to/anaplan-proxy [-instances 3] [-lifetime 2s] [-lease 500ms] [-refreshes 50] [-kills 10]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{bin: *bin, n: *instances, lifetime: *lifetime, lease: *lease}
	err := b.run(ctx, *refreshes, *kills, *keep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ha:", err)
		os.Exit(1)
	}
}

// event is one line an instance logged that matters here.
type event struct {
	inst   int
	msg    string
	at     time.Time
	expiry time.Time // the access token's expiry, for token events
}

// A new token taken into use: refreshed by the instance itself, or
// adopted from the store.
const (
	msgRefreshed = "access token refreshed"
	msgStarted   = "anaplan-proxy started"
	msgLoaded    = "loaded the stored session"
)

// proc is one serve process.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	exitAt time.Time // set before exited is closed
}

type bench struct {
	bin      string
	n        int
	lifetime time.Duration
	lease    time.Duration
	dir      string
	configs  []string

	mu     sync.Mutex // guards events and procs
	events []event
	procs  []*proc
	wg     sync.WaitGroup // log readers and waiters
}

func (b *bench) run(ctx context.Context, refreshes, kills int, keep bool) (err error) {
	srv, err := pgtest.Start()
	if err != nil {
		return err
	}
	defer srv.Close()
	fake, err := anaplantest.Start(anaplantest.Options{AccessTokenLifetime: b.lifetime, Interval: time.Second, AutoApprove: true})
	if err != nil {
		return err
	}
	defer fake.Close()
	if b.dir, err = os.MkdirTemp("", "anaplan-proxy-bench-ha-"); err != nil {
		return err
	}
	defer func() {
		if keep {
			fmt.Fprintln(os.Stderr, "work directory kept:", b.dir)
		} else {
			os.RemoveAll(b.dir)
		}
	}()
	if err := b.writeConfigs(fake, srv.DSN("postgres")); err != nil {
		return err
	}
	b.procs = make([]*proc, b.n)
	defer b.stopAll()

	login := exec.CommandContext(ctx, b.bin, "login", "--config", b.configs[0])
	if out, err := login.CombinedOutput(); err != nil {
		return fmt.Errorf("login: %v\n%s", err, out)
	}
	for i := range b.n {
		if err := b.start(ctx, i, ""); err != nil {
			return err
		}
	}
	fmt.Printf("anaplan-proxy HA benchmark: %d instances, %s tokens, %s lease, PostgreSQL %s on loopback\n\n", b.n, b.lifetime, b.lease, srv.Addr())

	if err := b.handover(ctx, refreshes); err != nil {
		return err
	}
	if err := b.holderDeath(ctx, kills); err != nil {
		return err
	}
	if err := b.killBeforeDue(ctx, kills); err != nil {
		return err
	}
	if r := fake.RefreshReplays(); r != 0 {
		return fmt.Errorf("the fake saw %d refresh tokens presented twice", r)
	}
	fmt.Printf("\n%d refreshes in all, no refresh token presented twice.\n", fake.Refreshes())
	return nil
}

func (b *bench) writeConfigs(fake *anaplantest.Server, dsn string) error {
	caFile, err := fake.WriteCAFile(b.dir)
	if err != nil {
		return err
	}
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(b.dir, "store.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return err
	}
	for i := range b.n {
		cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
state_dir: %s
log_format: json
log_level: debug
oauth:
  client_id: %s
  device_authorization_url: %s
  token_url: %s
  ca_file: %s
inject:
  hosts: ["%s"]
upstream:
  ca_file: %s
  allow_private: true
store:
  type: postgres
  postgres_dsn: %q
  key_file: %s
  lease: %s
`, filepath.Join(b.dir, fmt.Sprintf("state-%d", i)), fake.ClientID(), fake.DeviceAuthURL(), fake.TokenURL(), caFile,
			fake.APIHost(), caFile, dsn, keyFile, b.lease)
		path := filepath.Join(b.dir, fmt.Sprintf("config-%d.yaml", i))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			return err
		}
		b.configs = append(b.configs, path)
	}
	return nil
}

// start runs instance i (with failpoints, if set) and waits for its start
// line.
func (b *bench) start(ctx context.Context, i int, failpoints string) error {
	cmd := exec.Command(b.bin, "serve", "--config", b.configs[i])
	cmd.Env = os.Environ()
	if failpoints != "" {
		cmd.Env = append(cmd.Env, "ANAPLAN_PROXY_FAILPOINTS="+failpoints)
	}
	logf, err := os.OpenFile(filepath.Join(b.dir, fmt.Sprintf("serve-%d.log", i)), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = logf, io.MultiWriter(logf, pw)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	b.mu.Lock()
	b.procs[i] = p
	b.mu.Unlock()
	started := make(chan struct{})
	b.wg.Go(func() { b.read(i, pr, started) })
	b.wg.Go(func() {
		cmd.Wait()
		p.exitAt = time.Now()
		pw.Close()
		logf.Close()
		close(p.exited)
	})
	select {
	case <-started:
		return nil
	case <-p.exited:
		return fmt.Errorf("instance %d exited at start; see %s", i, logf.Name())
	case <-time.After(30 * time.Second):
		return fmt.Errorf("instance %d did not start within 30 s", i)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// read records the token events of instance i's log.
func (b *bench) read(i int, r io.Reader, started chan struct{}) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line struct {
			Time              time.Time `json:"time"`
			Msg               string    `json:"msg"`
			Expiry            time.Time `json:"expiry"`
			AccessTokenExpiry time.Time `json:"access_token_expiry"`
			Stored            *bool     `json:"stored"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		switch {
		case line.Msg == msgStarted:
			close(started)
		case line.Msg == msgRefreshed && line.Stored != nil && *line.Stored:
			b.record(event{inst: i, msg: line.Msg, at: line.Time, expiry: line.Expiry})
		case !line.AccessTokenExpiry.IsZero() && line.Msg != msgLoaded:
			// Another instance's token, taken from the store.
			b.record(event{inst: i, msg: line.Msg, at: line.Time, expiry: line.AccessTokenExpiry})
		}
	}
	io.Copy(io.Discard, r)
}

func (b *bench) record(e event) {
	b.mu.Lock()
	b.events = append(b.events, e)
	b.mu.Unlock()
}

// tokens returns the token events from from on.
func (b *bench) tokens(from time.Time) []event {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []event
	for _, e := range b.events {
		if !e.at.Before(from) {
			out = append(out, e)
		}
	}
	return out
}

// waitFor polls cond until it holds, ctx ends or within passes.
func waitFor(ctx context.Context, within time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("waited %s for %s", within, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// refreshesSince returns the refresh events from from on.
func (b *bench) refreshesSince(from time.Time) []event {
	var out []event
	for _, e := range b.tokens(from) {
		if e.msg == msgRefreshed {
			out = append(out, e)
		}
	}
	return out
}

// handover measures, over n refreshes, the delay from the refresher's new
// token to each other instance's taking it.
func (b *bench) handover(ctx context.Context, n int) error {
	from := time.Now()
	per := time.Duration(float64(b.lifetime) * 0.8)
	if err := waitFor(ctx, time.Duration(n+5)*per+30*time.Second, fmt.Sprintf("%d refreshes", n+1), func() bool {
		return len(b.refreshesSince(from)) > n // the last one's handover has a refresh's time to arrive
	}); err != nil {
		return err
	}
	evs := b.tokens(from)
	var delays []time.Duration
	missing := 0
	for _, r := range b.refreshesSince(from)[:n] {
		for other := range b.n {
			if other == r.inst {
				continue
			}
			i := slices.IndexFunc(evs, func(e event) bool { return e.inst == other && e.expiry.Equal(r.expiry) })
			if i < 0 {
				missing++
				continue
			}
			delays = append(delays, evs[i].at.Sub(r.at))
		}
	}
	// Both ends are log lines written as the token is taken into use; the
	// refresher writes its line after a little more work than the others,
	// so a handover can come out slightly negative.
	fmt.Printf("Handover, refreshing instance to each other instance (%d refreshes, %d pairs; below zero: taken before the refresher logged it):\n", n, len(delays))
	fmt.Printf("  p50 %s  p99 %s  max %s", pct(delays, 50), pct(delays, 99), pct(delays, 100))
	if missing > 0 {
		fmt.Printf("  (%d pairs never took the token: they refreshed past it)", missing)
	}
	fmt.Println()
	return nil
}

// holderDeath measures failover when the lease holder dies at the start
// of a due refresh: one instance at a time runs with before_intent=exit.
func (b *bench) holderDeath(ctx context.Context, kills int) error {
	var delays []time.Duration
	victim := b.n - 1
	for range kills {
		// Alive and unarmed the first time, dead since.
		if err := b.restart(ctx, victim, "before_intent=exit"); err != nil {
			return err
		}
		p := b.proc(victim)
		// It dies once it is the one to take the lease for a refresh.
		select {
		case <-p.exited:
		case <-time.After(30 * b.lifetime):
			return errors.New("the armed instance never took the lease")
		case <-ctx.Done():
			return ctx.Err()
		}
		d, err := b.firstNewToken(ctx, p.exitAt, victim)
		if err != nil {
			return err
		}
		delays = append(delays, d)
	}
	if err := b.start(ctx, victim, ""); err != nil {
		return err
	}
	fmt.Printf("Failover, lease holder dead at the start of a due refresh, to the first new token a survivor serves (%d deaths, lease %s):\n", kills, b.lease)
	fmt.Printf("  p50 %s  max %s\n", pct(delays, 50), pct(delays, 100))
	return nil
}

// killBeforeDue measures failover when the instance that refreshed last is
// SIGKILLed just before the next refresh is due (holding no lease).
func (b *bench) killBeforeDue(ctx context.Context, kills int) error {
	var delays []time.Duration
	for range kills {
		from := time.Now()
		if err := waitFor(ctx, 10*b.lifetime, "a refresh", func() bool { return len(b.refreshesSince(from)) > 0 }); err != nil {
			return err
		}
		r := b.refreshesSince(from)[0]
		life := r.expiry.Sub(r.at)
		// The earliest an instance refreshes is 0.75 × 0.95 of the
		// lifetime; kill 5% of a lifetime before that.
		at := r.at.Add(time.Duration(float64(life) * 0.66))
		select {
		case <-time.After(time.Until(at)):
		case <-ctx.Done():
			return ctx.Err()
		}
		p := b.proc(r.inst)
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
		d, err := b.firstNewToken(ctx, at, r.inst)
		if err != nil {
			return err
		}
		delays = append(delays, d)
		if err := b.start(ctx, r.inst, ""); err != nil {
			return err
		}
	}
	fmt.Printf("Failover, the last refresher SIGKILLed %s before the earliest due refresh, to the first new token a survivor serves (%d kills):\n",
		time.Duration(float64(b.lifetime)*(0.7125-0.66)).Round(time.Millisecond), kills)
	fmt.Printf("  p50 %s  max %s\n", pct(delays, 50), pct(delays, 100))
	return nil
}

// firstNewToken waits for the first token event of an instance other than
// dead after from, and returns how long after from it came.
func (b *bench) firstNewToken(ctx context.Context, from time.Time, dead int) (time.Duration, error) {
	var got time.Duration
	err := waitFor(ctx, 20*b.lifetime, "a survivor's new token", func() bool {
		for _, e := range b.tokens(from) {
			if e.inst != dead {
				got = e.at.Sub(from)
				return true
			}
		}
		return false
	})
	return got, err
}

func (b *bench) proc(i int) *proc {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.procs[i]
}

// restart stops instance i (SIGINT) and starts it again with failpoints.
func (b *bench) restart(ctx context.Context, i int, failpoints string) error {
	p := b.proc(i)
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("instance %d did not stop", i)
	}
	return b.start(ctx, i, failpoints)
}

func (b *bench) stopAll() {
	b.mu.Lock()
	procs := slices.Clone(b.procs)
	b.mu.Unlock()
	for _, p := range procs {
		if p != nil {
			p.cmd.Process.Signal(os.Interrupt)
		}
	}
	for _, p := range procs {
		if p == nil {
			continue
		}
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	}
	b.wg.Wait()
}

// pct returns the p-th percentile of ds (nearest rank), rounded.
func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s) + 99) / 100
	i = min(max(i, 1), len(s)) - 1
	return s[i].Round(100 * time.Microsecond).String()
}
