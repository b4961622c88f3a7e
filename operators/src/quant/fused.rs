//! Products of one block row with one input row, read straight from the blocks
//! (no expanded copy of the row): the batch-1 path, bound by memory bandwidth.
//!
//! Written for the types SmolLM2 and most GGUF files use for their large
//! matrices (`Q4_1`, `Q8_0`), with AVX-512 (VNNI for `q8`); the other types and
//! SIMD levels go through the expanded row of [`super::decode`].

use super::activations::Activations;
use super::decode::GroupSum;
use super::kernels::KernelSet;
use super::numerics::Numerics;
use crate::gguf::GgmlType;

/// A fused product of consecutive block rows (`row_bytes` each) with every input
/// row, into `out` (`[weight row][input row]`). Each input row's result is
/// computed by the same operations in the same order whatever the batch, so a
/// sequence's outputs do not depend on what it is batched with.
pub type FusedRows = fn(&[u8], usize, &Activations, &mut [f32]);

/// The fused kernel for `ty` under `numerics` on `kernels`, if there is one.
pub fn fused(kernels: KernelSet, ty: GgmlType, numerics: Numerics) -> Option<FusedRows> {
    if kernels != KernelSet::Avx512Vnni {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (each): `KernelSet::Avx512Vnni` is only detected with the features
        // these kernels are compiled for; operand lengths are checked inside.
        let f: FusedRows = match (ty, numerics) {
            (GgmlType::Q4_1, Numerics::Q8) => |b, n, a, o| unsafe { x86::q4_1_q8_rows(b, n, a, o) },
            (GgmlType::Q8_0, Numerics::Q8) => |b, n, a, o| unsafe { x86::q8_0_q8_rows(b, n, a, o) },
            (GgmlType::Q4_1, Numerics::Exact) => {
                |b, n, a, o| unsafe { x86::q4_1_f32_rows(b, n, a, o) }
            }
            (GgmlType::Q8_0, Numerics::Exact) => {
                |b, n, a, o| unsafe { x86::q8_0_f32_rows(b, n, a, o) }
            }
            _ => return None,
        };
        Some(f)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, numerics);
        None
    }
}

