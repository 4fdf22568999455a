// Package securefile writes and checks files that hold secrets: written
// atomically and durably with mode 0600, and refused when another local user
// could read or replace them.
package securefile

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUnsafe is wrapped by the errors that CheckPrivate and CheckDir return
// when a file or directory is open to other users.
var ErrUnsafe = errors.New("unsafe permissions")

// CheckPrivate returns an error naming the exact fix when path is not a
// regular file owned by the current user with no group or other permission
// bits. A missing file returns an error wrapping fs.ErrNotExist.
func CheckPrivate(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w: not a regular file (a symbolic link or device is never trusted with a secret)", path, ErrUnsafe)
	}
	if err := checkOwner(path, fi); err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s: %w: mode %04o lets other users read or change it; run: chmod 600 %s", path, ErrUnsafe, perm, path)
	}
	return nil
}

// CheckDir returns an error naming the fix when dir is writable by group or
// others, or owned by another user: whoever can write the directory can
// replace the files in it.
func CheckDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	if err := checkOwner(dir, fi); err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s: %w: mode %04o lets other users replace files in it; run: chmod go-w %s", dir, ErrUnsafe, perm, dir)
	}
	return nil
}

func checkOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("%s: %w: owned by uid %d, but this process runs as uid %d; run: chown %d %s (or run as its owner)", path, ErrUnsafe, st.Uid, uid, uid, path)
	}
	return nil
}

// MkdirPrivate creates dir (and parents) with mode 0700 if it does not exist,
// then checks it with CheckDir.
func MkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	return CheckDir(dir)
}

// WriteFile replaces path with data atomically and durably: it writes a
// temporary file in the same directory with mode perm, fsyncs it, renames
// it over path and fsyncs the directory. When it returns nil the new
// content survives a crash; when it returns an error the old content is
// intact.
func WriteFile(path string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("writing %s: fsync: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = SyncDir(dir); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// RemoveTemps removes the temporary files that WriteFile leaves beside path
// when the process dies between creating and renaming them. Call it only
// while no WriteFile to path can be running (under the lock that guards
// path's writers).
func RemoveTemps(path string) error {
	matches, err := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range matches {
		if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SyncDir fsyncs a directory so that a rename or removal in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// DecodeKey returns the key of size bytes that a key file holds: exactly
// size raw bytes, or their standard base64 (what `openssl rand -base64 32`
// prints) with white space around it. ok is false for anything else.
func DecodeKey(data []byte, size int) (key []byte, ok bool) {
	if len(data) == size {
		return data, true
	}
	text := bytes.TrimSpace(data)
	key = make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(key, text)
	if err != nil || n != size {
		clear(key)
		return nil, false
	}
	return key[:n], true
}
