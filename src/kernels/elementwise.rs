//! Elementwise arithmetic on f32 slices: binary ops (equal lengths, or one side a
//! scalar), scaling, and the activations SiLU and GELU (exact erf form and tanh form).
//! Shapes and broadcasting are the tensor layer's business, not this file's.

use super::loop_isa::LoopIsa;
use super::rows::{for_each_chunk, for_each_row};

/// The four arithmetic binary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    /// `a op b` on one pair of values.
    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }

    /// The op's name as it appears in errors and traces (`add`, `sub`, ...).
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

// Each public entry point matches on the op once and hands a concrete closure to one
// of these loops, so every (op, loop) pair is compiled (and vectorised) separately.

fn zip_map(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) {
    assert!(a.len() == out.len() && b.len() == out.len(), "elementwise: slice lengths differ");
    for_each_chunk(out, |off, o| {
        for ((o, &x), &y) in o.iter_mut().zip(&a[off..]).zip(&b[off..]) {
            *o = f(x, y);
        }
    });
}

fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send) {
    assert_eq!(x.len(), out.len(), "elementwise: slice lengths differ");
    for_each_chunk(out, |off, o| {
        for (o, &v) in o.iter_mut().zip(&x[off..]) {
            *o = f(v);
        }
    });
}

/// `out[i] = a[i] op b[i]`; all three slices have the same length.
pub fn binary(op: BinaryOp, a: &[f32], b: &[f32], out: &mut [f32]) {
    match op {
        BinaryOp::Add => zip_map(a, b, out, |x, y| x + y),
        BinaryOp::Sub => zip_map(a, b, out, |x, y| x - y),
        BinaryOp::Mul => zip_map(a, b, out, |x, y| x * y),
        BinaryOp::Div => zip_map(a, b, out, |x, y| x / y),
    }
}

/// `out[i] = a[i] op b` (the right side is one value).
pub fn binary_scalar_rhs(op: BinaryOp, a: &[f32], b: f32, out: &mut [f32]) {
    match op {
        BinaryOp::Add => map(a, out, |x| x + b),
        BinaryOp::Sub => map(a, out, |x| x - b),
        BinaryOp::Mul => map(a, out, |x| x * b),
        BinaryOp::Div => map(a, out, |x| x / b),
    }
}

/// `out[i] = a op b[i]` (the left side is one value).
pub fn binary_scalar_lhs(op: BinaryOp, a: f32, b: &[f32], out: &mut [f32]) {
    match op {
        BinaryOp::Add => map(b, out, |y| a + y),
        BinaryOp::Sub => map(b, out, |y| a - y),
        BinaryOp::Mul => map(b, out, |y| a * y),
        BinaryOp::Div => map(b, out, |y| a / y),
    }
}

pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    binary(BinaryOp::Add, a, b, out)
}

pub fn sub(a: &[f32], b: &[f32], out: &mut [f32]) {
    binary(BinaryOp::Sub, a, b, out)
}

pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    binary(BinaryOp::Mul, a, b, out)
}

pub fn div(a: &[f32], b: &[f32], out: &mut [f32]) {
    binary(BinaryOp::Div, a, b, out)
}

/// `out[i] = x[i] * s`.
pub fn scale(x: &[f32], s: f32, out: &mut [f32]) {
    map(x, out, |v| v * s)
}

/// `out[i] = x[i] + s`.
pub fn add_scalar(x: &[f32], s: f32, out: &mut [f32]) {
    map(x, out, |v| v + s)
}

/// SiLU (swish): `x * sigmoid(x)`.
#[inline]
pub fn silu_one(x: f32) -> f32 {
    // For very negative x, exp(-x) is +inf and the quotient is -0: the right limit.
    x / (1.0 + (-x).exp())
}

/// GELU with the exact Gaussian CDF, `x * Phi(x) = x/2 * erfc(-x/sqrt 2)` (PyTorch's
/// default `nn.GELU()`, HF's `"gelu"`). Computed in f64 through [`erfc_fast`], whose
/// relative accuracy keeps even the tiny negative-side values right to f32 rounding.
#[inline]
pub fn gelu_one(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * erfc_fast(-x * std::f64::consts::FRAC_1_SQRT_2)) as f32
}

