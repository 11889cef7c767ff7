#!/usr/bin/env bash
# The GPU check of burn-dice in one binary: MONAI parity of every loss on wgpu (through the
# CubeCL kernels), wgpu against ndarray for every loss and the Dice metric, the loss benchmark
# (every loss on cases a-d, kernels and generic path, with bandwidth and memory), the reference
# U-Net's training step with the data checks on and off, and a short U-Net training, written as
# a JSON report.
#
#   scripts/gpu-check.sh build            build it here (release, stripped) into .gpu/gpu-check
#   scripts/gpu-check.sh run [REPORT] [EPOCHS] [--cases abcd] [--reps N] [--unet-size S] [--rounds N] [--no-unet] [--no-train]
#                                         run it (here on lavapipe, or on a GPU machine)
#
# The binary needs no Rust toolchain and no network: the fixtures are embedded. On a machine
# without the Vulkan loader, bring it and the GL dispatch libraries the NVIDIA driver needs
# (docs/gpu.md has the exact device command and the last report):
#   mkdir -p .gl && (cd .gl && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
#   ... then there: for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
# The device's peak memory bandwidth (for the fraction of it each loss reaches) comes from
# BURN_DICE_PEAK_GBPS, or from the GPU's name as nvidia-smi reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  build)
    cargo build --release -p burn-dice-tests --features wgpu --bin gpu-check
    mkdir -p .gpu
    # Stripped and gzipped: it travels to the GPU machine with the working tree (64 MiB limit).
    strip -o .gpu/gpu-check target/release/gpu-check
    gzip -9 -f .gpu/gpu-check
    ls -la .gpu/gpu-check.gz
    ;;
  run)
    shift
    report="${1:-gpu-report.json}"
    epochs="${2:-4}"
    shift $(( $# < 2 ? $# : 2 ))
    if [ -z "${BURN_DICE_PEAK_GBPS:-}" ] && command -v nvidia-smi >/dev/null; then
      # Vendor figures (GB/s) for the GPUs this check has met.
      case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
        *H200*) export BURN_DICE_PEAK_GBPS=4800 ;;
        *H100*PCIe*) export BURN_DICE_PEAK_GBPS=2000 ;;
        *H100*NVL*) export BURN_DICE_PEAK_GBPS=3900 ;;
        *H100*) export BURN_DICE_PEAK_GBPS=3350 ;;
        *A100*80GB*) export BURN_DICE_PEAK_GBPS=2039 ;;
        *A100*) export BURN_DICE_PEAK_GBPS=1555 ;;
      esac
    fi
    bin=target/release/gpu-check
    if [ -f .gpu/gpu-check.gz ]; then
      bin="${TMPDIR:-/tmp}/gpu-check"
      gzip -dc .gpu/gpu-check.gz > "$bin"
      chmod +x "$bin"
    fi
    "$bin" "$report" "$epochs" "$@"
    ;;
  *)
    echo "usage: $0 build | run [REPORT] [EPOCHS] [--cases abcd] [--reps N] [--unet-size S] [--rounds N] [--no-unet] [--no-train]" >&2
    exit 2
    ;;
esac
