package postgres

import (
	"crypto/ed25519"
	"database/sql/driver"
	"fmt"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage/internal/sqlq"
)

// The stored encodings, as pgx arguments (driver.Valuer) and scan targets
// (sql.Scanner), so that queries read and write the broker's types
// directly: (*list)(&a.Scopes) in a Scan, list(a.Scopes) as an argument.

// list is a scope list, stored as a JSON array in TEXT.
type list []string

func (l list) Value() (driver.Value, error) { return sqlq.List(l) }

func (l *list) Scan(src any) error {
	s, ok := src.(string)
	if !ok {
		return fmt.Errorf("stored scope list: %T", src)
	}
	v, err := sqlq.ParseList(s)
	*l = v
	return err
}

// rfc3339 is a time stored as RFC 3339 text; NULL or "" is the zero time.
// Written with sqlq.FormatTime.
type rfc3339 time.Time

func (t *rfc3339) Scan(src any) error {
	var s string
	switch v := src.(type) {
	case nil:
	case string:
		s = v
	default:
		return fmt.Errorf("stored time: %T", src)
	}
	v, err := sqlq.Time(s)
	*t = rfc3339(v)
	return err
}

// unixSeconds is a time stored as BIGINT Unix seconds (whole seconds,
// as upstream compares expiries). Written with Time.Unix.
type unixSeconds time.Time

func (t *unixSeconds) Scan(src any) error {
	v, ok := src.(int64)
	if !ok {
		return fmt.Errorf("stored Unix time: %T", src)
	}
	*t = unixSeconds(time.Unix(v, 0).UTC())
	return nil
}

// pemKey is a signing key, stored as its PKCS#8 PEM block in BYTEA (the
// SQLite implementation's encoding).
type pemKey ed25519.PrivateKey

func (k pemKey) Value() (driver.Value, error) { return broker.MarshalKeyPEM(ed25519.PrivateKey(k)) }

func (k *pemKey) Scan(src any) error {
	b, ok := src.([]byte)
	if !ok {
		return fmt.Errorf("stored signing key: %T", src)
	}
	v, err := broker.ParseKeyPEM(b)
	if err != nil {
		return fmt.Errorf("stored signing key: %w", err)
	}
	*k = pemKey(v)
	return nil
}
