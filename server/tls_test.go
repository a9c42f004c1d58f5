package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/entropi-ai/entropi/client"
	"github.com/entropi-ai/entropi/server"
	"github.com/entropi-ai/entropi/server/servertest"
)

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "entropi test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	h := startWith(t, server.Config{}, []grpc.ServerOption{grpc.Creds(creds)}, fakeModel(t))
	fake := func(info *client.ModelInfo, allow bool) (client.Crypto, error) {
		return servertest.NewCrypto(info.Spec, allow)
	}
	c, err := client.Dial(context.Background(), h.addr, &client.Options{AllowInsecurePresets: true, NewCrypto: fake,
		TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewSession(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Generate(context.Background(), []int{4}, 2, client.GenerateOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := servertest.Greedy([]int{4}, 2); !equalInts(res.Tokens, want) {
		t.Fatalf("tokens %v, want %v", res.Tokens, want)
	}
	// A plaintext client cannot talk to the TLS server.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if c2, err := client.Dial(ctx, h.addr, &client.Options{NewCrypto: fake}); err == nil {
		c2.Close()
		t.Fatal("plaintext client talked to a TLS server")
	}
}
