//! Linear layers computed from GGUF blocks as they lie in the file.
//!
//! A weight matrix stays in its file encoding ([`QMatrix`], memory-mapped), and
//! products with it are computed block by block ([`matmul`]): resident weight
//! memory is the file's bytes, and a decode step reads each block once. Two
//! [`Numerics`] exist: `exact` (f32 activations, weights expanded to f32 in L1
//! one row at a time) and `q8` (activations quantized once per input to 8-bit
//! blocks and integer dot products, as llama.cpp computes). SIMD kernels are
//! chosen at run time ([`KernelSet`]).

mod activations;
mod decode;
mod fused;
pub mod kernels;
mod matmul;
mod matrix;
mod numerics;

pub use activations::Activations;
pub use kernels::KernelSet;
pub use matmul::{matmul, matmul_with};
pub use matrix::{QMatrix, QuantError};
pub use numerics::{Numerics, NumericsParseError};
