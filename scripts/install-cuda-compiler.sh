#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc + headers) from PyPI wheels into ./.cuda-toolchain/.
#
# Why pinned to 13.0: the GPU machines run driver 580 (CUDA 13.0); PTX from a newer nvcc (13.5 is
# what an unpinned resolve pulls) is rejected by that driver. Why cccl: cuda_fp16.h includes
# <nv/target>, which lives in the CCCL wheel.
#
# Idempotent: a second run with the toolchain already present only verifies it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.cuda-toolchain"
stamp="$dest/.installed-13.0"
packages=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
)

find_nvcc() { find "$dest" -path '*/bin/nvcc' -type f 2>/dev/null | head -n 1; }

if [[ -f "$stamp" && -n "$(find_nvcc)" ]]; then
  echo "cuda toolchain already installed: $(find_nvcc)"
else
  python="${PYTHON:-python3}"
  if ! command -v "$python" >/dev/null; then
    echo "error: $python not found; install Python 3 with pip, or set PYTHON" >&2
    exit 1
  fi
  rm -rf "$dest"
  mkdir -p "$dest"
  echo "installing ${packages[*]} into $dest"
  "$python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$dest/site" "${packages[@]}"
  touch "$stamp"
fi

nvcc="$(find_nvcc)"
if [[ -z "$nvcc" ]]; then
  echo "error: the wheels installed but no bin/nvcc was found under $dest" >&2
  exit 1
fi
chmod +x "$nvcc" "$(dirname "$nvcc")"/* 2>/dev/null || true
"$nvcc" --version | tail -n 2
echo "nvcc: $nvcc"
