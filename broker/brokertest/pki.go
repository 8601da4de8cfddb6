package brokertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a CA, a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type PKI struct {
	CAFile, ClientCertFile, ClientKeyFile string
	// OtherCAFile is a CA that signed nothing here.
	OtherCAFile string
	// ServerTLS serves the server certificate and requires a client
	// certificate signed by the CA.
	ServerTLS *tls.Config
}

// NewPKI generates the certificates in a temporary directory.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(t, err)
		return k
	}
	serial := int64(0)
	template := func(cn string) *x509.Certificate {
		serial++
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		}
	}
	writePEM := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return p
	}
	newCA := func(cn string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, tpl := newKey(), template(cn)
		tpl.IsCA, tpl.BasicConstraintsValid = true, true
		tpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
		must(t, err)
		cert, err := x509.ParseCertificate(der)
		must(t, err)
		return cert, key, der
	}
	ca, caKey, caDER := newCA("agentwrit test CA")
	_, _, otherDER := newCA("unrelated CA")
	leaf := func(cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		key, tpl := newKey(), template(cn)
		tpl.KeyUsage = x509.KeyUsageDigitalSignature
		tpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
		if usage == x509.ExtKeyUsageServerAuth {
			tpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
			tpl.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tpl, ca, &key.PublicKey, caKey)
		must(t, err)
		return der, key
	}
	serverDER, serverKey := leaf("broker", x509.ExtKeyUsageServerAuth)
	clientDER, clientKey := leaf("gateway", x509.ExtKeyUsageClientAuth)
	p := &PKI{
		CAFile:         writePEM("ca.pem", "CERTIFICATE", caDER),
		OtherCAFile:    writePEM("other-ca.pem", "CERTIFICATE", otherDER),
		ClientCertFile: writePEM("client.pem", "CERTIFICATE", clientDER),
	}
	ck, err := x509.MarshalPKCS8PrivateKey(clientKey)
	must(t, err)
	p.ClientKeyFile = writePEM("client.key", "PRIVATE KEY", ck)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	p.ServerTLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{serverDER}, PrivateKey: serverKey}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}
	return p
}

// must fails t on err.
func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("brokertest: pki: %v", err)
	}
}
