#!/usr/bin/env bash
# Install everything controlroom needs on Debian 12 (as root or with sudo), then run
# the demo or the test suite (after ruff, mypy and lint-imports). Idempotent: a second run
# installs nothing new.
#
#   bash scripts/bootstrap.sh demo [controlroom demo options]
#   bash scripts/bootstrap.sh test [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-}"; shift || true
case "$what" in demo|test|install) ;; *)
  echo "usage: bash scripts/bootstrap.sh demo|test|install [options]" >&2; exit 2;; esac

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

DEBS=(kamailio kamailio-tls-modules sip-tester mosquitto baresip espeak-ng sox chromium python3-venv python3-dev
      gcc tshark postgresql)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The services these packages start by default are not used: the project starts its own
# Kamailio and Mosquitto on free loopback ports, and tests their own throw-away PostgreSQL
# cluster (harness/postgres.py; as root it runs as the package's 'postgres' user).

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "== installing Python dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[whisper,test,bench]"
  touch .venv/.installed
fi

# axe-core (npm) for the accessibility checks of the browser tests, into tests/_node.
if [ "$what" = test ] && [ ! -f tests/_node/node_modules/axe-core/axe.min.js ]; then
  if ! command -v npm >/dev/null; then
    echo "== installing Debian package: npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  echo "== installing axe-core into tests/_node"
  npm ci --prefix tests/_node --no-audit --no-fund >/dev/null
fi

case "$what" in
  demo) exec .venv/bin/controlroom demo "$@" ;;
  test)
    # The checks first (configured in pyproject.toml): lint, types of the product packages,
    # and the layering contract of README "Architecture". Any finding stops here.
    echo "== ruff, mypy, lint-imports"
    .venv/bin/ruff check .
    .venv/bin/mypy
    .venv/bin/lint-imports
    exec .venv/bin/python -m pytest "$@" ;;
  install) echo "installed; run: .venv/bin/controlroom --help" ;;
esac
