#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels benchmarks/gpu_check.sh installs on a CUDA machine that has torch,
# transformers, peft and accelerate but not diffusers or huabu's own needs: into .whl/ (git-ignored), for Python 3.12
# on x86-64 Linux, at the versions this checkout's .venv runs.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(diffusers peft pydantic pydantic_core annotated-types typing-inspection)
pins=()
for name in "${packages[@]}"; do
  pins+=("$name==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")")
done
.venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
ls .whl
