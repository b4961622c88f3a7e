#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the model (cached), lint, build and
# test in release mode (model tests need it), run the examples, and check that
# the `cuda` feature builds and links offline.
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

step "cargo build --release --features cuda (offline)"
# No GPU or nvcc here: cudarc loads the driver at run time, and CUDARC_CUDA_VERSION
# picks its bindings. The build must link with no network: cubecl-llvm, whose build
# script downloads an LLVM bundle, is replaced by the stub in operators/patches/
# (cubecl-cuda then compiles kernels with NVRTC at run time). Sources are fetched
# first (the registry is allowed); the build itself runs offline.
cargo fetch --locked
CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-12080} cargo build --workspace --features cuda --release --offline
