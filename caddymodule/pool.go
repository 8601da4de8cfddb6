package caddymodule

import (
	"context"
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// stores holds one open broker.Store per database path. A reload provisions
// the new config before the old one is cleaned up, so both share the store
// (its revocation index, audit chain and nonces) instead of opening the file
// twice; the last user to leave closes it.
var stores = caddy.NewUsagePool()

type storeDestructor struct{ *broker.Store }

func (s storeDestructor) Destruct() error { return s.Store.Close() }

func loadStore(ctx context.Context, path string) (*broker.Store, error) {
	v, _, err := stores.LoadOrNew(path, func() (caddy.Destructor, error) {
		s, err := broker.Open(ctx, path)
		if err != nil {
			return nil, err
		}
		return storeDestructor{s}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("agentwrit database: %w", err)
	}
	return v.(storeDestructor).Store, nil
}

func releaseStore(path string) error {
	_, err := stores.Delete(path)
	return err
}
