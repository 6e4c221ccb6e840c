//! [`WeightFormat`]: the block-quantised weight formats, each with one identity. Its
//! discriminant is also the format id that the kernels take as a const-generic `u8`
//! (`WeightFormat::Q4_0 as u8`, back with [`WeightFormat::from_id`]), and every
//! per-format constant the kernels need (GGUF block size, quant offset, packed layout) is a
//! `const fn` here, so no other table of formats exists.

use super::{BlockQ4_0, BlockQ4_1, BlockQ4_K, BlockQ5_0, BlockQ5_1, BlockQ5_K, BlockQ6_K, BlockQ8_0, QuantBlock};

/// A block-quantised weight format (GGML's block layouts).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WeightFormat {
    /// 32 weights: f16 `d`, 4-bit `q`; `w = d (q - 8)`.
    Q4_0 = 0,
    /// 32 weights: f16 `d`, f16 `m`, 4-bit `q`; `w = d q + m`.
    Q4_1 = 1,
    /// 32 weights: f16 `d`, 5-bit `q`; `w = d (q - 16)`.
    Q5_0 = 2,
    /// 32 weights: f16 `d`, f16 `m`, 5-bit `q`; `w = d q + m`.
    Q5_1 = 3,
    /// 32 weights: f16 `d`, i8 `q`; `w = d q`.
    Q8_0 = 4,
    /// 256 weights in 8 sub-blocks with 6-bit scales and mins, 4-bit quants.
    Q4_K = 5,
    /// 256 weights in 8 sub-blocks with 6-bit scales and mins, 5-bit quants.
    Q5_K = 6,
    /// 256 weights in 16 sub-blocks with 8-bit scales, 6-bit quants.
    Q6_K = 7,
}

impl WeightFormat {
    /// Number of formats (ids are `0..COUNT`).
    pub const COUNT: usize = 8;

    /// Every format, in id order (`ALL[i] as usize == i`).
    pub const ALL: [WeightFormat; Self::COUNT] =
        [Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q5_1, Self::Q8_0, Self::Q4_K, Self::Q5_K, Self::Q6_K];

    /// The format id (the kernels' const-generic parameter).
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// The format of id `id`; panics (at compile time in a const context) for an id that
    /// is not one.
    pub const fn from_id(id: u8) -> WeightFormat {
        match id {
            0 => Self::Q4_0,
            1 => Self::Q4_1,
            2 => Self::Q5_0,
            3 => Self::Q5_1,
            4 => Self::Q8_0,
            5 => Self::Q4_K,
            6 => Self::Q5_K,
            7 => Self::Q6_K,
            _ => panic!("not a weight format id"),
        }
    }

    /// Weights per block.
    pub const fn block_len(self) -> usize {
        match self {
            Self::Q4_0 => BlockQ4_0::LEN,
            Self::Q4_1 => BlockQ4_1::LEN,
            Self::Q5_0 => BlockQ5_0::LEN,
            Self::Q5_1 => BlockQ5_1::LEN,
            Self::Q8_0 => BlockQ8_0::LEN,
            Self::Q4_K => BlockQ4_K::LEN,
            Self::Q5_K => BlockQ5_K::LEN,
            Self::Q6_K => BlockQ6_K::LEN,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        use std::mem::size_of;
        match self {
            Self::Q4_0 => size_of::<BlockQ4_0>(),
            Self::Q4_1 => size_of::<BlockQ4_1>(),
            Self::Q5_0 => size_of::<BlockQ5_0>(),
            Self::Q5_1 => size_of::<BlockQ5_1>(),
            Self::Q8_0 => size_of::<BlockQ8_0>(),
            Self::Q4_K => size_of::<BlockQ4_K>(),
            Self::Q5_K => size_of::<BlockQ5_K>(),
            Self::Q6_K => size_of::<BlockQ6_K>(),
        }
    }

    /// A K-quant: 256-weight super-blocks of eight (Q6_K: sixteen) sub-blocks.
    pub const fn is_k_quant(self) -> bool {
        matches!(self, Self::Q4_K | Self::Q5_K | Self::Q6_K)
    }

    /// The block carries an f16 min after its f16 scale (`w = d q + m`); the K-quants'
    /// mins are per sub-block (see [`WeightFormat::has_min`]).
    pub(super) const fn has_f16_min(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1)
    }

    /// Byte offset of the quants in a 32-weight GGUF block: after the f16 scale, the f16
    /// min and the 32 fifth bits, where the format has them.
    pub(super) const fn qs_offset(self) -> usize {
        let q5 = matches!(self, Self::Q5_0 | Self::Q5_1);
        2 + 2 * self.has_f16_min() as usize + 4 * q5 as usize
    }

    // ---- the packed 16-row layout (packed.rs) and its kernels

    /// Packed quants are nibbles (Q4_0, Q4_1, Q4_K; else one unsigned byte each).
    pub(super) const fn nibbles(self) -> bool {
        matches!(self, Self::Q4_0 | Self::Q4_1 | Self::Q4_K)
    }

