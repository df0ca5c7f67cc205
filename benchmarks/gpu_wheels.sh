#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (repository root) for benchmarks/gpu_acceptance.py.
#
# The GPU machine (one H200, no network) runs Python 3.12 with torch 2.11 + torchvision 0.26, onnx,
# CPU onnxruntime, numpy, safetensors, timm, huggingface_hub, regex, tqdm, pillow, prometheus-client,
# pyyaml; it lacks open_clip_torch, pydantic (+ pydantic-core, annotated-types, typing-inspection) and
# ftfy (+ wcwidth). typing_extensions travels too: pydantic needs a recent one and the machine's
# version is not known here. Run this here, where pip reaches PyPI; .whl/ is git-ignored and travels
# with the device call's `carry: [".whl"]` (working tree + wheels must stay under 64 MiB).
# Pins follow the project venv (`.venv/bin/pip list`); override one with e.g. PYDANTIC=2.x.y.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=(${PYTHON:-python3} -m pip)
WHEELS=(
  "open_clip_torch==${OPEN_CLIP:-3.3.0}"
  "pydantic==${PYDANTIC:-2.14.4}"
  "pydantic_core==${PYDANTIC_CORE:-2.50.5}"   # compiled: cp312 manylinux x86_64
  "annotated-types==${ANNOTATED_TYPES:-0.8.0}"
  "typing-inspection==${TYPING_INSPECTION:-0.4.5}"
  "typing_extensions==${TYPING_EXTENSIONS:-4.16.0}"
  "ftfy==${FTFY:-6.3.1}"
  "wcwidth==${WCWIDTH:-0.9.4}"
)

rm -rf .whl && mkdir -p .whl
"${PIP[@]}" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

ls -l .whl
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1)
total=$((wheels + tree))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "wheels $(mib "$wheels") + working tree $(mib "$tree") = $(mib "$total") (device limit: 64 MiB)"
if [ "$total" -gt $((60 * 1048576)) ]; then
  echo "too close to the 64 MiB limit: remove untracked files or carry less" >&2
  exit 1
fi
