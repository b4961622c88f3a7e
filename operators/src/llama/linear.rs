//! Linear layers: `x · Wᵀ` with `W` stored `[out, in]` as in GGUF.

use super::error::StageError;
use super::weights::LoadProgress;
use crate::gguf::GgufFile;
use crate::quant::{Numerics, QMatrix, matmul};
use burn::tensor::{Device, Tensor, TensorData};

/// One or more weight matrices applied to the same input, their outputs side by
/// side (Q, K and V; gate and up), computed from the file's blocks.
///
/// On the CPU backend the matrices stay as the GGUF blocks (memory-mapped) and
/// products run on the project's SIMD kernels ([`crate::quant`]); the input is
/// prepared once for all of them. Other devices (CUDA) get one dense f32 tensor
/// of the stacked matrices, as burn has no kernel for GGUF's block formats there.
#[derive(Debug, Clone)]
pub struct Linear {
    parts: Vec<QMatrix>,
    out: usize,
    numerics: Numerics,
    dense: Option<Tensor<2>>,
    device: Device,
}

impl Linear {
    /// Loads the matrices `names` (each `(name, outputs)`, all of `input` inputs) from `file`.
    pub fn load(
        file: &GgufFile,
        names: &[(&str, usize)],
        input: usize,
        numerics: Numerics,
        device: &Device,
        progress: LoadProgress,
    ) -> Result<Self, StageError> {
        let mut parts = Vec::with_capacity(names.len());
        for &(name, out) in names {
            let m = QMatrix::from_gguf(file, name, input, out)?;
            progress(name, m.byte_len());
            parts.push(m);
        }
        let out = parts.iter().map(QMatrix::rows).sum();
        let dense = (*device != Device::flex()).then(|| {
            let mut values = vec![0f32; out * input];
            let rows = parts
                .iter()
                .flat_map(|m| (0..m.rows()).map(move |r| (m, r)));
            for ((m, r), dst) in rows.zip(values.chunks_exact_mut(input)) {
                m.dequantize_row(r, dst);
            }
            Tensor::from_data(TensorData::new(values, [out, input]), device)
        });
        Ok(Self {
            parts,
            out,
            numerics,
            dense,
            device: device.clone(),
        })
    }

    /// Outputs of all matrices together.
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Bytes of weights held: the file's block bytes (f32 bytes on devices with a dense copy).
    pub fn weight_bytes(&self) -> u64 {
        match &self.dense {
            Some(_) => (self.out * self.parts[0].cols() * 4) as u64,
            None => self.parts.iter().map(QMatrix::byte_len).sum(),
        }
    }

    /// `x [rows, in] → [rows, out]` on host buffers (only for matrices kept as blocks).
    pub fn forward_host(&self, x: Vec<f32>, rows: usize) -> Vec<f32> {
        assert!(
            self.dense.is_none(),
            "a dense copy is multiplied on its device"
        );
        let parts: Vec<&QMatrix> = self.parts.iter().collect();
        matmul(&parts, x, rows, self.numerics)
    }

    /// `x [rows, in] → [rows, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        if let Some(w) = &self.dense {
            return w.clone().matmul(x.transpose()).transpose();
        }
        let [rows, _] = x.dims();
        let values = x
            .into_data()
            .try_into_vec::<f32>()
            .expect("stage activations are f32");
        let out = self.forward_host(values, rows);
        Tensor::from_data(TensorData::new(out, [rows, self.out]), &self.device)
    }
}
