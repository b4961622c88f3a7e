//! Turning small GGUF tensors (norm weights) into burn tensors; matrices stay in
//! their blocks ([`crate::quant::QMatrix`]).

use crate::gguf::{GgufError, GgufFile};
use burn::tensor::{Device, Tensor, TensorData};

/// Called once per tensor loaded, with its name and the bytes it holds, so callers can show progress.
pub type LoadProgress<'a> = &'a mut dyn FnMut(&str, u64);

/// Reads the vector `name` of `len` elements.
pub fn vector(
    file: &GgufFile,
    name: &str,
    len: usize,
    device: &Device,
    progress: LoadProgress,
) -> Result<Tensor<1>, GgufError> {
    let values = file.tensor_f32_shaped(name, &[len as u64])?;
    progress(name, values.len() as u64 * 4);
    Ok(Tensor::from_data(TensorData::new(values, [len]), device))
}
