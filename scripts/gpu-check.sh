#!/usr/bin/env bash
# What a machine with an NVIDIA GPU runs (the device tool lends one to some
# sessions): the CUDA build, SmolLM2's tokens on the GPU against the same
# references as on the CPU, and the decode bench next to the GPU's bandwidth.
# Needs the driver (libcuda.so.1), NVRTC (e.g. `pip install nvidia-cuda-nvrtc-cu12`,
# then LD_LIBRARY_PATH to its lib/) and CUDA headers under $CUDA_PATH or /usr/local/cuda.
# Not yet run: no GPU was lent to the session that wrote it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-12080}

scripts/fetch-model.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

echo "== CUDA build"
cargo build --release --features cuda --workspace

echo "== SmolLM2 on the GPU against the numpy reference and the tiny model's checks"
cargo test --release --features cuda --test smollm2_reference --test tiny_model

echo "== decode bench on the GPU (batch 1 to 64)"
cargo bench --features cuda --bench decode
