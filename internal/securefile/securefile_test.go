package securefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFileIsPrivateAndReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "session.json")
	for _, content := range []string{"first", "second"} {
		if err := WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != content {
			t.Fatalf("content = %q, want %q", got, content)
		}
		if err := CheckPrivate(p); err != nil {
			t.Fatalf("CheckPrivate after WriteFile: %v", err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestWriteFileFailureKeepsOldContent(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "session.json")
	if err := WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o500)
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	if err := WriteFile(p, []byte("new"), 0o600); err == nil {
		t.Fatal("write into a read-only directory succeeded")
	}
	got, _ := os.ReadFile(p)
	if string(got) != "old" {
		t.Fatalf("content = %q after failed write, want old", got)
	}
}

func TestCheckPrivate(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		mode    os.FileMode
		wantErr string
	}{
		{"owner only", 0o600, ""},
		{"owner read only", 0o400, ""},
		{"group readable", 0o640, "run: chmod 600"},
		{"world readable", 0o644, "run: chmod 600"},
		{"group writable", 0o620, "run: chmod 600"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tt.mode); err != nil {
				t.Fatal(err)
			}
			err := CheckPrivate(p)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), p) {
				t.Fatalf("error = %v, want one naming %s and %q", err, p, tt.wantErr)
			}
			if !errors.Is(err, ErrUnsafe) {
				t.Fatalf("error does not wrap ErrUnsafe: %v", err)
			}
		})
	}
}

func TestCheckPrivateRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("x"), 0o600)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := CheckPrivate(link); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckPrivate(symlink) = %v, want ErrUnsafe", err)
	}
}

func TestCheckDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(dir); err != nil {
		t.Fatalf("0700 dir: %v", err)
	}
	os.Chmod(dir, 0o777)
	if err := CheckDir(dir); err == nil || !strings.Contains(err.Error(), "chmod go-w") {
		t.Fatalf("0777 dir: err = %v, want chmod advice", err)
	}
	os.Chmod(dir, 0o700)
}

func TestMissingFileIsNotExist(t *testing.T) {
	err := CheckPrivate(filepath.Join(t.TempDir(), "none"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want ErrNotExist", err)
	}
}

func TestRemoveTemps(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "session.json")
	if err := WriteFile(p, []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	// What a crash between create and rename leaves behind.
	stale := filepath.Join(dir, ".session.json.tmp-123")
	other := filepath.Join(dir, ".ca.key.tmp-456")
	for _, f := range []string{stale, other} {
		if err := os.WriteFile(f, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveTemps(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temporary file still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another file's temporary file was removed: %v", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "kept" {
		t.Errorf("the file itself changed: %q", got)
	}
}
