#!/usr/bin/env bash
# Launcher for a checkout and for the offline bundle, report the device, exec webui.py.
# In a checkout it sets up .venv from requirements.lock once. In a bundle (VERSION and python/ beside
# it) it uses only the bundled Python, after checking this machine can run it; it never calls pip.
# Flags of its own: --setup-only (prepare or check, then exit), --dev (checkout: also install
# requirements-dev.lock and requirements-ray.lock), --ray (checkout: also install requirements-ray.lock, for
# file jobs on a Ray cluster), --verify (bundle: check every file against MANIFEST first).
# Every other flag goes to webui.py; `./start_dpp.sh --help` lists them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# No cd: relative --model-dir and friends stay relative to where the user stands.

setup_only=0
dev=0
ray=0
verify=0
want_help=0
args=()
for arg in "$@"; do
  case "$arg" in
    --setup-only) setup_only=1 ;;
    --dev) dev=1; ray=1 ;;
    --ray) ray=1 ;;
    --verify) verify=1 ;;
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
  if [ -x "$PY" ] && installed requirements.lock .dpp-lock && { [ "$dev" = 0 ] || installed requirements-dev.lock .dpp-dev-lock; } &&
     { [ "$ray" = 0 ] || installed requirements-ray.lock .dpp-ray-lock; }; then
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
  if [ "$ray" = 1 ] && ! installed requirements-ray.lock .dpp-ray-lock; then
    install_lock requirements-ray.lock .dpp-ray-lock
  fi
  echo "Environment ready: $VENV"
}

# --- bundle -----------------------------------------------------------------------------------
version_field() {  # version_field KEY: a value from the bundle's VERSION file
  sed -n "s/^$1=//p" "$ROOT/VERSION" | head -n1
}

refuse() {
  echo "error: $*" >&2
  exit 3
}

check_platform() {
  local arch glibc have
  arch="$(version_field arch)"
  glibc="$(version_field glibc)"
  [ "$(uname -m)" = "$arch" ] ||
    refuse "this bundle was built for $arch, but this machine is $(uname -m); build one on a $(uname -m) machine"
  have="$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc //p')"
  [ -n "$have" ] || refuse "this machine has no glibc (musl?); the bundle needs glibc $glibc or newer"
  [ "$(printf '%s\n%s\n' "$glibc" "$have" | sort -V | head -n1)" = "$glibc" ] ||
    refuse "this machine has glibc $have, older than the build machine's $glibc; build the bundle on a machine with glibc $have or older"
}

wants_cpu() {  # whether the flags or the environment put the app on the CPU (as app/settings.py reads them)
  case "${DPP_CPU_ONLY:-}" in 1|[Tt][Rr][Uu][Ee]|[Yy][Ee][Ss]|[Oo][Nn]) return 0 ;; esac
  [ "${DPP_DEVICE:-}" = cpu ] && return 0
  local previous=""
  for arg in "${args[@]+"${args[@]}"}"; do
    case "$arg" in --cpu-only|--device=cpu) return 0 ;; esac
    [ "$previous" = --device ] && [ "$arg" = cpu ] && return 0
    previous="$arg"
  done
  return 1
}

