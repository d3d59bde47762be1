#!/usr/bin/env bash
# Checks the logic of kernels/{elementwise,batchnorm,resample,concat,pool}.cu (main.cpp),
# kernels/{loss,optim}.cu (train.cpp), kernels/conv.cu (conv.cpp) and kernels/conv_wgrad.cu
# (conv_wgrad.cpp) on a machine without a GPU: compiles them as host C++ under cuda_sim.h and
# runs the programs' references. Needs g++ >= 11
# and the CUDA headers (the project's .cuda-toolchain, or CUDA_INCLUDE). Exit status 0 = all pass.
set -euo pipefail
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
for prog in main train conv conv_wgrad; do
    g++ -std=c++20 -O1 -ffp-contract=off -I"$inc" -I"$work" "$work/$prog.cpp" -o "$work/$prog" -lpthread
    "$work/$prog" || status=1
done
exit $status
