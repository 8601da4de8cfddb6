package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// parseConfig parses a postgres:// URL, and returns with it a replacer
// that scrubs the password from error texts. pgx's parse errors are
// redacted on a best-effort basis only, so they are never wrapped: their
// text is kept only when the URL parses well enough to know its password,
// and scrubbed of it.
func parseConfig(dsn string) (*pgxpool.Config, *strings.Replacer, error) {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		return nil, nil, fmt.Errorf("open database: %w: want a postgres:// or postgresql:// URL", broker.ErrBadConfig)
	}
	secrets, ok := passwords(dsn)
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		detail := "malformed URL (not shown: it may hold the password)"
		if ok {
			detail = secrets.Replace(err.Error())
		}
		return nil, nil, fmt.Errorf("open database %s: %w: %s", redact(dsn), broker.ErrBadConfig, detail)
	}
	return cfg, secrets, nil
}

// passwords returns a replacer of every form of the URL's passwords (in
// the user info and the password and sslpassword parameters) by "xxxxx",
// and whether the URL parsed, so that the list is complete.
func passwords(dsn string) (*strings.Replacer, bool) {
	u, err := url.Parse(dsn)
	if err != nil {
		return strings.NewReplacer(), false
	}
	var old []string
	add := func(raw, decoded string) {
		for _, s := range []string{raw, decoded, url.QueryEscape(decoded), url.PathEscape(decoded)} {
			if s != "" {
				old = append(old, s, "xxxxx")
			}
		}
	}
	if pw, has := u.User.Password(); has {
		// The user info as written, cut the way url.Parse cuts it.
		rest := dsn[strings.Index(dsn, "://")+3:]
		rest, _, _ = strings.Cut(rest, "#")
		rest, _, _ = strings.Cut(rest, "?")
		authority, _, _ := strings.Cut(rest, "/")
		if at := strings.LastIndex(authority, "@"); at >= 0 {
			_, raw, _ := strings.Cut(authority[:at], ":")
			add(raw, pw)
		}
	}
	for _, kv := range strings.Split(u.RawQuery, "&") {
		k, raw, _ := strings.Cut(kv, "=")
		if k == "password" || k == "sslpassword" {
			decoded, _ := url.QueryUnescape(raw)
			add(raw, decoded)
		}
	}
	return strings.NewReplacer(old...), true
}

// redact returns the URL without its password, for Info, errors and logs.
func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	q := u.Query()
	if q.Has("password") || q.Has("sslpassword") {
		q.Del("password")
		q.Del("sslpassword")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// fail adds op to err and the sentinel callers branch on: the broker's own
// sentinels pass through, and every sign that the database cannot be
// reached or cannot answer right now becomes broker.ErrUnavailable (503,
// retry). A connection error carries the pool's configuration, password
// included, so it is flattened to its scrubbed text.
func (d *DB) fail(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, broker.ErrNotFound), errors.Is(err, broker.ErrConflict), errors.Is(err, broker.ErrConsumed):
		return fmt.Errorf("%s: %w", op, err)
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		sentinel := broker.ErrUnavailable
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "28") || pgErr.Code == "3D000") {
			// Refused credentials, or no such database: retrying will not help.
			sentinel = broker.ErrBadConfig
		}
		return fmt.Errorf("%s: %w: %s", op, sentinel, d.secrets.Replace(err.Error()))
	}
	if d.closed.Load() {
		return fmt.Errorf("%s: %w: database closed", op, broker.ErrUnavailable)
	}
	if d.unavailable(err) {
		return fmt.Errorf("%s: %w: %w", op, broker.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// unavailable reports whether err means the database cannot serve the
// request now but may after a retry (as opposed to refusing it).
func (d *DB) unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && len(pgErr.Code) == 5 {
		switch pgErr.Code[:2] {
		case "08", // connection exception
			"40", // transaction rollback (serialization failure, deadlock)
			"53", // insufficient resources (too many connections, disk full)
			"57": // operator intervention (statement timeout, shutdown, cannot connect now)
			return true
		case "55": // lock_not_available
			return pgErr.Code == "55P03"
		case "25": // a read-write handle on a read-only server: a standby, or a failover under way
			return pgErr.Code == "25006" && !d.readOnly
		}
		return false
	}
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) ||
		errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, pgconn.ErrConnClosed) || pgconn.SafeToRetry(err)
}
