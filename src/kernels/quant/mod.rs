//! Block-quantised formats (GGML's Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K; each
//! one [`WeightFormat`], format.rs): block layouts, dequantisation, scalar reference dot
//! products and quantisers, all on byte slices, and the fast matmuls on 8-bit activations
//! (qmatmul.rs on the GGUF blocks, packed.rs on 16-row interleaved copies). Knows nothing
//! of tensors or dtypes.

mod dot_q8;
mod format;
#[cfg(target_arch = "aarch64")]
mod neon;
mod packed;
#[cfg(target_arch = "aarch64")]
mod packed_neon;
#[cfg(target_arch = "x86_64")]
mod packed_x86;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8;
mod q8_0;
mod qmatmul;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use q4_0::{dequantize_q4_0, quantize_q4_0, vec_dot_q4_0_f32, BlockQ4_0};
pub use q4_1::{dequantize_q4_1, quantize_q4_1, vec_dot_q4_1_f32, BlockQ4_1};
pub use q4_k::{dequantize_q4_k, quantize_q4_k, vec_dot_q4_k_f32, BlockQ4_K};
pub use q5_0::{dequantize_q5_0, quantize_q5_0, vec_dot_q5_0_f32, BlockQ5_0};
pub use q5_1::{dequantize_q5_1, quantize_q5_1, vec_dot_q5_1_f32, BlockQ5_1};
pub use q5_k::{dequantize_q5_k, quantize_q5_k, vec_dot_q5_k_f32, BlockQ5_K};
pub use q6_k::{dequantize_q6_k, quantize_q6_k, vec_dot_q6_k_f32, BlockQ6_K};
pub use q8_0::{dequantize_q8_0, quantize_q8_0, vec_dot_q8_0_f32, BlockQ8_0};

pub use dot_q8::{
    vec_dot_q4_0_q8, vec_dot_q4_1_q8, vec_dot_q4_k_q8_k, vec_dot_q5_0_q8, vec_dot_q5_1_q8, vec_dot_q5_k_q8_k,
    vec_dot_q6_k_q8_k, vec_dot_q8_0_q8,
};
pub use format::WeightFormat;
pub use packed::{
    dequantize_packed_row, pack_rows, packed_len, packed_matmul, packed_matmul_cols, packed_matmul_parts,
    packed_matmul_with, ActQuant, PackedPart, PACK_ROWS,
};
pub use q8::{quantize_q8_k, BlockQ8_K, Q8Acts, Q8Row, Q8_LANES, QK8};
pub use qmatmul::{quantized_matmul, quantized_matmul_with, Isa};

/// Weights per block of the K-quants (a "super-block").
pub const QK_K: usize = 256;

/// One block of a quantised format: `LEN` weights in `size_of::<Self>()` bytes.
pub trait QuantBlock: bytemuck::Pod {
    /// Weights per block.
    const LEN: usize;
    /// Decode the block's weights into `out`, which holds exactly `LEN` values.
    fn dequantize(&self, out: &mut [f32]);
}

/// Calls `f(i, block)` for every block in `bytes`, in place when the bytes are aligned
/// for `B` (the usual case: GGUF data is 32-byte aligned) and by copy otherwise.
fn for_each_block<B: QuantBlock>(bytes: &[u8], mut f: impl FnMut(usize, &B)) {
    let size = std::mem::size_of::<B>();
    match bytemuck::try_cast_slice::<u8, B>(bytes) {
        Ok(blocks) => blocks.iter().enumerate().for_each(|(i, b)| f(i, b)),
        Err(_) => bytes.chunks_exact(size).enumerate().for_each(|(i, c)| f(i, &bytemuck::pod_read_unaligned::<B>(c))),
    }
}

/// Number of whole blocks in `bytes`; a partial block is a caller bug.
fn block_count<B: QuantBlock>(op: &str, bytes: &[u8]) -> usize {
    let size = std::mem::size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{op}: {} bytes are not a whole number of {size}-byte blocks",
        bytes.len()
    );
    bytes.len() / size
}

/// Decode all blocks in `bytes` into `out` (`out.len()` = blocks x `B::LEN`).
fn dequantize_blocks<B: QuantBlock>(op: &str, bytes: &[u8], out: &mut [f32]) {
    let n_blocks = block_count::<B>(op, bytes);
    assert_eq!(out.len(), n_blocks * B::LEN, "{op}: output length does not match {n_blocks} blocks");
    for_each_block::<B>(bytes, |i, b| b.dequantize(&mut out[i * B::LEN..(i + 1) * B::LEN]));
}

/// The reference dot product of a row of blocks with f32 values: dequantise each block,
/// then multiply and add in f32. The SIMD kernels are tested against this.
fn vec_dot_blocks<B: QuantBlock>(op: &str, bytes: &[u8], x: &[f32]) -> f32 {
    let n_blocks = block_count::<B>(op, bytes);
    assert_eq!(x.len(), n_blocks * B::LEN, "{op}: {} activations for {n_blocks} blocks", x.len());
    let mut buf = [0f32; QK_K];
    let w = &mut buf[..B::LEN];
    let mut sum = 0f32;
    for_each_block::<B>(bytes, |i, b| {
        b.dequantize(w);
        sum += w.iter().zip(&x[i * B::LEN..(i + 1) * B::LEN]).map(|(a, b)| a * b).sum::<f32>();
    });
    sum
}

/// Checks a quantiser's input length.
fn check_quantize_len(op: &str, n: usize, block: usize) {
    assert!(n.is_multiple_of(block), "{op}: {n} values are not a whole number of {block}-value blocks");
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_q8;
