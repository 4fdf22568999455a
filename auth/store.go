package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
)

// sessionVersion is the only on-disk format this package reads and writes.
const sessionVersion = 1

// maxSessionSize bounds how much of a session file is read: a real one is
// a few kilobytes, anything far larger is not ours.
const maxSessionSize = 1 << 20

// lockPoll is how often a blocked Acquire retries flock.
const lockPoll = 20 * time.Millisecond

// FileStore keeps the session in one JSON file, mode 0600, replaced
// atomically and durably on every write. Its lease is flock(2) on a
// sibling ".lock" file plus an in-process lock (flock locks belong to an
// open file description, so two goroutines of one process would otherwise
// both hold them). A flock cannot lapse while its process lives, which is
// what keeps one host safe even when the state directory cannot be
// written: see Lease.Lapses.
//
// The file also carries the record's version and any in-flight mark, so
// that the refresh protocol is the same as for a shared store.
type FileStore struct {
	path string
	// sem is the in-process half of the lease.
	sem chan struct{}

	mu sync.Mutex
	// held is the lease this store holds, nil when none. Guarded by mu.
	held *heldLock
}

// heldLock is a flock held by one FileStore.
type heldLock struct {
	fence uint64
	file  *os.File
}

var _ Store = (*FileStore)(nil)

// NewFileStore returns a store for the session file at path. Nothing is
// read or created until the store is used; the directory must exist.
func NewFileStore(path string) *FileStore {
	return &FileStore{path: path, sem: make(chan struct{}, 1)}
}

// Path returns the session file's path.
func (f *FileStore) Path() string { return f.path }

// String names the store for operators.
func (f *FileStore) String() string { return "file " + f.path }

func (f *FileStore) lockPath() string { return f.path + ".lock" }

// Acquire takes the store's lock, waiting until ctx is done; then it
// returns a *LeaseHeldError naming the holder. The lease never lapses
// (TTL 0): it lasts until Release or the end of the process.
func (f *FileStore) Acquire(ctx context.Context, holder string) (Lease, error) {
	f.mu.Lock()
	if h := f.held; h != nil {
		f.mu.Unlock()
		return Lease{Fence: h.fence, Holder: holder}, nil
	}
	f.mu.Unlock()
	select {
	case f.sem <- struct{}{}:
	case <-ctx.Done():
		return Lease{}, &LeaseHeldError{Holder: "another user of this store in this process"}
	}
	lf, err := os.OpenFile(f.lockPath(), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		<-f.sem
		return Lease{}, fmt.Errorf("locking the token store: %w", err)
	}
	if err := flockContext(ctx, lf); err != nil {
		owner := readHolder(lf)
		lf.Close()
		<-f.sem
		if ctx.Err() != nil {
			return Lease{}, &LeaseHeldError{Holder: owner}
		}
		return Lease{}, fmt.Errorf("locking %s: %w", f.lockPath(), err)
	}
	// A writer killed between creating and renaming its temporary file
	// leaves it behind; with the lock held no writer is running. A file
	// that cannot be removed is harmless and is tried again next time.
	_ = securefile.RemoveTemps(f.path)
	// Say who holds the lock, for those who wait. A file that cannot be
	// written (a read-only directory) is no reason to refuse the lease.
	if lf.Truncate(0) == nil {
		_, _ = lf.WriteAt([]byte(holder+"\n"), 0)
	}
	h := &heldLock{fence: uint64(time.Now().UnixNano()), file: lf}
	f.mu.Lock()
	f.held = h
	f.mu.Unlock()
	return Lease{Fence: h.fence, Holder: holder}, nil
}

// readHolder returns what the lock's holder wrote into the lock file.
func readHolder(lf *os.File) string {
	b := make([]byte, 256)
	n, _ := lf.ReadAt(b, 0)
	s := strings.TrimSpace(string(b[:n]))
	if s == "" {
		return "another process"
	}
	return oneLine(s, 128)
}

