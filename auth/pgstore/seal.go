package pgstore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/anaplan-proxy/anaplan-proxy/internal/securefile"
)

// KeySize is the length of the sealing key: AES-256.
const KeySize = 32

// sealFormat is the first byte of every sealed value; a later format
// (another cipher) would take the next number.
const sealFormat = 1

// Associated-data labels: a sealed value opens only in the place it was
// written for.
const (
	sessionLabel = "anaplan-proxy session v1"
	caKeyLabel   = "anaplan-proxy ca key v1"
)

// errUnseal is returned for any sealed value that does not open: the
// cause (wrong key, a value copied from another row or version, damage)
// cannot be told apart, by design of the AEAD.
var errUnseal = errors.New("message authentication failed")

// sealer encrypts values with AES-256-GCM under the store's key. It is
// safe for concurrent use (cipher.AEAD is).
type sealer struct {
	aead cipher.AEAD
}

func newSealer(key []byte) (sealer, error) {
	if len(key) != KeySize {
		return sealer{}, fmt.Errorf("the sealing key has %d bytes; it must have %d (make a key file with: openssl rand -base64 32)", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return sealer{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealer{}, err
	}
	return sealer{aead: aead}, nil
}

// seal returns format byte, random nonce, then ciphertext and tag.
func (s sealer) seal(plain, ad []byte) []byte {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	out[0] = sealFormat
	if _, err := io.ReadFull(rand.Reader, out[1:]); err != nil {
		// crypto/rand does not fail on supported systems.
		panic("pgstore: reading random nonce: " + err.Error())
	}
	return s.aead.Seal(out, out[1:], plain, ad)
}

func (s sealer) open(sealed, ad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n+s.aead.Overhead() || sealed[0] != sealFormat {
		return nil, errUnseal
	}
	plain, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], ad)
	if err != nil {
		return nil, errUnseal
	}
	return plain, nil
}

// sessionAD binds a sealed session to its session name and record
// version, so that a ciphertext copied into another row or over a newer
// version of the same row does not open.
func sessionAD(name string, version int64) []byte {
	b := make([]byte, 0, len(sessionLabel)+len(name)+24)
	b = append(b, sessionLabel...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint64(b, uint64(version))
	return b
}

// caKeyAD binds the CA's sealed private key to its certificate.
func caKeyAD(certPEM []byte) []byte {
	return append([]byte(caKeyLabel+"\x00"), certPEM...)
}

// maxKeyFile bounds how much of a key file is read: a key is 32 bytes, or
// 44 characters of base64 and a newline.
const maxKeyFile = 1024

// LoadKeyFile reads the sealing key from path: exactly 32 raw bytes, or
// the base64 of 32 bytes (what `openssl rand -base64 32` prints, trailing
// newline allowed). The file must be a regular file owned by this user with
// mode 0600 (or stricter); one open to other users is refused with an
// error wrapping securefile.ErrUnsafe. No error quotes the file's content.
func LoadKeyFile(path string) ([]byte, error) {
	if err := securefile.CheckPrivate(path); err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	howto := fmt.Sprintf("make one with: openssl rand -base64 32 > %s && chmod 600 %s", path, path)
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("key file %s is larger than %d bytes: it holds no key; %s", path, maxKeyFile, howto)
	}
	if key, ok := securefile.DecodeKey(data, KeySize); ok {
		return key, nil
	}
	if b, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data))); err == nil && len(b) > 0 {
		clear(b)
		return nil, fmt.Errorf("key file %s holds base64 of %d bytes; the key must be %d bytes; %s", path, len(b), KeySize, howto)
	}
	return nil, fmt.Errorf("key file %s holds %d bytes that are neither a %d-byte key nor base64; %s", path, len(data), KeySize, howto)
}