/// GELU's tanh approximation, `x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`
/// (HF's `"gelu_pytorch_tanh"`, GGML's `gelu`).
#[inline]
pub fn gelu_tanh_one(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// `out[i] = silu(x[i])`.
pub fn silu(x: &[f32], out: &mut [f32]) {
    map(x, out, silu_one)
}

/// SwiGLU on rows of stacked gate and up projections: row `r` of `gate_up` is
/// `[gate (f values), up (f values)]`, and `out[r, j] = silu(gate[j]) * up[j]`.
pub fn swiglu_rows(gate_up: &[f32], f: usize, out: &mut [f32]) {
    swiglu_rows_with(gate_up, f, out, true)
}

/// [`swiglu_rows`], with the AVX-512 build only when `simd` (tests compare both).
fn swiglu_rows_with(gate_up: &[f32], f: usize, out: &mut [f32], simd: bool) {
    assert_eq!(gate_up.len(), 2 * out.len(), "swiglu: input must hold a gate and an up row per output row");
    #[cfg(target_arch = "x86_64")]
    let simd = simd && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma");
    for_each_row(out, f, |r, o| {
        let (gate, up) = gate_up[2 * f * r..2 * f * (r + 1)].split_at(f);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX-512F and FMA were detected; the three slices have `f` values.
            return unsafe { swiglu_row_avx512(gate, up, o) };
        }
        let _ = simd;
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            *o = silu_one(g) * u;
        }
    });
}

/// `out = silu(gate) * up` on 16 lanes at a time, `exp` vectorised (see `vmath`).
///
/// # Safety
/// The CPU must support AVX-512F and FMA; `gate`, `up` and `out` have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn swiglu_row_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(gate.len() == out.len() && up.len() == out.len());
    let n = out.len();
    let mut i = 0;
    // SAFETY: masked loads and stores touch only lanes `i..n` of the three slices.
    unsafe {
        while i < n {
            let m: __mmask16 = if n - i >= 16 { 0xFFFF } else { ((1u32 << (n - i)) - 1) as __mmask16 };
            let g = _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i));
            let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
            // silu(g) = g / (1 + exp(-g)); for very negative g, exp overflows to +inf and the
            // quotient is -0, the right limit (as in `silu_one`).
            let e = super::vmath::exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, _mm512_mul_ps(s, u));
            i += 16;
        }
    }
}