// Release gives the lock up if l is the lease this store holds.
func (f *FileStore) Release(ctx context.Context, l Lease) error {
	f.mu.Lock()
	h := f.held
	if h == nil || h.fence != l.Fence {
		f.mu.Unlock()
		return nil
	}
	f.held = nil
	f.mu.Unlock()
	err := unix.Flock(int(h.file.Fd()), unix.LOCK_UN)
	if cerr := h.file.Close(); err == nil {
		err = cerr
	}
	<-f.sem
	if err != nil {
		return fmt.Errorf("unlocking %s: %w", f.lockPath(), err)
	}
	return nil
}

// holds reports whether this store holds the lease with fence.
func (f *FileStore) holds(fence uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held != nil && f.held.fence == fence
}

// locked runs fn under the store's lock: under lease l, which must be the
// current one (else ErrFenced), or with l nil under the lease this store
// holds or, when it holds none, the lock taken for fn alone.
func (f *FileStore) locked(ctx context.Context, l *Lease, fn func() error) error {
	f.mu.Lock()
	h := f.held
	f.mu.Unlock()
	if l != nil {
		if h == nil || h.fence != l.Fence {
			return ErrFenced
		}
		return fn()
	}
	if h != nil {
		return fn()
	}
	tmp, err := f.Acquire(ctx, fmt.Sprintf("pid %d", os.Getpid()))
	if err != nil {
		return err
	}
	defer f.Release(context.WithoutCancel(ctx), tmp)
	return fn()
}

// flockContext takes an exclusive flock on lf, retrying a non-blocking
// attempt until it succeeds or ctx is done (a blocking flock could not be
// abandoned).
func flockContext(ctx context.Context, lf *os.File) error {
	var t *time.Timer
	for {
		err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		if t == nil {
			t = time.NewTimer(lockPoll)
			defer t.Stop()
		} else {
			t.Reset(lockPoll)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// StoreError reports a session file that exists but cannot be used. Its
// message names the file and what to do about it.
type StoreError struct {
	Path string
	// Problem says what is wrong, e.g. "is not valid JSON".
	Problem string
	// Fix says what an operator should do.
	Fix string
	Err error
}

func (e *StoreError) Error() string {
	s := "token store " + e.Path + " " + e.Problem
	if e.Err != nil {
		s += " (" + e.Err.Error() + ")"
	}
	if e.Fix != "" {
		s += ": " + e.Fix
	}
	return s
}

func (e *StoreError) Unwrap() error { return e.Err }

const fixCorrupt = "move it aside and run `anaplan-proxy login`"

// fileRecord is the file's content: the session's fields, plus the
// record's version and in-flight mark.
type fileRecord struct {
	Session
	StoreVersion int64       `json:"store_version,omitempty"`
	InFlight     *fileFlight `json:"refresh_in_flight,omitempty"`
}

type fileFlight struct {
	Fence     uint64    `json:"fence"`
	Holder    string    `json:"holder"`
	Version   int64     `json:"version"`
	Deadline  time.Time `json:"deadline"`
	Uncertain bool      `json:"uncertain,omitempty"`
}

// Load reads the record. It returns ErrNoSession when the file does not
// exist, and a *StoreError when the file is open to other users (wrapping
// securefile.ErrUnsafe: such a file is refused, never replaced) or does not
// hold a session this version understands.
func (f *FileStore) Load(ctx context.Context) (Record, error) {
	fr, _, err := f.load()
	if err != nil {
		return Record{}, err
	}
	return fr.record(time.Now()), nil
}

func (fr *fileRecord) record(now time.Time) Record {
	s := fr.Session
	r := Record{Session: &s, Version: fr.StoreVersion}
	if fl := fr.InFlight; fl != nil {
		r.Flight = &Flight{Fence: fl.Fence, Holder: fl.Holder, Version: fl.Version, Remaining: fl.Deadline.Sub(now), Uncertain: fl.Uncertain}
	}
	return r
}

func (f *FileStore) load() (*fileRecord, fileStamp, error) {
	if err := securefile.CheckPrivate(f.path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fileStamp{}, ErrNoSession
		}
		if errors.Is(err, securefile.ErrUnsafe) {
			return nil, fileStamp{}, &StoreError{Path: f.path, Problem: "is refused", Err: err}
		}
		return nil, fileStamp{}, fmt.Errorf("reading the token store: %w", err)
	}
	file, err := os.OpenFile(f.path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fileStamp{}, ErrNoSession
		}
		return nil, fileStamp{}, fmt.Errorf("reading the token store: %w", err)
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("reading the token store: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(file, maxSessionSize+1))
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("reading the token store: %w", err)
	}
	fr, err := parseRecord(data)
	if err != nil {
		return nil, fileStamp{}, &StoreError{Path: f.path, Problem: "cannot be used", Fix: fixCorrupt, Err: err}
	}
	return fr, stampOf(fi), nil
}

// parseSession decodes a stored session strictly. Its errors never quote
// the file's content.
func parseSession(data []byte) (*Session, error) {
	fr, err := parseRecord(data)
	if err != nil {
		return nil, err
	}
	return &fr.Session, nil
}

func parseRecord(data []byte) (*fileRecord, error) {
	if len(data) > maxSessionSize {
		return nil, errors.New("file too large")
	}
	var fr fileRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&fr); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return nil, fmt.Errorf("not valid JSON at byte %d", syn.Offset)
		case errors.As(err, &typ):
			return nil, fmt.Errorf("field %q has the wrong type", typ.Field)
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return nil, errors.New("empty or truncated")
		default:
			return nil, errors.New("not valid JSON")
		}
	}
	if dec.More() {
		return nil, errors.New("trailing data after the session")
	}
	s := &fr.Session
	switch {
	case s.Version != sessionVersion:
		return nil, fmt.Errorf("unknown format version %d (this program reads version %d)", s.Version, sessionVersion)
	case s.AccessToken == "":
		return nil, errors.New("no access_token")
	case s.Expiry.IsZero():
		return nil, errors.New("no expiry")
	}
	return &fr, nil
}

