#!/bin/sh
# Runs the operator console's browser test: installs Debian's Chromium and
# the pinned playwright-core if they are missing, then the node:test script.
# Run from anywhere; CI runs it as root (the test passes --no-sandbox then).
set -eu
cd "$(dirname "$0")"
if [ -z "${CHROMIUM:-}" ]; then
	CHROMIUM=/usr/bin/chromium
	if [ ! -x "$CHROMIUM" ]; then
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
	fi
fi
export CHROMIUM
if [ ! -d node_modules/playwright-core ]; then
	if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi
exec node --test --test-concurrency=1 console.test.mjs
