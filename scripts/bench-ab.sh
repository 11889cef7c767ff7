#!/usr/bin/env bash
# A/B of the CPU kernels' speed: builds the same benchmark at REV and at the working tree, runs
# the two alternately for ROUNDS rounds in one sitting (so that both see the same host), and
# prints each row's ratio (working tree / REV) with its spread over the rounds; a row slower
# than 1.25× even at its most favourable pairing of rounds is flagged SLOWER. The CPU's model,
# its SIMD flags and the instruction set the kernels ran with come first.
#
#   scripts/bench-ab.sh REV [ROUNDS]
#
# Environment:
#   BENCH     compare (default: burn-dice's burn-level benchmark on ndarray and flex) or kernels
#             (burn-dice-core's kernels alone, no burn: builds in seconds; REV must have it)
#   RUNS      calls per timing (median), default 30;  CASES  default abc
#   BACKENDS  compare only, default ndarray,flex;  LOSSES  compare only: all, dice or soft
#   BURN_DICE_ISA  caps the instruction set of both sides (scalar, baseline, avx2, avx512); a
#             REV older than the cap (before issue #37) ignores it and runs its native level.
# Run it before every commit that touches a kernel (TESTING.md, "Speed"); not part of CI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rev="${1:?usage: scripts/bench-ab.sh REV [ROUNDS]}"
rounds="${2:-3}"
bench="${BENCH:-compare}"
runs="${RUNS:-30}"
cases="${CASES:-abc}"
out="$root/target/bench-ab"
mkdir -p "$out"
commit=$(git -C "$root" rev-parse --verify "$rev^{commit}")
tree="$out/rev-tree"
git -C "$root" worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
git -C "$root" worktree prune
git -C "$root" worktree add --detach --quiet "$tree" "$commit"
trap 'git -C "$root" worktree remove --force "$tree" 2>/dev/null || true' EXIT

case "$bench" in
  compare) build=(cargo bench -p burn-dice --bench compare --no-run)
           args=(--runs "$runs" --warmup 5 --cases "$cases" --paths fused
                 --backends "${BACKENDS:-ndarray,flex}" --losses "${LOSSES:-all}") ;;
  kernels) build=(cargo bench -p burn-dice-core --features cpu --bench kernels --no-run)
           args=(--runs "$runs" --warmup 5 --cases "$cases") ;;
  *) echo "BENCH=$bench: expected compare or kernels" >&2; exit 2 ;;
esac

# Both sides build into the working tree's target dir: the dependencies compile once.
executable() {
  (cd "$1" && CARGO_TARGET_DIR="$root/target" "${build[@]}" --message-format=json 2>/dev/null) |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        print(m["executable"])' | tail -1
}
echo "building $bench at $rev ($commit) ..." >&2
base_exe=$(executable "$tree")
cp "$base_exe" "$out/base"
echo "building $bench at the working tree ..." >&2
head_exe=$(executable "$root")
cp "$head_exe" "$out/head"

model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
flags=$(grep -m1 -oE '^(flags|Features).*' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' |
        grep -xE 'sse4_2|avx|avx2|fma|avx512f|avx512vl|avx512bw|avx512dq|asimd|neon' | sort -u |
        tr '\n' ' ' || true)
echo "CPU: ${model:-unknown} ($(nproc) cores); SIMD flags: ${flags:-none}; BURN_DICE_ISA=${BURN_DICE_ISA:-unset}"
for round in $(seq 1 "$rounds"); do
  for side in base head; do
    echo "round $round/$rounds: $side" >&2
    "$out/$side" "${args[@]}" --json "$out/$side-$round.json" > "$out/$side-$round.txt" 2>&1
  done
done
grep -h -m1 'instruction set' "$out/head-1.txt" | sed 's/^/working tree: /' || true
grep -h -m1 'instruction set' "$out/base-1.txt" | sed "s/^/$rev: /" || true
python3 "$root/scripts/ab.py" "$out" "$rounds" "$rev"
