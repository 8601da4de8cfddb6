package caddymodule

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
	"github.com/caddy-agentwrit/caddy-agentwrit/broker/storage"
)

// stores holds one open broker.Store per database (file path or URL). A
// reload provisions and starts the new config before the old one is
// cleaned up, so both share the store (its revocation index, audit
// appender, denial counts and nonces) instead of opening the database
// twice; the last user to leave closes it.
var stores = caddy.NewUsagePool()

type storeDestructor struct{ *broker.Store }

func (s storeDestructor) Destruct() error { return s.Store.Close() }

func loadStore(ctx context.Context, dsn string, do storage.Options, so broker.StoreOptions, log *slog.Logger) (*broker.Store, error) {
	v, _, err := stores.LoadOrNew(dsn, func() (caddy.Destructor, error) {
		db, err := storage.Open(ctx, dsn, do)
		if err != nil {
			return nil, err
		}
		so.Logger = log
		s, err := broker.NewStore(ctx, db, so)
		if err != nil {
			db.Close()
			return nil, err
		}
		return storeDestructor{s}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("agentwrit database %s: %w", storage.Redact(dsn), err)
	}
	return v.(storeDestructor).Store, nil
}

func releaseStore(dsn string) error {
	_, err := stores.Delete(dsn)
	return err
}
