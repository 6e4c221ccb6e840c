//! Row-interleaved ("packed") copies of every [`WeightFormat`] (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0 and the K-quants Q4_K, Q5_K, Q6_K) and the matmul that reads them: 16 weight rows
//! share each block's vectors, one 32-bit lane per row, so a SIMD dot instruction computes
//! 16 outputs at once and no horizontal sum is needed.
//! Layout, packer, row decoder, scalar reference and the parallel driver live here; the
//! SIMD bodies are in packed_x86.rs and packed_neon.rs. Plain byte slices only.
//!
//! Layout of one group of [`PACK_ROWS`] rows with `nb` blocks of 32 weights per row (all
//! little endian): `nb` times `[quants: QB bytes][s1: 16 scales][s2: 16 values]`, so a
//! group is one sequential stream for the prefetchers.
//! * Nibble formats (Q4_0, Q4_1, Q4_K; QB = 256): block `b` is four 64-byte vectors; byte
//!   `4i + j` of vector `t` holds weight `8t + j` of row `i` in its low nibble and weight
//!   `8t + 4 + j` in its high one.
//! * Byte formats (Q5_0, Q5_1, Q8_0, Q5_K, Q6_K; QB = 512): eight 64-byte vectors; byte
//!   `4i + j` of vector `t` is weight `4t + j` of row `i`, unsigned: the 5-bit quants as
//!   they are, Q8_0 `q + 128`, so that unsigned × signed dot instructions apply.
//! * Weight value per format: Q4_0 `s1 (q - 8)`, Q4_1 `s1 q + s2`, Q5_0 `s1 (q - 16)`,
//!   Q5_1 `s1 q + s2`, Q8_0 `s1 (q - 128)` with f16 `s1`, `s2` (Q4_0, Q5_0 and Q8_0 have no
//!   `s2`): the GGUF scales, so packed Q4_0, Q4_1 and Q8_0 have the size of the original
//!   (Q5_0 and Q5_1 grow from 5.5 and 6 to 8.5 and 9 bits per weight, their quants being
//!   bytes). K-quants keep f32 `s1`, `s2`, which hold the products of their super-block
//!   and sub-block scales exactly: Q4_K and Q5_K `s1 q + s2`, Q6_K
//!   `s1 (q - 32)` for weights 0..16 and `s2 (q - 32)` for 16..32 (its scales cover 16).
//!   They take 6 (Q4_K) and 10 (Q5_K, Q6_K) bits per weight instead of 4.5, 5.5 and 6.6.
//!
//! The per-format constants (nibbles or bytes, f16 or f32 scales, min, offset) are
//! [`WeightFormat`]'s; the kernels take the format's id as a const-generic `F` and
//! monomorphise per format.
//!
//! Stacking packed matrices of one format (e.g. q, k, v) is concatenation.

use std::cell::RefCell;

use half::f16;
use rayon::prelude::*;

use super::format::monomorph;
use super::q8::{Q8Acts, Q8Row, Q8_LANES, QK8};
use super::qmatmul::Isa;
use super::WeightFormat;
use crate::kernels::rows::{with_thread_buf, SharedOut};

/// Weight rows per packed group.
pub const PACK_ROWS: usize = 16;

/// Bytes of a packed `n_out` × `k` matrix (`n_out` a multiple of 16).
pub fn packed_len(fmt: WeightFormat, n_out: usize, k: usize) -> usize {
    n_out / PACK_ROWS * GroupLayout::new(fmt, k).bytes
}

/// Where the parts of one group lie.
#[derive(Clone, Copy, Debug)]
pub(super) struct GroupLayout {
    pub nb: usize,
    /// Bytes per block of the group (quants, scales, mins).
    pub stride: usize,
    /// Bytes of quants per block.
    pub qb: usize,
    /// Bytes per scale value (2: f16, 4: f32).
    pub sb: usize,
    /// Bytes per group.
    pub bytes: usize,
}

impl GroupLayout {
    pub fn new(fmt: WeightFormat, k: usize) -> GroupLayout {
        let nb = k / QK8;
        let qb = if fmt.nibbles() { 256 } else { 512 };
        let sb = if fmt.f32_scales() { 4 } else { 2 };
        let second = fmt.has_min() || fmt.two_scales();
        let stride = qb + PACK_ROWS * sb * (1 + second as usize);
        GroupLayout { nb, stride, qb, sb, bytes: nb * stride }
    }

    /// Offset of block `b`'s quants from the group start.
    #[inline(always)]
    pub fn q_at(&self, b: usize) -> usize {
        b * self.stride
    }

    /// Offset of block `b`'s 16 `s1` scales.
    #[inline(always)]
    pub fn d_at(&self, b: usize) -> usize {
        b * self.stride + self.qb
    }

    /// Offset of block `b`'s 16 `s2` values (mins, or Q6_K's second scales).
    #[inline(always)]
    pub fn m_at(&self, b: usize) -> usize {
        b * self.stride + self.qb + self.sb * PACK_ROWS
    }
}

/// Checks the matrix shape (not the byte sizes).
fn check_dims(op: &str, fmt: WeightFormat, n_out: usize, k: usize) {
    assert!(n_out.is_multiple_of(PACK_ROWS), "{op}: {n_out} rows are not whole groups of {PACK_ROWS}");
    assert!(k.is_multiple_of(fmt.block_len()), "{op}: rows of {k} are not whole {fmt:?} blocks");
}

