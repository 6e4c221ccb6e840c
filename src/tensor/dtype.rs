//! Element types and memory types. Block-quantised types (GGML's Q4_0 ... Q6_K) store
//! `block_len()` weights in `block_bytes()` bytes; plain types have blocks of one. Each
//! quantised type is one kernel [`WeightFormat`] ([`DType::weight_format`]), which owns
//! its block sizes and codecs.

use std::fmt;

use crate::kernels::quant::WeightFormat;

/// The element type of a tensor. (GGML spells the quantised types Q4_K etc.; we keep
/// their names so they read the same in files, docs and code.)
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    U8,
    /// 32 weights: f16 scale + 32 x 4-bit (value = d * (q - 8)).
    Q4_0,
    /// 32 weights: f16 scale, f16 min + 32 x 4-bit (value = d * q + m).
    Q4_1,
    /// 32 weights: f16 scale + 32 x 5-bit (value = d * (q - 16)).
    Q5_0,
    /// 32 weights: f16 scale, f16 min + 32 x 5-bit (value = d * q + m).
    Q5_1,
    /// 32 weights: f16 scale + 32 x i8.
    Q8_0,
    /// 256 weights in 8 sub-blocks with 6-bit scales and mins, 4-bit quants.
    Q4_K,
    /// 256 weights in 8 sub-blocks with 6-bit scales and mins, 5-bit quants.
    Q5_K,
    /// 256 weights in 16 sub-blocks with 8-bit scales, 6-bit quants.
    Q6_K,
}

impl DType {
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U8,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    /// The kernels' format of a block-quantised type (`None` for plain types).
    pub const fn weight_format(self) -> Option<WeightFormat> {
        Some(match self {
            DType::Q4_0 => WeightFormat::Q4_0,
            DType::Q4_1 => WeightFormat::Q4_1,
            DType::Q5_0 => WeightFormat::Q5_0,
            DType::Q5_1 => WeightFormat::Q5_1,
            DType::Q8_0 => WeightFormat::Q8_0,
            DType::Q4_K => WeightFormat::Q4_K,
            DType::Q5_K => WeightFormat::Q5_K,
            DType::Q6_K => WeightFormat::Q6_K,
            DType::F32 | DType::F16 | DType::BF16 | DType::I32 | DType::U8 => return None,
        })
    }

    /// The dtype of a kernel format (the inverse of [`DType::weight_format`]).
    pub const fn of_weight_format(fmt: WeightFormat) -> DType {
        match fmt {
            WeightFormat::Q4_0 => DType::Q4_0,
            WeightFormat::Q4_1 => DType::Q4_1,
            WeightFormat::Q5_0 => DType::Q5_0,
            WeightFormat::Q5_1 => DType::Q5_1,
            WeightFormat::Q8_0 => DType::Q8_0,
            WeightFormat::Q4_K => DType::Q4_K,
            WeightFormat::Q5_K => DType::Q5_K,
            WeightFormat::Q6_K => DType::Q6_K,
        }
    }

    /// Number of elements in one storage block (1 for plain types).
    pub const fn block_len(self) -> usize {
        match self.weight_format() {
            Some(f) => f.block_len(),
            None => 1,
        }
    }

    /// Bytes of one storage block.
    pub const fn block_bytes(self) -> usize {
        if let Some(f) = self.weight_format() {
            return f.block_bytes();
        }
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
            _ => unreachable!(),
        }
    }

    /// True for the block-quantised types.
    pub const fn is_quantized(self) -> bool {
        self.weight_format().is_some()
    }

    /// True for F32, F16 and BF16: the types ops can compute in (through f32).
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Bytes needed for `n` elements, or `None` when `n` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    /// The short lowercase name used in files and reports (`f32`, `q4_1`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q8_0 => "q8_0",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
        }
    }
}

impl From<WeightFormat> for DType {
    fn from(fmt: WeightFormat) -> DType {
        DType::of_weight_format(fmt)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        let lower = s.to_ascii_lowercase();
        DType::ALL
            .into_iter()
            .find(|d| d.as_str() == lower)
            .ok_or_else(|| crate::Error::invalid(format!("unknown dtype '{s}'")))
    }
}

/// Where a tensor's bytes live and what they are for; the memory report groups by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemType {
    /// Parameters copied into heap memory.
    ParamsNormal,
    /// Parameters read in place from a memory-mapped file (pages load on demand).
    ParamsMmap,
    /// Activations and other working tensors (the default).
    Normal,
    /// Attention key/value caches.
    KvCache,
}

impl MemType {
    pub const ALL: [MemType; 4] = [MemType::ParamsNormal, MemType::ParamsMmap, MemType::Normal, MemType::KvCache];

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_ggml() {
        assert_eq!(DType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(DType::Q6_K.bytes_for(512), Some(420));
        assert_eq!(DType::Q5_0.bytes_for(64), Some(44));
        assert_eq!(DType::Q5_1.bytes_for(64), Some(48));
        assert_eq!(DType::Q8_0.bytes_for(33), None);
        assert_eq!(DType::F32.bytes_for(usize::MAX), None);
        assert_eq!("Q4_K".parse::<DType>().unwrap(), DType::Q4_K);
        assert!("q3_x".parse::<DType>().is_err());
        assert_eq!("q5_1".parse::<DType>().unwrap(), DType::Q5_1);
    }

    #[test]
    fn quantised_dtypes_are_the_weight_formats() {
        let quantised: Vec<DType> = DType::ALL.into_iter().filter(|d| d.is_quantized()).collect();
        let formats: Vec<DType> = WeightFormat::ALL.into_iter().map(DType::from).collect();
        assert_eq!(quantised, formats);
        for f in WeightFormat::ALL {
            assert_eq!(DType::from(f).weight_format(), Some(f));
            assert_eq!(DType::from(f).as_str(), format!("{f:?}").to_lowercase());
        }
    }
}
