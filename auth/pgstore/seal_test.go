package pgstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
)

const testCAKey = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIPrivateKeyMaterialThatMustNeverBeStoredInTheClear0123\n-----END EC PRIVATE KEY-----\n"
const testCACert = "-----BEGIN CERTIFICATE-----\nMIIBcertificate\n-----END CERTIFICATE-----\n"

// Neither a dump of the database nor any column read as text holds a
// token or the CA's private key; nor do the store's logs.
func TestNoSecretInTheClear(t *testing.T) {
	srv := pg.Server(t)
	dsn := srv.CreateDatabase(t)
	out := logs()
	s := openStore(t, dsn, withLogs(out))
	ctx := context.Background()
	sess := session("dump")
	rec := mustPut(t, s, sess)
	l := mustAcquire(t, s, "host-a")
	begun := mustBegin(t, s, l, rec.Version, time.Minute)
	if _, err := s.Finish(ctx, *begun.Flight, sess); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.LoadOrCreateCA(ctx, func() ([]byte, []byte, error) {
		return []byte(testCACert), []byte(testCAKey), nil
	}); err != nil {
		t.Fatal(err)
	}
	dump, err := exec.Command(srv.Bin("pg_dump"), "--data-only", "--inserts", dsn).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, dump)
	}
	if !bytes.Contains(dump, []byte("anaplan_proxy_session")) || !bytes.Contains(dump, []byte(testCACert[:20])) {
		t.Fatalf("the dump lacks the store's rows:\n%s", dump)
	}
	var text strings.Builder
	c := sqlConn(t, dsn)
	for _, table := range []string{"anaplan_proxy_session", "anaplan_proxy_lease", "anaplan_proxy_ca"} {
		rows, err := c.Query(ctx, "SELECT t::text FROM "+table+" t")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			text.WriteString(line + "\n")
		}
		rows.Close()
	}
	secrets := map[string]string{
		"access token":  sess.AccessToken,
		"refresh token": sess.RefreshToken,
		"id token":      sess.IDToken,
		"CA key":        "PrivateKeyMaterial",
	}
	for what, secret := range secrets {
		for where, content := range map[string]string{"pg_dump": string(dump), "SELECT": text.String(), "logs": out.String()} {
			if strings.Contains(content, secret) {
				t.Errorf("the %s is in the clear in the %s output", what, where)
			}
		}
	}
}

// Sealed rows copied where they do not belong are refused with an error
// that says what to do.
func TestTamperedRowsRefused(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, dsn string, a *Store) *Store // returns the store that loads
		want   string
	}{
		{"ciphertext of an older version", func(t *testing.T, dsn string, a *Store) *Store {
			c := sqlConn(t, dsn)
			mustPut(t, a, session("old"))
			var old []byte
			if err := c.QueryRow(ctx, `SELECT sealed FROM anaplan_proxy_session WHERE name = 'default'`).Scan(&old); err != nil {
				t.Fatal(err)
			}
			mustPut(t, a, session("new"))
			execSQL(t, c, `UPDATE anaplan_proxy_session SET sealed = $1 WHERE name = 'default'`, old)
			return openStore(t, dsn) // a fresh store: the version check alone would not catch it
		}, "cannot be opened"},
		{"row of another session name", func(t *testing.T, dsn string, a *Store) *Store {
			other := openStore(t, dsn, withName("other"))
			mustPut(t, other, session("other"))
			mustPut(t, a, session("mine"))
			c := sqlConn(t, dsn)
			execSQL(t, c, `UPDATE anaplan_proxy_session d SET sealed = o.sealed, version = o.version
				FROM anaplan_proxy_session o WHERE d.name = 'default' AND o.name = 'other'`)
			return openStore(t, dsn)
		}, "cannot be opened"},
		{"whole older row copied back", func(t *testing.T, dsn string, a *Store) *Store {
			c := sqlConn(t, dsn)
			mustPut(t, a, session("old"))
			var v int64
			var old []byte
			if err := c.QueryRow(ctx, `SELECT version, sealed FROM anaplan_proxy_session WHERE name = 'default'`).Scan(&v, &old); err != nil {
				t.Fatal(err)
			}
			mustPut(t, a, session("new"))
			mustLoad(t, a)
			execSQL(t, c, `UPDATE anaplan_proxy_session SET sealed = $1, version = $2 WHERE name = 'default'`, old, v)
			return a
		}, "older than version"},
		{"another key", func(t *testing.T, dsn string, a *Store) *Store {
			mustPut(t, a, session("k1"))
			return openStore(t, dsn, withKey(bytes.Repeat([]byte{0x11}, KeySize)))
		}, "cannot be opened"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := pg.Database(t)
			a := openStore(t, dsn)
			loader := tc.tamper(t, dsn, a)
			_, err := loader.Load(ctx)
			var se *auth.StoreError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "anaplan-proxy login") {
				t.Fatalf("Load of a tampered row: %v; want a *auth.StoreError mentioning %q and the login", err, tc.want)
			}
			if errors.Is(err, auth.ErrNoSession) {
				t.Fatalf("a tampered row reads as no session: %v", err)
			}
		})
	}
}

