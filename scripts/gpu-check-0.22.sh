#!/usr/bin/env bash
# The GPU check of the burn 0.22 line (burn-dice 0.2, crates/burn-dice-0.22): its CubeCL
# kernels (a backend extension of burn's Cube backend) against the generic path on the GPU,
# the MONAI parity on wgpu, the launches per call, then the criterion benchmark of every loss
# on wgpu (kernels and generic path, cases a-d).
#
#   scripts/gpu-check-0.22.sh build        build the test and bench binaries here, stripped and
#                                          xz-compressed into .gpu/0.22/ (~45 MB: gzip would
#                                          pass the 64 MiB that travels to the GPU machine)
#   scripts/gpu-check-0.22.sh run [OUTDIR] run them (here on lavapipe, or on a GPU machine;
#                                          the logs go to OUTDIR, default /tmp/gpu-0.22)
#
# The binaries need no toolchain and no network (the fixtures are embedded). The GPU machine
# needs the Vulkan loader and the GL dispatch libraries (.gl/, see docs/gpu.md). The
# benchmark is built in the dev profile at opt-level 3 (the dependencies are at 3 there
# anyway), so that it reuses the test build's dependencies instead of a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
manifest=crates/burn-dice-0.22/Cargo.toml
target=target/burn-0.22
case "${1:-}" in
  build)
    mkdir -p .gpu/0.22
    exes() { python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])'; }
    cargo test --manifest-path $manifest --all-features --target-dir $target --no-run \
      --message-format=json | exes > .gpu/0.22/tests.txt
    CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo bench --manifest-path $manifest --all-features \
      --target-dir $target --profile dev --bench losses --no-run --message-format=json \
      | exes > .gpu/0.22/bench.txt
    while read -r kind name exe; do
      case "$name" in burn_dice|parity|launches|losses) ;; *) continue ;; esac
      strip -o ".gpu/0.22/$name" "$exe"
      xz -9 -T0 -f ".gpu/0.22/$name"
    done < <(cat .gpu/0.22/tests.txt .gpu/0.22/bench.txt)
    ls -la .gpu/0.22
    ;;
  run)
    out="${2:-/tmp/gpu-0.22}"
    mkdir -p "$out"
    bin="${TMPDIR:-/tmp}/burn-dice-0.22-bin"
    mkdir -p "$bin"
    for f in .gpu/0.22/*.xz; do
      b="$bin/$(basename "$f" .xz)"
      if command -v xz >/dev/null; then
        xz -dc "$f" > "$b"
      else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$b"
      fi
      chmod +x "$b"
    done
    export BURN_DICE_REQUIRE=wgpu
    status=0
    # The kernels' unit tests (every one that runs on wgpu), the parity and the launches.
    "$bin/burn_dice" kernels:: --nocapture 2>&1 | tee "$out/unit.log" || status=1
    "$bin/parity" 2>&1 | tee "$out/parity.log" || status=1
    "$bin/launches" 2>&1 | tee "$out/launches.log" || status=1
    "$bin/losses" --bench "${BENCH_FILTER:-wgpu/}" 2>&1 | tee "$out/bench.log" || status=1
    echo "gpu-check-0.22: $([ $status = 0 ] && echo PASS || echo FAIL)" | tee -a "$out/unit.log"
    exit $status
    ;;
  *)
    echo "usage: $0 build | run [OUTDIR]" >&2
    exit 2
    ;;
esac