fn check_packed(op: &str, fmt: WeightFormat, n_out: usize, k: usize, bytes: usize) {
    check_dims(op, fmt, n_out, k);
    assert_eq!(bytes, packed_len(fmt, n_out, k), "{op}: packed byte size");
}

/// Byte offset within a block's quants of weight `w` (0..32) of row `i`, and whether it
/// sits in the high nibble (nibble formats).
#[inline(always)]
fn quant_pos(fmt: WeightFormat, i: usize, w: usize) -> (usize, bool) {
    if fmt.nibbles() {
        ((w / 8) * 64 + 4 * i + w % 4, w % 8 >= 4)
    } else {
        ((w / 4) * 64 + 4 * i + w % 4, false)
    }
}

/// Pack `src` (`n_out` rows of `k` weights in GGUF block layout) into `dst`
/// ([`packed_len`] bytes). Panics unless `n_out` is a multiple of [`PACK_ROWS`] and the
/// sizes agree.
pub fn pack_rows(fmt: WeightFormat, src: &[u8], n_out: usize, k: usize, dst: &mut [u8]) {
    check_dims("pack_rows", fmt, n_out, k);
    assert_eq!(src.len(), n_out * (k / fmt.block_len()) * fmt.block_bytes(), "pack_rows: source byte size");
    assert_eq!(dst.len(), packed_len(fmt, n_out, k), "pack_rows: destination size");
    let lay = GroupLayout::new(fmt, k);
    if fmt.is_k_quant() {
        return pack_k_rows(fmt, src, n_out, k, dst, &lay);
    }
    let bb = fmt.block_bytes();
    let row_bytes = lay.nb * bb;
    let qs_off = fmt.qs_offset();
    let word = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let pack_group = |(g, out): (usize, &mut [u8])| {
        for b in 0..lay.nb {
            let (q0, d0, m0) = (lay.q_at(b), lay.d_at(b), lay.m_at(b));
            for i in 0..PACK_ROWS {
                let blk = &src[(g * PACK_ROWS + i) * row_bytes + b * bb..][..bb];
                let qs = &blk[qs_off..];
                // Four output bytes (one 32-bit lane) per vector; see the module docs.
                if fmt.nibbles() {
                    // GGUF: weight w < 16 is the low nibble of qs[w], w >= 16 the high one of qs[w - 16].
                    for t in 0..4 {
                        let a = 8 * (t % 2);
                        let (lo, hi) = (word(qs, a), word(qs, a + 4));
                        let v = if t < 2 {
                            (lo & 0x0F0F_0F0F) | ((hi & 0x0F0F_0F0F) << 4)
                        } else {
                            ((lo >> 4) & 0x0F0F_0F0F) | (hi & 0xF0F0_F0F0)
                        };
                        out[q0 + 64 * t + 4 * i..][..4].copy_from_slice(&v.to_le_bytes());
                    }
                } else if fmt == WeightFormat::Q8_0 {
                    for t in 0..8 {
                        let v = word(qs, 4 * t) ^ 0x8080_8080;
                        out[q0 + 64 * t + 4 * i..][..4].copy_from_slice(&v.to_le_bytes());
                    }
                } else {
                    // Q5_0, Q5_1: the fifth bits (a u32 before the nibbles) joined in.
                    let qs: &[u8; 16] = qs[..16].try_into().expect("16 bytes of nibbles");
                    let qh = word(blk, qs_off - 4);
                    for t in 0..8 {
                        let v: [u8; 4] = std::array::from_fn(|j| super::q5_0::quant5(qs, qh, 4 * t + j));
                        out[q0 + 64 * t + 4 * i..][..4].copy_from_slice(&v);
                    }
                }
                out[d0 + 2 * i..][..2].copy_from_slice(&blk[..2]);
                if fmt.has_f16_min() {
                    out[m0 + 2 * i..][..2].copy_from_slice(&blk[2..4]);
                }
            }
        }
    };
    // Every byte of a group is written, so `dst` need not be cleared.
    dst.par_chunks_mut(lay.bytes).enumerate().for_each(pack_group);
}

/// One 32-weight sub-block of a K-quant as stored packed: unsigned quants and `s1`, `s2`.
type SubBlock = ([u8; 32], f32, f32);

