//! Row-interleaved ("packed") copies of Q4_0, Q4_1 and Q8_0 weights and the matmul that
//! reads them: 16 weight rows share each block's vectors, one 32-bit lane per row, so a
//! SIMD dot instruction computes 16 outputs at once and no horizontal sum is needed.
//! Layout, packer, row decoder, scalar reference and the parallel driver live here; the
//! SIMD bodies are in packed_x86.rs and packed_neon.rs. Plain byte slices only.
//!
//! Layout of one group of [`PACK_ROWS`] rows with `nb` blocks per row (all little endian):
//! `nb` times `[quants: QB bytes][d: 16 × f16][m: 16 × f16, Q4_1 only]`, so a group is one
//! sequential stream for the prefetchers.
//! * Q4_0 / Q4_1 (QB = 256): block `b` is four 64-byte vectors; byte `4i + j` of vector `t`
//!   holds weight `8t + j` of row `i` in its low nibble and weight `8t + 4 + j` in its high one.
//! * Q8_0 (QB = 512): eight 64-byte vectors; byte `4i + j` of vector `t` is weight `4t + j`
//!   of row `i` plus 128 (as u8), so that unsigned × signed dot instructions apply.
//!
//! A group takes exactly the bytes of its 16 rows in GGUF layout, so a packed matrix has
//! the size of the original, and stacking packed matrices (e.g. q, k, v) is concatenation.

use std::cell::RefCell;

use half::f16;
use rayon::prelude::*;

use super::q8::{Q8Acts, Q8Row, QK8};
use super::qmatmul::{Isa, WeightFormat};

/// Weight rows per packed group.
pub const PACK_ROWS: usize = 16;

/// Bytes of quants per block and group.
const fn quant_bytes(fmt: WeightFormat) -> usize {
    match fmt {
        WeightFormat::Q8_0 => 512,
        _ => 256,
    }
}

/// True for the formats that have a packed layout.
pub fn packable(fmt: WeightFormat) -> bool {
    matches!(fmt, WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q8_0)
}

/// Where the parts of one group lie.
#[derive(Clone, Copy, Debug)]
pub(super) struct GroupLayout {
    pub nb: usize,
    /// Bytes per block of the group (quants, scales, mins).
    pub stride: usize,
    /// Bytes of quants per block.
    pub qb: usize,
    /// Bytes per group.
    pub bytes: usize,
}

impl GroupLayout {
    pub fn new(fmt: WeightFormat, k: usize) -> GroupLayout {
        let nb = k / QK8;
        let stride = PACK_ROWS * fmt.block_bytes();
        GroupLayout { nb, stride, qb: quant_bytes(fmt), bytes: nb * stride }
    }

    /// Offset of block `b`'s quants from the group start.
    #[inline(always)]
    pub fn q_at(&self, b: usize) -> usize {
        b * self.stride
    }

    /// Offset of block `b`'s 16 f16 scales.
    #[inline(always)]
    pub fn d_at(&self, b: usize) -> usize {
        b * self.stride + self.qb
    }

    /// Offset of block `b`'s 16 f16 mins (Q4_1).
    #[inline(always)]
    pub fn m_at(&self, b: usize) -> usize {
        b * self.stride + self.qb + 2 * PACK_ROWS
    }
}

fn check_shape(op: &str, fmt: WeightFormat, n_out: usize, k: usize, bytes: usize) {
    assert!(packable(fmt), "{op}: {fmt:?} has no packed layout");
    assert!(n_out.is_multiple_of(PACK_ROWS), "{op}: {n_out} rows are not whole groups of {PACK_ROWS}");
    assert!(k.is_multiple_of(QK8), "{op}: rows of {k} are not whole blocks of {QK8}");
    assert_eq!(bytes, n_out * (k / QK8) * fmt.block_bytes(), "{op}: byte size");
}

