//! Conversions between element types (through f32), including dequantisation of the
//! block-quantised types; the block formats themselves live in `kernels::quant`.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::kernels::quant::WeightFormat;
use crate::tensor::DType;
use crate::{Error, Result};

/// Blocks per parallel task when dequantising; smaller tensors use one thread.
const PAR_BLOCKS: usize = 4096;

/// Decode little-endian bytes of `dtype` into f32 values.
pub(crate) fn bytes_to_f32(bytes: &[u8], dtype: DType) -> Result<Vec<f32>> {
    fn map<T: bytemuck::Pod>(bytes: &[u8], f: impl Fn(T) -> f32) -> Vec<f32> {
        bytes.chunks_exact(std::mem::size_of::<T>()).map(|c| f(bytemuck::pod_read_unaligned(c))).collect()
    }
    if let Some(fmt) = dtype.weight_format() {
        return dequantize(bytes, dtype, fmt);
    }
    Ok(match dtype {
        DType::F32 => map::<f32>(bytes, |x| x),
        DType::F16 => map::<f16>(bytes, f16::to_f32),
        DType::BF16 => map::<bf16>(bytes, bf16::to_f32),
        DType::I32 => map::<i32>(bytes, |x| x as f32),
        DType::U8 => bytes.iter().map(|&x| x as f32).collect(),
        q => unreachable!("{q} has a weight format"),
    })
}

/// Dequantise whole blocks of `fmt`, in parallel on the current pool for large inputs.
fn dequantize(bytes: &[u8], dtype: DType, fmt: WeightFormat) -> Result<Vec<f32>> {
    let (bb, bl) = (dtype.block_bytes(), dtype.block_len());
    if !bytes.len().is_multiple_of(bb) {
        return Err(Error::DType {
            op: "to_f32",
            dtype,
            msg: format!("{} bytes are not a whole number of {bb}-byte blocks", bytes.len()),
        });
    }
    let n_blocks = bytes.len() / bb;
    let n = n_blocks.checked_mul(bl).ok_or_else(|| Error::Overflow(format!("{n_blocks} blocks of {dtype}")))?;
    let mut out = vec![0f32; n];
    if n_blocks >= 2 * PAR_BLOCKS && rayon::current_num_threads() > 1 {
        bytes
            .par_chunks(PAR_BLOCKS * bb)
            .zip(out.par_chunks_mut(PAR_BLOCKS * bl))
            .for_each(|(src, dst)| fmt.dequantize(src, dst));
    } else {
        fmt.dequantize(bytes, &mut out);
    }
    Ok(out)
}