// nextVersion returns a version greater than cur. Versions are clock
// based so that a session written after a logout (a new file) still gets
// a version no process has seen before.
func nextVersion(cur int64) int64 {
	return max(cur+1, time.Now().UnixNano())
}

// write replaces the file with fr at version.
func (f *FileStore) write(fr *fileRecord, version int64) (Record, error) {
	if fr.AccessToken == "" {
		return Record{}, errors.New("saving the token store: session without an access token")
	}
	if fr.Session.Version == 0 {
		fr.Session.Version = sessionVersion
	}
	fr.StoreVersion = version
	data, err := json.MarshalIndent(fr, "", "  ")
	if err != nil {
		return Record{}, fmt.Errorf("saving the token store: %w", err)
	}
	data = append(data, '\n')
	if err := securefile.WriteFile(f.path, data, 0o600); err != nil {
		return Record{}, err
	}
	return fr.record(time.Now()), nil
}

// current loads the file for a conditional write: no file is a conflict.
func (f *FileStore) current() (*fileRecord, error) {
	fr, _, err := f.load()
	if errors.Is(err, ErrNoSession) {
		return nil, ErrConflict
	}
	return fr, err
}

// Begin writes the intent mark; see Store.
func (f *FileStore) Begin(ctx context.Context, l Lease, version int64, timeout time.Duration) (Record, error) {
	var rec Record
	err := f.locked(ctx, &l, func() error {
		fr, err := f.current()
		if err != nil {
			return err
		}
		if fr.StoreVersion != version || fr.InFlight != nil {
			return ErrConflict
		}
		v := nextVersion(fr.StoreVersion)
		fr.InFlight = &fileFlight{Fence: l.Fence, Holder: l.Holder, Version: v, Deadline: time.Now().Add(timeout)}
		rec, err = f.write(fr, v)
		return err
	})
	return rec, err
}