/// The eight 32-weight sub-blocks of one K-quant super-block (256 weights).
fn k_sub_blocks(fmt: WeightFormat, blk: &[u8]) -> [SubBlock; 8] {
    use super::{BlockQ4_K, BlockQ5_K, BlockQ6_K};
    let mut out = [([0u8; 32], 0f32, 0f32); 8];
    match fmt {
        WeightFormat::Q4_K | WeightFormat::Q5_K => {
            // Q5_K is Q4_K's layout plus one high bit per weight.
            let (d, dmin, scales, qs, qh) = if fmt == WeightFormat::Q4_K {
                let b: BlockQ4_K = bytemuck::pod_read_unaligned(blk);
                (b.d.to_f32(), b.dmin.to_f32(), b.scales, b.qs, None)
            } else {
                let b: BlockQ5_K = bytemuck::pod_read_unaligned(blk);
                (b.d.to_f32(), b.dmin.to_f32(), b.scales, b.qs, Some(b.qh))
            };
            for (j, (q, s1, s2)) in out.iter_mut().enumerate() {
                let (sc, m) = super::q4_k::scale_min_k4(j, &scales);
                // Exact in f32: an f16 times a 6-bit integer.
                (*s1, *s2) = (d * sc as f32, -(dmin * m as f32));
                for (l, v) in q.iter_mut().enumerate() {
                    *v = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF;
                    if let Some(qh) = &qh {
                        *v |= ((qh[l] >> j) & 1) << 4;
                    }
                }
            }
        }
        WeightFormat::Q6_K => {
            let b: BlockQ6_K = bytemuck::pod_read_unaligned(blk);
            let d = b.d.to_f32();
            for (j, (q, s1, s2)) in out.iter_mut().enumerate() {
                // Exact in f32: an f16 times an 8-bit integer.
                (*s1, *s2) = (d * b.scales[2 * j] as f32, d * b.scales[2 * j + 1] as f32);
                for (l, v) in q.iter_mut().enumerate() {
                    let (lb, ls, hb, hs) = super::q6_k::position(32 * j + l);
                    *v = ((b.ql[lb] >> ls) & 0xF) | (((b.qh[hb] >> hs) & 3) << 4);
                }
            }
        }
        _ => unreachable!("{fmt:?} is not a K-quant"),
    }
    out
}

/// [`pack_rows`] for the K-quants: each super-block decoded into its sub-blocks first.
fn pack_k_rows(fmt: WeightFormat, src: &[u8], n_out: usize, k: usize, dst: &mut [u8], lay: &GroupLayout) {
    let bb = fmt.block_bytes();
    let row_bytes = k / super::QK_K * bb;
    debug_assert_eq!(src.len(), n_out * row_bytes);
    let pack_group = |(g, out): (usize, &mut [u8])| {
        for i in 0..PACK_ROWS {
            let row = &src[(g * PACK_ROWS + i) * row_bytes..][..row_bytes];
            for (sb, blk) in row.chunks_exact(bb).enumerate() {
                for (j, (q, s1, s2)) in k_sub_blocks(fmt, blk).iter().enumerate() {
                    let b = 8 * sb + j;
                    let quants = &mut out[lay.q_at(b)..lay.q_at(b) + lay.qb];
                    for (w, &v) in q.iter().enumerate() {
                        let (pos, high) = quant_pos(fmt, i, w);
                        if high {
                            quants[pos] |= v << 4;
                        } else {
                            quants[pos] = v;
                        }
                    }
                    out[lay.d_at(b) + 4 * i..][..4].copy_from_slice(&s1.to_le_bytes());
                    out[lay.m_at(b) + 4 * i..][..4].copy_from_slice(&s2.to_le_bytes());
                }
            }
        }
    };
    // Low nibbles are stored before high ones are or-ed in (w % 8 < 4 comes first).
    dst.par_chunks_mut(lay.bytes).enumerate().for_each(pack_group);
}

/// Decode row `row` of a packed matrix into `out` (`k` values).
pub fn dequantize_packed_row(fmt: WeightFormat, packed: &[u8], n_out: usize, k: usize, row: usize, out: &mut [f32]) {
    check_packed("dequantize_packed_row", fmt, n_out, k, packed.len());
    assert!(row < n_out, "dequantize_packed_row: row {row} of {n_out}");
    assert_eq!(out.len(), k, "dequantize_packed_row: output length");
    let lay = GroupLayout::new(fmt, k);
    let (g, i) = (row / PACK_ROWS, row % PACK_ROWS);
    let grp = &packed[g * lay.bytes..(g + 1) * lay.bytes];
    for b in 0..lay.nb {
        let (d, m) = scale_min(fmt, grp, &lay, b, i);
        for w in 0..QK8 {
            let q = quant(fmt, &grp[lay.q_at(b)..lay.q_at(b) + lay.qb], i, w);
            out[b * QK8 + w] = if fmt.two_scales() {
                (if w < QK8 / 2 { d } else { m }) * (q - fmt.quant_offset()) as f32
            } else {
                d * (q - fmt.quant_offset()) as f32 + m
            };
        }
    }
}

/// The unsigned stored quant of weight `w` of row `i` in one block's quants.
#[inline(always)]
fn quant(fmt: WeightFormat, quants: &[u8], i: usize, w: usize) -> i32 {
    let (pos, high) = quant_pos(fmt, i, w);
    let v = quants[pos];
    (if !fmt.nibbles() {
        v
    } else if high {
        v >> 4
    } else {
        v & 0x0F
    }) as i32
}

/// `s1` and `s2` of row `i` in block `b` (`s2` is 0 where the format has none).
#[inline(always)]
fn scale_min(fmt: WeightFormat, grp: &[u8], lay: &GroupLayout, b: usize, i: usize) -> (f32, f32) {
    let at = |off: usize| {
        let s = off + i * lay.sb;
        if lay.sb == 4 {
            f32::from_le_bytes([grp[s], grp[s + 1], grp[s + 2], grp[s + 3]])
        } else {
            f16::from_le_bytes([grp[s], grp[s + 1]]).to_f32()
        }
    };
    (at(lay.d_at(b)), if fmt.has_min() || fmt.two_scales() { at(lay.m_at(b)) } else { 0.0 })
}

