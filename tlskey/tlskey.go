// Package tlskey is the socket protocol's transport security: TLS 1.3
// between a node and its backup server, each side a long-lived Ed25519 key
// in a self-signed certificate, each recognising the other by a pin (the
// SHA-256 of the public key) instead of a certificate authority. The node
// pins the server in its URL (socket:host:port?pin=sha256:...); the server
// admits the client keys it was given (--authorized-keys), and refuses any
// other during the handshake, before a byte of the protocol.
package tlskey

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"
	"time"

	"github.com/lnvault/lnvault/internal/durable"
)

// PinPrefix starts a pin.
const PinPrefix = "sha256:"

// Pin is the pin of a public key: "sha256:" and the hex SHA-256 of its
// SubjectPublicKeyInfo.
func Pin(pub any) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return PinPrefix + hex.EncodeToString(sum[:]), nil
}

// ParsePin checks a pin's form and returns it in lower case.
func ParsePin(s string) (string, error) {
	h, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(s)), PinPrefix)
	if b, err := hex.DecodeString(h); !ok || err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("%q is not a key pin: expected sha256: and 64 hex digits (as `lnvault server` logs it)", s)
	}
	return PinPrefix + h, nil
}

// Key is a long-lived key with its self-signed certificate.
type Key struct {
	Cert tls.Certificate
	Pin  string
}

// LoadOrCreate reads the key at path (PKCS #8 PEM), or creates one there
// (mode 0600) when there is none; created says which.
func LoadOrCreate(path string) (k *Key, created bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		k, err := create(path)
		return k, err == nil, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading key %s: %w", path, err)
	}
	k, err = parse(path, data)
	return k, false, err
}

// Load reads the key at path.
func Load(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading key %s: %w", path, err)
	}
	return parse(path, data)
}

func create(path string) (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	if err := durable.CreateFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("creating key %s: %w", path, err)
	}
	return fromKey(priv)
}

func parse(path string, data []byte) (*Key, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("key %s is not a PEM PRIVATE KEY (lnvault writes one when the file is missing)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key %s is a %T, not an Ed25519 key", path, k)
	}
	return fromKey(priv)
}

// fromKey makes the self-signed certificate of priv: what matters to the
// peer is only its public key's pin.
func fromKey(priv ed25519.PrivateKey) (*Key, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return nil, err
	}
	pin, err := Pin(priv.Public())
	if err != nil {
		return nil, err
	}
	return &Key{Cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, Pin: pin}, nil
}

// peerPin is the pin of the leaf certificate a peer presented.
func peerPin(rawCerts [][]byte) (string, error) {
	if len(rawCerts) == 0 {
		return "", errors.New("the peer presented no certificate")
	}
	c, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return "", fmt.Errorf("the peer's certificate: %w", err)
	}
	return Pin(c.PublicKey)
}

// PinError: the server's key is not the one pinned.
type PinError struct{ Got, Want string }

func (e *PinError) Error() string {
	return fmt.Sprintf("the backup server's key is %s, not the pinned %s: it is another server, or its key changed (if you changed it, put the new pin in the URL)", e.Got, e.Want)
}

// ClientConfig is the TLS configuration of a client that pins the server
// with pin and shows key (nil: none).
func ClientConfig(pin string, key *Key) *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The pin replaces the certificate authority.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			got, err := peerPin(rawCerts)
			if err != nil {
				return err
			}
			if got != pin {
				return &PinError{Got: got, Want: pin}
			}
			return nil
		},
	}
	if key != nil {
		c.Certificates = []tls.Certificate{key.Cert}
	}
	return c
}

// ServerConfig is the TLS configuration of a server with key that admits
// the clients whose pins allowed accepts (nil: every client, without
// asking for a certificate).
func ServerConfig(key *Key, allowed func(pin string) bool) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{key.Cert}}
	if allowed != nil {
		c.ClientAuth = tls.RequireAnyClientCert
		c.VerifyPeerCertificate = func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			p, err := peerPin(rawCerts)
			if err != nil {
				return err
			}
			if !allowed(p) {
				return fmt.Errorf("client key %s is not authorized", p)
			}
			return nil
		}
	}
	return c
}

// ReadAuthorized reads an authorized keys file: one pin per line, an
// optional name after it; blank lines and # comments skipped.
func ReadAuthorized(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading authorized keys: %w", err)
	}
	defer f.Close()
	return parseAuthorized(path, f)
}

func parseAuthorized(path string, r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(io.LimitReader(r, 1<<20))
	n := 0
	for sc.Scan() {
		n++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		p, err := ParsePin(f[0])
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		out[p] = strings.Join(f[1:], " ")
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s names no client key (one sha256:... pin per line, as `lnvault init` prints it)", path)
	}
	return out, nil
}
