//! Rotary position embedding (RoPE) on f32 rows of `head_dim` values, with a table of
//! cosines and sines computed once per model. Which dimension holds positions or heads
//! is the tensor layer's business; this file rotates one row at a time.

use crate::{Error, Result};

/// Which pairs of a head's values are rotated together.
///
/// Both rotate pair number `i` (of `head_dim / 2`) by the angle `pos * theta^(-2i/head_dim)`;
/// they differ only in where the two members of pair `i` sit in the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pair `i` is `(i, i + head_dim/2)`: HF transformers' `rotate_half` (LLaMA,
    /// Mistral, Qwen, SmolLM2 checkpoints in safetensors), and GGML's NEOX mode.
    HalfSplit,
    /// Pair `i` is `(2i, 2i + 1)`: GGML's normal mode, used by GGUF llama-family files
    /// (the GGUF converter permutes the q/k weight rows so that this layout gives the
    /// same result as `HalfSplit` on the original checkpoint).
    Interleaved,
}

/// Cosines and sines of `pos * theta^(-2i/head_dim)` for every position below `max_pos`
/// and every pair `i < head_dim / 2`, in f64, from two small tables: angles of the
/// multiples of [`STEP`] and of the positions below it, joined by the angle-sum formulas
/// when a position is asked for (a table of every position took 33 MiB per base for
/// Gemma 3's 32768 positions of 128 pairs; these take 0.8 MiB). Joined in f64 and then
/// rounded, the values are those of the direct f64 formula rounded to f32.
#[derive(Clone, Debug)]
pub struct RopeTable {
    head_dim: usize,
    max_pos: usize,
    theta: f32,
    /// `[max_pos / STEP + 1, head_dim / 2]` (cos, sin) of the angles at `STEP * q`.
    coarse: Vec<(f64, f64)>,
    /// `[STEP, head_dim / 2]` (cos, sin) of the angles at `r < STEP`.
    fine: Vec<(f64, f64)>,
}

/// Positions `q * STEP + r` are joined from the coarse angle `q` and the fine one `r`.
const STEP: usize = 256;

impl RopeTable {
    /// A table for heads of `head_dim` values (even, non-zero) at positions
    /// `0..max_pos`, with base frequency `theta` (10000 for LLaMA 2, 100000 for SmolLM2).
    pub fn new(head_dim: usize, max_pos: usize, theta: f32) -> Result<RopeTable> {
        RopeTable::with_linear_scaling(head_dim, max_pos, theta, 1.0)
    }

    /// [`RopeTable::new`] with linear position scaling ("linear" RoPE scaling, position
    /// interpolation): position `p` is rotated as `p / factor`.
    pub fn with_linear_scaling(head_dim: usize, max_pos: usize, theta: f32, factor: f32) -> Result<RopeTable> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(Error::invalid(format!("rope table: scaling factor must be positive, got {factor}")));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::invalid(format!("rope table: head_dim must be even and non-zero, got {head_dim}")));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(Error::invalid(format!("rope table: theta must be positive and finite, got {theta}")));
        }
        if max_pos > u32::MAX as usize {
            return Err(Error::Overflow(format!("rope table for {max_pos} positions x {head_dim} dims")));
        }
        let half = head_dim / 2;
        let inv_freq: Vec<f64> =
            (0..half).map(|i| (theta as f64).powf(-((2 * i) as f64) / head_dim as f64) / factor as f64).collect();
        let angles = |positions: &mut dyn Iterator<Item = usize>| -> Vec<(f64, f64)> {
            positions
                .flat_map(|p| inv_freq.iter().map(move |&f| (p as f64 * f).sin_cos()).map(|(s, c)| (c, s)))
                .collect()
        };
        let coarse = angles(&mut (0..=max_pos / STEP).map(|q| q * STEP));
        let fine = angles(&mut (0..STEP));
        Ok(RopeTable { head_dim, max_pos, theta, coarse, fine })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Positions `0..max_pos` are covered.
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    pub fn theta(&self) -> f32 {
        self.theta
    }

    /// The cosines and sines for position `pos`, one per pair, into `cos` and `sin`
    /// (`head_dim / 2` values each). Panics if `pos >= max_pos` or a slice is short.
    pub fn angles(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        assert!(pos < self.max_pos, "rope: position {pos} beyond the table ({})", self.max_pos);
        let h = self.head_dim / 2;
        let (q, r) = (pos / STEP, pos % STEP);
        let (coarse, fine) = (&self.coarse[q * h..(q + 1) * h], &self.fine[r * h..(r + 1) * h]);
        for (((c, s), &(ca, sa)), &(cb, sb)) in cos[..h].iter_mut().zip(&mut sin[..h]).zip(coarse).zip(fine) {
            *c = (ca * cb - sa * sb) as f32;
            *s = (sa * cb + ca * sb) as f32;
        }
    }
}

/// Rotate one row of `table.head_dim()` values in place as position `pos`: each pair
/// `(a, b)` becomes `(a cos - b sin, a sin + b cos)`. For several rows at one position,
/// [`RopeTable::angles`] once and [`rope_row_with`] per row.
///
/// Panics if the row length or position does not fit the table (the tensor op checks).
pub fn rope_row(row: &mut [f32], table: &RopeTable, pos: usize, layout: RopeLayout) {
    assert_eq!(row.len(), table.head_dim, "rope: row length differs from the table's head_dim");
    let h = table.head_dim / 2;
    let (mut cos, mut sin) = (vec![0f32; h], vec![0f32; h]);
    table.angles(pos, &mut cos, &mut sin);
    rope_row_with(row, &cos, &sin, layout);
}

