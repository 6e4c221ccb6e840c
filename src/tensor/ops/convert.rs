//! Conversions between element types (through f32).

use half::{bf16, f16};

use crate::tensor::DType;
use crate::{Error, Result};

/// Decode little-endian bytes of `dtype` into f32 values.
pub(crate) fn bytes_to_f32(bytes: &[u8], dtype: DType) -> Result<Vec<f32>> {
    fn map<T: bytemuck::Pod>(bytes: &[u8], f: impl Fn(T) -> f32) -> Vec<f32> {
        bytes.chunks_exact(std::mem::size_of::<T>()).map(|c| f(bytemuck::pod_read_unaligned(c))).collect()
    }
    Ok(match dtype {
        DType::F32 => map::<f32>(bytes, |x| x),
        DType::F16 => map::<f16>(bytes, f16::to_f32),
        DType::BF16 => map::<bf16>(bytes, bf16::to_f32),
        DType::I32 => map::<i32>(bytes, |x| x as f32),
        DType::U8 => bytes.iter().map(|&x| x as f32).collect(),
        q => return Err(Error::dtype("to_f32", q)),
    })
}
