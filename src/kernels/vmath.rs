//! Vectorised math functions shared by the SIMD kernels (x86_64 AVX-512): `exp` on 16
//! lanes. Each is tested against the standard library on a sweep of inputs.

// AVX-512 intrinsics are stable since Rust 1.89 (the crate's rust-version).
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

/// `exp(x)` for 16 lanes: `x = n ln2 + r` with `|r| <= ln2/2`, a degree-6 polynomial for
/// `exp(r)` (relative error about 2e-7), then `2^n` by `vscalefps`. Inputs below -104 give
/// 0 (as exp does in f32 after rounding); above 88.7, `+inf`; NaN stays NaN.
///
/// # Safety
/// Only call from code compiled with AVX-512F and FMA.
#[inline(always)]
pub(crate) unsafe fn exp512(x: __m512) -> __m512 {
    // SAFETY: the caller runs with AVX-512F and FMA.
    unsafe {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp512_is_accurate() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")) {
            return;
        }
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn run(x: &[f32; 16], out: &mut [f32; 16]) {
            // SAFETY: 16 values each; the caller checked AVX-512F and FMA.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp512(_mm512_loadu_ps(x.as_ptr()))) }
        }
        let xs: Vec<f32> =
            (0..8000).map(|i| -100.0 + i as f32 * 0.0235).chain([0.0, -0.0, -103.9, -200.0, 89.0]).collect();
        for c in xs.chunks(16) {
            let mut buf = [0f32; 16];
            buf[..c.len()].copy_from_slice(c);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F and FMA were detected above.
            unsafe { run(&buf, &mut got) };
            for (&x, &g) in buf.iter().zip(&got).take(c.len()) {
                let want = (x as f64).exp();
                if want > f32::MAX as f64 {
                    assert!(g.is_infinite() && g > 0.0, "exp({x}) = {g}");
                    continue;
                }
                let tol = 4e-7 * want + 1e-38;
                assert!(((g as f64) - want).abs() <= tol, "exp({x}) = {g}, want {want}");
            }
        }
    }
}
