#!/usr/bin/env bash
# Builds the web console (operator/http/console, Preact + TypeScript + Vite, versions locked by
# its package-lock.json) into operator/http/console/dist, the bundle the binary embeds
# (operator/http/src/console.rs). With --check it builds into a scratch copy and fails when
# the committed bundle differs from what the locked sources produce (scripts/test.sh runs it).
# node_modules stays out of git (.gitignore); `npm ci` only installs what the lock names.
set -euo pipefail
cd "$(dirname "$0")/../operator/http/console"
check=0
[ "${1:-}" = "--check" ] && check=1
command -v npm >/dev/null || { echo "console: npm is missing (Node.js >= 20: apt-get install nodejs npm)" >&2; exit 1; }
lock_sha="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat node_modules/.lock-sha256 2>/dev/null)" != "$lock_sha" ]; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$lock_sha" > node_modules/.lock-sha256
fi
if [ "$check" = 0 ]; then
  npm run --silent build >/dev/null
  echo "console bundle written to operator/http/console/dist" >&2
  exit 0
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
npx --no-install tsc --noEmit
npx --no-install vite build --outDir "$out" --emptyOutDir --logLevel error
if ! diff -r "$out" dist >/dev/null; then
  echo "console: the committed bundle (operator/http/console/dist) is not what the locked sources build;" >&2
  echo "         run scripts/console-build.sh and commit dist/" >&2
  diff -rq "$out" dist >&2 || true
  exit 1
fi
echo "console: committed bundle matches the sources" >&2