#[cfg(target_arch = "x86_64")]
// Index loops run over the `N` input rows of several operand arrays at once.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::{Activations, GroupSum};
    use crate::quant::decode::LANES;
    use std::arch::x86_64::*;

    /// Input rows one kernel call keeps in registers.
    const TILE: usize = 4;

    /// Defines `$name`, which runs `$kernel` over every weight row of `bytes` and
    /// every input row, [`TILE`] input rows per call; `$args` builds the kernel's
    /// per-input-row operands from `(act, r)`.
    macro_rules! rows_fn {
        ($name:ident, $features:literal, $kernel:ident, |$a:ident, $r:ident| ($($arg:expr),+)) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name(bytes: &[u8], row_bytes: usize, act: &Activations, out: &mut [f32]) {
                let rows = act.rows();
                let $a = act;
                for (row, outs) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(rows)) {
                    let mut first = 0;
                    while first + TILE <= rows {
                        // SAFETY: same features as this function's.
                        let v = unsafe {
                            $kernel::<TILE>(row, $(std::array::from_fn(|i| { let $r = first + i; $arg })),+)
                        };
                        outs[first..first + TILE].copy_from_slice(&v);
                        first += TILE;
                    }
                    while first < rows {
                        // SAFETY: as above.
                        outs[first] = unsafe {
                            $kernel::<1>(row, $({ let $r = first; [$arg] }),+)
                        }[0];
                        first += 1;
                    }
                }
            }
        };
    }

    rows_fn!(
        q4_1_q8_rows,
        "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c",
        q4_1_q8,
        |a, r| (a.q_row(r), a.dl_row(r), a.sum_row(r, GroupSum::F16))
    );
    rows_fn!(
        q8_0_q8_rows,
        "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c",
        q8_0_q8,
        |a, r| (a.q_row(r), a.dl_row(r), a.sum_row(r, GroupSum::Exact))
    );
    rows_fn!(
        q4_1_f32_rows,
        "avx512f,avx512bw,avx512dq,avx512vl,f16c",
        q4_1_f32,
        |a, r| (a.f32_row(r), a.xsum_row(r))
    );
    rows_fn!(
        q8_0_f32_rows,
        "avx512f,avx512bw,avx512dq,avx512vl,f16c",
        q8_0_f32,
        |a, r| (a.f32_row(r))
    );

    /// `[d, m, 0, 0]` from the two f16 at `p` (a block's header).
    #[inline(always)]
    unsafe fn header(p: *const u8) -> __m128 {
        // SAFETY: the caller points `p` at a block header of at least 4 bytes.
        unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned())) }
    }

    /// The 32 quants of a `Q4_1`/`Q4_0` block's 16 nibble bytes at `p`, in element order.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: the caller points `p` at 16 readable bytes.
        unsafe {
            let v = _mm_loadu_si128(p as *const __m128i);
            let m = _mm_set1_epi8(0x0F);
            _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16::<4>(v), m),
                _mm_and_si128(v, m),
            )
        }
    }

    fn check(row: usize, block: usize, xs: &[usize], need: &[usize]) {
        let groups = row / block;
        assert!(
            row.is_multiple_of(block)
                && xs
                    .iter()
                    .zip(need)
                    .all(|(&have, &per_group)| have >= groups * per_group),
            "fused kernel operands of unequal size"
        );
    }

    /// `Q4_1` weights, `q8` activations: `Σ_g dx·(d·Σ q·xq) + m·s`, two groups per
    /// 512-bit `vpdpbusd`, as llama.cpp's `ggml_vec_dot_q4_1_q8_1`; each weight pair
    /// is expanded once for the `N` input rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c")]
    #[inline]
    unsafe fn q4_1_q8<const N: usize>(
        row: &[u8],
        xq: [&[i8]; N],
        xdl: [&[f32]; N],
        s: [&[f32]; N],
    ) -> [f32; N] {
        for r in 0..N {
            check(
                row.len(),
                20,
                &[xq[r].len(), xdl[r].len(), s[r].len()],
                &[32, LANES, 1],
            );
        }
        let groups = row.len() / 20;
        let p = row.as_ptr();
        let mut acc = [_mm512_setzero_ps(); N];
        // The minimum terms of a group pair, `[m_g·s_g, m_g+1·s_g+1]`, in two lanes.
        let mut macc = [_mm_setzero_ps(); N];
        let mut g = 0;
        // SAFETY (every access below): `g + 2 ≤ groups` (or `g < groups` in the
        // tail) and the lengths were checked against `groups`.
        unsafe {
            while g + 2 <= groups {
                let (a, b) = (p.add(g * 20), p.add(g * 20 + 20));
                let (ha, hb) = (header(a), header(b));
                let w = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(nibbles(a.add(4))),
                    nibbles(b.add(4)),
                );
                let dw =
                    _mm512_insertf32x8::<1>(_mm512_broadcastss_ps(ha), _mm256_broadcastss_ps(hb));
                // [m_a, m_b, ·, ·] from [d_a, d_b, m_a, m_b]
                let u = _mm_unpacklo_ps(ha, hb);
                let m = _mm_movehl_ps(u, u);
                for r in 0..N {
                    let x = _mm512_loadu_epi8(xq[r].as_ptr().add(g * 32));
                    let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
                    let scale = _mm512_mul_ps(dw, _mm512_loadu_ps(xdl[r].as_ptr().add(g * LANES)));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[r]);
                    let sums = _mm_castpd_ps(_mm_load_sd(s[r].as_ptr().add(g) as *const f64));
                    macc[r] = _mm_fmadd_ps(m, sums, macc[r]);
                }
                g += 2;
            }
            let mut out = [0f32; N];
            for r in 0..N {
                let m = _mm_add_ss(macc[r], _mm_movehdup_ps(macc[r]));
                out[r] = _mm512_reduce_add_ps(acc[r]) + _mm_cvtss_f32(m);
            }
            if g < groups {
                let a = p.add(g * 20);
                let h = header(a);
                let w = nibbles(a.add(4));
                for r in 0..N {
                    let x = _mm256_loadu_si256(xq[r].as_ptr().add(g * 32) as *const __m256i);
                    let isum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
                    let t = hsum256(_mm256_cvtepi32_ps(isum));
                    out[r] += _mm_cvtss_f32(h) * xdl[r][g * LANES] * t
                        + _mm_cvtss_f32(_mm_movehdup_ps(h)) * s[r][g];
                }
            }
            out
        }
    }

    #[target_feature(enable = "avx2")]
    fn hsum256(v: __m256) -> f32 {
        let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
    }

    /// `Q8_0` weights, `q8` activations: the weights shifted to unsigned
    /// (`q + 128`) for `vpdpbusd`, and `128·d·dx·Σ xq` taken back per group.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c")]
    #[inline]
    unsafe fn q8_0_q8<const N: usize>(
        row: &[u8],
        xq: [&[i8]; N],
        xdl: [&[f32]; N],
        s: [&[f32]; N],
    ) -> [f32; N] {
        for r in 0..N {
            check(
                row.len(),
                34,
                &[xq[r].len(), xdl[r].len(), s[r].len()],
                &[32, LANES, 1],
            );
        }
        let groups = row.len() / 34;
        let p = row.as_ptr();
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [_mm512_setzero_ps(); N];
        // `[d_g·s_g, d_g+1·s_g+1]` in two lanes.
        let mut cacc = [_mm_setzero_ps(); N];
        let mut g = 0;
        // SAFETY: as in `q4_1_q8`.
        unsafe {
            while g + 2 <= groups {
                let (a, b) = (p.add(g * 34), p.add(g * 34 + 34));
                let (ha, hb) = (header(a), header(b));
                let wa = _mm256_loadu_si256(a.add(2) as *const __m256i);
                let wb = _mm256_loadu_si256(b.add(2) as *const __m256i);
                let w = _mm512_xor_si512(
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(wa), wb),
                    flip,
                );
                let dw =
                    _mm512_insertf32x8::<1>(_mm512_broadcastss_ps(ha), _mm256_broadcastss_ps(hb));
                // [d_a, d_b, ·, ·]
                let d = _mm_unpacklo_ps(ha, hb);
                for r in 0..N {
                    let x = _mm512_loadu_epi8(xq[r].as_ptr().add(g * 32));
                    let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
                    let scale = _mm512_mul_ps(dw, _mm512_loadu_ps(xdl[r].as_ptr().add(g * LANES)));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[r]);
                    let sums = _mm_castpd_ps(_mm_load_sd(s[r].as_ptr().add(g) as *const f64));
                    cacc[r] = _mm_fmadd_ps(d, sums, cacc[r]);
                }
                g += 2;
            }
            let mut out = [0f32; N];
            for r in 0..N {
                let c = _mm_add_ss(cacc[r], _mm_movehdup_ps(cacc[r]));
                out[r] = _mm512_reduce_add_ps(acc[r]) - 128.0 * _mm_cvtss_f32(c);
            }
            if g < groups {
                let d = _mm_cvtss_f32(header(p.add(g * 34)));
                let w = &row[g * 34 + 2..g * 34 + 34];
                for r in 0..N {
                    let isum: i32 = w
                        .iter()
                        .zip(&xq[r][g * 32..])
                        .map(|(&q, &x)| (q as i8) as i32 * x as i32)
                        .sum();
                    out[r] += d * xdl[r][g * LANES] * isum as f32;
                }
            }
            out
        }
    }

    /// `Q4_1` weights, f32 activations: `Σ_g d·Σ q·x + m·Σ x`, each block expanded
    /// in registers once for the `N` input rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,f16c")]
    #[inline]
    unsafe fn q4_1_f32<const N: usize>(row: &[u8], x: [&[f32]; N], xsum: [&[f32]; N]) -> [f32; N] {
        for r in 0..N {
            check(row.len(), 20, &[x[r].len(), xsum[r].len()], &[32, 1]);
        }
        let groups = row.len() / 20;
        let p = row.as_ptr();
        let mut acc = [_mm512_setzero_ps(); N];
        let mut m = [0f32; N];
        // SAFETY: `g < groups`, lengths checked against `groups`.
        unsafe {
            for g in 0..groups {
                let a = p.add(g * 20);
                let h = header(a);
                let q = nibbles(a.add(4));
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(q)));
                let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256::<1>(q)));
                let d = _mm512_broadcastss_ps(h);
                let min = _mm_cvtss_f32(_mm_movehdup_ps(h));
                for r in 0..N {
                    let px = x[r].as_ptr().add(g * 32);
                    let dot = _mm512_fmadd_ps(
                        lo,
                        _mm512_loadu_ps(px),
                        _mm512_mul_ps(hi, _mm512_loadu_ps(px.add(16))),
                    );
                    acc[r] = _mm512_fmadd_ps(d, dot, acc[r]);
                    m[r] += min * xsum[r][g];
                }
            }
            let mut out = [0f32; N];
            for r in 0..N {
                out[r] = _mm512_reduce_add_ps(acc[r]) + m[r];
            }
            out
        }
    }

    /// `Q8_0` weights, f32 activations: `Σ_g d·Σ q·x`, each block expanded in
    /// registers once for the `N` input rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,f16c")]
    #[inline]
    unsafe fn q8_0_f32<const N: usize>(row: &[u8], x: [&[f32]; N]) -> [f32; N] {
        for xr in x {
            check(row.len(), 34, &[xr.len()], &[32]);
        }
        let groups = row.len() / 34;
        let p = row.as_ptr();
        let mut acc = [_mm512_setzero_ps(); N];
        // SAFETY: as in `q4_1_f32`.
        unsafe {
            for g in 0..groups {
                let a = p.add(g * 34);
                let d = _mm512_broadcastss_ps(header(a));
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    a.add(2) as *const __m128i
                )));
                let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    a.add(18) as *const __m128i
                )));
                for r in 0..N {
                    let px = x[r].as_ptr().add(g * 32);
                    let dot = _mm512_fmadd_ps(
                        lo,
                        _mm512_loadu_ps(px),
                        _mm512_mul_ps(hi, _mm512_loadu_ps(px.add(16))),
                    );
                    acc[r] = _mm512_fmadd_ps(d, dot, acc[r]);
                }
            }
            let mut out = [0f32; N];
            for r in 0..N {
                out[r] = _mm512_reduce_add_ps(acc[r]);
            }
            out
        }
    }
}
