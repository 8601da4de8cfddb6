package caddymodule

// Helpers for remote-mode tests, exported so that the external e2e tests
// (package caddymodule_test) can use them too: names for what
// broker/brokertest has (the test PKI, the fake upstream broker), which
// the tests of broker/remote share.

import (
	"testing"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker/brokertest"
)

// TestPKI is brokertest.PKI, under the name the e2e tests use.
type TestPKI = brokertest.PKI

// NewTestPKI is brokertest.NewPKI.
func NewTestPKI(t testing.TB) *TestPKI { return brokertest.NewPKI(t) }

// NewFakeBroker is brokertest.NewFakeBroker, under the name the local-mode
// e2e test uses.
func NewFakeBroker(t testing.TB) *brokertest.FakeBroker { return brokertest.NewFakeBroker(t) }
