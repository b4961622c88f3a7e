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
    let mut out = vec![0f32; total * rows];
    for (o, outs) in out_t.chunks_exact(rows).enumerate() {
        for (r, &v) in outs.iter().enumerate() {
            out[r * total + o] = v;
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