/// Byte offset within a block's quants of weight `w` (0..32) of row `i`, and whether it
/// sits in the high nibble (Q4 formats).
#[inline(always)]
fn quant_pos(fmt: WeightFormat, i: usize, w: usize) -> (usize, bool) {
    match fmt {
        WeightFormat::Q8_0 => ((w / 4) * 64 + 4 * i + w % 4, false),
        _ => ((w / 8) * 64 + 4 * i + w % 4, w % 8 >= 4),
    }
}

/// Pack `src` (`n_out` rows of `k` weights in GGUF block layout) into `dst` (same size).
/// Panics unless `n_out` is a multiple of [`PACK_ROWS`] and the sizes agree.
pub fn pack_rows(fmt: WeightFormat, src: &[u8], n_out: usize, k: usize, dst: &mut [u8]) {
    check_shape("pack_rows", fmt, n_out, k, src.len());
    assert_eq!(dst.len(), src.len(), "pack_rows: destination size");
    let lay = GroupLayout::new(fmt, k);
    let bb = fmt.block_bytes();
    let row_bytes = lay.nb * bb;
    let q4 = fmt != WeightFormat::Q8_0;
    let qs_off = if fmt == WeightFormat::Q4_1 { 4 } else { 2 };
    let word = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let pack_group = |(g, out): (usize, &mut [u8])| {
        for b in 0..lay.nb {
            let (q0, d0, m0) = (lay.q_at(b), lay.d_at(b), lay.m_at(b));
            for i in 0..PACK_ROWS {
                let blk = &src[(g * PACK_ROWS + i) * row_bytes + b * bb..][..bb];
                let qs = &blk[qs_off..];
                // Four output bytes (one 32-bit lane) per vector; see the module docs.
                if q4 {
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
                } else {
                    for t in 0..8 {
                        let v = word(qs, 4 * t) ^ 0x8080_8080;
                        out[q0 + 64 * t + 4 * i..][..4].copy_from_slice(&v.to_le_bytes());
                    }
                }
                out[d0 + 2 * i..][..2].copy_from_slice(&blk[..2]);
                if fmt == WeightFormat::Q4_1 {
                    out[m0 + 2 * i..][..2].copy_from_slice(&blk[2..4]);
                }
            }
        }
    };
    // Every byte of a group is written, so `dst` need not be cleared.
    dst.par_chunks_mut(lay.bytes).enumerate().for_each(pack_group);
}

/// Decode row `row` of a packed matrix into `out` (`k` values).
pub fn dequantize_packed_row(fmt: WeightFormat, packed: &[u8], n_out: usize, k: usize, row: usize, out: &mut [f32]) {
    check_shape("dequantize_packed_row", fmt, n_out, k, packed.len());
    assert!(row < n_out, "dequantize_packed_row: row {row} of {n_out}");
    assert_eq!(out.len(), k, "dequantize_packed_row: output length");
    let lay = GroupLayout::new(fmt, k);
    let (g, i) = (row / PACK_ROWS, row % PACK_ROWS);
    let grp = &packed[g * lay.bytes..(g + 1) * lay.bytes];
    for b in 0..lay.nb {
        let (d, m) = scale_min(fmt, grp, &lay, b, i);
        for w in 0..QK8 {
            let q = quant(fmt, &grp[lay.q_at(b)..lay.q_at(b) + lay.qb], i, w);
            out[b * QK8 + w] = match fmt {
                WeightFormat::Q4_0 => d * (q - 8) as f32,
                WeightFormat::Q4_1 => d * q as f32 + m,
                _ => d * (q - 128) as f32,
            };
        }
    }
}

/// The unsigned stored quant of weight `w` of row `i` in one block's quants.
#[inline(always)]
fn quant(fmt: WeightFormat, quants: &[u8], i: usize, w: usize) -> i32 {
    let (pos, high) = quant_pos(fmt, i, w);
    let v = quants[pos];
    (match fmt {
        WeightFormat::Q8_0 => v,
        _ if high => v >> 4,
        _ => v & 0x0F,
    }) as i32
}

