//! `x · Wᵀ` for block-encoded matrices, output rows split over the cores.

use super::activations::Activations;
use super::decode::{QRow, group_sum, has_integer_kernel, row_f32, row_q8};
use super::fused::fused;
use super::kernels::KernelSet;
use super::matrix::QMatrix;
use super::numerics::Numerics;
use rayon::prelude::*;
use std::cell::RefCell;

/// Weight rows one task takes at least (fewer make scheduling cost more than the work).
const MIN_ROWS_PER_TASK: usize = 32;

thread_local! {
    /// One expanded weight row per thread, reused across calls.
    static SCRATCH: RefCell<(Vec<f32>, QRow)> = RefCell::new((Vec::new(), QRow::default()));
}

/// `x [rows, cols] · [W₀; W₁; …]ᵀ → [rows, Σ outᵢ]`: the products of one input
/// with every matrix of `weights` (all `cols` wide), side by side in each output row.
///
/// The input is prepared once for all of them (for `q8`, quantized once).
pub fn matmul(weights: &[&QMatrix], x: Vec<f32>, rows: usize, numerics: Numerics) -> Vec<f32> {
    let cols = weights.first().map_or(0, |w| w.cols());
    let act = Activations::new(x, rows, cols, numerics);
    matmul_with(KernelSet::detect(), weights, &act)
}

/// [`matmul`] with a given kernel set and prepared input (for tests and benchmarks).
pub fn matmul_with(kernels: KernelSet, weights: &[&QMatrix], act: &Activations) -> Vec<f32> {
    let rows = act.rows();
    for w in weights {
        assert_eq!(w.cols(), act.cols(), "matrix of {} inputs", w.cols());
    }
    let total: usize = weights.iter().map(|w| w.rows()).sum();
    // Transposed: each weight row's outputs for every input row lie together, so
    // a task owns one contiguous piece.
    let mut out_t = vec![0f32; total * rows];
    let threads = rayon::current_num_threads();
    let per_task = total
        .div_ceil(threads * 2)
        .max(MIN_ROWS_PER_TASK / rows.clamp(1, MIN_ROWS_PER_TASK))
        .max(1);
    let mut tasks = Vec::new();
    let mut rest = out_t.as_mut_slice();
    for w in weights {
        let (mine, tail) = rest.split_at_mut(w.rows() * rows);
        rest = tail;
        for (i, piece) in mine.chunks_mut(per_task * rows).enumerate() {
            tasks.push((*w, i * per_task, piece));
        }
    }
    if threads == 1 || tasks.len() == 1 {
        for (w, first, piece) in tasks {
            weight_rows(kernels, w, first, act, piece);
        }
    } else {
        tasks
            .into_par_iter()
            .for_each(|(w, first, piece)| weight_rows(kernels, w, first, act, piece));
    }
    if rows == 1 {
        return out_t;
    }
    // Transposed back in bands of input rows, so writes stay in a few streams.
    let mut out = vec![0f32; total * rows];
    const BAND: usize = 8;
    for r0 in (0..rows).step_by(BAND) {
        let band = BAND.min(rows - r0);
        for (o, outs) in out_t.chunks_exact(rows).enumerate() {
            for (i, &v) in outs[r0..r0 + band].iter().enumerate() {
                out[(r0 + i) * total + o] = v;
            }
        }
    }
    out
}