/// One kernel call: the 16 outputs of one group for activation rows `x`, stored to (or
/// added into) `out[r]` (16 values each).
/// With `pairs`, `x` holds two rows per output row, `x[2r]` and `x[2r + 1]`: the two terms
/// of [`Q8Acts::quantize_two_term`], whose integer dots the kernels combine as
/// `256·dot(x[2r]) + dot(x[2r + 1])` (the second term's step is exactly 1/256 of the first's)
/// and scale once, by the second term's step.
pub(super) struct GroupCall<'a, 'b> {
    pub grp: &'a [u8],
    pub lay: GroupLayout,
    pub x: &'b [Q8Row<'a>],
    pub out: &'b mut [&'a mut [f32]],
    pub accumulate: bool,
    pub pairs: bool,
    /// The call streams the weights: every output row is in this one call (few rows), so
    /// the group is read once (kernels may prefetch harder; only the AVX-512 one does).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub stream: bool,
}

/// What a kernel needs of one block of one output row's activations besides the quants: the
/// integer sums for weight offsets (whole block and halves), the scale of the integer dot
/// and `scale · Σ quants` (for weight minimums). For a pair of terms, the first's integer
/// sums count 256 times and the scale is the second term's.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockActs {
    pub isum: i32,
    pub hsums: [i32; 2],
    pub scale: f32,
    pub sum: f32,
}

impl BlockActs {
    /// Block `b` of one term (`y: None`) or of a pair of terms.
    #[inline(always)]
    pub fn of(x: &Q8Row<'_>, y: Option<&Q8Row<'_>>, b: usize) -> BlockActs {
        let one = |x: &Q8Row<'_>| BlockActs {
            isum: x.isums[b],
            hsums: [x.hsums[2 * b], x.hsums[2 * b + 1]],
            scale: x.d[b * Q8_LANES],
            sum: x.sums[b],
        };
        match y {
            None => one(x),
            Some(y) => one(x).with_second(one(y)),
        }
    }

    /// This block's first term joined by its second: the first's integer sums count 256
    /// times (the second's step is 1/256 of the first's), the dot is scaled by the second's
    /// step, and the scaled sums add.
    #[inline(always)]
    pub fn with_second(self, y: BlockActs) -> BlockActs {
        BlockActs {
            isum: 256 * self.isum + y.isum,
            hsums: [256 * self.hsums[0] + y.hsums[0], 256 * self.hsums[1] + y.hsums[1]],
            scale: y.scale,
            sum: self.sum + y.sum,
        }
    }
}

/// Kernel over all rows of a [`GroupCall`] for one format.
pub(super) type GroupFn = unsafe fn(&mut GroupCall<'_, '_>);

