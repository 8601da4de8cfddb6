package broker

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"filippo.io/edwards25519"
)

// Thumbprint returns the RFC 7638 JWK thumbprint of an Ed25519 public key,
// which AgentWrit uses as the JWT "kid".
func Thumbprint(pub ed25519.PublicKey) string {
	x := base64.RawURLEncoding.EncodeToString(pub)
	sum := sha256.Sum256([]byte(`{"crv":"Ed25519","kty":"OKP","x":"` + x + `"}`))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// JWK is one RFC 7517 key as served by /.well-known/jwks.json.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
}

// JWKSet is an RFC 7517 key set.
type JWKSet struct {
	Keys []JWK `json:"keys"`
}

func jwkOf(pub ed25519.PublicKey) JWK {
	return JWK{
		Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(pub),
		Kid: Thumbprint(pub), Alg: "EdDSA", Use: "sig",
	}
}

// LoadKeyFile reads a PKCS#8 "PRIVATE KEY" PEM file holding an Ed25519 key,
// creating it (mode 0600, parents 0700) when it does not exist, as upstream
// does with AA_SIGNING_KEY_PATH. A key file that group or others can read
// is refused, with the chmod that fixes it.
func LoadKeyFile(path string) (ed25519.PrivateKey, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return createKeyFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return nil, fmt.Errorf("%w: key file %s has mode %04o, so other users can read the private key; run: chmod 600 %s",
			ErrBadConfig, path, m, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	k, err := ParseKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// ParseKeyPEM parses a PKCS#8 "PRIVATE KEY" PEM block holding an Ed25519
// key.
func ParseKeyPEM(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM block of type PRIVATE KEY")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("PKCS#8: %w", err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%T is not an Ed25519 key", k)
	}
	return ek, nil
}

// MarshalKeyPEM encodes k as a PKCS#8 "PRIVATE KEY" PEM block.
func MarshalKeyPEM(k ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func createKeyFile(path string) (ed25519.PrivateKey, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	b, err := MarshalKeyPEM(k)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if err := f.Chmod(0o600); err != nil { // whatever the umask
		f.Close()
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("signing key: %w", err)
	}
	return k, f.Close()
}

// weakPublicKey reports whether pub is not a canonical encoding of a point
// of large order. With a small-order (or identity) key, ed25519.Verify
// accepts forged signatures, so registration must refuse such keys.
func weakPublicKey(pub []byte) bool {
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return true
	}
	// SetBytes accepts some non-canonical encodings; insist on the canonical one.
	if string(p.Bytes()) != string(pub) {
		return true
	}
	return new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1
}
