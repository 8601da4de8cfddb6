package broker

import "context"

// openTestDatabase opens the Database this package's own tests run on. The
// package cannot import its implementations (they import it), so an
// external test file of the same test binary (database_test.go) sets it.
var openTestDatabase func(ctx context.Context, path string) (Database, error)

// SetTestDatabase is how database_test.go injects the implementation.
func SetTestDatabase(open func(ctx context.Context, path string) (Database, error)) {
	openTestDatabase = open
}
