#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels that a lent GPU machine lacks for the REST-only server
# (--no-ui) and the benchmarks; bench/on_device.sh installs them there. Run it here, on a machine whose pip
# reaches the package index:
#
#     bash bench/device_wheels.sh
#
# The GPU machine has Python 3.12 with torch (CUDA), transformers, tokenizers, sentencepiece, safetensors,
# numpy, requests, httpx, h11, anyio, click, pytest and psutil; it has no fastapi, starlette, pydantic,
# uvicorn or gradio. Every version comes from requirements.lock. Our transformers stack is carried too, so the
# device runs the transformers we ship rather than the machine's own. Gradio, jieba and ctranslate2 stay
# behind: the REST-only server imports none of them with --engine mt5.
set -euo pipefail

cd "$(dirname "$0")/.."
LOCK=requirements.lock
TARGET=.whl
# The device tool carries at most 64 MiB, working tree included.
BUDGET_BYTES=$((48 * 1024 * 1024))

PACKAGES=(
    # the REST API: fastapi, its server and what they import
    fastapi starlette pydantic pydantic_core annotated-types typing-inspection annotated-doc opentelemetry-api
    typing_extensions anyio idna uvicorn h11 click
    # our transformers and what it needs at our versions (huggingface_hub 2 talks through httpx2)
    transformers tokenizers huggingface_hub httpx2 httpcore2 truststore safetensors regex PyYAML tqdm packaging
    filelock fsspec sentencepiece protobuf
)

# The version requirements.lock pins for a package, its name compared as pip compares names.
pinned() {
    local wanted
    wanted=$(echo "$1" | tr 'A-Z_.' 'a-z--')
    awk -F'==' -v wanted="$wanted" '
        /^[^#]/ { name = tolower($1); gsub(/[_.]/, "-", name); if (name == wanted) { print $2; found = 1 } }
        END { exit !found }' "$LOCK"
}

specs=()
for package in "${PACKAGES[@]}"; do
    version=$(pinned "$package") || { echo "error: $package is not pinned in $LOCK" >&2; exit 1; }
    specs+=("$package==$version")
done

# A fresh folder: two versions of one package would make the device's install fail.
mkdir -p "$TARGET"
rm -f "$TARGET"/*.whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$TARGET" "${specs[@]}"

count=$(ls "$TARGET"/*.whl | wc -l)
if [ "$count" -ne "${#specs[@]}" ]; then
    echo "error: ${#specs[@]} packages asked for, $count wheels in $TARGET" >&2
    exit 1
fi
ls -l "$TARGET"/*.whl | awk '{ printf "%8.1f MB  %s\n", $5 / 1e6, $9 }'
total=$(du -cb "$TARGET"/*.whl | tail -1 | cut -f1)
awk -v total="$total" -v count="$count" 'BEGIN { printf "%d wheels, %.1f MB in all\n", count, total / 1e6 }'
if [ "$total" -gt "$BUDGET_BYTES" ]; then
    echo "error: the wheels exceed the $((BUDGET_BYTES / 1024 / 1024)) MiB the device tool can carry with the tree" >&2
    exit 1
fi