// Finish writes the result of a refresh; see Store.
func (f *FileStore) Finish(ctx context.Context, base Flight, s *Session) (Record, error) {
	var rec Record
	err := f.locked(ctx, nil, func() error {
		fr, err := f.current()
		if err != nil {
			return err
		}
		switch fl := fr.InFlight; {
		case base.Fence == 0:
			// No mark was written, or its write reported an error after
			// all: a mark under the lease this store holds is this
			// process's own.
			own := fl != nil && f.holds(fl.Fence)
			if (fl != nil && !own) || (fl == nil && fr.StoreVersion != base.Version) {
				return ErrConflict
			}
		case fl == nil || fl.Fence != base.Fence || fl.Version != base.Version:
			return ErrConflict
		}
		rec, err = f.write(&fileRecord{Session: *s}, nextVersion(fr.StoreVersion))
		return err
	})
	return rec, err
}

// MarkUncertain marks a refresh whose holder missed its deadline; see Store.
func (f *FileStore) MarkUncertain(ctx context.Context, l Lease, fl Flight) (Record, error) {
	var rec Record
	err := f.locked(ctx, &l, func() error {
		fr, err := f.current()
		if err != nil {
			return err
		}
		cur := fr.InFlight
		if cur == nil || cur.Fence != fl.Fence || cur.Version != fl.Version || time.Now().Before(cur.Deadline) {
			return ErrConflict
		}
		cur.Uncertain = true
		rec, err = f.write(fr, nextVersion(fr.StoreVersion))
		return err
	})
	return rec, err
}

// Put stores a new login, or removes the session when s is nil. A corrupt
// file is replaced; one open to other users is never touched.
func (f *FileStore) Put(ctx context.Context, s *Session) (Record, error) {
	var rec Record
	err := f.locked(ctx, nil, func() error {
		var prev int64
		fr, _, err := f.load()
		var se *StoreError
		switch {
		case err == nil:
			prev = fr.StoreVersion
		case errors.Is(err, ErrNoSession):
		case errors.As(err, &se) && !errors.Is(err, securefile.ErrUnsafe):
		default:
			return err
		}
		if s == nil {
			if err := f.remove(); err != nil {
				return err
			}
			rec = Record{Version: nextVersion(prev)}
			return nil
		}
		rec, err = f.write(&fileRecord{Session: *s}, nextVersion(prev))
		return err
	})
	return rec, err
}

// Watch returns nil: a Manager polls the file's stamp instead.
func (f *FileStore) Watch(ctx context.Context) <-chan struct{} { return nil }

// remove deletes the session file (a missing file is not an error) and
// makes the removal durable.
func (f *FileStore) remove() error {
	if err := os.Remove(f.path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("deleting the token store: %w", err)
	}
	if err := securefile.SyncDir(filepath.Dir(f.path)); err != nil {
		return fmt.Errorf("deleting the token store: %w", err)
	}
	return nil
}

// fileStamp identifies one version of the session file cheaply: a Save
// renames a new inode into place, so any write changes it.
type fileStamp struct {
	exists bool
	ino    uint64
	size   int64
	mtime  int64
	ctime  int64
}

func stampOf(fi fs.FileInfo) fileStamp {
	st := fileStamp{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
		st.ctime = sys.Ctim.Nano()
	}
	return st
}

// stamp reports the current version of the session file without reading
// it. A Manager polls it to notice logins and logouts by other processes.
func (f *FileStore) stamp() (fileStamp, error) {
	fi, err := os.Lstat(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileStamp{}, nil
	}
	if err != nil {
		return fileStamp{}, err
	}
	return stampOf(fi), nil
}

// stamper is implemented by stores that can tell cheaply whether their
// content may have changed.
type stamper interface {
	stamp() (fileStamp, error)
}