#[inline(always)]
fn scale_min(fmt: WeightFormat, grp: &[u8], lay: &GroupLayout, b: usize, i: usize) -> (f32, f32) {
    let at = |off: usize| {
        let s = off + i * 2;
        f16::from_le_bytes([grp[s], grp[s + 1]]).to_f32()
    };
    (at(lay.d_at(b)), if fmt == WeightFormat::Q4_1 { at(lay.m_at(b)) } else { 0.0 })
}

/// Integer offset subtracted per activation-block sum: w = d (q - offset) (+ m).
pub(super) const fn quant_offset(fmt: WeightFormat) -> i32 {
    match fmt {
        WeightFormat::Q4_0 => 8,
        WeightFormat::Q8_0 => 128,
        _ => 0,
    }
}

/// One kernel call: the 16 outputs of one group for activation rows `x`, stored to (or
/// added into) `out[r]` (16 values each).
pub(super) struct GroupCall<'a, 'b> {
    pub grp: &'a [u8],
    pub lay: GroupLayout,
    pub x: &'b [Q8Row<'a>],
    pub out: &'b mut [&'a mut [f32]],
    pub accumulate: bool,
}

/// Kernel over all rows of a [`GroupCall`] for one format.
pub(super) type GroupFn = unsafe fn(&mut GroupCall<'_, '_>);

