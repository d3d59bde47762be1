#!/usr/bin/env bash
# Builds everything a GPU machine needs (it has no Rust toolchain) into the ignored folder .gpu/:
# the release binary, every GPU test binary (tests/gpu*.rs) and the benchmarks, plus .gpu/run.sh,
# which runs the GPU tests with --ignored, `cephalo device`, and prints a summary, the
# convolution lists (.gpu/shapes/MODEL.json) for the PyTorch scripts in benches/ (see
# benches/README.md), and for `run.sh --accuracy` (scripts/gpu-accuracy.sh) a copy of ISBI 2015
# prepared at 768 pixels (the network's input size, 0.31 mm per pixel).
# .gpu-pack/gpu.tar.xz is the same folder packed for the device tool's 64 MiB carry limit.
#
#   scripts/gpu-bundle.sh                 # then carry .gpu-pack (the packed .gpu) to the GPU machine, unpack, run
#   scripts/gpu-bundle.sh --no-bench      # skip the benchmark binaries
#   scripts/gpu-bundle.sh --isbi DIR      # the ISBI 2015 dataset for --accuracy [$CEPHALO_ISBI, else
#                                         # ../shared/data/isbi2015 beside the repository]; --no-data: none
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
with_bench=1
isbi="${CEPHALO_ISBI:-$root/../shared/data/isbi2015}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-bench) with_bench=0 ;;
    --isbi) isbi="${2:?--isbi needs a folder}"; shift ;;
    --no-data) isbi="" ;;
    *) echo "gpu-bundle: unknown option $1 (--no-bench, --isbi DIR, --no-data)" >&2; exit 2 ;;
  esac
  shift
done

export CEPHALO_REQUIRE_NVCC=1
[[ -n "$(find .cuda-toolchain -name nvcc -type f 2>/dev/null | head -n1)" ]] || scripts/install-cuda-compiler.sh

out="$root/.gpu"
rm -rf "$out"
mkdir -p "$out/tests" "$out/benches"

echo "building release binary..."
cargo build --release --locked --bin cephalo
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
cp "$target_dir/release/cephalo" "$out/cephalo"

# The accuracy run's data: JPEG at 768 pixels is about 26 MB for the 300 images. The prepared copy
# is kept in the target folder, so a rebuilt bundle only re-checks it.
cp scripts/gpu-accuracy.sh "$out/accuracy.sh"
if [[ -n "$isbi" && -d "$isbi" ]]; then
  echo "preparing ISBI 2015 at 768 pixels for --accuracy..."
  "$out/cephalo" prepare --dataset-path "$isbi" --out "$target_dir/bundle-data/isbi2015-768" --max-side 768
  mkdir -p "$out/data"
  cp -r "$target_dir/bundle-data/isbi2015-768" "$out/data/"
else
  echo "warning: no ISBI 2015 dataset at '${isbi}' (give --isbi DIR): the bundle's --accuracy run will have no data"
fi

# The convolution lists that benches/cudnn_reference.py times (768x768, batch 4).
mkdir -p "$out/shapes"
for model in hrnet-w18 hrnet-w32 resnet50; do
  "$out/cephalo" model conv-shapes --model "$model" --image-size 768 768 --batch-size 4 --json > "$out/shapes/$model.json"
done

# Lists the executables cargo built, as "kind name path" lines.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        t = m["target"]
        print(t["kind"][0], t["name"], m["executable"])'
}

echo "building GPU test binaries..."
cargo test --release --locked --no-run --message-format=json 2>/dev/null | executables |
  while read -r kind name path; do
    if [[ "$kind" == "test" && "$name" == gpu* ]]; then cp "$path" "$out/tests/$name"; fi
  done
if [[ $with_bench == 1 ]]; then
  echo "building benchmarks..."
  cargo bench --locked --no-run --message-format=json 2>/dev/null | executables |
    while read -r kind name path; do
      if [[ "$kind" == "bench" && "$name" == gpu* ]]; then cp "$path" "$out/benches/$name"; fi
    done
