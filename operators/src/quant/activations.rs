//! The input of a product, prepared once and shared by every matrix that reads it.

use super::decode::{GroupSum, LANES};
use super::numerics::Numerics;
use half::f16;

/// `rows` input rows of `cols` values, as the chosen [`Numerics`] consumes them.
///
/// For `q8`, each row is quantized once to blocks of 32 (`xq` with an f16 scale
/// `dx`, as llama.cpp's `Q8_0`/`Q8_1`), so projections that read the same input
/// (Q, K and V; gate and up) share the quantization.
#[derive(Debug)]
pub struct Activations {
    rows: usize,
    cols: usize,
    numerics: Numerics,
    /// f32 input (`exact`), or the dequantized `dx·xq` (`q8`, for float weights).
    x: Vec<f32>,
    /// `q8`: quants.
    xq: Vec<i8>,
    /// `q8`: block scales, each repeated [`LANES`] times.
    dl: Vec<f32>,
    /// `q8`: `dx·Σ xq` per block, exact.
    sum_exact: Vec<f32>,
    /// `q8`: `dx·Σ xq` per block rounded to f16 (llama.cpp's `Q8_1::s`).
    sum_f16: Vec<f32>,
    /// `exact`: `Σ x` per block (the minimum term of `Q4_1`).
    xsum: Vec<f32>,
}

impl Activations {
    /// Prepares `x` (`rows × cols`, row-major) for products under `numerics`.
    pub fn new(x: Vec<f32>, rows: usize, cols: usize, numerics: Numerics) -> Self {
        assert_eq!(x.len(), rows * cols, "activations of {rows} × {cols}");
        let mut a = Self {
            rows,
            cols,
            numerics,
            x,
            xq: Vec::new(),
            dl: Vec::new(),
            sum_exact: Vec::new(),
            sum_f16: Vec::new(),
            xsum: Vec::new(),
        };
        match numerics {
            Numerics::Q8 => a.quantize(),
            Numerics::Exact => a.xsum = a.x.chunks_exact(32).map(|b| b.iter().sum()).collect(),
        }
        a
    }

    fn quantize(&mut self) {
        let blocks = self.x.len() / 32;
        self.xq = vec![0; self.x.len()];
        self.dl = vec![0.0; blocks * LANES];
        self.sum_exact = vec![0.0; blocks];
        self.sum_f16 = vec![0.0; blocks];
        for (b, (x, q)) in self
            .x
            .chunks_exact_mut(32)
            .zip(self.xq.chunks_exact_mut(32))
            .enumerate()
        {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            // As llama.cpp's SIMD quantizer: 127/amax, rounded half to even.
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0i32;
            for (qi, xi) in q.iter_mut().zip(x.iter()) {
                let v = round_ties_even(xi * id) as i8;
                *qi = v;
                sum += v as i32;
            }
            let d16 = f16::from_f32(d).to_f32();
            self.dl[b * LANES..(b + 1) * LANES].fill(d16);
            self.sum_exact[b] = d16 * sum as f32;
            self.sum_f16[b] = f16::from_f32(d * sum as f32).to_f32();
            // Float weights multiply what the integer kernels see.
            for (xi, &qi) in x.iter_mut().zip(q.iter()) {
                *xi = d16 * qi as f32;
            }
        }
    }

    /// Input rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The numerics the input was prepared for.
    pub fn numerics(&self) -> Numerics {
        self.numerics
    }

    /// Row `r` as f32 (the input for `exact`, its dequantized quants for `q8`).
    pub fn f32_row(&self, r: usize) -> &[f32] {
        &self.x[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r`'s quants (`q8` only).
    pub(crate) fn q_row(&self, r: usize) -> &[i8] {
        &self.xq[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r`'s block scales, [`LANES`] per block (`q8` only).
    pub(crate) fn dl_row(&self, r: usize) -> &[f32] {
        let n = self.cols / 32 * LANES;
        &self.dl[r * n..(r + 1) * n]
    }

    /// Row `r`'s `Σ x` per block (`exact` only).
    pub(crate) fn xsum_row(&self, r: usize) -> &[f32] {
        let n = self.cols / 32;
        &self.xsum[r * n..(r + 1) * n]
    }

    /// Row `r`'s `dx·Σ xq` per block (`q8` only).
    pub(crate) fn sum_row(&self, r: usize, kind: GroupSum) -> &[f32] {
        let n = self.cols / 32;
        let sums = match kind {
            GroupSum::Exact => &self.sum_exact,
            GroupSum::F16 => &self.sum_f16,
        };
        &sums[r * n..(r + 1) * n]
    }
}

/// `v` rounded half to even, for `|v| ≤ 2²²`: adding and taking away 1.5·2²³
/// leaves the rounding to the FPU (in its default mode, half to even) without
/// the library call `f32::round_ties_even` is on CPUs without SSE4.1's `roundss`.
#[inline(always)]
fn round_ties_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even_like_the_library() {
        for i in -1300..=1300 {
            let v = i as f32 * 0.1 + 0.05;
            assert_eq!(round_ties_even(v), v.round_ties_even(), "{v}");
        }
        for v in [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -127.0, 127.0] {
            assert_eq!(round_ties_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn quantized_rows_keep_their_sums_and_scales() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
        let a = Activations::new(x.clone(), 1, 64, Numerics::Q8);
        for b in 0..2 {
            let q = &a.q_row(0)[b * 32..(b + 1) * 32];
            let d = a.dl_row(0)[b * LANES];
            let sum: i32 = q.iter().map(|&v| v as i32).sum();
            assert_eq!(a.sum_row(0, GroupSum::Exact)[b], d * sum as f32);
            assert!(
                q.iter().any(|&v| v.abs() == 127),
                "the largest value maps to ±127"
            );
            for (i, &v) in q.iter().enumerate() {
                assert!((v as f32 * d - x[b * 32 + i]).abs() <= d, "within a step");
            }
        }
    }
}
