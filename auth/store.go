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

// lockPoll is how often a blocked Lock retries flock.
const lockPoll = 20 * time.Millisecond

// FileStore keeps the Session in one JSON file, mode 0600, replaced
// atomically and durably on every Save. Its Lock combines an in-process
// lock with flock(2) on a sibling ".lock" file, so that goroutines of one
// process and separate processes (serve and login) exclude each other.
type FileStore struct {
	path string
	// sem is the in-process half of Lock: flock locks belong to an open
	// file description, so two goroutines of one process would otherwise
	// both hold them.
	sem chan struct{}
}

// legacyStore is the lock-based store interface that the fenced Store
// replaces.
type legacyStore interface {
	Lock(ctx context.Context) (unlock func() error, err error)
	Load(ctx context.Context) (*Session, error)
	Save(ctx context.Context, s *Session) error
	Delete(ctx context.Context) error
}

// NewFileStore returns a store for the session file at path. Nothing is
// read or created until the store is used; the directory must exist.
func NewFileStore(path string) *FileStore {
	return &FileStore{path: path, sem: make(chan struct{}, 1)}
}

// Path returns the session file's path.
func (f *FileStore) Path() string { return f.path }

func (f *FileStore) lockPath() string { return f.path + ".lock" }

// Lock takes the store's exclusive lock, waiting until ctx is done. The
// returned function releases it; calling it more than once is harmless.
func (f *FileStore) Lock(ctx context.Context) (func() error, error) {
	select {
	case f.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("locking %s: %w", f.lockPath(), ctx.Err())
	}
	lf, err := os.OpenFile(f.lockPath(), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		<-f.sem
		return nil, fmt.Errorf("locking the token store: %w", err)
	}
	if err := flockContext(ctx, lf); err != nil {
		lf.Close()
		<-f.sem
		return nil, fmt.Errorf("locking %s: %w", f.lockPath(), err)
	}
	// A writer killed between creating and renaming its temporary file
	// leaves it behind; with the lock held no writer is running. A file
	// that cannot be removed is harmless and is tried again next time.
	_ = securefile.RemoveTemps(f.path)
	var once sync.Once
	unlock := func() error {
		var err error
		once.Do(func() {
			err = unix.Flock(int(lf.Fd()), unix.LOCK_UN)
			if cerr := lf.Close(); err == nil {
				err = cerr
			}
			<-f.sem
			if err != nil {
				err = fmt.Errorf("unlocking %s: %w", f.lockPath(), err)
			}
		})
		return err
	}
	return unlock, nil
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

// Load reads the session. It returns ErrNoSession when the file does not
// exist, and a *StoreError when the file is open to other users (wrapping
// securefile.ErrUnsafe: such a file is refused, never replaced) or does not
// hold a session this version understands.
func (f *FileStore) Load(ctx context.Context) (*Session, error) {
	s, _, err := f.load()
	return s, err
}

func (f *FileStore) load() (*Session, fileStamp, error) {
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
	s, err := parseSession(data)
	if err != nil {
		return nil, fileStamp{}, &StoreError{Path: f.path, Problem: "cannot be used", Fix: fixCorrupt, Err: err}
	}
	return s, stampOf(fi), nil
}

// parseSession decodes a stored session strictly. Its errors never quote
// the file's content.
func parseSession(data []byte) (*Session, error) {
	if len(data) > maxSessionSize {
		return nil, errors.New("file too large")
	}
	var s Session
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&s); err != nil {
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
	switch {
	case s.Version != sessionVersion:
		return nil, fmt.Errorf("unknown format version %d (this program reads version %d)", s.Version, sessionVersion)
	case s.AccessToken == "":
		return nil, errors.New("no access_token")
	case s.Expiry.IsZero():
		return nil, errors.New("no expiry")
	}
	return &s, nil
}

// Save writes s atomically and durably with mode 0600. The caller should
// hold the lock.
func (f *FileStore) Save(ctx context.Context, s *Session) error {
	if s == nil || s.AccessToken == "" {
		return errors.New("saving the token store: session without an access token")
	}
	c := *s
	if c.Version == 0 {
		c.Version = sessionVersion
	}
	data, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		return fmt.Errorf("saving the token store: %w", err)
	}
	data = append(data, '\n')
	return securefile.WriteFile(f.path, data, 0o600)
}

// Delete removes the session file (a missing file is not an error) and
// makes the removal durable. The caller should hold the lock.
func (f *FileStore) Delete(ctx context.Context) error {
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