fi
# Debug info is useless there and the carry limit is 64 MiB.
strip "$out/cephalo" "$out"/tests/* "$out"/benches/* 2>/dev/null || true

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine from the repository root:
#   bash .gpu/run.sh [--bench]     the GPU tests (and the benchmark binaries)
#   bash .gpu/run.sh --compare     the end-to-end comparison instead: cephalo bench
#                                  against benches/pytorch_reference.py (AMP eager) for HRNet-W32
#                                  (768x768 batch 4, training and inference, each with the op
#                                  profile and with CUDA graphs) and ResNet-50 (batch 8, training);
#                                  JSON and logs into $OUT (or .gpu/out)
#   bash .gpu/run.sh --compile     PyTorch with torch.compile on HRNet-W32 (slow to compile: run it
#                                  in its own device call)
#   bash .gpu/run.sh --accuracy    HRNet-W32 768x768 batch 4 fp16 and the refiner trained on the ISBI
#                                  copy in data/, Test1 evaluated, in at most 9 minutes (its own call;
#                                  accuracy.sh says how the epochs are chosen); reports into $OUT
# A missing GPU fails every GPU test: they are never silently skipped here.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CEPHALO_REPO_ROOT="$(cd "$here/.." && pwd)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$here/cephalo" device || exit 1
if [[ "${1:-}" == "--accuracy" ]]; then
  export OUT="${OUT:-$here/out}"
  exec bash "$here/accuracy.sh"
fi
if [[ "${1:-}" == "--compare" || "${1:-}" == "--compile" ]]; then
  out="${OUT:-$here/out}"
  mkdir -p "$out"
  ref="$CEPHALO_REPO_ROOT/benches/pytorch_reference.py"
  failed=0
  # Runs one command, its output into $out/<name>.log; a failure is counted, not fatal.
  run() {
    local name="$1"; shift
    echo "== $name: $*"
    if "$@" >"$out/$name.log" 2>&1; then tail -n 4 "$out/$name.log"; else failed=$((failed + 1)); tail -n 20 "$out/$name.log"; fi
  }
  if [[ "$1" == "--compile" ]]; then
    run torch-compile-hrnet timeout 540 python3 "$ref" --model hrnet-w32 --expect-params 29550173 --compile --warmup 10 --steps 30
  else
    run cephalo-hrnet-train "$here/cephalo" bench --model hrnet-w32 --image-size 768 768 --batch-size 4 --profile-ops --json "$out/cephalo-hrnet-train.json"
    run cephalo-hrnet-train-graphs "$here/cephalo" bench --model hrnet-w32 --image-size 768 768 --batch-size 4 --cuda-graphs --json "$out/cephalo-hrnet-train-graphs.json"
    run cephalo-hrnet-infer "$here/cephalo" bench --model hrnet-w32 --mode infer --profile-ops --json "$out/cephalo-hrnet-infer.json"
    run cephalo-hrnet-infer-graphs "$here/cephalo" bench --model hrnet-w32 --mode infer --cuda-graphs --json "$out/cephalo-hrnet-infer-graphs.json"
    run cephalo-resnet50-b8 "$here/cephalo" bench --model resnet50 --batch-size 8 --profile-ops --json "$out/cephalo-resnet50-b8.json"
    run cephalo-resnet50-b8-graphs "$here/cephalo" bench --model resnet50 --batch-size 8 --cuda-graphs --json "$out/cephalo-resnet50-b8-graphs.json"
    run torch-hrnet-train python3 "$ref" --model hrnet-w32 --expect-params 29550173
    run torch-hrnet-infer python3 "$ref" --model hrnet-w32 --expect-params 29550173 --mode infer
    run torch-resnet50-b8 python3 "$ref" --model resnet50 --batch-size 8 --expect-params 33996509 --steps 30
  fi
  echo "comparison runs: $failed failed; outputs in $out"
  [[ $failed == 0 ]]
  exit
fi
failed=0; passed=0; summary=""
for t in "$here"/tests/*; do
  name="$(basename "$t")"
  log="$(mktemp)"
  if "$t" --ignored --test-threads=1 >"$log" 2>&1; then passed=$((passed + 1)); status=ok; else failed=$((failed + 1)); status=FAILED; fi
  cat "$log"
  summary+="$(printf '%-28s %s: %s' "$name" "$status" "$(grep -E '^test result' "$log" | tail -n1)")"$'\n'
done
if [[ "${1:-}" == "--bench" ]]; then
  for b in "$here"/benches/*; do echo "== bench $(basename "$b")"; "$b" || failed=$((failed + 1)); done
fi
echo "== GPU test summary"
printf '%s' "$summary"
echo "test binaries: $passed passed, $failed failed"
[[ $failed == 0 ]]
RUN
chmod +x "$out/run.sh"
# Each test binary links the whole library and the kernel image (about 28 MiB stripped): packed
# one by one they would be 51 MiB, but they are mostly the same bytes, so a dictionary larger than
# one binary packs them all into about 8 MiB (15 s; unpacking needs 192 MiB of memory).
mkdir -p "$root/.gpu-pack"
tar -cf - -C "$out" . | xz -T1 --lzma2=preset=1,dict=192MiB >"$root/.gpu-pack/gpu.tar.xz"
du -sh "$out" "$root/.gpu-pack/gpu.tar.xz"
size=$(stat -c %s "$root/.gpu-pack/gpu.tar.xz")
if ((size > 60 * 1024 * 1024)); then
  echo "error: the bundle is $((size / 1024 / 1024)) MiB; a device call carries 64 MiB with the working tree" >&2
  exit 1
fi
echo "bundle ready: carry .gpu-pack and run 'mkdir -p .gpu && tar -xJf .gpu-pack/gpu.tar.xz -C .gpu && bash .gpu/run.sh' (add --bench for benchmarks, or --compare, or --accuracy)"