// A fresh store accepts an old row copied back whole: only a store that
// saw a newer version can tell. (The refresh token in such a row has
// normally been rotated away, so the session then needs a login.)
func TestRestoredRowAcceptedByFreshStore(t *testing.T) {
	ctx := context.Background()
	dsn := pg.Database(t)
	a := openStore(t, dsn)
	c := sqlConn(t, dsn)
	mustPut(t, a, session("old"))
	var v int64
	var old []byte
	if err := c.QueryRow(ctx, `SELECT version, sealed FROM anaplan_proxy_session`).Scan(&v, &old); err != nil {
		t.Fatal(err)
	}
	mustPut(t, a, session("new"))
	execSQL(t, c, `UPDATE anaplan_proxy_session SET sealed = $1, version = $2`, old, v)
	if got := mustLoad(t, openStore(t, dsn)); got.Session.AccessToken != session("old").AccessToken {
		t.Fatalf("fresh store loaded %q", got.Session.AccessToken)
	}
	// The next write's version is above everything seen, restored or not.
	if rec := mustPut(t, a, session("newer")); rec.Version <= v {
		t.Fatalf("version after restore %d, restored %d", rec.Version, v)
	}
	if got := mustLoad(t, a); got.Session.AccessToken != session("newer").AccessToken {
		t.Fatalf("after a new login: %q", got.Session.AccessToken)
	}
}

// The CA is made once per database: every store gets the first one's,
// including one of another session name.
func TestLoadOrCreateCA(t *testing.T) {
	ctx := context.Background()
	dsn := pg.Database(t)
	a, b := openStore(t, dsn), openStore(t, dsn, withName("other"))
	made := 0
	create := func(tag string) func() ([]byte, []byte, error) {
		return func() ([]byte, []byte, error) {
			made++
			return []byte(testCACert + tag), []byte(testCAKey + tag), nil
		}
	}
	cert, key, err := a.LoadOrCreateCA(ctx, create("a"))
	if err != nil || string(cert) != testCACert+"a" || string(key) != testCAKey+"a" {
		t.Fatalf("first LoadOrCreateCA: %q %q %v", cert, key, err)
	}
	cert, key, err = b.LoadOrCreateCA(ctx, create("b"))
	if err != nil || string(cert) != testCACert+"a" || string(key) != testCAKey+"a" || made != 1 {
		t.Fatalf("second LoadOrCreateCA: %q %q %v (made %d)", cert, key, err, made)
	}
	// Lost race: the insert of b's CA finds a's; b returns a's.
	c := sqlConn(t, dsn)
	execSQL(t, c, `DELETE FROM anaplan_proxy_ca`)
	cert, _, err = b.LoadOrCreateCA(ctx, func() ([]byte, []byte, error) {
		if _, _, err := a.LoadOrCreateCA(ctx, create("winner")); err != nil {
			return nil, nil, err
		}
		return []byte(testCACert + "loser"), []byte(testCAKey + "loser"), nil
	})
	if err != nil || string(cert) != testCACert+"winner" {
		t.Fatalf("LoadOrCreateCA that lost the race returned %q, %v", cert, err)
	}
	// A key sealed for another certificate does not open.
	execSQL(t, c, `UPDATE anaplan_proxy_ca SET cert_pem = 'forged'`)
	var se *auth.StoreError
	if _, _, err := a.LoadOrCreateCA(ctx, create("x")); !errors.As(err, &se) {
		t.Fatalf("CA with a swapped certificate: %v", err)
	}
}

func TestLoadKeyFile(t *testing.T) {
	key := bytes.Repeat([]byte{0xa7}, KeySize)
	b64 := base64.StdEncoding.EncodeToString(key)
	for _, tc := range []struct {
		name    string
		content []byte
		mode    os.FileMode
		want    string // "" for success
		unsafe  bool
	}{
		{"raw 32 bytes", key, 0o600, "", false},
		{"base64 with newline", []byte(b64 + "\n"), 0o600, "", false},
		{"base64 without newline", []byte(b64), 0o400, "", false},
		{"raw 31 bytes", key[:31], 0o600, "neither", false},
		{"base64 of 16 bytes", []byte(base64.StdEncoding.EncodeToString(key[:16]) + "\n"), 0o600, "base64 of 16 bytes", false},
		{"empty", nil, 0o600, "openssl rand -base64 32", false},
		{"readable by others", []byte(b64 + "\n"), 0o644, "chmod 600", true},
		{"too large", bytes.Repeat([]byte("A"), 4096), 0o600, "larger than", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "store.key")
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			got, err := LoadKeyFile(path)
			if tc.want == "" {
				if err != nil || !bytes.Equal(got, key) {
					t.Fatalf("LoadKeyFile: %x, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadKeyFile: %v, want an error mentioning %q", err, tc.want)
			}
			if errors.Is(err, securefile.ErrUnsafe) != tc.unsafe {
				t.Fatalf("LoadKeyFile: %v; wraps ErrUnsafe = %v, want %v", err, !tc.unsafe, tc.unsafe)
			}
			if strings.Contains(err.Error(), b64[:12]) {
				t.Fatalf("the error quotes the key: %v", err)
			}
		})
	}
	if _, err := LoadKeyFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing key file: %v", err)
	}
}