/// Outputs of weight rows `first..` of `w` for every input row, into `out` (`[row][input row]`).
fn weight_rows(kernels: KernelSet, w: &QMatrix, first: usize, act: &Activations, out: &mut [f32]) {
    let rows = act.rows();
    let cols = w.cols();
    // The path depends on the type and numerics only, never on the batch, so a
    // sequence's outputs are the same whatever it is batched with.
    if let Some(rows_kernel) = fused(kernels, w.ty(), act.numerics()) {
        let n = out.len() / rows;
        let bytes = &w.bytes()[first * w.row_bytes()..(first + n) * w.row_bytes()];
        rows_kernel(bytes, w.row_bytes(), act, out);
        return;
    }
    let integer = act.numerics() == Numerics::Q8 && has_integer_kernel(w.ty());
    SCRATCH.with_borrow_mut(|(f, q)| {
        f.resize(cols, 0.0);
        for (i, outs) in out.chunks_exact_mut(rows).enumerate() {
            let bytes = w.row(first + i);
            if integer {
                // Each row is expanded once and reused for every input row.
                row_q8(w.ty(), bytes, cols, q);
                let kind = group_sum(w.ty());
                for (r, o) in outs.iter_mut().enumerate() {
                    *o = kernels.dot_q8(&q.q, &q.dl, act.q_row(r), act.dl_row(r))
                        + kernels.dot_f32(&q.c, act.sum_row(r, kind));
                }
            } else {
                row_f32(w.ty(), bytes, f);
                for (r, o) in outs.iter_mut().enumerate() {
                    *o = kernels.dot_f32(f, act.f32_row(r));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgmlType, dequantize, quantize};

    fn lcg(seed: u64) -> impl FnMut() -> u32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        }
    }

    /// A `rows × cols` matrix of `ty` with pseudo-random contents: quantized
    /// values for the types with a quantizer, random blocks with sane f16 scales
    /// for the K-quants.
    fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QMatrix {
        let mut next = lcg(seed);
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let bytes = match quantize(ty, &values) {
            Ok(b) => b,
            Err(_) => {
                let block = ty.block_bytes() as usize;
                let mut b: Vec<u8> = (0..rows * cols / 256 * block)
                    .map(|_| next() as u8)
                    .collect();
                let scale = half::f16::from_f32(0.01).to_le_bytes();
                for blk in b.chunks_exact_mut(block) {
                    let at: &[usize] = if ty == GgmlType::Q6_K {
                        &[208]
                    } else {
                        &[0, 2]
                    };
                    for &i in at {
                        blk[i..i + 2].copy_from_slice(&scale);
                    }
                }
                b
            }
        };
        QMatrix::from_bytes(ty, rows, cols, bytes).unwrap()
    }

    const TYPES: [GgmlType; 9] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// Every type, numerics and kernel set against `Σ w·x` in f64 over the
    /// dequantized weights and the input the numerics sees (for `q8`, the
    /// dequantized 8-bit activation), for batches of 1 to 20 rows.
    #[test]
    fn products_match_an_f64_reference_for_every_type_and_kernel_set() {
        let (out, cols) = (37, 512);
        for ty in TYPES {
            let w = matrix(ty, out, cols, ty.id() as u64);
            let dense = dequantize(ty, w.bytes(), out * cols).unwrap();
            for numerics in Numerics::ALL {
                for rows in [1, 2, 3, 7, 20] {
                    let mut next = lcg(rows as u64 + 100);
                    let x: Vec<f32> = (0..rows * cols)
                        .map(|_| (next() % 2001) as f32 / 500.0 - 2.0)
                        .collect();
                    let act = Activations::new(x, rows, cols, numerics);
                    for set in KernelSet::available() {
                        let got = matmul_with(set, &[&w], &act);
                        for r in 0..rows {
                            let xr = act.f32_row(r);
                            for o in 0..out {
                                let wr = &dense[o * cols..(o + 1) * cols];
                                let want: f64 =
                                    wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                                let scale: f64 = wr
                                    .iter()
                                    .zip(xr)
                                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                                    .sum();
                                // q8 rounds Q4_1's activation sums to f16, as llama.cpp does.
                                let tol = if numerics == Numerics::Q8 { 2e-3 } else { 1e-5 };
                                let g = got[r * out + o] as f64;
                                assert!(
                                    (g - want).abs() <= tol * scale.max(1.0),
                                    "{ty} {numerics} {set:?} rows {rows}: [{r},{o}] {g} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A row's outputs are bit for bit the same alone and in any batch, for every
    /// kernel set: the engine compares tokens across batchings and plans.
    #[test]
    fn outputs_do_not_depend_on_the_batch() {
        let cols = 256;
        for ty in TYPES {
            let w = matrix(ty, 19, cols, 3);
            let mut next = lcg(9);
            let x: Vec<f32> = (0..9 * cols)
                .map(|_| (next() % 2001) as f32 / 700.0 - 1.4)
                .collect();
            for numerics in Numerics::ALL {
                for set in KernelSet::available() {
                    let batch =
                        matmul_with(set, &[&w], &Activations::new(x.clone(), 9, cols, numerics));
                    for r in 0..9 {
                        let one = Activations::new(
                            x[r * cols..(r + 1) * cols].to_vec(),
                            1,
                            cols,
                            numerics,
                        );
                        assert_eq!(
                            matmul_with(set, &[&w], &one),
                            batch[r * 19..(r + 1) * 19],
                            "{ty} {numerics} {set:?} row {r}"
                        );
                    }
                }
            }
        }
    }

    /// Several matrices over one input give their products side by side.
    #[test]
    fn a_group_concatenates_its_matrices_outputs() {
        let (a, b) = (
            matrix(GgmlType::Q4_1, 5, 64, 1),
            matrix(GgmlType::Q8_0, 3, 64, 2),
        );
        let x: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        for numerics in Numerics::ALL {
            let both = matmul(&[&a, &b], x.clone(), 2, numerics);
            let left = matmul(&[&a], x.clone(), 2, numerics);
            let right = matmul(&[&b], x.clone(), 2, numerics);
            for r in 0..2 {
                assert_eq!(both[r * 8..r * 8 + 5], left[r * 5..r * 5 + 5]);
                assert_eq!(both[r * 8 + 5..r * 8 + 8], right[r * 3..r * 3 + 3]);
            }
        }
    }
}
