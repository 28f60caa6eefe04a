#!/usr/bin/env bash
# Creates (or brings up to date) the CI/dev virtual environment at .venv in the repo root.
# Idempotent: a second run with unchanged inputs returns in about a second.
#
# What goes in, and why:
# * Python 3.11 (the machine's default). PyPI has an sglang 0.5.17 wheel for cp311.
# * torch 2.14.1 + torchvision 0.29.1 (CUDA builds; on this machine kind pip takes them and their CUDA
#   libraries from local disk, ~1 min). Not torch 2.13.0+cpu: every `import sglang` imports
#   torchvision.io (sglang/srt/utils/common.py), and PyPI's x86-64 torchvision wheels link
#   libtorch_cuda.so, so no torchvision imports beside a CPU-only torch ("operator torchvision::nms does
#   not exist"). Not sglang's own pin torch 2.11.0: that would be a multi-GB download instead of a
#   local install. The tests only need torch to import; it runs on the CPU here.
# * flashinfer-python, apache-tvm-ffi, pytest, numpy, and the project itself (editable).
# * sglang 0.5.17 with --no-deps (its dependency list pins torch 2.11.0 and dozens of GPU-only
#   packages), plus only the packages that `import sglang`, sglang.srt.server_args,
#   sglang.srt.plugins, the attention registry/backends and model_runner import at import time
#   (found by import-probing), pinned by .ci/constraints.txt to the releases the GPU host runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${KVPREFETCH_CI_PYTHON:-python3.11}"
VENV="$ROOT/.venv"
CONSTRAINTS="$ROOT/.ci/constraints.txt"
STAMP="$VENV/.kvprefetch-install-stamp"

# Everything that decides the venv's contents; a change to any of them reinstalls.
stamp_of_inputs() {
    cat "$ROOT/.ci/install.sh" "$CONSTRAINTS" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_of_inputs)" ]] && "$VENV/bin/python" -c "import importlib.metadata as m, kvprefetch.patches; m.version('sglang')" 2>/dev/null; then
    echo "install.sh: .venv is up to date"
    exit 0
fi

start=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# This machine's pip.conf names local index folders that lack some projects; pip warns once per
# lookup ("... is ignored: it is neither a file nor a directory"). Drop those lines, keep the rest
# (pipefail keeps pip's exit status).
pip_() { "${PIP[@]}" "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

# sglang's import-time dependencies (not its full, GPU-only dependency list).
SGLANG_IMPORT_DEPS=(
    aiohttp compressed-tensors dill gguf ipython msgspec openai orjson partial-json-parser pillow
    psutil pybase64 pydantic pyzmq sentencepiece starlette transformers xgrammar
)

pip_ install -q -c "$CONSTRAINTS" \
    torch==2.14.1 torchvision==0.29.1 \
    flashinfer-python==0.6.15.post1 apache-tvm-ffi==0.1.11 pytest numpy \
    "${SGLANG_IMPORT_DEPS[@]}"
pip_ install -q --no-deps sglang==0.5.17
pip_ install -q -c "$CONSTRAINTS" -e "$ROOT"

# Fail here, not in the middle of the tests, if the stack doesn't import.
PYTHONWARNINGS=ignore "$VENV/bin/python" -c "import sglang.srt.server_args, sglang.srt.plugins, sglang.srt.layers.attention.attention_registry"

stamp_of_inputs > "$STAMP"
echo "install.sh: .venv ready in $((SECONDS - start)) s"
