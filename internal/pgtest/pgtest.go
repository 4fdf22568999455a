// Package pgtest starts throw-away PostgreSQL servers for tests: initdb
// into a temporary directory, a postmaster on 127.0.0.1 and a free port
// with trust authentication, fsync off, and its unix socket in the same
// directory. Nothing outside the directory is touched, and the server is
// stopped and the directory removed when the test (or the package, for a
// Shared server) ends.
//
// A Cutter, put between clients and a server, cuts a connection at a
// chosen statement, before the server runs it or after.
//
// Without PostgreSQL's binaries a test is skipped, unless CI is set: then
// it fails, because CI must run these tests.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// startTimeout bounds initdb plus the first start, and each later start.
const startTimeout = 60 * time.Second

// stopTimeout is how long a fast shutdown may take before the postmaster
// is killed.
const stopTimeout = 15 * time.Second

// ErrNoBinaries is wrapped by the error Find returns when no PostgreSQL
// installation is found.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries (initdb, postgres) found")

// Find returns the directory holding initdb and postgres: the one on PATH,
// else the newest /usr/lib/postgresql/*/bin (Debian's layout, where these
// programs are not on PATH).
func Find() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		// A symbolic link on PATH points at the installation's directory,
		// which also has pg_dump and the rest.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if isExec(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest major version first: "15" sorts after "9.6" numerically only.
	sort.Slice(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w on PATH or in /usr/lib/postgresql/*/bin; install Debian's postgresql package", ErrNoBinaries)
}

func majorOf(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// skipOrFail ends t for a missing installation: a skip on a developer's
// machine, a failure under CI.
func skipOrFail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, ErrNoBinaries) && os.Getenv("CI") == "" {
		t.Skipf("skipping: %v (CI=true makes this a failure)", err)
		return
	}
	t.Fatalf("starting PostgreSQL: %v", err)
}

// Server is one throw-away PostgreSQL server. Its methods may be called
// from several goroutines.
type Server struct {
	bin  string // directory of initdb, postgres, pg_dump
	dir  string // temporary root: data/, the socket, the log
	port int
	cred *syscall.Credential // nil: run as this process's user

	dbSeq atomic.Int64

	// mu guards cmd and exited: the running postmaster, if any.
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// New starts a server for t alone (a test that stops or restarts it needs
// its own) and stops and removes it when t ends. It skips t (or fails it
// under CI) without a PostgreSQL installation.
func New(t testing.TB) *Server {
	t.Helper()
	s, err := Start()
	if err != nil {
		skipOrFail(t, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("removing the test PostgreSQL server: %v", err)
		}
	})
	return s
}

// Start initializes and starts a server. The caller must Close it. Under
// root the server runs as the postgres user, because initdb and postgres
// refuse to run as root.
func Start() (*Server, error) {
	bin, err := Find()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("PostgreSQL refuses to run as root and there is no postgres user to run it as (%w); install Debian's postgresql package or run the tests as another user", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// Not t.TempDir: its parents are private to this user, and the
	// postgres user must reach the directory.
	s.dir, err = os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(s.dir)
		}
	}()
	if s.cred != nil {
		if err := os.Chown(s.dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	initdb := s.command(ctx, "initdb", "-D", s.dataDir(), "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	if s.port, err = freePort(); err != nil {
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }
func (s *Server) logPath() string { return filepath.Join(s.dir, "postgres.log") }

// command prepares one of the installation's programs, run as the server's
// user.
func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	return cmd
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs the postmaster as a child of this process (killed with it,
// so that a crashed test leaves no server behind) and waits until it
// accepts connections.
func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("the test PostgreSQL server is already running")
	}
	logf, err := os.OpenFile(s.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	// Not CommandContext: the server outlives ctx.
	cmd := s.command(context.Background(), "postgres", "-D", s.dataDir(),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port="+strconv.Itoa(s.port),
		"-c", "unix_socket_directories="+s.dir,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=100",
		"-c", "shared_buffers=16MB",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	for {
		if err := s.ping(ctx); err == nil {
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("postgres exited at start; its log:\n%s", s.Log())
		case <-ctx.Done():
			s.stopLocked()
			return fmt.Errorf("postgres did not accept connections within %v; its log:\n%s", startTimeout, s.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	return c.Close(ctx)
}

// Stop shuts the server down (a fast shutdown: open connections are
// ended) and waits until it has exited. Stopping a stopped server does
// nothing.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *Server) stopLocked() error {
	if s.cmd == nil {
		return nil
	}
	cmd, exited := s.cmd, s.exited
	s.cmd, s.exited = nil, nil
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
		return nil
	case <-time.After(stopTimeout):
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("postgres did not stop within %v and was killed", stopTimeout)
	}
}

// Start starts a stopped server again on the same port and directory, so
// that DSNs handed out before stay valid.
func (s *Server) Start() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return s.start(ctx)
}

// Restart stops and starts the server.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.Start()
}

// Close stops the server and removes its directory.
func (s *Server) Close() error {
	err := s.Stop()
	if rerr := os.RemoveAll(s.dir); err == nil {
		err = rerr
	}
	return err
}

// Addr is the server's TCP address, 127.0.0.1:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// DSN returns a URL for database db as the superuser postgres over TCP.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", s.Addr(), db)
}

// Bin returns the path of one of the installation's programs (pg_dump,
// psql), which may be run as any user.
func (s *Server) Bin(name string) string {
	p := filepath.Join(s.bin, name)
	if !isExec(p) {
		if q, err := exec.LookPath(name); err == nil {
			return q
		}
	}
	return p
}

// Log returns what the server has logged so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logPath())
	return string(b)
}

// CreateDatabase creates a new, empty database for t, dropped when t
// ends, and returns its DSN. Tests that share a server stay independent
// by each using their own database.
func (s *Server) CreateDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%s", s.dbSeq.Add(1), sanitize(t.Name()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.mu.Lock()
		running := s.cmd != nil
		s.mu.Unlock()
		if !running {
			return
		}
		if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Logf("dropping database %s: %v", name, err)
		}
	})
	return s.DSN(name)
}

func (s *Server) exec(ctx context.Context, sql string) error {
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, sql)
	return err
}

// sanitize keeps a database name short and free of characters that need
// quoting in shells and logs.
func sanitize(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if b.Len() >= 40 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// Shared is one server for the tests of a package, started by the first
// test that asks for it. Declare one in the package's tests and Close it
// from TestMain after m.Run:
//
//	var pg pgtest.Shared
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		pg.Close()
//		os.Exit(code)
//	}
type Shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Server returns the shared server, starting it on first use. It skips t
// (or fails it under CI) without a PostgreSQL installation.
func (p *Shared) Server(t testing.TB) *Server {
	t.Helper()
	p.once.Do(func() { p.srv, p.err = Start() })
	if p.err != nil {
		skipOrFail(t, p.err)
	}
	return p.srv
}

// Database creates a database of its own for t on the shared server and
// returns its DSN.
func (p *Shared) Database(t testing.TB) string {
	t.Helper()
	return p.Server(t).CreateDatabase(t)
}

// Close stops and removes the shared server, if it was started.
func (p *Shared) Close() error {
	p.once.Do(func() {}) // no start after Close
	if p.srv == nil {
		return nil
	}
	return p.srv.Close()
}
