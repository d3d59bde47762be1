#!/usr/bin/env bash
# Checks the logic of kernels/{elementwise,batchnorm,resample,concat,pool}.cu (main.cpp),
# kernels/{loss,optim}.cu (train.cpp), kernels/conv.cu (conv.cpp) and kernels/conv_wgrad.cu
# (conv_wgrad.cpp) on a machine without a GPU: compiles them as host C++ under cuda_sim.h and
# runs the programs' references. Needs g++ >= 11
# and the CUDA headers (the project's .cuda-toolchain, or CUDA_INCLUDE). Exit status 0 = all pass.
#
#   run.sh [--sanitize address|thread] [PROGRAM...]     (default: every program, no sanitizer)
#
# --sanitize address builds with AddressSanitizer and UndefinedBehaviorSanitizer: an out-of-bounds
# index into a tensor or into shared memory, or signed overflow in index arithmetic, stops the run
# (the CPU stand-in for compute-sanitizer's memcheck). --sanitize thread builds with
# ThreadSanitizer: the simulator runs a block's threads as host threads, so two threads touching
# the same shared or global value without a __syncthreads between them are reported (the stand-in
# for racecheck). ASan takes about twice as long as the plain run, TSan about five times.
set -euo pipefail
sanitize=()
if [[ ${1:-} == --sanitize ]]; then
    case ${2:-} in
        address) sanitize=(-g -fsanitize=address,undefined -fno-sanitize-recover=undefined) ;;
        thread) sanitize=(-g -fsanitize=thread) ;;
        *) echo "run.sh: --sanitize takes 'address' or 'thread', not '${2:-}'" >&2; exit 2 ;;
    esac
    shift 2
fi
every=(main train conv conv_wgrad)
programs=("$@")
[[ ${#programs[@]} -gt 0 ]] || programs=("${every[@]}")
for prog in "${programs[@]}"; do
    if [[ " ${every[*]} " != *" $prog "* ]]; then
        echo "run.sh: no simulator program '$prog' (${every[*]})" >&2
        exit 2
    fi
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
inc="${CUDA_INCLUDE:-$(dirname "$(find -L "$root/.cuda-toolchain" -name cuda_fp16.h -path '*include*' 2>/dev/null | head -n1)")}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/k"
cp "$root"/kernels/*.cu "$root"/kernels/*.cuh "$work/k/"
# Dynamic shared memory has no host spelling: point it at the simulator's buffer.
sed -i 's/extern __shared__ float staged\[\];/float* staged = sim_dynamic_shared;/' "$work"/k/*.cu
sed -i 's/extern __shared__ __align__(16) unsigned char wgrad_smem\[\];/unsigned char* wgrad_smem = reinterpret_cast<unsigned char*>(sim_dynamic_shared);/' "$work"/k/*.cu
sed -i 's/extern __shared__ float4 conv_smem\[\];/float4* conv_smem = reinterpret_cast<float4*>(sim_dynamic_shared);/' "$work"/k/*.cu
cp "$here"/*.h "$here"/*.cpp "$work/"
status=0
for prog in "${programs[@]}"; do
    g++ -std=c++20 -O1 -ffp-contract=off "${sanitize[@]}" -I"$inc" -I"$work" "$work/$prog.cpp" -o "$work/$prog" -lpthread
    "$work/$prog" || status=1
done
exit $status
