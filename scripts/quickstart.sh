#!/usr/bin/env bash
# Walks the README's quick start as written: the fenced blocks marked
# <!-- quickstart:terminal1 --> (run in the background, like terminal 1),
# <!-- quickstart:terminal2 --> (run in order in one shell, like terminal 2;
# "terminal2 python" blocks are skipped without python3's requests and
# cryptography) and <!-- quickstart:expect --> (the output the block before
# it must print, line for line; "…" matches anything). Fails when the README
# and the product disagree.
#
# It runs on the example's own ports (8080, 8081, 9001 and Caddy's admin
# 2019), which must be free, with a data directory of its own, and on exit
# stops Caddy (as Ctrl-C would) and removes that directory.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
caddy_pid=""
cleanup() {
	if [ -n "$caddy_pid" ] && kill -0 "$caddy_pid" 2>/dev/null; then
		kill -INT -- "-$caddy_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$caddy_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL -- "-$caddy_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "quickstart: $*" >&2; exit 1; }

for port in 8080 8081 9001 2019; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		fail "port $port is in use; the README's quick start needs it"
	fi
done

# Extract the marked blocks into $work/blocks/NN.<kind>.
mkdir -p "$work/blocks" "$work/out"
awk -v dir="$work/blocks" '
	/^<!-- quickstart:[a-z0-9]+( [a-z0-9]+)? -->$/ {
		m = $0; sub(/^<!-- quickstart:/, "", m); sub(/ -->$/, "", m); gsub(/ /, "-", m)
		if (m ~ /^(terminal1|terminal2|terminal2-python|expect)$/ && kind == "") kind = m
		next
	}
	/^```/ {
		if (file != "") { close(file); file = ""; next }
		if (kind != "") { n++; file = sprintf("%s/%02d.%s", dir, n, kind); printf "" > file; kind = ""; next }
		inblock = !inblock; next
	}
	file != "" { print > file; next }
	inblock { next }
	/[^ ]/ { kind = "" }
' README.md

t1=("$work"/blocks/*.terminal1)
[ "${#t1[@]}" -eq 1 ] && [ -f "${t1[0]}" ] || fail "README.md needs exactly one <!-- quickstart:terminal1 --> block"

# The quick start's own state, never the user's.
export XDG_DATA_HOME="$work/data" XDG_CONFIG_HOME="$work/config"
unset AGENTWRIT_ADMIN_SECRET AGENTWRIT_ADMIN_TOKEN AGENTWRIT_BROKER AGENTWRIT_GATEWAY

echo "== terminal 1: $(head -1 "${t1[0]}")"
setsid bash -euo pipefail "${t1[0]}" > "$work/terminal1.log" 2>&1 &
caddy_pid=$!
for _ in $(seq 600); do
	curl -sf localhost:8080/v1/health > /dev/null 2>&1 && break
	kill -0 "$caddy_pid" 2>/dev/null || { cat "$work/terminal1.log" >&2; fail "terminal 1 exited"; }
	sleep 0.5
done
curl -sf localhost:8080/v1/health > /dev/null || { cat "$work/terminal1.log" >&2; fail "the broker never became healthy"; }

# Terminal 2: one shell, so exports and $TOKEN carry from block to block.
python_ok=1
python3 -c 'import requests, cryptography' 2> /dev/null || python_ok=0
script="$work/terminal2.sh"
echo 'set -euo pipefail' > "$script"
for b in "$work"/blocks/*; do
	name="$(basename "$b")"
	case "$name" in
	*.terminal2-python)
		if [ "$python_ok" = 0 ]; then
			echo "== skipped (python3 without requests and cryptography): $(head -1 "$b")"
			continue
		fi ;;
	*.terminal2) ;;
	*) continue ;;
	esac
	{
		echo "echo '== terminal 2: $(head -1 "$b" | sed "s/'/'\\\\''/g")'"
		echo "echo '$name' > '$work/current'"
		echo "{"
		cat "$b"
		echo "} > '$work/out/${name%%.*}' 2>&1"
	} >> "$script"
done
echo "printf %s \"\${TOKEN:-}\" > '$work/token'" >> "$script"
if ! bash "$script"; then
	cur="$(cat "$work/current" 2>/dev/null || true)"
	echo "--- output of ${cur:-?}:" >&2
	cat "$work/out/${cur%%.*}" >&2 || true
	fail "a terminal 2 block failed: ${cur:-?}"
fi

# Compare each expect block with the output of the block before it.
bad=0
prev=""
for b in "$work"/blocks/*; do
	name="$(basename "$b")"
	case "$name" in
	*.expect) ;;
	*.terminal2 | *.terminal2-python) prev="${name%%.*}"; continue ;;
	*) continue ;;
	esac
	[ -n "$prev" ] || fail "an expect block with no terminal 2 block before it"
	[ -f "$work/out/$prev" ] || continue # skipped
	mapfile -t want < "$b"
	mapfile -t got < "$work/out/$prev"
	ok=1
	[ "${#want[@]}" -eq "${#got[@]}" ] || ok=0
	for i in "${!want[@]}"; do
		p="${want[$i]}"
		p="${p//\\/\\\\}"; p="${p//\*/\\*}"; p="${p//\?/\\?}"; p="${p//\[/\\[}"
		p="${p//…/*}"
		# shellcheck disable=SC2053 # the pattern is a glob on purpose
		[[ "${got[$i]-}" == $p ]] || { ok=0; echo "line $((i + 1)): want ${want[$i]}" >&2; echo "         got  ${got[$i]-<none>}" >&2; }
	done
	if [ "$ok" = 0 ]; then
		bad=1
		echo "--- README.md expects (block $name):" >&2; cat "$b" >&2
		echo "--- the product printed:" >&2; cat "$work/out/$prev" >&2
	else
		echo "== output as the README shows ($prev)"
	fi
	prev=""
done

# The access log must not have recorded the token the README put in a URL.
token="$(cat "$work/token")"
if [ -n "$token" ] && grep -qF "$token" "$work/terminal1.log"; then
	bad=1
	echo "the access log recorded a token" >&2
fi
grep -q '"msg":"serving initial configuration"' "$work/terminal1.log" || { bad=1; echo "terminal 1 never logged \"serving initial configuration\"" >&2; }
[ "$bad" = 0 ] || fail "README.md and the product disagree"
echo "quickstart: README quick start ok"