/// `exp(x)` in f32 with no libm call and no branch, so loops over it vectorise: `x = n ln2 +
/// r`, a degree-6 polynomial for `exp(r)` (relative error about 2e-7), `2^n` built in the
/// exponent bits. The argument is clamped to `[-87, 88]` (results from 1.6e-38 to 1.7e38,
/// never 0 or infinity), which is what [`gelu_tanh_f32`] needs; NaN stays NaN.
#[inline(always)]
fn exp_f32_clamped(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 * 2^23 trick (no libm `roundf` on baseline x86_64).
    const SHIFT: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// GELU's tanh approximation in f32 for throughput (Gemma's MLP):
/// `x/2 (1 + tanh z) = x / (1 + exp(-2z))`, `z = sqrt(2/pi) (x + 0.044715 x^3)`, with
/// [`exp_f32_clamped`], so loops over it vectorise (libm's `tanhf` does not, and was a
/// fifth of Gemma 3's prefill). Within `1e-6 * max(1, |x|)` of [`gelu_tanh_one`] (tested);
/// NaN stays NaN (it is the numerator).
#[inline(always)]
pub fn gelu_tanh_f32(x: f32) -> f32 {
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
    let z2 = TWO_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x / (1.0 + exp_f32_clamped(-z2))
}

/// GeGLU on rows of stacked gate and up projections: row `r` of `gate_up` is
/// `[gate (f values), up (f values)]`, and `out[r, j] = gelu_tanh(gate[j]) * up[j]`
/// ([`gelu_tanh_f32`]; compiled for AVX-512 or AVX2 where the CPU has them).
pub fn geglu_rows(gate_up: &[f32], f: usize, out: &mut [f32]) {
    geglu_rows_with(gate_up, f, out, LoopIsa::detect())
}

fn geglu_rows_with(gate_up: &[f32], f: usize, out: &mut [f32], isa: LoopIsa) {
    assert_eq!(gate_up.len(), 2 * out.len(), "geglu: input must hold a gate and an up row per output row");
    #[inline(always)]
    fn row(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = gelu_tanh_f32(g) * u;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    fn row_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
        row(gate, up, out)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn row_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
        row(gate, up, out)
    }
    for_each_row(out, f, |r, o| {
        let (gate, up) = gate_up[2 * f * r..2 * f * (r + 1)].split_at(f);
        match isa {
            LoopIsa::Baseline => row(gate, up, o),
            // SAFETY: `LoopIsa::detect` found AVX-512F and FMA (tests pass only detected ISAs).
            #[cfg(target_arch = "x86_64")]
            LoopIsa::Avx512 => unsafe { row_avx512(gate, up, o) },
            // SAFETY: `LoopIsa::detect` found AVX2 and FMA (tests pass only detected ISAs).
            #[cfg(target_arch = "x86_64")]
            LoopIsa::Avx2 => unsafe { row_avx2(gate, up, o) },
        }
    });
}

/// GELU with the Gaussian CDF in f32 for throughput (an encoder's MLP): erf from
/// Abramowitz & Stegun 7.1.28, `erf(a) = 1 - (1 + a1 a + ... + a6 a^6)^-16` for `a >= 0`,
/// absolute error at most 3e-7 in erf, odd symmetry for negative arguments. No branch
/// and no `exp`, so loops over it vectorise; for large |x| the power overflows to
/// infinity and the result is exactly `x` or `-0`, never NaN. Within `1e-6 * max(1, |x|)`
/// of [`gelu_one`] (tested).
#[inline(always)]
pub fn gelu_erf_f32(x: f32) -> f32 {
    const A: [f32; 6] = [0.070_523_08, 0.042_282_01, 0.009_270_527, 0.000_152_014_3, 0.000_276_567_2, 0.000_043_063_8];
    let a = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let p = 1.0 + a * (A[0] + a * (A[1] + a * (A[2] + a * (A[3] + a * (A[4] + a * A[5])))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    let tail = 1.0 / (p8 * p8); // 1 - erf(a)
    let erf = (1.0 - tail).copysign(x);
    0.5 * x * (1.0 + erf)
}

/// `x[i] = gelu(x[i])` in place with [`gelu_erf_f32`], split over the pool.
pub fn gelu_erf_in_place(x: &mut [f32]) {
    for_each_chunk(x, |_, c| c.iter_mut().for_each(|v| *v = gelu_erf_f32(*v)));
}

/// `out[i] = gelu(x[i])`, the exact (erf) form; see [`gelu_one`].
pub fn gelu(x: &[f32], out: &mut [f32]) {
    map(x, out, gelu_one)
}

/// `out[i] = gelu_tanh(x[i])`, the tanh approximation; see [`gelu_tanh_one`].
pub fn gelu_tanh(x: &[f32], out: &mut [f32]) {
    map(x, out, gelu_tanh_one)
}

/// Where [`erf`] and [`erfc`] switch from the power series to the continued fraction.
const SERIES_LIMIT: f64 = 1.5;

/// The Maclaurin series `erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))`,
/// accurate to about 1e-15 for |x| < 1.5 (the largest term there is about 1, so
/// little is lost to cancellation; at 2 the error already reaches 2e-14).
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let mut power = x; // (-1)^n x^(2n+1) / n!
    let mut sum = x;
    for n in 1..100 {
        power *= -x2 / n as f64;
        let term = power / (2 * n + 1) as f64;
        sum += term;
        if term.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    sum * std::f64::consts::FRAC_2_SQRT_PI
}

/// `erfc(x)` for x >= 1.5 from Laplace's continued fraction
/// `sqrt(pi) e^(x^2) erfc(x) = 1 / (x + (1/2) / (x + 1 / (x + (3/2) / (x + ...))))`,
/// evaluated forwards (modified Lentz) until a step changes the value by < 1e-16
/// (about 90 steps at 1.5, 20 at 5).
fn erfc_fraction(x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut f = x;
    let mut c = x;
    let mut d = 0.0;
    for k in 1..500 {
        let a = 0.5 * k as f64;
        d = x + a * d;
        if d == 0.0 {
            d = TINY;
        }
        c = x + a / c;
        if c == 0.0 {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / (std::f64::consts::PI.sqrt() * f)
}

/// Chebyshev coefficients of `g(t) = ln(erfc(z)) + z^2 - ln(t)` with `t = 1/(1 + z/2)`,
/// over `t` in [1/6, 1] (z in [0, 10]). Fitted for this crate by interpolation at the
/// 15 Chebyshev nodes, from the definition (see the test that checks them against
/// [`erfc`]); the truncation error is about 2e-11 relative.
const ERFC_CHEB: [f64; 15] = [
    -0.5511712503141002,
    0.5502563182397036,
    0.007267847232714905,
    -0.006366320664967636,
    -0.00015938484563064273,
    0.0001809907017109739,
    -2.515830672663218e-06,
    -6.420078985369671e-06,
    5.681936722160922e-07,
    2.1429784034706262e-07,
    -4.464016802134078e-08,
    -4.607201479582083e-09,
    2.492906399827651e-09,
    -9.519386390266504e-11,
    -1.0120958700750767e-10,
];

/// Largest z covered by [`ERFC_CHEB`].
const ERFC_FIT_MAX: f64 = 10.0;

/// `erfc(z)` to about 3e-11 relative error everywhere: `t * exp(-z^2 + g(t))` with
/// `g` from a degree-14 Chebyshev fit for |z| <= 10, the continued fraction beyond.
/// About ten times faster than [`erfc`]; meant for f32 results.
pub fn erfc_fast(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    let az = z.abs();
    let tail = if az > ERFC_FIT_MAX {
        erfc_fraction(az)
    } else {
        let t = 1.0 / (1.0 + 0.5 * az);
        let (lo, hi) = (1.0 / 6.0, 1.0);
        let u = (2.0 * t - lo - hi) / (hi - lo);
        // Clenshaw's recurrence for sum c_k T_k(u).
        let (mut b1, mut b2) = (0.0, 0.0);
        for &c in ERFC_CHEB[1..].iter().rev() {
            (b1, b2) = (2.0 * u * b1 - b2 + c, b1);
        }
        let g = u * b1 - b2 + ERFC_CHEB[0];
        t * (g - az * az).exp()
    };
    if z >= 0.0 {
        tail
    } else {
        2.0 - tail
    }
}

/// The error function, to about 1e-15 absolute over the whole real line.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let ax = x.abs();
    let r = if ax < SERIES_LIMIT { erf_series(ax) } else { 1.0 - erfc_fraction(ax) };
    r.copysign(x)
}

/// The complementary error function `1 - erf(x)`, accurate in relative terms also
/// where it is tiny (large positive x).
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else if x >= SERIES_LIMIT {
        erfc_fraction(x)
    } else if x <= -SERIES_LIMIT {
        2.0 - erfc_fraction(-x)
    } else {
        1.0 - erf_series(x.abs()).copysign(x)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn fast_f32_gelu_is_close_to_the_f64_definition_everywhere() {
        let mut worst = 0f64;
        let mut x = -30.0f32;
        while x <= 30.0 {
            let (got, want) = (gelu_erf_f32(x) as f64, gelu_one(x) as f64);
            let err = (got - want).abs() / (x.abs() as f64).max(1.0);
            worst = worst.max(err);
            assert!(err <= 1e-6, "x={x}: {got} vs {want}");
            x += 0.001;
        }
        for (x, want) in [(0.0f32, 0.0f32), (1e30, 1e30), (-1e30, 0.0), (f32::INFINITY, f32::INFINITY)] {
            assert_eq!(gelu_erf_f32(x), want, "x={x}");
        }
        assert!(gelu_erf_f32(f32::NAN).is_nan());
        let mut v: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5000.0) / 700.0).collect();
        let want: Vec<f32> = v.iter().map(|&x| gelu_erf_f32(x)).collect();
        gelu_erf_in_place(&mut v);
        assert_eq!(v, want);
        assert!(worst > 0.0);
    }

    #[test]
    fn geglu_matches_the_tanh_definition_on_every_isa() {
        // Sweep plus random values; both the vectorised form and the tanh form in f64.
        let mut rng = 0x9e37_79b9_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32
        };
        let f = 67; // not a multiple of any vector width
        let rows = 9;
        let mut gate_up: Vec<f32> = (0..2 * f * rows).map(|_| (next() - 0.5) * 24.0).collect();
        gate_up[..8].copy_from_slice(&[0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 200.0, -200.0]);
        let want: Vec<f32> = (0..rows * f)
            .map(|i| {
                let (r, j) = (i / f, i % f);
                let g = gate_up[2 * f * r + j] as f64;
                let u = gate_up[2 * f * r + f + j] as f64;
                let t = (0.797_884_560_802_865_4 * (g + 0.044715 * g * g * g)).tanh();
                (0.5 * g * (1.0 + t) * u) as f32
            })
            .collect();
        let isas = LoopIsa::detected();
        for isa in isas {
            let mut got = vec![0f32; rows * f];
            geglu_rows_with(&gate_up, f, &mut got, isa);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let u = gate_up[2 * f * (i / f) + f + i % f];
                let tol = 1e-6 * (w.abs().max(u.abs())).max(1.0);
                assert!((g - w).abs() <= tol, "{isa:?} [{i}]: {g} vs {w}");
            }
        }
        // NaN stays NaN; the scalar reference and the fast form agree on a fine sweep.
        assert!(gelu_tanh_f32(f32::NAN).is_nan());
        for i in 0..20000 {
            let x = -20.0 + i as f32 * 0.002;
            let (a, b) = (gelu_tanh_f32(x), gelu_tanh_one(x));
            assert!((a - b).abs() <= 1e-6 * x.abs().max(1.0), "gelu_tanh({x}): {a} vs {b}");
        }
    }

    #[test]
    fn swiglu_simd_equals_scalar() {
        let f = 37;
        let gu: Vec<f32> = (0..5 * 2 * f)
            .map(|i| match i % 11 {
                0 => -150.0,
                1 => 95.0,
                _ => ((i * 7919 % 2000) as f32 - 1000.0) / 97.0,
            })
            .collect();
        let (mut a, mut b) = (vec![0f32; 5 * f], vec![0f32; 5 * f]);
        super::swiglu_rows_with(&gu, f, &mut a, false);
        super::swiglu_rows_with(&gu, f, &mut b, true);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-6 * (1.0 + x.abs()), "[{i}] {x} vs {y}");
        }
    }

    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64, range: f32) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-range..range)).collect()
    }

    /// `2/sqrt(pi) * integral_0^x e^(-t^2) dt` by composite Simpson's rule: a
    /// reference that shares nothing with the series or the continued fraction.
    fn erf_by_quadrature(x: f64, n: usize) -> f64 {
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * std::f64::consts::FRAC_2_SQRT_PI
    }

    #[test]
    fn erf_matches_quadrature_and_table_values() {
        for i in -60..=60 {
            let x = i as f64 * 0.1 + 0.003;
            let (got, want) = (erf(x), erf_by_quadrature(x, 20_000));
            assert!((got - want).abs() < 1e-13, "erf({x}) = {got}, quadrature {want}");
        }
        // Values printed by Python's math.erf / math.erfc (an independent libm).
        let table = [
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (1.9999, 0.9953201979070294),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
        ];
        for (x, want) in table {
            assert!((erf(x) - want).abs() < 1e-15, "erf({x}) = {}, want {want}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-15);
        }
        let tails = [(1.5, 0.033894853524689274), (2.5, 0.0004069520174449589), (5.0, 1.5374597944280351e-12)];
        for (x, want) in tails {
            assert!(((erfc(x) - want) / want).abs() < 1e-13, "erfc({x}) = {}, want {want}", erfc(x));
            assert!((erfc(-x) - (2.0 - want)).abs() < 1e-15);
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(40.0), 1.0);
        assert_eq!(erfc(40.0), 0.0);
        assert!(erf(f64::NAN).is_nan() && erfc(f64::NAN).is_nan());
        // The fast form agrees with the careful one, in relative terms, everywhere.
        for i in -3000..=3000 {
            let z = i as f64 * 0.005 + 1e-4;
            let (f, e) = (erfc_fast(z), erfc(z));
            assert!(((f - e) / e).abs() < 5e-11, "erfc_fast({z}) = {f}, erfc {e}");
        }
        assert!(erfc_fast(f64::NAN).is_nan() && erfc_fast(40.0) == 0.0 && erfc_fast(-40.0) == 2.0);
        // The two methods agree where they meet.
        let s = erf_series(SERIES_LIMIT);
        let c = 1.0 - erfc_fraction(SERIES_LIMIT);
        assert!((s - c).abs() < 1e-14, "series {s} vs fraction {c}");
    }

    #[test]
    fn binary_ops_match_scalar_loops() {
        for n in [0, 1, 7, 33, 1000, 70_001] {
            let a = random(n, 1, 4.0);
            let b: Vec<f32> = random(n, 2, 4.0).iter().map(|v| v + 5.0).collect(); // no zeros for div
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                let want: Vec<f32> = a
                    .iter()
                    .zip(&b)
                    .map(|(&x, &y)| {
                        let (x, y) = (x as f64, y as f64);
                        (match op {
                            BinaryOp::Add => x + y,
                            BinaryOp::Sub => x - y,
                            BinaryOp::Mul => x * y,
                            BinaryOp::Div => x / y,
                        }) as f32
                    })
                    .collect();
                let mut got = vec![f32::NAN; n];
                binary(op, &a, &b, &mut got);
                assert_eq!(got, want, "{op:?} n={n}");
                if n > 0 {
                    binary_scalar_rhs(op, &a, b[0], &mut got);
                    assert!(got.iter().zip(&a).all(|(&g, &x)| g == op.apply(x, b[0])));
                    binary_scalar_lhs(op, a[0], &b, &mut got);
                    assert!(got.iter().zip(&b).all(|(&g, &y)| g == op.apply(a[0], y)));
                }
            }
            let mut got = vec![0.0; n];
            scale(&a, -0.5, &mut got);
            assert!(got.iter().zip(&a).all(|(&g, &x)| g == x * -0.5));
            add_scalar(&a, 0.25, &mut got);
            assert!(got.iter().zip(&a).all(|(&g, &x)| g == x + 0.25));
        }
    }

    #[test]
    fn activations_match_f64_formulas() {
        for n in [1, 7, 33, 1000, 40_000] {
            let x = random(n, 3, 12.0);
            let mut got = vec![0.0; n];
            silu(&x, &mut got);
            for (&g, &v) in got.iter().zip(&x) {
                let v = v as f64;
                let want = v / (1.0 + (-v).exp());
                assert!((g as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3), "silu({v}) = {g}, want {want}");
            }
            gelu(&x, &mut got);
            for (&g, &v) in got.iter().zip(&x) {
                let v = v as f64;
                let want = 0.5 * v * (1.0 + erf_by_quadrature(v / 2f64.sqrt(), 1000));
                // Absolute bound: the quadrature reference itself cancels on the far left.
                assert!((g as f64 - want).abs() <= 1e-6 * want.abs() + 1e-12, "gelu({v}) = {g}, want {want}");
            }
            gelu_tanh(&x, &mut got);
            for (&g, &v) in got.iter().zip(&x) {
                let v = v as f64;
                let want = 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh());
                assert!((g as f64 - want).abs() <= 1e-6 * want.abs() + 1e-7, "gelu_tanh({v}) = {g}, want {want}");
            }
        }
        // The far left tail keeps relative accuracy: gelu(-8) = -8 * Phi(-8).
        // Phi(-8) = erfc(8 / sqrt 2) / 2, with erfc from Python's math.erfc.
        let want = -8.0 * 0.5 * 1.2441921148543639e-15;
        let got = gelu_one(-8.0) as f64;
        assert!(((got - want) / want).abs() < 1e-5, "gelu(-8) = {got}, want {want}");
        assert_eq!(silu_one(-200.0), 0.0);
        assert_eq!(silu_one(200.0), 200.0);
    }
}
