#!/usr/bin/env bash
# The GPU checks and benchmarks in one command, run ON a lent GPU machine from the repo root:
#
#     bash bench/on_device.sh [STEP ...]          # steps: equivalence device classify (default: all)
#
# How a session gets there (the lent machine reaches no network and has no venv of ours):
#   1. Here: `bash bench/device_wheels.sh` puts the wheels the GPU machine lacks into .whl/ (git-ignored,
#      about 26 MB: fastapi, uvicorn, pydantic, our transformers stack, ...; versions from requirements.lock).
#   2. The device tool's run, carrying only the wheels:
#          command "bash bench/on_device.sh", carry [".whl"], timeout_s 600
#      Do not carry bench/.cache: the mT5-base-shaped model is 2+ GB, past the 64 MiB a run carries.
#      bench.base_model builds it on the device (about a minute) with torch, transformers and sentencepiece,
#      which the machine has.
#   3. The files written under $OUT come back (at most 8: this script writes 4). Copy the JSON to quote
#      into bench/results/, with the machine as the JSON names it.
# A run has ten minutes, and all four steps may take about that long (the device step alone about six:
# it builds the model, then the seed-style arms decode one text at a time). Safer: two calls while the
# machine stays warm (the installed wheels and the built model stay; each call brings back its own $OUT):
#     "bash bench/on_device.sh equivalence classify"   then   "bash bench/on_device.sh device"
# bench.device writes its server level to its --out file before the engine level starts, so a step cut short
# still leaves that half.
#
# Each step writes into $OUT (default bench/results) and one failing does not stop the others:
#   equivalence  python3 -m bench.equivalence --device cuda          -> $OUT/equivalence_cuda.json
#                (runs tests/test_fast_decode.py there, graphs included, and records every outcome)
#   device       python3 -m bench.device --device cuda                -> $OUT/device_cuda.json
#   classify     python3 -m bench.classify --device cuda              -> $OUT/classify_gpu.json
# Everything printed goes to $OUT/on_device.log too; the last line names the steps that failed, and the
# exit status is their count.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
LOG="$OUT/on_device.log"
SITE=/tmp/site
# A hung step must not take the others' time: each gets at most this many seconds.
declare -A LIMIT_S=([equivalence]=240 [device]=480 [classify]=180)

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

# Sets CMD to the step's command line; fails for an unknown step.
step_command() {
    case "$1" in
        equivalence) CMD=(python3 -m bench.equivalence --device cuda --out "$OUT/equivalence_cuda.json") ;;
        device) CMD=(python3 -m bench.device --device cuda --out "$OUT/device_cuda.json") ;;
        classify) CMD=(python3 -m bench.classify --device cuda --out "$OUT/classify_gpu.json") ;;
        *) return 1 ;;
    esac
}

main() {
    local steps=("$@") name status started failed=()
    [ ${#steps[@]} -gt 0 ] || steps=(equivalence device classify)
    for name in "${steps[@]}"; do
        step_command "$name" || { echo "error: unknown step $name (equivalence, device, classify)"; return 64; }
    done

    echo "== $(date -u +%FT%TZ) on_device: ${steps[*]}"
    nvidia-smi || echo "(nvidia-smi failed)"
    if ! ls .whl/*.whl > /dev/null 2>&1; then
        echo "error: no wheels in .whl/: run bash bench/device_wheels.sh on the dev machine and carry .whl"
        return 65
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .whl/*.whl || { echo "error: installing the carried wheels failed"; return 66; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    python3 -c "import sys, torch, transformers, fastapi; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| cuda', torch.cuda.is_available(), '| transformers', transformers.__version__, '| fastapi',
fastapi.__version__)"

    for name in "${steps[@]}"; do
        step_command "$name"
        echo "== $(date -u +%T) step $name (at most ${LIMIT_S[$name]} s): ${CMD[*]}"
        started=$SECONDS
        timeout --kill-after=10 "${LIMIT_S[$name]}" "${CMD[@]}"
        status=$?
        echo "== step $name: exit $status after $((SECONDS - started)) s"
        [ "$status" -eq 0 ] || failed+=("$name")
    done

    if [ ${#failed[@]} -eq 0 ]; then
        echo "== on_device: all steps passed (${steps[*]})"
    else
        echo "== on_device: failed: ${failed[*]}"
    fi
    return ${#failed[@]}
}

main "$@" 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