/// The scalar reference: exact integer block dots, then `acc += (isum · d) · dx (+ m · Σx)`
/// in the order the SIMD kernels use.
///
/// # Safety
/// Always safe; `unsafe` only to share the kernel type.
unsafe fn scalar_group<const F: u8>(c: &mut GroupCall<'_, '_>) {
    let fmt = format_of(F);
    let lay = c.lay;
    for (x, out) in c.x.iter().zip(c.out.iter_mut()) {
        let mut acc = [0f32; PACK_ROWS];
        for b in 0..lay.nb {
            let quants = &c.grp[lay.q_at(b)..lay.q_at(b) + lay.qb];
            let xs = &x.qs[b * QK8..(b + 1) * QK8];
            for (i, a) in acc.iter_mut().enumerate() {
                let mut isum = 0i32;
                for (w, &xv) in xs.iter().enumerate() {
                    isum += quant(fmt, quants, i, w) * xv as i32;
                }
                isum -= quant_offset(fmt) * x.isums[b];
                let (d, m) = scale_min(fmt, c.grp, &c.lay, b, i);
                *a = (isum as f32 * d).mul_add(x.scale(b), *a);
                if fmt == WeightFormat::Q4_1 {
                    *a = m.mul_add(x.sums[b], *a);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = if c.accumulate { *o + a } else { a };
        }
    }
}

pub(super) const P_Q4_0: u8 = 0;
pub(super) const P_Q4_1: u8 = 1;
pub(super) const P_Q8_0: u8 = 2;

pub(super) const fn format_of(f: u8) -> WeightFormat {
    match f {
        P_Q4_0 => WeightFormat::Q4_0,
        P_Q4_1 => WeightFormat::Q4_1,
        _ => WeightFormat::Q8_0,
    }
}

/// The kernels of one instruction set for the three formats.
struct PackedKernels {
    isa: Isa,
    f: [GroupFn; 3],
}

fn packed_kernels(isa: Isa) -> Option<PackedKernels> {
    if !Isa::available().contains(&isa) {
        return None;
    }
    let k = |f: [GroupFn; 3]| Some(PackedKernels { isa, f });
    match isa {
        Isa::Scalar => k([scalar_group::<P_Q4_0>, scalar_group::<P_Q4_1>, scalar_group::<P_Q8_0>]),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            use super::packed_x86::group_avx2;
            k([group_avx2::<P_Q4_0>, group_avx2::<P_Q4_1>, group_avx2::<P_Q8_0>])
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            use super::packed_x86::group_avx512_vnni;
            k([group_avx512_vnni::<P_Q4_0>, group_avx512_vnni::<P_Q4_1>, group_avx512_vnni::<P_Q8_0>])
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            use super::packed_neon::group_neon;
            k([group_neon::<P_Q4_0, false>, group_neon::<P_Q4_1, false>, group_neon::<P_Q8_0, false>])
        }
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => {
            use super::packed_neon::group_neon;
            k([group_neon::<P_Q4_0, true>, group_neon::<P_Q4_1, true>, group_neon::<P_Q8_0, true>])
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
    check_shape("packed_matmul", fmt, n_out, k, w.len());
    assert_eq!(x.len(), m * k, "packed_matmul: input is not {m} x {k}");
    assert_eq!(out.len(), m * n_out, "packed_matmul: output is not {m} x {n_out}");
    if m == 0 || n_out == 0 {
        return;
    }
    let kernel = packed_table(isa).f[match fmt {
        WeightFormat::Q4_0 => 0,
        WeightFormat::Q4_1 => 1,
        _ => 2,
    }];
    let lay = GroupLayout::new(fmt, k);
    let groups = n_out / PACK_ROWS;
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m * n_out * k >= PAR_MIN_WORK;
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |acts: &Q8Acts, g0: usize, g1: usize| {
        for g in g0..g1 {
            let grp = &w[g * lay.bytes..(g + 1) * lay.bytes];
            let mut r0 = 0;
            while r0 < m {
                let n = ROW_TILE.min(m - r0);
                let xr: [Q8Row<'_>; ROW_TILE] = std::array::from_fn(|i| acts.row((r0 + i).min(m - 1)));
                let mut outs: [&mut [f32]; ROW_TILE] = std::array::from_fn(|i| {
                    let r = (r0 + i).min(m - 1);
                    // SAFETY: row `r` columns `16g..16g + 16` lie inside `out` (`r < m`,
                    // `g < groups`); tasks own disjoint group ranges, and within a call the
                    // rows `r0..r0 + n` are distinct (the clamped duplicates past `n` are
                    // never handed to the kernel: see the slices below).
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(r * n_out + g * PACK_ROWS), PACK_ROWS) }
                });
                let mut call = GroupCall { grp, lay, x: &xr[..n], out: &mut outs[..n], accumulate };
                // SAFETY: the table only holds kernels this CPU supports; the group holds
                // `lay.bytes` bytes and every activation row `k` values.
                unsafe { kernel(&mut call) };
                r0 += n;
            }
        }
    };
    ACTS.with(|cell| {
        let mut own;
        let mut borrowed = cell.try_borrow_mut();
        let acts: &mut Q8Acts = match borrowed.as_deref_mut() {
            Ok(a) => a,
            Err(_) => {
                own = Q8Acts::new();
                &mut own
            }
        };
        acts.quantize(x, m, k);
        let acts = &*acts;
        if !parallel {
            return run(acts, 0, groups);
        }
        let chunk = group_grain(groups, threads);
        (0..groups.div_ceil(chunk)).into_par_iter().for_each(|t| run(acts, t * chunk, ((t + 1) * chunk).min(groups)));
    });
}

/// Groups per parallel task: the task count a multiple of the thread count (equal shares),
/// at least two tasks per thread and at most 8 groups (128 rows) per task.
fn group_grain(groups: usize, threads: usize) -> usize {
    let tasks = (2 * threads).max(groups.div_ceil(8)).next_multiple_of(threads);
    groups.div_ceil(tasks).max(1)
}

/// The output pointer shared by the tasks of one matmul (each writes its own columns).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: tasks only write through `OutPtr` to the columns of their own groups.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::{dequantize_q4_0, dequantize_q4_1, dequantize_q8_0, quantized_matmul_with};
    use rand::{Rng, SeedableRng};

    fn random_blocks(fmt: WeightFormat, n_out: usize, k: usize, r: &mut impl Rng) -> Vec<u8> {
        let bb = fmt.block_bytes();
        let mut v = vec![0u8; n_out * k / QK8 * bb];
        for blk in v.chunks_exact_mut(bb) {
            r.fill(blk);
            // finite f16 scale/min in a sane range
            let d = f16::from_f32(r.random_range(-0.05..0.05)).to_le_bytes();
            blk[..2].copy_from_slice(&d);
            if fmt == WeightFormat::Q4_1 {
                blk[2..4].copy_from_slice(&f16::from_f32(r.random_range(-0.2..0.2)).to_le_bytes());
            }
        }
        v
    }

    fn dequant_rows(fmt: WeightFormat, w: &[u8], out: &mut [f32]) {
        match fmt {
            WeightFormat::Q4_0 => dequantize_q4_0(w, out),
            WeightFormat::Q4_1 => dequantize_q4_1(w, out),
            _ => dequantize_q8_0(w, out),
        }
    }

    #[test]
    fn packed_rows_decode_to_the_original_weights() {
        let mut r = rand::rngs::StdRng::seed_from_u64(1);
        for fmt in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let (n_out, k) = (48, 96);
            let w = random_blocks(fmt, n_out, k, &mut r);
            let mut p = vec![0xAAu8; w.len()];
            pack_rows(fmt, &w, n_out, k, &mut p);
            let mut want = vec![0f32; n_out * k];
            dequant_rows(fmt, &w, &mut want);
            let mut got = vec![0f32; k];
            for row in 0..n_out {
                dequantize_packed_row(fmt, &p, n_out, k, row, &mut got);
                assert_eq!(got, want[row * k..(row + 1) * k], "{fmt:?} row {row}");
            }
        }
    }

    /// Every instruction set against the unpacked scalar reference (vec_dot_*_q8 through
    /// quantized_matmul_with(Scalar)), on odd row counts, tails of the row tile and both
    /// store modes.
    #[test]
    fn packed_matmul_matches_the_block_reference_on_every_isa() {
        let mut r = rand::rngs::StdRng::seed_from_u64(2);
        for fmt in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0] {
            for &(n_out, k, m) in &[(16, 32, 1), (48, 96, 3), (64, 576, 1), (32, 160, 9), (80, 64, 17)] {
                let w = random_blocks(fmt, n_out, k, &mut r);
                let mut p = vec![0u8; w.len()];
                pack_rows(fmt, &w, n_out, k, &mut p);
                let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-3.0..3.0)).collect();
                let init: Vec<f32> = (0..m * n_out).map(|_| r.random_range(-1.0..1.0)).collect();
                for accumulate in [false, true] {
                    let mut want = init.clone();
                    quantized_matmul_with(Isa::Scalar, fmt, &w, n_out, k, &x, m, &mut want, accumulate);
                    for isa in Isa::available() {
                        let mut got = init.clone();
                        packed_matmul_with(isa, fmt, &p, n_out, k, &x, m, &mut got, accumulate);
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            let tol = 1e-4 * (1.0 + b.abs());
                            assert!(
                                (a - b).abs() <= tol,
                                "{fmt:?} {isa:?} {n_out}x{k} m={m} acc={accumulate} [{i}]: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn parallel_split_equals_one_thread() {
        let mut r = rand::rngs::StdRng::seed_from_u64(3);
        let (fmt, n_out, k, m) = (WeightFormat::Q4_1, 1024, 256, 5);
        let w = random_blocks(fmt, n_out, k, &mut r);
        let mut p = vec![0u8; w.len()];
        pack_rows(fmt, &w, n_out, k, &mut p);
        let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-3.0..3.0)).collect();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let mut a = vec![0f32; m * n_out];
        let mut b = vec![0f32; m * n_out];
        one.install(|| packed_matmul(fmt, &p, n_out, k, &x, m, &mut a, false));
        three.install(|| packed_matmul(fmt, &p, n_out, k, &x, m, &mut b, false));
        assert_eq!(a, b);
    }
}
