#!/usr/bin/env bash
# The wgpu check of burn-dice in one binary: MONAI parity of every loss on wgpu, wgpu against
# ndarray for every loss and the Dice metric, the loss benchmark cases, the reference U-Net's
# training step and a short U-Net training, written as a JSON report.
#
#   scripts/gpu-check.sh build            build it here (release, stripped) into .gpu/gpu-check
#   scripts/gpu-check.sh run [REPORT] [EPOCHS]
#                                         run it (here on lavapipe, or on a GPU machine)
#
# The binary needs no Rust toolchain and no network: the fixtures are embedded. On a machine
# without the Vulkan loader, bring it and the GL dispatch libraries the NVIDIA driver needs
# (docs/gpu.md has the exact device command and the last report):
#   mkdir -p .gl && (cd .gl && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
#   ... then there: for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
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
    report="${2:-gpu-report.json}"
    epochs="${3:-4}"
    bin=target/release/gpu-check
    if [ -f .gpu/gpu-check.gz ]; then
      bin="${TMPDIR:-/tmp}/gpu-check"
      gzip -dc .gpu/gpu-check.gz > "$bin"
      chmod +x "$bin"
    fi
    "$bin" "$report" "$epochs"
    ;;
  *)
    echo "usage: $0 build | run [REPORT] [EPOCHS]" >&2
    exit 2
    ;;
esac
