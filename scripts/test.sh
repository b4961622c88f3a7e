#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the model (cached), lint, build and
# test in release mode (model tests need it), run the examples, and check that
# the `cuda` feature still builds.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n== %s\n' "$*"; }

step "fetch model"
scripts/fetch-model.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings

step "cargo test (release)"
cargo test --workspace --release

step "examples"
# `cargo test` above built them with the workspace's features; `cargo run --example`
# would resolve features for the root package alone and rebuild burn.
for example in $(ls examples/*.rs 2>/dev/null | xargs -n1 basename 2>/dev/null | sed 's/\.rs$//'); do
  echo "-- example $example"
  test -x "target/release/examples/$example" || cargo build --workspace --release --examples
  "target/release/examples/$example"
done

step "cargo check --features cuda"
# No GPU or nvcc here: cudarc loads the driver dynamically, and the version picks its
# bindings. cubecl-cuda's build downloads an LLVM bundle (for PTX) from the network,
# which a check does not need; DOCS_RS makes tracel-llvm-bundler skip that download.
DOCS_RS=1 CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-12080} cargo check --workspace --features cuda --release
