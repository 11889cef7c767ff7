#!/usr/bin/env bash
# Runs the MONAI anchor benchmark (shared/anchors/bench_dice.py: DiceLoss, DiceCELoss,
# DiceFocalLoss; scripts/monai_family.py: GeneralizedDiceLoss, TverskyLoss, DiceLoss with
# soft_label) and burn-dice's own (crates/burn-dice/benches/compare.rs) back to back on this
# machine, then prints the ratio table, each loss against MONAI's same loss (forward+backward
# and forward), and the peak extra memory. BURN_DICE_ISA (scalar, baseline, avx2, avx512) caps
# our kernels' instruction set, for a table per level on one machine.
#
#   scripts/bench-ratios.sh [OUT_DIR]
#
# Environment: ANCHORS (default ../shared/anchors), VENV (a virtualenv with torch and monai;
# created with pip when missing, default target/anchor-venv), RUNS (default 30), BACKENDS
# (default ndarray,flex), LOSSES (all or dice, default all).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/bench-ratios}"
anchors="${ANCHORS:-$root/../shared/anchors}"
venv="${VENV:-$root/target/anchor-venv}"
runs="${RUNS:-30}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, monai" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch monai
fi
# Build first, so that compiling does not overlap either measurement.
(cd "$root" && cargo bench -p burn-dice --bench compare --no-run)
(cd "$anchors" && "$venv/bin/python" bench_dice.py --warmup 5 --runs "$runs" --no-bandwidth \
    --no-primitives --retries 1 --cases '^[abc](-ce|-focal)? MONAI' --json "$out/monai.json" \
    > "$out/monai.txt")
(cd "$anchors" && ANCHORS="$anchors" "$venv/bin/python" "$root/scripts/monai_family.py" \
    --warmup 5 --runs "$runs" --json "$out/family.json" > "$out/family.txt")
(cd "$root" && cargo bench -p burn-dice --bench compare -- --runs "$runs" --warmup 5 \
    --backends "${BACKENDS:-ndarray,flex}" --losses "${LOSSES:-all}" --paths "${PATHS:-both}" \
    --json "$out/ours.json" > "$out/ours.txt")
python3 "$root/scripts/ratios.py" "$out/monai.json" "$out/family.json" "$out/ours.json" \
    | tee "$out/ratios.md"
