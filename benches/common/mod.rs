//! What the benchmarks share.

/// Deterministic values in [-1, 1) from a 64-bit LCG, so runs see the same data and
/// no denormals or NaNs (which an uninitialised or all-zero buffer could hide or cause).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