check_driver() {  # a CUDA bundle on a GPU whose driver is older than its torch needs: say what to do, now
  local floor have
  floor="$(version_field driver_min)"
  { [ -n "$floor" ] && [ "$floor" != none ]; } || return 0
  command -v nvidia-smi >/dev/null 2>&1 || return 0  # no NVIDIA driver at all: the app runs on the CPU
  have="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | sed "s/ //g")"
  [ -n "$have" ] || return 0
  [ "$(printf '%s\n%s\n' "$floor" "$have" | sort -V | head -n1)" = "$floor" ] && return 0
  wants_cpu && return 0
  local cuda12="" cuda12_zh=""
  if [ "$(printf '%s\n%s\n' 525.60.13 "$have" | sort -V | head -n1)" = 525.60.13 ]; then  # CUDA 12's floor
    cuda12="
  This driver runs CUDA 12 builds: a bundle built with python -m bundle.build --profile gpu --cuda cu126 runs here."
    cuda12_zh="，或改用 --cuda cu126 构建的 GPU 包（CUDA 12，驱动 525.60.13 及以上即可）"
  fi
  refuse "this bundle's torch ($(version_field torch_build)) needs NVIDIA driver $floor or newer, but this machine has $have.
  Upgrade the driver (see README, \"GPU servers as they are\"), or run on the CPU: ./start_dpp.sh --device cpu,
  or use a cpu or cpu-lite bundle.$cuda12
  (驱动版本 $have 低于此包所需的 $floor：请升级 NVIDIA 驱动，或加 --device cpu 在 CPU 上运行$cuda12_zh。)"
}

verify_manifest() {
  [ -f "$ROOT/MANIFEST" ] || refuse "MANIFEST is missing: cannot verify this bundle"
  echo "Verifying $(wc -l < "$ROOT/MANIFEST") files against MANIFEST..."
  local failed
  failed="$(cd "$ROOT" && sha256sum --quiet -c MANIFEST 2>/dev/null | sed -n 's/: FAILED.*$//p')" || true
  if [ -n "$failed" ]; then
    echo "error: these files differ from MANIFEST (changed, damaged or missing):" >&2
    sed 's/^/  /' <<< "$failed" >&2
    exit 4
  fi
  echo "All files match MANIFEST."
}

use_bundled_python() {
  PY="$ROOT/python/bin/python3"
  export PYTHONHOME="$ROOT/python"
  export LD_LIBRARY_PATH="$ROOT/python/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # The bundle is read-only as far as Python goes: no user site, no .pyc written next to it.
  export PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
  unset PYTHONPATH PYTHONSTARTUP
  "$PY" -c 'import encodings' 2>/dev/null ||
    refuse "the bundled Python at $PY does not start; run ./start_dpp.sh --verify to find damaged files"
}

# Nothing in the app may reach for a model hub or phone home.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export GRADIO_ANALYTICS_ENABLED=False DO_NOT_TRACK=1

if [ -f "$ROOT/VERSION" ] && [ -d "$ROOT/python" ]; then
  [ "$dev" = 0 ] || refuse "--dev is for a checkout; a bundle carries only the runtime packages"
  [ "$ray" = 0 ] || refuse "--ray is for a checkout: Ray is not in the bundle; run file jobs on Ray from a checkout"
  check_platform
  check_driver
  [ "$verify" = 0 ] || verify_manifest
  use_bundled_python
  if [ "$setup_only" = 1 ]; then
    if [ "$(version_field torch)" = none ]; then runtime="CTranslate2 (no torch)"; else runtime="torch $(version_field torch) ($(version_field torch_build))"; fi
    echo "Bundle ready: $(version_field app_version), Python $(version_field python), $runtime"
    exit 0
  fi
else
  [ "$verify" = 0 ] || refuse "--verify checks an unpacked bundle; this is a checkout (no VERSION file)"
  if [ "$want_help" = 1 ] && [ ! -x "$PY" ]; then
    # --help needs only the standard library: answer it before any install.
    exec "$BASE_PY" "$ROOT/webui.py" "${args[@]}"
  fi
  setup_venv
  [ "$setup_only" = 1 ] && exit 0
fi

if [ "$want_help" = 0 ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && gpus="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)" && [ -n "$gpus" ]; then
    echo "CUDA device found: $(echo "$gpus" | head -n1)"
  else
    echo "No CUDA device found: running on CPU"
  fi
  mkdir -p "$ROOT/logs" 2>/dev/null || true  # webui.py makes --log-dir itself; the folder may be read-only
fi

exec "$PY" "$ROOT/webui.py" "${args[@]}"
