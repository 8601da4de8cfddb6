package main

import (
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestReadmeCaddyfiles adapts every Caddyfile block of the README with this
// binary's modules, so the reference cannot drift from the parser.
func TestReadmeCaddyfiles(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(readme), "```caddyfile\n")[1:]
	if len(blocks) < 4 {
		t.Fatalf("found %d Caddyfile blocks in README.md, expected at least 4", len(blocks))
	}
	for i, b := range blocks {
		body, _, _ := strings.Cut(b, "```")
		if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(body), nil); err != nil {
			t.Errorf("README Caddyfile block %d does not adapt: %v\n%s", i+1, err, body)
		}
	}
}
