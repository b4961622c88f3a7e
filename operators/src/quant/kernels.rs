//! The two inner products every quantized layer reduces to, for each SIMD level.
//!
//! - `dot_f32(w, x)`: `Σ w·x` over f32 (the `exact` numerics, and float weights).
//! - `dot_q8(q, dl, xq, xdl)`: `Σ_g dl[g]·xdl[g]·Σ_{i∈g} q[i]·xq[i]` over groups of
//!   32, with `q` unsigned and `xq` signed (the `q8` numerics). The integer
//!   sums are exact in every implementation (AVX-512 VNNI `vpdpbusd`, AVX2
//!   widening `vpmaddwd`, scalar); only the float accumulation order differs.

use super::decode::LANES;
use std::sync::OnceLock;

/// A SIMD level the kernels are compiled for, chosen once at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelSet {
    /// Plain Rust, any CPU.
    Scalar,
    /// AVX2 with FMA (x86-64).
    Avx2,
    /// AVX-512 F/BW/DQ/VL with VNNI integer dot products and F16C (x86-64).
    Avx512Vnni,
}

impl KernelSet {
    /// The fastest set this CPU runs (`TOKENFLOW_KERNELS=scalar|avx2` caps it, for comparisons).
    pub fn detect() -> Self {
        static DETECTED: OnceLock<KernelSet> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Self::available().into_iter().last().unwrap_or(Self::Scalar);
            match std::env::var("TOKENFLOW_KERNELS").as_deref() {
                Ok("scalar") => Self::Scalar,
                Ok("avx2") if Self::available().contains(&Self::Avx2) => Self::Avx2,
                _ => best,
            }
        })
    }

    /// Every set this CPU can run, slowest first.
    pub fn available() -> Vec<Self> {
        let mut sets = vec![Self::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                sets.push(Self::Avx2);
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
            {
                sets.push(Self::Avx512Vnni);
            }
        }
        sets
    }

    /// A short name, for benchmark lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512-vnni",
        }
    }

    /// `Σ w[i]·x[i]` over the shorter of the two.
    #[inline]
    pub fn dot_f32(self, w: &[f32], x: &[f32]) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available()` saw the CPU features this set was compiled for.
            Self::Avx512Vnni => unsafe { x86::dot_f32_avx512(w, x) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Self::Avx2 => unsafe { x86::dot_f32_avx2(w, x) },
            _ => scalar::dot_f32(w, x),
        }
    }

    /// `Σ_g dl[g·LANES]·xdl[g·LANES]·(Σ_{i∈g} q[i]·xq[i])` over the groups of 32 of `q`.
    #[inline]
    pub fn dot_q8(self, q: &[u8], dl: &[f32], xq: &[i8], xdl: &[f32]) -> f32 {
        let groups = q.len() / 32;
        assert!(
            xq.len() >= q.len() && dl.len() >= groups * LANES && xdl.len() >= groups * LANES,
            "dot_q8 operands of unequal size"
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: features seen by `available()`; lengths checked above.
            Self::Avx512Vnni => unsafe { x86::dot_q8_avx512(q, dl, xq, xdl) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Self::Avx2 => unsafe { x86::dot_q8_avx2(q, dl, xq, xdl) },
            _ => scalar::dot_q8(q, dl, xq, xdl),
        }
    }
}

/// The integer sum of group `g`: the arithmetic every implementation must reproduce exactly.
pub fn group_isum(q: &[u8], xq: &[i8], g: usize) -> i32 {
    q[g * 32..(g + 1) * 32]
        .iter()
        .zip(&xq[g * 32..(g + 1) * 32])
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum()
}

mod scalar {
    use super::{LANES, group_isum};

    pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        // Eight independent sums: the loop is bound by loads, not one add chain.
        let mut acc = [0f32; 8];
        let n = w.len().min(x.len());
        let (wc, xc) = (w[..n].chunks_exact(8), x[..n].chunks_exact(8));
        let (wr, xr) = (wc.remainder(), xc.remainder());
        for (a, b) in wc.zip(xc) {
            for k in 0..8 {
                acc[k] = a[k].mul_add(b[k], acc[k]);
            }
        }
        let tail: f32 = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
        acc.iter().sum::<f32>() + tail
    }

    pub fn dot_q8(q: &[u8], dl: &[f32], xq: &[i8], xdl: &[f32]) -> f32 {
        (0..q.len() / 32)
            .map(|g| dl[g * LANES] * xdl[g * LANES] * group_isum(q, xq, g) as f32)
            .sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{LANES, group_isum};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub fn dot_f32_avx512(w: &[f32], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): `i + 16 ≤ n` before each 16-lane load.
        while i + 32 <= n {
            unsafe {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pw.add(i)), _mm512_loadu_ps(px.add(i)), acc0);
                acc1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pw.add(i + 16)),
                    _mm512_loadu_ps(px.add(i + 16)),
                    acc1,
                );
            }
            i += 32;
        }
        while i + 16 <= n {
            unsafe {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pw.add(i)), _mm512_loadu_ps(px.add(i)), acc0);
            }
            i += 16;
        }
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        while i < n {
            sum += w[i] * x[i];
            i += 1;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn dot_f32_avx2(w: &[f32], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): `i + 8 ≤ n` before each 8-lane load.
        while i + 16 <= n {
            unsafe {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pw.add(i + 8)),
                    _mm256_loadu_ps(px.add(i + 8)),
                    acc1,
                );
            }
            i += 16;
        }
        while i + 8 <= n {
            unsafe {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc0);
            }
            i += 8;
        }
        let mut sum = hsum256(_mm256_add_ps(acc0, acc1));
        while i < n {
            sum += w[i] * x[i];
            i += 1;
        }
        sum
    }

    #[target_feature(enable = "avx2")]
    fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Two groups per 512-bit step: `vpdpbusd` sums each 4 adjacent `u8·i8`
    /// products into one i32 lane, so lanes 0-7 hold group `g` and 8-15 group `g+1`,
    /// scaled by the lane-repeated scales of both operands.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_q8_avx512(q: &[u8], dl: &[f32], xq: &[i8], xdl: &[f32]) -> f32 {
        let groups = q.len() / 32;
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut g = 0;
        let step = |g: usize, acc: __m512| -> __m512 {
            // SAFETY: the caller checked `g + 2 ≤ groups` and the operand lengths.
            unsafe {
                let w = _mm512_loadu_epi8(q.as_ptr().add(g * 32) as *const i8);
                let x = _mm512_loadu_epi8(xq.as_ptr().add(g * 32));
                let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
                let scale = _mm512_mul_ps(
                    _mm512_loadu_ps(dl.as_ptr().add(g * LANES)),
                    _mm512_loadu_ps(xdl.as_ptr().add(g * LANES)),
                );
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc)
            }
        };
        while g + 4 <= groups {
            acc0 = step(g, acc0);
            acc1 = step(g + 2, acc1);
            g += 4;
        }
        while g + 2 <= groups {
            acc0 = step(g, acc0);
            g += 2;
        }
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        if g < groups {
            sum += dl[g * LANES] * xdl[g * LANES] * group_isum(q, xq, g) as f32;
        }
        sum
    }

    /// One group per step: both operands widened to i16 and multiplied pairwise
    /// into i32 (`vpmaddwd`), which cannot saturate as `vpmaddubsw` would for
    /// 8-bit weights.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8_avx2(q: &[u8], dl: &[f32], xq: &[i8], xdl: &[f32]) -> f32 {
        let groups = q.len() / 32;
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let step = |g: usize, acc: __m256| -> __m256 {
            // SAFETY: `g < groups` and the operand lengths were checked by the caller.
            unsafe {
                let w = _mm256_loadu_si256(q.as_ptr().add(g * 32) as *const __m256i);
                let x = _mm256_loadu_si256(xq.as_ptr().add(g * 32) as *const __m256i);
                let wl = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(w));
                let wh = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(w));
                let xl = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x));
                let xh = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(x));
                let isum = _mm256_add_epi32(_mm256_madd_epi16(wl, xl), _mm256_madd_epi16(wh, xh));
                let scale = _mm256_mul_ps(
                    _mm256_loadu_ps(dl.as_ptr().add(g * LANES)),
                    _mm256_loadu_ps(xdl.as_ptr().add(g * LANES)),
                );
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc)
            }
        };
        let mut g = 0;
        while g + 2 <= groups {
            acc0 = step(g, acc0);
            acc1 = step(g + 1, acc1);
            g += 2;
        }
        if g < groups {
            acc0 = step(g, acc0);
        }
        hsum256(_mm256_add_ps(acc0, acc1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operands(groups: usize, seed: u64) -> (Vec<u8>, Vec<f32>, Vec<i8>, Vec<f32>) {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let q: Vec<u8> = (0..groups * 32).map(|_| next() as u8).collect();
        let xq: Vec<i8> = (0..groups * 32).map(|_| next() as u8 as i8).collect();
        let mut dl = Vec::new();
        let mut xdl = Vec::new();
        for _ in 0..groups {
            dl.extend([(next() % 1000) as f32 / 7919.0; LANES]);
            xdl.extend([(next() % 1000) as f32 / 6007.0; LANES]);
        }
        (q, dl, xq, xdl)
    }

    /// Every SIMD level gives the scalar result for every group count (odd, even,
    /// 1), with the extreme quants 255 and -128 that saturating instructions would clip.
    #[test]
    fn every_kernel_set_matches_scalar() {
        for groups in [1, 2, 3, 5, 18, 48] {
            let (mut q, dl, mut xq, xdl) = operands(groups, groups as u64);
            q[0] = 255;
            q[1] = 255;
            xq[0] = -128;
            xq[1] = -128;
            let w: Vec<f32> = q.iter().map(|&v| v as f32 / 97.0 - 1.0).collect();
            let x: Vec<f32> = xq.iter().map(|&v| v as f32 / 61.0).collect();
            let want_q8 = KernelSet::Scalar.dot_q8(&q, &dl, &xq, &xdl);
            let exact: f64 = (0..groups)
                .map(|g| {
                    dl[g * LANES] as f64 * xdl[g * LANES] as f64 * group_isum(&q, &xq, g) as f64
                })
                .sum();
            assert!((want_q8 as f64 - exact).abs() <= 1e-4 * exact.abs().max(1.0));
            let want_f32 = KernelSet::Scalar.dot_f32(&w, &x);
            for set in KernelSet::available() {
                let got = set.dot_q8(&q, &dl, &xq, &xdl);
                assert!(
                    (got - want_q8).abs() <= 1e-5 * want_q8.abs().max(1.0),
                    "{set:?} q8, {groups} groups: {got} vs {want_q8}"
                );
                let got = set.dot_f32(&w, &x);
                assert!(
                    (got - want_f32).abs() <= 1e-5 * want_f32.abs().max(1.0),
                    "{set:?} f32, {groups} groups: {got} vs {want_f32}"
                );
            }
        }
    }
}
