//! Instruction sets a plain-Rust loop is compiled for: the loop is written once as an
//! `#[inline(always)]` function and wrapped in `#[target_feature]` functions, one per
//! [`LoopIsa`], so the compiler vectorises it for what the CPU has.

/// The instruction sets of such loops; `Baseline` is the portable build and the reference
/// the others are tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoopIsa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl LoopIsa {
    /// The widest this CPU runs (AVX-512F or AVX2, each with FMA).
    pub(crate) fn detect() -> LoopIsa {
        *LoopIsa::detected().last().expect("Baseline is always there")
    }

    /// Every one this CPU runs, narrowest first (tests compare them with `Baseline`).
    pub(crate) fn detected() -> Vec<LoopIsa> {
        #[allow(unused_mut)]
        let mut v = vec![LoopIsa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(LoopIsa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                v.push(LoopIsa::Avx512);
            }
        }
        v
    }
}
