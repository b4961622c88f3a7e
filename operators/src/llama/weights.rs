//! Turning GGUF tensors into burn tensors laid out for the forward pass.

use crate::gguf::{GgufError, GgufFile};
use burn::tensor::{Device, Tensor, TensorData};

/// Called once per tensor loaded, with its name and its f32 bytes, so callers can show progress.
pub type LoadProgress<'a> = &'a mut dyn FnMut(&str, u64);

/// Reads the linear weight `name` stored with `ne = [in, out]` as a `[out, in]` matrix.
pub fn matrix(
    file: &GgufFile,
    name: &str,
    input: usize,
    output: usize,
    progress: LoadProgress,
) -> Result<Vec<f32>, GgufError> {
    let values = file.tensor_f32_shaped(name, &[input as u64, output as u64])?;
    progress(name, values.len() as u64 * 4);
    Ok(values)
}

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

/// Stacks `[rows_i, cols]` row-major matrices into one `[sum rows_i, cols]` tensor.
pub fn stacked(parts: Vec<Vec<f32>>, cols: usize, device: &Device) -> Tensor<2> {
    let rows: usize = parts.iter().map(|p| p.len() / cols).sum();
    let data: Vec<f32> = parts.into_iter().flatten().collect();
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}