    /// Packed scales are f32 (the K-quants' exact products of scales; else f16).
    pub(super) const fn f32_scales(self) -> bool {
        self.is_k_quant()
    }

    /// Packed `s2` is a per-block min added times the activation sum.
    pub(super) const fn has_min(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1 | Self::Q4_K | Self::Q5_K)
    }

    /// Packed `s2` is the scale of the block's second half (Q6_K).
    pub(super) const fn two_scales(self) -> bool {
        matches!(self, Self::Q6_K)
    }

    /// Integer offset of the packed (unsigned) quants: `q - offset` times the
    /// activations, i.e. the offset times the activation sum of the block (of each half
    /// for Q6_K) is subtracted.
    pub(super) const fn quant_offset(self) -> i32 {
        match self {
            Self::Q4_0 => 8,
            Self::Q5_0 => 16,
            Self::Q8_0 => 128,
            Self::Q6_K => 32,
            Self::Q4_1 | Self::Q5_1 | Self::Q4_K | Self::Q5_K => 0,
        }
    }

    // ---- the block codecs

    /// Decode whole blocks into `out` (`block_len()` values per block).
    pub fn dequantize(self, blocks: &[u8], out: &mut [f32]) {
        use super::*;
        match self {
            Self::Q4_0 => dequantize_q4_0(blocks, out),
            Self::Q4_1 => dequantize_q4_1(blocks, out),
            Self::Q5_0 => dequantize_q5_0(blocks, out),
            Self::Q5_1 => dequantize_q5_1(blocks, out),
            Self::Q8_0 => dequantize_q8_0(blocks, out),
            Self::Q4_K => dequantize_q4_k(blocks, out),
            Self::Q5_K => dequantize_q5_k(blocks, out),
            Self::Q6_K => dequantize_q6_k(blocks, out),
        }
    }

    /// The reference dot product of a row of blocks with f32 values.
    pub fn vec_dot_f32(self, blocks: &[u8], x: &[f32]) -> f32 {
        use super::*;
        match self {
            Self::Q4_0 => vec_dot_q4_0_f32(blocks, x),
            Self::Q4_1 => vec_dot_q4_1_f32(blocks, x),
            Self::Q5_0 => vec_dot_q5_0_f32(blocks, x),
            Self::Q5_1 => vec_dot_q5_1_f32(blocks, x),
            Self::Q8_0 => vec_dot_q8_0_f32(blocks, x),
            Self::Q4_K => vec_dot_q4_k_f32(blocks, x),
            Self::Q5_K => vec_dot_q5_k_f32(blocks, x),
            Self::Q6_K => vec_dot_q6_k_f32(blocks, x),
        }
    }

    /// Quantise `x` (whole blocks) with the format's reference quantiser.
    pub fn quantize(self, x: &[f32]) -> Vec<u8> {
        use super::*;
        match self {
            Self::Q4_0 => quantize_q4_0(x),
            Self::Q4_1 => quantize_q4_1(x),
            Self::Q5_0 => quantize_q5_0(x),
            Self::Q5_1 => quantize_q5_1(x),
            Self::Q8_0 => quantize_q8_0(x),
            Self::Q4_K => quantize_q4_k(x),
            Self::Q5_K => quantize_q5_k(x),
            Self::Q6_K => quantize_q6_k(x),
        }
    }
}

// `ALL` lists every id once, in order, and `from_id` inverts `as u8`.
const _: () = {
    let mut i = 0;
    while i < WeightFormat::COUNT {
        assert!(WeightFormat::ALL[i] as usize == i);
        assert!(WeightFormat::from_id(i as u8) as usize == i);
        i += 1;
    }
};

/// `$k::<id>` of format `$f` as a `$t`: one monomorph of a kernel per format. The match
/// is exhaustive, so a new format cannot be left out of a kernel table.
macro_rules! monomorph {
    ($f:expr, $k:ident, $t:ty) => {
        monomorph!(@ $f, $k, $t, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
    };
    (@ $f:expr, $k:ident, $t:ty, $($name:ident),*) => {{
        use $crate::kernels::quant::WeightFormat as W;
        match $f {
            $(W::$name => $k::<{ W::$name as u8 }> as $t,)*
        }
    }};
}
pub(super) use monomorph;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_and_offsets_are_ggml_s() {
        let want = [(32, 18), (32, 20), (32, 22), (32, 24), (32, 34), (256, 144), (256, 176), (256, 210)];
        for (f, (len, bytes)) in WeightFormat::ALL.into_iter().zip(want) {
            assert_eq!((f.block_len(), f.block_bytes()), (len, bytes), "{f:?}");
            if !f.is_k_quant() {
                // The quants end the block: 16 bytes of nibbles, or 32 of Q8_0.
                let qs = if f == WeightFormat::Q8_0 { 32 } else { 16 };
                assert_eq!(f.qs_offset() + qs, bytes, "{f:?}");
            }
        }
    }
}