/// Rotate one row (`2 * cos.len()` values) in place by the given angles.
pub fn rope_row_with(row: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    assert!(row.len() == 2 * cos.len() && sin.len() == cos.len(), "rope: row length differs from the angles'");
    match layout {
        RopeLayout::HalfSplit => {
            let (lo, hi) = row.split_at_mut(cos.len());
            for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                let (x0, x1) = (*a, *b);
                *a = x0 * c - x1 * s;
                *b = x0 * s + x1 * c;
            }
        }
        RopeLayout::Interleaved => {
            for ((pair, &c), &s) in row.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * c - x1 * s;
                pair[1] = x0 * s + x1 * c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Direct formula, in f64, with the pair positions spelled out per layout.
    fn reference(row: &[f32], pos: usize, theta: f64, layout: RopeLayout) -> Vec<f64> {
        let d = row.len();
        let mut out: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        for i in 0..d / 2 {
            let angle = pos as f64 / theta.powf(2.0 * i as f64 / d as f64);
            let (j, k) = match layout {
                RopeLayout::HalfSplit => (i, i + d / 2),
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            };
            let (a, b) = (row[j] as f64, row[k] as f64);
            out[j] = a * angle.cos() - b * angle.sin();
            out[k] = a * angle.sin() + b * angle.cos();
        }
        out
    }

    #[test]
    fn rows_match_the_direct_formula() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (d, theta) in [(2, 10000.0), (8, 10000.0), (64, 100000.0), (128, 500000.0)] {
            let table = RopeTable::new(d, 1200, theta).unwrap();
            for pos in [0, 1, 2, 17, 1199] {
                let row: Vec<f32> = (0..d).map(|_| rng.random_range(-2.0..2.0)).collect();
                for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
                    let mut got = row.clone();
                    rope_row(&mut got, &table, pos, layout);
                    let want = reference(&row, pos, theta as f64, layout);
                    for (g, w) in got.iter().zip(&want) {
                        assert!((*g as f64 - w).abs() < 2e-6, "d={d} pos={pos} {layout:?}: {g} vs {w}");
                    }
                    if pos == 0 {
                        assert_eq!(got, row, "position 0 is the identity");
                    }
                    // A rotation keeps each pair's length.
                    let n0: f32 = row.iter().map(|v| v * v).sum();
                    let n1: f32 = got.iter().map(|v| v * v).sum();
                    assert!((n0 - n1).abs() < 1e-4 * n0.max(1.0));
                }
            }
        }
    }

    #[test]
    fn the_two_layouts_differ_by_a_permutation() {
        // Interleaving a half-split row, rotating, and un-interleaving gives the
        // half-split rotation: the reason GGUF converters permute q/k weights.
        let d = 16;
        let table = RopeTable::new(d, 10, 10000.0).unwrap();
        let row: Vec<f32> = (0..d).map(|i| i as f32 * 0.37 - 2.0).collect();
        let mut half = row.clone();
        rope_row(&mut half, &table, 7, RopeLayout::HalfSplit);
        let mut inter: Vec<f32> = (0..d).map(|j| if j % 2 == 0 { row[j / 2] } else { row[d / 2 + j / 2] }).collect();
        rope_row(&mut inter, &table, 7, RopeLayout::Interleaved);
        let back: Vec<f32> =
            (0..d).map(|i| if i < d / 2 { inter[2 * i] } else { inter[2 * (i - d / 2) + 1] }).collect();
        assert_eq!(back, half);
    }

    /// The joined angles are the direct f64 ones rounded to f32, at every position of a
    /// long context (all the coarse steps, both sides of each), scaled or not.
    #[test]
    fn joined_angles_equal_the_direct_ones() {
        for (d, theta, factor, max_pos) in
            [(64, 10000.0f32, 1.0f32, 4096), (256, 1_000_000.0, 1.0, 32768), (128, 500000.0, 8.0, 3000)]
        {
            let table = RopeTable::with_linear_scaling(d, max_pos, theta, factor).unwrap();
            let h = d / 2;
            let (mut cos, mut sin) = (vec![0f32; h], vec![0f32; h]);
            let mut differ = 0;
            for pos in (0..max_pos).filter(|p| p % STEP <= 2 || p % STEP >= STEP - 2 || p % 97 == 0) {
                table.angles(pos, &mut cos, &mut sin);
                for i in 0..h {
                    let f = (theta as f64).powf(-((2 * i) as f64) / d as f64) / factor as f64;
                    let (s, c) = (pos as f64 * f).sin_cos();
                    // Equal, or (for a value within 1e-16 of a rounding boundary) one ulp off.
                    for (got, want) in [(cos[i], c), (sin[i], s)] {
                        if got != want as f32 {
                            differ += 1;
                            assert!(
                                (got as f64 - want).abs() <= f32::EPSILON as f64 * want.abs().max(1e-30),
                                "d={d} pos={pos} pair {i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
            assert!(differ <= 2, "{differ} values differ from the direct formula by an ulp");
        }
    }

    #[test]
    fn bad_tables_are_errors() {
        assert!(RopeTable::new(7, 10, 10000.0).is_err());
        assert!(RopeTable::new(0, 10, 10000.0).is_err());
        assert!(RopeTable::new(8, 10, 0.0).is_err());
        assert!(RopeTable::new(8, usize::MAX, 10000.0).is_err());
    }
}
