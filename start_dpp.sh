#!/usr/bin/env bash
# Launcher for a checkout: set up .venv from requirements.lock once, report the device, exec webui.py.
# Flags of its own: --setup-only (prepare .venv and exit), --dev (also install requirements-dev.lock).
# Every other flag goes to webui.py; `./start_dpp.sh --help` lists them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# No cd: relative --model-dir and friends stay relative to where the user stands.

setup_only=0
dev=0
want_help=0
args=()
for arg in "$@"; do
  case "$arg" in
    --setup-only) setup_only=1 ;;
    --dev) dev=1 ;;
    -h|--help) want_help=1; args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done

VENV="$ROOT/.venv"
PY="$VENV/bin/python"
BASE_PY="${DPP_PYTHON:-python3}"

# One stamp per lock file, so a plain run after a --dev run installs nothing.
lock_hash() { sha256sum < "$ROOT/$1" | cut -d' ' -f1; }

installed() {  # installed LOCKFILE STAMPFILE
  [ -f "$VENV/$2" ] && [ "$(cat "$VENV/$2")" = "$(lock_hash "$1")" ]
}

install_lock() {  # install_lock LOCKFILE STAMPFILE
  "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/$1"
  lock_hash "$1" > "$VENV/$2"
}

setup_venv() {
  if [ -x "$PY" ] && installed requirements.lock .dpp-lock && { [ "$dev" = 0 ] || installed requirements-dev.lock .dpp-dev-lock; }; then
    return 0
  fi
  if ! command -v "$BASE_PY" >/dev/null 2>&1; then
    echo "error: $BASE_PY not found; install Python 3.11 or set DPP_PYTHON" >&2
    exit 1
  fi
  if ! "$BASE_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: $BASE_PY is $("$BASE_PY" -V 2>&1); dpp needs Python 3.10 or newer (3.11 tested)" >&2
    exit 1
  fi
  echo "Setting up $VENV from requirements.lock (first run only; a few minutes)..."
  [ -x "$PY" ] || "$BASE_PY" -m venv "$VENV"
  installed requirements.lock .dpp-lock || install_lock requirements.lock .dpp-lock
  if [ "$dev" = 1 ] && ! installed requirements-dev.lock .dpp-dev-lock; then
    install_lock requirements-dev.lock .dpp-dev-lock
  fi
  echo "Environment ready: $VENV"
}

# Nothing in the app may reach for a model hub or phone home.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export GRADIO_ANALYTICS_ENABLED=False DO_NOT_TRACK=1

if [ "$want_help" = 1 ] && [ ! -x "$PY" ]; then
  # --help needs only the standard library: answer it before any install.
  exec "$BASE_PY" "$ROOT/webui.py" "${args[@]}"
fi

setup_venv
[ "$setup_only" = 1 ] && exit 0

if [ "$want_help" = 0 ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && gpus="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)" && [ -n "$gpus" ]; then
    echo "CUDA device found: $(echo "$gpus" | head -n1)"
  else
    echo "No CUDA device found: running on CPU"
  fi
  mkdir -p "$ROOT/logs"
fi

exec "$PY" "$ROOT/webui.py" "${args[@]}"
