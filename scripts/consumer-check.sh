#!/usr/bin/env bash
# A user's view of the crate as published: `cargo package` packs burn-dice and the burn-free
# core it depends on (burn-dice-core, published beside it), then tests/consumer, a crate outside
# the workspace, compiles the README's snippets against the packed crates (unpacked into
# tests/consumer/burn-dice/ and tests/consumer/burn-dice-core/, the latter patched in for the
# crates.io version the packed manifest names) twice:
#   cpu  burn-dice with its default features (the usage snippet on burn-ndarray);
#   gpu  default-features = false with only `wgpu` and `train` (the Learner snippet on burn-wgpu).
# Then the burn 0.22 line the same way: burn-dice 0.2 packed from crates/burn-dice-0.22 and
# unpacked into tests/consumer-0.22/ (with the packed core), which compiles the 0.22 README
# snippet with the default features, in the same target dir as the 0.1 consumer (the crates
# both use at the same version are checked once).
# Each consumer then documents the packed crates with every feature, as docs.rs builds them,
# warnings denied: `cargo doc` only checks the dependencies, which the consumer's own checks have
# just done in the same target dir (documenting from the workspace took a third full check of
# burn, about 7 minutes a line on 2 cores).
# Both consumers resolve fresh (no lock file) with burn's default features, as a newcomer's
# `cargo add` does, and print the systemstat they got (burn-dice bounds it below 0.2.8).
# Prints how many crates each set-up builds. Run by .ci/run; needs no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
target_dir="${CARGO_TARGET_DIR:-target}"

# Fails unless every feature of the packed crate $1 (its normalized Cargo.toml) is named as
# "$2/<feature>" in the consumer manifest $3: docs.rs documents with all features.
all_features_listed() {
  local feature missing=0
  for feature in $(awk '/^\[/ { on = ($0 == "[features]") ; next }
                        on && /^[A-Za-z0-9_-]+ *=/ { sub(/ *=.*/, ""); print }' "$1"); do
    [ "$feature" = default ] && continue
    if ! grep -q "\"$2/$feature\"" "$3"; then
      echo "$3: feature \`docs\` lacks \"$2/$feature\" (docs.rs builds every feature)" >&2
      missing=1
    fi
  done
  return "$missing"
}
# --no-verify: cargo's verification would build the packed crate with its dependencies a second
# time (unoptimized, outside the workspace's profiles); the consumer's `cpu` check below compiles
# the same packed crate with the same (default) features.
cargo package -p burn-dice-core -p burn-dice --allow-dirty --no-verify
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
for crate in burn-dice burn-dice-core; do
  rm -rf "tests/consumer/$crate"
  mkdir -p "tests/consumer/$crate"
  tar -xzf "$target_dir/package/$crate-$version.crate" -C "tests/consumer/$crate" --strip-components=1
done
# Resolved fresh, as a newcomer's `cargo add` resolves: the newest semver-compatible releases,
# not the workspace's lock file, so that a release that breaks a user's build (systemstat 0.2.8
# did, inside burn-train) fails here the day it is out.
rm -f tests/consumer/Cargo.lock
cargo generate-lockfile --manifest-path tests/consumer/Cargo.toml
systemstat_resolved() { awk '/^name = "systemstat"$/ { getline; gsub(/"/, "", $3); print "  systemstat", $3 }' "$1"; }
systemstat_resolved tests/consumer/Cargo.lock
manifest=tests/consumer/Cargo.toml
for set in cpu gpu; do
  crates=$(cargo tree --manifest-path "$manifest" --features "$set" -e normal,build --prefix none \
    | sed 's/ (\*)$//' | sort -u | wc -l)
  echo "consumer --features $set: $crates crates"
  cargo check --manifest-path "$manifest" --features "$set" --target-dir "$target_dir/consumer"
done
all_features_listed tests/consumer/burn-dice/Cargo.toml burn-dice "$manifest"
all_features_listed tests/consumer/burn-dice-core/Cargo.toml burn-dice-core "$manifest"
RUSTDOCFLAGS="-D warnings" cargo doc --manifest-path "$manifest" --features docs --no-deps \
  -p burn-dice-consumer -p burn-dice -p burn-dice-core --target-dir "$target_dir/consumer"

# The burn 0.22 line (its own workspace and lock file).
version22=$(sed -n 's/^version = "\(.*\)"$/\1/p' crates/burn-dice-0.22/Cargo.toml | head -1)
# --exclude-lockfile: cargo would resolve a lock file for the packed crate against crates.io,
# where burn-dice-core is not published yet (a library's lock file is not used by its users).
cargo package --manifest-path crates/burn-dice-0.22/Cargo.toml --allow-dirty --no-verify \
  --exclude-lockfile --target-dir "$target_dir"
rm -rf tests/consumer-0.22/burn-dice tests/consumer-0.22/burn-dice-core
mkdir -p tests/consumer-0.22/burn-dice
tar -xzf "$target_dir/package/burn-dice-$version22.crate" -C tests/consumer-0.22/burn-dice \
  --strip-components=1
cp -r tests/consumer/burn-dice-core tests/consumer-0.22/burn-dice-core
rm -f tests/consumer-0.22/Cargo.lock
cargo generate-lockfile --manifest-path tests/consumer-0.22/Cargo.toml
systemstat_resolved tests/consumer-0.22/Cargo.lock
manifest=tests/consumer-0.22/Cargo.toml
crates=$(cargo tree --manifest-path "$manifest" -e normal,build --prefix none \
  | sed 's/ (\*)$//' | sort -u | wc -l)
echo "consumer of burn-dice $version22 (burn 0.22): $crates crates"
cargo check --manifest-path "$manifest" --target-dir "$target_dir/consumer"
all_features_listed tests/consumer-0.22/burn-dice/Cargo.toml burn-dice "$manifest"
RUSTDOCFLAGS="-D warnings" cargo doc --manifest-path "$manifest" --features docs --no-deps \
  -p burn-dice-consumer-0-22 -p burn-dice --target-dir "$target_dir/consumer"
