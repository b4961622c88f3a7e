//! Rotary position embedding in the layout of GGUF Llama files.
//!
//! The GGUF converter permutes the Q and K rows so that rotary pairs are
//! adjacent elements `(2i, 2i+1)` of a head, not the two halves as in Hugging
//! Face checkpoints; rotating adjacent pairs here gives the same result.

use burn::tensor::{Device, Tensor, TensorData};

/// Cosines and sines of the rotation angles of tokens at `positions`, heads of
/// width `head_dim`, frequency base `base`: `[positions, head_dim / 2]` each.
pub fn angles(positions: &[usize], head_dim: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let pairs = head_dim / 2;
    let inv_freq: Vec<f32> = (0..pairs)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * pairs);
    let mut sin = Vec::with_capacity(positions.len() * pairs);
    for &p in positions {
        for f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// Cosines and sines of the rotation angles of a batch's rows.
#[derive(Debug, Clone)]
pub struct RopeAngles {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl RopeAngles {
    /// Angles for tokens at `positions`, heads of width `head_dim`, frequency base `base`.
    pub fn new(positions: &[usize], head_dim: usize, base: f32, device: &Device) -> Self {
        let pairs = head_dim / 2;
        let (cos, sin) = angles(positions, head_dim, base);
        let shape = [positions.len(), 1, pairs, 1];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Rotates `x` of shape `[rows, heads, head_dim]`.
    pub fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        let [rows, heads, dim] = x.dims();
        let pairs: Tensor<4> = x.reshape([rows, heads, dim / 2, 2]);
        let even = pairs.clone().narrow(3, 0, 1);
        let odd = pairs.narrow(3, 1, 1);
        let out_even = even.clone() * self.cos.clone() - odd.clone() * self.sin.clone();
        let out_odd = even * self.sin.clone() + odd * self.cos.clone();
        Tensor::cat(vec![out_even, out_odd], 3).reshape([rows, heads, dim])
    }
}
