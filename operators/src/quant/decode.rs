//! Expanding one weight row from its blocks, for the two numerics.
//!
//! `exact` expands a row to f32. `q8` expands it to unsigned 8-bit quants `q`
//! with, per 32-element group `g`, a scale `d[g]` and an offset `c[g]` such that
//! each weight is `d[g]·q + c[g]`: then `Σ w·x` over a group of an activation
//! quantized as `dx·xq` is `dx·(d·Σ q·xq + c·Σ xq)`, an integer dot product and
//! a per-group term. Signed types are shifted to unsigned (`Q8_0`: `q + 128`,
//! `c = -128·d`; `Q4_0`: `c = -8·d`), which changes no value.

use crate::gguf::GgmlType;
use crate::gguf::dequant::{dequantize_into, scale_min_k4};

/// Lanes each group scale is repeated over in [`QRow::dl`], so SIMD kernels load
/// the scales of a group pair with one instruction.
pub const LANES: usize = 8;

/// How the per-group activation sums enter the `c` term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSum {
    /// `dx·Σ xq` exactly: an identity for the shifted signed types and the K-quants.
    Exact,
    /// `dx·Σ xq` rounded to f16, as llama.cpp's `Q8_1` activation blocks store it for `Q4_1`.
    F16,
}

/// One weight row expanded for the integer kernels.
#[derive(Debug, Default)]
pub struct QRow {
    /// Unsigned quants, one per input.
    pub q: Vec<u8>,
    /// Group scales, each repeated [`LANES`] times.
    pub dl: Vec<f32>,
    /// Group offsets.
    pub c: Vec<f32>,
}

impl QRow {
    fn resize(&mut self, cols: usize) {
        let groups = cols / 32;
        self.q.resize(cols, 0);
        self.dl.resize(groups * LANES, 0.0);
        self.c.resize(groups, 0.0);
    }

    fn set_group(&mut self, g: usize, d: f32, c: f32) {
        self.dl[g * LANES..(g + 1) * LANES].fill(d);
        self.c[g] = c;
    }
}

/// Whether `ty` has an integer (`q8`) kernel; the others (floats, `Q6_K` with its
/// 16-element scales) multiply their f32 expansion by the dequantized activation.
pub fn has_integer_kernel(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K
    )
}

/// How the activation sums of type `ty` enter the `c` term.
pub fn group_sum(ty: GgmlType) -> GroupSum {
    if ty == GgmlType::Q4_1 {
        GroupSum::F16
    } else {
        GroupSum::Exact
    }
}

/// The f16 at `b[i..i + 2]` as f32, by a conversion the compiler inlines (the
/// `half` crate's default one checks the CPU on every call).
#[inline(always)]
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32_const()
}

/// Expands the blocks `row` of type `ty` into `out` as f32.
pub fn row_f32(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::Q4_1 => {
            for (b, y) in row.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let (lo, hi) = y.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[4..20]) {
                    *l = (q & 0x0F) as f32 * d + m;
                    *h = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in row.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                let d = f16_at(b, 0);
                let (lo, hi) = y.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..18]) {
                    *l = ((q & 0x0F) as i32 - 8) as f32 * d;
                    *h = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in row.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                let d = f16_at(b, 0);
                for (v, &q) in y.iter_mut().zip(&b[2..34]) {
                    *v = (q as i8) as f32 * d;
                }
            }
        }
        GgmlType::F32 => {
            for (v, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        other => dequantize_into(other, row, out).expect("QMatrix only holds dequantizable types"),
    }
}

/// Expands the blocks `row` of type `ty` (one with [`has_integer_kernel`]) into `out`.
pub fn row_q8(ty: GgmlType, row: &[u8], cols: usize, out: &mut QRow) {
    out.resize(cols);
    match ty {
        GgmlType::Q4_1 => {
            for (g, b) in row.chunks_exact(20).enumerate() {
                out.set_group(g, f16_at(b, 0), f16_at(b, 2));
                nibbles(&b[4..20], &mut out.q[g * 32..(g + 1) * 32]);
            }
        }
        GgmlType::Q4_0 => {
            for (g, b) in row.chunks_exact(18).enumerate() {
                let d = f16_at(b, 0);
                out.set_group(g, d, -8.0 * d);
                nibbles(&b[2..18], &mut out.q[g * 32..(g + 1) * 32]);
            }
        }
        GgmlType::Q8_0 => {
            for (g, b) in row.chunks_exact(34).enumerate() {
                let d = f16_at(b, 0);
                out.set_group(g, d, -128.0 * d);
                for (q, &v) in out.q[g * 32..(g + 1) * 32].iter_mut().zip(&b[2..34]) {
                    *q = v ^ 0x80;
                }
            }
        }
        GgmlType::Q4_K => {
            for (s, b) in row.chunks_exact(144).enumerate() {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                for (j, qs) in b[16..144].chunks_exact(32).enumerate() {
                    for half in 0..2 {
                        let g = s * 8 + 2 * j + half;
                        let (sc, m) = scale_min_k4(2 * j + half, scales);
                        out.set_group(g, d * sc as f32, -dmin * m as f32);
                        let shift = 4 * half;
                        for (q, &v) in out.q[g * 32..(g + 1) * 32].iter_mut().zip(qs) {
                            *q = (v >> shift) & 0x0F;
                        }
                    }
                }
            }
        }
        GgmlType::Q5_K => {
            for (s, b) in row.chunks_exact(176).enumerate() {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qh = &b[16..48];
                for (j, qs) in b[48..176].chunks_exact(32).enumerate() {
                    for half in 0..2 {
                        let g = s * 8 + 2 * j + half;
                        let (sc, m) = scale_min_k4(2 * j + half, scales);
                        out.set_group(g, d * sc as f32, -dmin * m as f32);
                        let bit = 1u8 << (2 * j + half);
                        let shift = 4 * half;
                        for ((q, &v), &h) in out.q[g * 32..(g + 1) * 32].iter_mut().zip(qs).zip(qh)
                        {
                            *q = ((v >> shift) & 0x0F) | if h & bit != 0 { 16 } else { 0 };
                        }
                    }
                }
            }
        }
        other => unreachable!("{other} has no integer kernel"),
    }
}

/// Unpacks 16 bytes of nibbles into 32 quants: low nibbles first, then high, as ggml orders them.
#[inline]
fn nibbles(packed: &[u8], q: &mut [u8]) {
    let (lo, hi) = q.split_at_mut(16);
    for ((l, h), &v) in lo.iter_mut().zip(hi).zip(packed) {
        *l = v & 0x0F;
        *h = v >> 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{dequantize, quantize};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    /// Each expansion gives back what the reference dequantizer gives.
    #[test]
    fn both_expansions_agree_with_the_dequantizer() {
        for ty in [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q8_0] {
            let x = values(128, 5);
            let bytes = quantize(ty, &x).unwrap();
            let reference = dequantize(ty, &bytes, 128).unwrap();
            let mut f = vec![0.0; 128];
            row_f32(ty, &bytes, &mut f);
            assert_eq!(f, reference, "{ty} f32");
            let mut r = QRow::default();
            row_q8(ty, &bytes, 128, &mut r);
            for (i, want) in reference.iter().enumerate() {
                let g = i / 32;
                let got = r.dl[g * LANES] * r.q[i] as f32 + r.c[g];
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{ty} {i}");
            }
        }
    }
}