/// The scalar reference: exact integer block dots, then `acc += (isum · d) · dx (+ m · Σx)`
/// in the order the SIMD kernels use.
///
/// # Safety
/// Always safe; `unsafe` only to share the kernel type.
unsafe fn scalar_group<const F: u8>(c: &mut GroupCall<'_, '_>) {
    let fmt = const { WeightFormat::from_id(F) };
    let lay = c.lay;
    let off = fmt.quant_offset();
    let step = if c.pairs { 2 } else { 1 };
    for (r, out) in c.out.iter_mut().enumerate() {
        let (x, y) = (&c.x[step * r], c.pairs.then(|| &c.x[step * r + 1]));
        let mut acc = [0f32; PACK_ROWS];
        for b in 0..lay.nb {
            let quants = &c.grp[lay.q_at(b)..lay.q_at(b) + lay.qb];
            // Exact integer dots of each half.
            let dots = |x: &Q8Row<'_>, i: usize| {
                let (mut lo, mut hi) = (0i32, 0i32);
                for (w, &xv) in x.qs[b * QK8..(b + 1) * QK8].iter().enumerate() {
                    let p = quant(fmt, quants, i, w) * xv as i32;
                    if w < QK8 / 2 {
                        lo += p;
                    } else {
                        hi += p;
                    }
                }
                (lo, hi)
            };
            let xb = BlockActs::of(x, y, b);
            for (i, a) in acc.iter_mut().enumerate() {
                let (mut lo, mut hi) = dots(x, i);
                if let Some(y) = y {
                    let (lo2, hi2) = dots(y, i);
                    (lo, hi) = (256 * lo + lo2, 256 * hi + hi2);
                }
                let (s1, s2) = scale_min(fmt, c.grp, &c.lay, b, i);
                let f = if fmt.two_scales() {
                    let (lo, hi) = (lo - off * xb.hsums[0], hi - off * xb.hsums[1]);
                    (hi as f32).mul_add(s2, lo as f32 * s1)
                } else {
                    (lo + hi - off * xb.isum) as f32 * s1
                };
                *a = f.mul_add(xb.scale, *a);
                if fmt.has_min() {
                    *a = s2.mul_add(xb.sum, *a);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = if c.accumulate { *o + a } else { a };
        }
    }
}

/// The kernels of one instruction set, one per format (indexed by format id).
struct PackedKernels {
    isa: Isa,
    f: [GroupFn; WeightFormat::COUNT],
}

fn packed_kernels(isa: Isa) -> Option<PackedKernels> {
    if !Isa::available().contains(&isa) {
        return None;
    }
    // Every format's monomorph of kernel `$k`.
    macro_rules! table {
        ($k:ident) => {
            Some(PackedKernels { isa, f: WeightFormat::ALL.map(|f| monomorph!(f, $k, GroupFn)) })
        };
    }
    match isa {
        Isa::Scalar => table!(scalar_group),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            use super::packed_x86::group_avx2;
            table!(group_avx2)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            use super::packed_x86::group_avx512_vnni;
            table!(group_avx512_vnni)
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            use super::packed_neon::group_neon;
            table!(group_neon)
        }
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => {
            use super::packed_neon::group_neon_dot;
            table!(group_neon_dot)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

fn packed_tables() -> &'static [PackedKernels] {
    static T: std::sync::OnceLock<Vec<PackedKernels>> = std::sync::OnceLock::new();
    T.get_or_init(|| Isa::available().into_iter().filter_map(packed_kernels).collect())
}

fn packed_table(isa: Isa) -> &'static PackedKernels {
    packed_tables().iter().find(|k| k.isa == isa).unwrap_or_else(|| panic!("{isa:?} is not available on this CPU"))
}

thread_local! {
    static ACTS: RefCell<Q8Acts> = RefCell::new(Q8Acts::new());
}

/// Activation rows per kernel call (the kernels keep one accumulator per row).
const ROW_TILE: usize = 8;

/// Below this many multiply-adds a matmul runs on the calling thread.
const PAR_MIN_WORK: usize = 1 << 16;

/// `out[i, j] (+)= Σ_k x[i, k] w[j, k]` for a packed `w` (`n_out` × `k` in `fmt`), `x`
/// `[m, k]` f32 and `out` `[m, n_out]`; activations quantised to 8 bits first, groups of
/// rows split over the current rayon pool. Uses the best instruction set.
#[allow(clippy::too_many_arguments)]
pub fn packed_matmul(
    fmt: WeightFormat,
    w: &[u8],
    n_out: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    packed_matmul_with(Isa::best(), fmt, w, n_out, k, x, m, out, accumulate)
}

/// [`packed_matmul`] with a chosen instruction set (tests, benchmarks); panics if this CPU
/// cannot run `isa`.
#[allow(clippy::too_many_arguments)]
pub fn packed_matmul_with(
    isa: Isa,
    fmt: WeightFormat,
    w: &[u8],
    n_out: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    packed_matmul_cols(isa, fmt, w, n_out, k, x, m, out, n_out, 0, accumulate)
}

/// [`packed_matmul_with`] writing columns `col0..col0 + n_out` of an output with rows of
/// `ldo` values (`out` is `[m, ldo]`).
#[allow(clippy::too_many_arguments)]
pub fn packed_matmul_cols(
    isa: Isa,
    fmt: WeightFormat,
    w: &[u8],
    n_out: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    ldo: usize,
    col0: usize,
    accumulate: bool,
) {
    let part = PackedPart { fmt, w, rows: n_out, col0 };
    packed_matmul_parts(isa, &[part], k, x, m, out, ldo, accumulate, ActQuant::Q8)
}

/// One matrix of a stack: `rows` packed rows in `fmt`, writing output columns
/// `col0..col0 + rows`.
#[derive(Clone, Copy, Debug)]
pub struct PackedPart<'a> {
    pub fmt: WeightFormat,
    pub w: &'a [u8],
    pub rows: usize,
    pub col0: usize,
}

/// How [`packed_matmul_parts`] quantises its activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ActQuant {
    /// One 8-bit term per value in blocks of 32, scale max|x|/127 (llama.cpp's Q8 path): a
    /// rounding error of up to 1/254 of each block's largest value.
    #[default]
    Q8,
    /// Two 8-bit terms, the second quantising what the first leaves out
    /// ([`Q8Acts::quantize_two_term`]): 1/254² of the block's largest value, twice the
    /// integer work, the weights still read once.
    TwoTerm,
}

