#!/usr/bin/env bash
# Cross-builds cephalo for 64-bit Windows (x86_64-pc-windows-gnu, from Linux) and runs a smoke
# test of the exe under Wine: --help, device, train --demo (one epoch), data check, eval and
# predict on the demo's phantoms. Then it compares the demo's first-epoch training loss with the
# Linux build's: the same seed must give the same numbers on both platforms.
#
# Needs: rustup, Debian/Ubuntu's gcc-mingw-w64-x86-64 and wine64 (the script installs them with
# apt-get when missing and it may), and libclang-dev as for the Linux build.
# Usage: scripts/windows-smoke.sh [work folder, default target/windows-smoke]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=x86_64-pc-windows-gnu
WORK=${1:-target/windows-smoke}
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "toolchain: the Rust target, MinGW-w64 and Wine"
rustup target add "$TARGET" >/dev/null
missing=()
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
command -v wine64 >/dev/null || command -v wine >/dev/null || [[ -x /usr/lib/wine/wine64 ]] || missing+=(wine64)
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
WINE=$(command -v wine64 || command -v wine || echo /usr/lib/wine/wine64)

step "cross-build (warnings are errors)"
RUSTFLAGS="-D warnings" cargo build --locked --release --target "$TARGET"
cargo build --locked --release
EXE=$PWD/target/$TARGET/release/cephalo.exe
# The bit-exactness test of the CPU maths, built for Windows, to run under Wine below.
DETERMINISM=$(RUSTFLAGS="-D warnings" cargo test --locked --release --target "$TARGET" \
  --test platform_determinism --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*platform_determinism[^"]*\.exe\)".*/\1/p' | tail -n 1)
LINUX_EXE=$PWD/target/release/cephalo

rm -rf "$WORK"
mkdir -p "$WORK/bin"
cp "$EXE" "$WORK/bin/"
# Wine 8.0 lacks bcryptprimitives.dll, which Rust's std imports; real Windows has it.
x86_64-w64-mingw32-gcc -O2 -shared -o "$WORK/bin/bcryptprimitives.dll" \
  scripts/windows/bcryptprimitives-stub.c -ladvapi32
export WINEPREFIX=$PWD/$WORK/wineprefix WINEDEBUG=-all
cd "$WORK"
win() { "$WINE" bin/cephalo.exe "$@"; }

step "the CPU maths give Linux's bits under Wine"
cp "$DETERMINISM" bin/platform_determinism.exe
"$WINE" bin/platform_determinism.exe

step "cephalo.exe --help and device"
win --help | head -n 3
win device | tee device.txt
grep -q "nvcuda.dll" device.txt || { echo "device does not name nvcuda.dll"; exit 1; }

step "train --demo (1 epoch) under Wine, and on Linux"
demo=(train --demo --epochs 1 --device cpu --workers 1 --seed 3)
win "${demo[@]}" --checkpoint-dir ck-win --log-dir logs-win
"$LINUX_EXE" "${demo[@]}" --checkpoint-dir ck-linux --log-dir logs-linux >/dev/null
loss_of() { awk -F, 'NR == 2 { print $4 }' "$1/train_log.csv"; }
win_loss=$(loss_of logs-win) linux_loss=$(loss_of logs-linux)
echo "epoch 1 train loss: Windows (Wine) $win_loss, Linux $linux_loss"
[[ "$win_loss" == "$linux_loss" ]] || { echo "the same seed gave other numbers under Wine"; exit 1; }

step "data check, eval and predict on the demo phantoms"
win data check --dataset-path ck-win/demo-phantoms
win eval --checkpoint ck-win/checkpoint_best.safetensors --dataset-path ck-win/demo-phantoms --device cpu
win predict --checkpoint ck-win/checkpoint_best.safetensors --out predictions --device cpu \
  ck-win/demo-phantoms/images/phantom_0000.png
test -s predictions/phantom_0000.json

step "done: the Windows build runs"
