//! Linear layers: `x · Wᵀ` with `W` stored `[out, in]` as in GGUF.

use burn::tensor::{Device, Tensor};

/// Batches up to this many rows are memory-bound matrix-vector work.
const SMALL_BATCH: usize = 4;

/// How a stage multiplies by its weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearKernel {
    /// Split small-batch products across two threads by output rows.
    split_small_batches: bool,
}

impl LinearKernel {
    /// The kernel suited to `device`.
    ///
    /// On the CPU backend, burn-flex's product for one or a few rows runs on a
    /// single core and reaches about half the machine's read bandwidth; two
    /// halves of the output computed on two cores (each output element is still
    /// the same dot product) nearly double it. GPUs need no such help.
    pub fn for_device(device: &Device) -> Self {
        Self {
            split_small_batches: *device == Device::flex() && rayon::current_num_threads() > 1,
        }
    }

    /// `x [rows, in] · W [out, in]ᵀ → [rows, out]`.
    ///
    /// Computed as `(W · xᵀ)ᵀ`, which gemm runs faster than `x · Wᵀ` for every batch size measured.
    pub fn forward(&self, x: Tensor<2>, weight: &Tensor<2>) -> Tensor<2> {
        let [rows, _] = x.dims();
        let [out, _] = weight.dims();
        if self.split_small_batches && rows <= SMALL_BATCH && out >= 256 {
            let half = out / 2;
            let xt = x.transpose();
            let (top, bottom) = rayon::join(
                || weight.clone().narrow(0, 0, half).matmul(xt.clone()),
                || {
                    weight
                        .clone()
                        .narrow(0, half, out - half)
                        .matmul(xt.clone())
                },
            );
            return Tensor::cat(vec![top, bottom], 0).transpose();
        }
        weight.clone().matmul(x.transpose()).transpose()
    }
}