/// A stack of packed matrices (possibly in different formats) times `x` `[m, k]` into
/// `out` `[m, ldo]`, each part into its own columns; the activations are quantised once,
/// as `quant` says.
#[allow(clippy::too_many_arguments)]
pub fn packed_matmul_parts(
    isa: Isa,
    parts: &[PackedPart<'_>],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    ldo: usize,
    accumulate: bool,
    quant: ActQuant,
) {
    assert_eq!(x.len(), m * k, "packed_matmul: input is not {m} x {k}");
    assert_eq!(out.len(), m * ldo, "packed_matmul: output is not {m} x {ldo}");
    for p in parts {
        check_packed("packed_matmul", p.fmt, p.rows, k, p.w.len());
        assert!(p.col0 + p.rows <= ldo, "packed_matmul: columns {}..{} outside rows of {ldo}", p.col0, p.col0 + p.rows);
    }
    if m == 0 || parts.iter().all(|p| p.rows == 0) {
        return;
    }
    let out_ptr = SharedOut::new(out);
    with_thread_buf(&ACTS, |acts| {
        match quant {
            ActQuant::Q8 => acts.quantize(x, m, k),
            ActQuant::TwoTerm => acts.quantize_two_term(x, m, k),
        }
        for p in parts {
            run_part(isa, p, k, acts, quant == ActQuant::TwoTerm, out_ptr, ldo, accumulate);
        }
    });
}

/// One part of [`packed_matmul_parts`], its groups of rows split over the current pool.
/// With `pairs`, activation rows `2i` and `2i + 1` are two terms of output row `i`.
#[allow(clippy::too_many_arguments)]
fn run_part(
    isa: Isa,
    part: &PackedPart<'_>,
    k: usize,
    acts: &Q8Acts,
    pairs: bool,
    out_ptr: SharedOut,
    ldo: usize,
    accumulate: bool,
) {
    let PackedPart { fmt, w, rows: n_out, col0 } = *part;
    let kernel = packed_table(isa).f[fmt as usize];
    let lay = GroupLayout::new(fmt, k);
    let groups = n_out / PACK_ROWS;
    let threads = rayon::current_num_threads();
    let act_rows = acts.rows();
    let parallel = threads > 1 && act_rows * n_out * k >= PAR_MIN_WORK;
    // Output row `r`'s 16 columns of group `g`.
    let out_row = |r: usize, g: usize| {
        // SAFETY: row `r` is below the output's row count, columns `col0 + 16g..col0 + 16g
        // + 16` lie inside `out` (`g < groups`, `col0 + n_out <= ldo`); tasks own disjoint
        // group ranges and each row's slice is made once per kernel call.
        unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(r * ldo + col0 + g * PACK_ROWS), PACK_ROWS) }
    };
    // Activation rows per output row, and the output rows.
    let per = if pairs { 2 } else { 1 };
    let m = act_rows / per;
    // With pairs, the rows in the order the kernels take them: row `i`, then its second
    // term (row `m + i` of the quantised activations).
    let act = |j: usize| acts.row(if pairs { j / 2 + (j % 2) * m } else { j });
    // All output rows in one call (decode): each group is read once.
    let stream = m <= ROW_TILE;
    let run = |g0: usize, g1: usize| {
        // The rows' views, made once per task (not per group and tile: 80 bytes each).
        let small: [Q8Row<'_>; 2 * ROW_TILE];
        let big: Vec<Q8Row<'_>>;
        let rows: &[Q8Row<'_>] = if act_rows <= 2 * ROW_TILE {
            small = std::array::from_fn(|i| act(i.min(act_rows - 1)));
            &small[..act_rows]
        } else {
            big = (0..act_rows).map(act).collect();
            &big
        };
        for g in g0..g1 {
            let grp = &w[g * lay.bytes..(g + 1) * lay.bytes];
            let mut r0 = 0;
            while r0 < m {
                let n = ROW_TILE.min(m - r0);
                let mut outs: [&mut [f32]; ROW_TILE] =
                    std::array::from_fn(|i| if i < n { out_row(r0 + i, g) } else { &mut [][..] });
                let x = &rows[per * r0..per * (r0 + n)];
                let mut call = GroupCall { grp, lay, x, out: &mut outs[..n], accumulate, pairs, stream };
                // SAFETY: the table only holds kernels this CPU supports; the group holds
                // `lay.bytes` bytes and every activation row `k` values.
                unsafe { kernel(&mut call) };
                r0 += n;
            }
        }
    };
    if !parallel {
        return run(0, groups);
    }
    let chunk = group_grain(groups, threads);
    (0..groups.div_ceil(chunk)).into_par_iter().for_each(|t| run(t * chunk, ((t + 1) * chunk).min(groups)));
}

