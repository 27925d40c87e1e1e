#!/usr/bin/env bash
# deploy/clients.sh — the real clients the suite drives (tests/test_clients_*.py).
#
# Installs Debian's `chromium` package when /usr/bin/chromium is missing (apt-get update once,
# then apt-get install -y chromium; needs root, as `make test` has on the project's machines),
# and runs `npm ci` in tests/clients when its node_modules is missing or older than
# tests/clients/package-lock.json (the pinned @segment/analytics-node,
# @rudderstack/rudder-sdk-node and @segment/analytics-next). Safe to run again: with both in
# place it does nothing. The Python SDKs and Playwright come from pyproject.toml; Playwright
# drives this Chromium (`executable_path`) and never downloads a browser of its own.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS="$REPO_ROOT/tests/clients"
CHROMIUM=/usr/bin/chromium

log() { printf '[clients] %s\n' "$*" >&2; }
die() { printf '[clients] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ ! -x "$CHROMIUM" ]]; then
    command -v apt-get >/dev/null || die "$CHROMIUM is missing and there is no apt-get to install Debian's chromium"
    [[ "$(id -u)" == 0 ]] || die "$CHROMIUM is missing: run 'apt-get install -y chromium' as root (or run this script as root)"
    log "installing Debian's chromium (for the browser SDK tests)"
    apt_log="$(mktemp)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        rm -f "$apt_log"
        die "apt-get could not install chromium"
    fi
    rm -f "$apt_log"
    [[ -x "$CHROMIUM" ]] || die "the chromium package installed no $CHROMIUM"
fi

# npm ci records the tree it installed in node_modules/.package-lock.json: a lock file newer
# than that record means the pinned versions changed since.
installed="$CLIENTS/node_modules/.package-lock.json"
if [[ ! -f "$installed" || "$CLIENTS/package-lock.json" -nt "$installed" ]]; then
    command -v npm >/dev/null || die "npm is missing: install Node.js 20 (with npm) to run the Node and browser SDK tests"
    log "installing the pinned npm clients in tests/clients (npm ci)"
    # No package here needs an install script (one optional native add-on of the RudderStack
    # SDK's Redis queue has one, unused by the tests).
    (cd "$CLIENTS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    touch "$installed"
fi