/// Groups per parallel task: the task count a multiple of the thread count (equal shares),
/// at least two tasks per thread and at most 8 groups (128 rows) per task.
fn group_grain(groups: usize, threads: usize) -> usize {
    let tasks = (2 * threads).max(groups.div_ceil(8)).next_multiple_of(threads);
    groups.div_ceil(tasks).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random blocks of `fmt` with finite, moderate f16 scales (the rest random bytes).
    fn random_blocks(fmt: WeightFormat, n_out: usize, k: usize, r: &mut impl Rng) -> Vec<u8> {
        let bb = fmt.block_bytes();
        let mut v = vec![0u8; n_out * k / fmt.block_len() * bb];
        let f16_at = |blk: &mut [u8], at: usize, lim: f32, r: &mut dyn rand::RngCore| {
            let x: f32 = r.random_range(-lim..lim);
            blk[at..at + 2].copy_from_slice(&f16::from_f32(x).to_le_bytes());
        };
        for blk in v.chunks_exact_mut(bb) {
            r.fill(blk);
            match fmt {
                WeightFormat::Q4_0 | WeightFormat::Q5_0 | WeightFormat::Q8_0 => f16_at(blk, 0, 0.05, r),
                WeightFormat::Q4_1 | WeightFormat::Q5_1 => {
                    f16_at(blk, 0, 0.05, r);
                    f16_at(blk, 2, 0.2, r);
                }
                WeightFormat::Q4_K | WeightFormat::Q5_K => {
                    f16_at(blk, 0, 0.002, r);
                    f16_at(blk, 2, 0.005, r);
                }
                WeightFormat::Q6_K => f16_at(blk, 208, 0.0005, r),
            }
        }
        v
    }

    fn packed(fmt: WeightFormat, w: &[u8], n_out: usize, k: usize) -> Vec<u8> {
        let mut p = vec![0xAAu8; packed_len(fmt, n_out, k)];
        pack_rows(fmt, w, n_out, k, &mut p);
        p
    }

    /// Row length for a format: whole K-quant super-blocks.
    fn k_for(fmt: WeightFormat, k: usize) -> usize {
        k.next_multiple_of(fmt.block_len())
    }

    /// A NaN or an infinity in an activation row makes that row's outputs NaN on every
    /// instruction set (8-bit rounding would otherwise turn it into a finite value).
    #[test]
    fn non_finite_activations_are_not_hidden() {
        let mut r = rand::rngs::StdRng::seed_from_u64(9);
        for fmt in WeightFormat::ALL {
            let (n_out, k, m) = (32, k_for(fmt, 96), 3);
            let w = random_blocks(fmt, n_out, k, &mut r);
            let p = packed(fmt, &w, n_out, k);
            let mut x: Vec<f32> = (0..m * k).map(|_| r.random_range(-3.0..3.0)).collect();
            x[k + 37] = f32::NAN;
            x[2 * k + 5] = f32::NEG_INFINITY;
            for isa in Isa::available() {
                let mut out = vec![0f32; m * n_out];
                packed_matmul_with(isa, fmt, &p, n_out, k, &x, m, &mut out, false);
                assert!(out[..n_out].iter().all(|v| v.is_finite()), "{isa:?} {fmt:?}: finite row");
                assert!(out[n_out..].iter().all(|v| v.is_nan()), "{isa:?} {fmt:?}: {:?}", &out[n_out..]);
            }
        }
    }

    #[test]
    fn packed_rows_decode_to_the_original_weights() {
        let mut r = rand::rngs::StdRng::seed_from_u64(1);
        for fmt in WeightFormat::ALL {
            let (n_out, k) = (48, k_for(fmt, 96));
            let w = random_blocks(fmt, n_out, k, &mut r);
            let p = packed(fmt, &w, n_out, k);
            let mut want = vec![0f32; n_out * k];
            fmt.dequantize(&w, &mut want);
            let mut got = vec![0f32; k];
            for row in 0..n_out {
                dequantize_packed_row(fmt, &p, n_out, k, row, &mut got);
                for (c, (g, w)) in got.iter().zip(&want[row * k..(row + 1) * k]).enumerate() {
                    // The 32-weight formats decode bit for bit; K-quants' products of scales are
                    // exact too, only the order of the final multiply-add may differ.
                    assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{fmt:?} row {row} col {c}: {g} vs {w}");
                }
            }
        }
    }

    /// Every instruction set and format against an independent f64 reference: the GGUF
    /// weights dequantised by the block decoders times the same 8-bit activations
    /// (dequantised), on odd row counts, tails of the row tile and both store modes.
    #[test]
    fn packed_matmul_matches_the_reference_on_every_isa_and_format() {
        let mut r = rand::rngs::StdRng::seed_from_u64(2);
        for fmt in WeightFormat::ALL {
            for &(n_out, k, m) in &[(16, 32, 1), (48, 96, 3), (64, 576, 1), (32, 160, 9), (80, 256, 17)] {
                let k = k_for(fmt, k);
                let w = random_blocks(fmt, n_out, k, &mut r);
                let p = packed(fmt, &w, n_out, k);
                let mut wf = vec![0f32; n_out * k];
                fmt.dequantize(&w, &mut wf);
                let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-3.0..3.0)).collect();
                let mut acts = Q8Acts::new();
                acts.quantize(&x, m, k);
                let init: Vec<f32> = (0..m * n_out).map(|_| r.random_range(-1.0..1.0)).collect();
                for accumulate in [false, true] {
                    for isa in Isa::available() {
                        let mut got = init.clone();
                        packed_matmul_with(isa, fmt, &p, n_out, k, &x, m, &mut got, accumulate);
                        for i in 0..m {
                            let row = acts.row(i);
                            let xh: Vec<f64> = (0..k).map(|c| row.qs[c] as f64 * row.scale(c / QK8) as f64).collect();
                            for j in 0..n_out {
                                let ws = &wf[j * k..(j + 1) * k];
                                let dot: f64 = ws.iter().zip(&xh).map(|(&a, &b)| a as f64 * b).sum();
                                let mag: f64 = ws.iter().zip(&xh).map(|(&a, &b)| (a as f64 * b).abs()).sum();
                                let want = dot + if accumulate { init[i * n_out + j] as f64 } else { 0.0 };
                                let g = got[i * n_out + j] as f64;
                                assert!(
                                    (g - want).abs() <= 2e-5 * (mag + 1.0),
                                    "{fmt:?} {isa:?} {n_out}x{k} m={m} acc={accumulate} [{i},{j}]: {g} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every SIMD kernel (AVX2, AVX-512, NEON, NEON `sdot`: whatever this CPU has) equals the
    /// scalar reference bit for bit: the integer block sums are exact and the f32 steps are
    /// the same fused operations in the same order. Random weights and activations (with
    /// outliers), every format, one to nine groups, one to nine blocks (K-quants one and
    /// two super-blocks), row-tile tails, both store modes and unaligned packed bytes.
    #[test]
    fn simd_kernels_equal_the_scalar_reference_bitwise() {
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        let simd: Vec<Isa> = Isa::available().into_iter().filter(|&i| i != Isa::Scalar).collect();
        for fmt in WeightFormat::ALL {
            for &(n_out, k, m) in &[(16, 32, 1), (48, 96, 3), (144, 288, 9), (16, 544, 17), (32, 64, 8)] {
                let k = k_for(fmt, k);
                let w = random_blocks(fmt, n_out, k, &mut r);
                let p = packed(fmt, &w, n_out, k);
                let mut shifted = vec![0u8; p.len() + 1];
                shifted[1..].copy_from_slice(&p);
                let x: Vec<f32> =
                    (0..m * k).map(|i| r.random_range(-3.0..3.0) * if i % 61 == 7 { 40.0 } else { 1.0 }).collect();
                let init: Vec<f32> = (0..m * n_out).map(|_| r.random_range(-1.0..1.0)).collect();
                for (accumulate, quant) in [(false, ActQuant::Q8), (true, ActQuant::Q8), (true, ActQuant::TwoTerm)] {
                    let run = |isa: Isa, bytes: &[u8], out: &mut [f32]| {
                        let part = PackedPart { fmt, w: bytes, rows: n_out, col0: 0 };
                        packed_matmul_parts(isa, &[part], k, &x, m, out, n_out, accumulate, quant);
                    };
                    let mut want = init.clone();
                    run(Isa::Scalar, &p, &mut want);
                    for &isa in &simd {
                        for (bytes, how) in [(&p[..], "aligned"), (&shifted[1..], "unaligned")] {
                            let mut got = init.clone();
                            run(isa, bytes, &mut got);
                            let bad = got.iter().zip(&want).position(|(g, w)| g.to_bits() != w.to_bits());
                            if let Some(i) = bad {
                                panic!(
                                    "{fmt:?} {isa:?} {quant:?} {n_out}x{k} m={m} acc={accumulate} {how} [{}, {}]: {} vs scalar {}",
                                    i / n_out,
                                    i % n_out,
                                    got[i],
                                    want[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Two-term activations against the f64 product of the unrounded activations: within
    /// half a step of the residual (1/508 of the first term's step) per activation, every
    /// format and instruction set, with outliers.
    #[test]
    fn two_term_activations_are_nearly_exact() {
        let mut r = rand::rngs::StdRng::seed_from_u64(6);
        for fmt in WeightFormat::ALL {
            let (n_out, k, m) = (48, k_for(fmt, 256), 5);
            let w = random_blocks(fmt, n_out, k, &mut r);
            let p = packed(fmt, &w, n_out, k);
            let mut wf = vec![0f32; n_out * k];
            fmt.dequantize(&w, &mut wf);
            let x: Vec<f32> =
                (0..m * k).map(|i| r.random_range(-3.0..3.0) * if i % 37 == 5 { 50.0 } else { 1.0 }).collect();
            let mut acts = Q8Acts::new();
            acts.quantize(&x, m, k);
            for isa in Isa::available() {
                let mut got = vec![0f32; m * n_out];
                let part = PackedPart { fmt, w: &p, rows: n_out, col0: 0 };
                packed_matmul_parts(isa, &[part], k, &x, m, &mut got, n_out, false, ActQuant::TwoTerm);
                for i in 0..m {
                    let row = acts.row(i);
                    for j in 0..n_out {
                        let ws = &wf[j * k..(j + 1) * k];
                        let xs = &x[i * k..(i + 1) * k];
                        let want: f64 = ws.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let mag: f64 = ws.iter().zip(xs).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                        let rounding: f64 = ws
                            .iter()
                            .enumerate()
                            .map(|(c, &a)| a.abs() as f64 * row.scale(c / QK8) as f64 / 508.0)
                            .sum();
                        let g = got[i * n_out + j] as f64;
                        assert!(
                            (g - want).abs() <= 1.01 * rounding + 2e-5 * (mag + 1.0),
                            "{fmt:?} {isa:?} [{i},{j}]: {g} vs {want} (rounding bound {rounding})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn column_parts_write_only_their_columns() {
        let mut r = rand::rngs::StdRng::seed_from_u64(4);
        let (k, m) = (256, 3);
        let (a, b) = (WeightFormat::Q4_K, WeightFormat::Q6_K);
        let (wa, wb) = (random_blocks(a, 32, k, &mut r), random_blocks(b, 16, k, &mut r));
        let (pa, pb) = (packed(a, &wa, 32, k), packed(b, &wb, 16, k));
        let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-3.0..3.0)).collect();
        let mut stacked = vec![f32::NAN; m * 48];
        packed_matmul_cols(Isa::best(), a, &pa, 32, k, &x, m, &mut stacked, 48, 0, false);
        packed_matmul_cols(Isa::best(), b, &pb, 16, k, &x, m, &mut stacked, 48, 32, false);
        let (mut ya, mut yb) = (vec![0f32; m * 32], vec![0f32; m * 16]);
        packed_matmul(a, &pa, 32, k, &x, m, &mut ya, false);
        packed_matmul(b, &pb, 16, k, &x, m, &mut yb, false);
        for i in 0..m {
            assert_eq!(stacked[i * 48..i * 48 + 32], ya[i * 32..(i + 1) * 32]);
            assert_eq!(stacked[i * 48 + 32..(i + 1) * 48], yb[i * 16..(i + 1) * 16]);
        }
    }

    #[test]
    fn parallel_split_equals_one_thread() {
        let mut r = rand::rngs::StdRng::seed_from_u64(3);
        for fmt in [WeightFormat::Q4_1, WeightFormat::Q5_0, WeightFormat::Q5_K] {
            let (n_out, k, m) = (1024, 256, 5);
            let w = random_blocks(fmt, n_out, k, &mut r);
            let p = packed(fmt, &w, n_out, k);
            let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-3.0..3.0)).collect();
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
            let mut a = vec![0f32; m * n_out];
            let mut b = vec![0f32; m * n_out];
            one.install(|| packed_matmul(fmt, &p, n_out, k, &x, m, &mut a, false));
            three.install(|| packed_matmul(fmt, &p, n_out, k, &x, m, &mut b, false));
            assert_eq!(a, b, "{fmt:?}");
        }
    }
}
