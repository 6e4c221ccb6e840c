//! The fast quantised matmul `out[m, n] (+)= x[m, :] · w[n, :]` on GGUF-layout blocks:
//! activations quantised on the fly (Q8 blocks of 32, or Q8_K for K-quants), dot kernels
//! on the weight blocks directly, split over output rows on the current rayon pool. SIMD
//! panels for Q4_0, Q4_1 and Q8_0 (and Q5_0, Q5_1 on NEON; variant chosen once); the rest
//! run the scalar dots here (the packed kernels of packed.rs cover them all).

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::OnceLock;

use bytemuck::Zeroable;
use rayon::prelude::*;

use super::dot_q8::*;
use super::q8::{quantize_q8_k, BlockQ8_K, Q8Acts, QK8};
use super::{WeightFormat, QK_K};
use crate::kernels::rows::with_thread_buf;

/// An instruction-set variant of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C, `vpmaddubsw` products.
    Avx2,
    /// AVX-512 F/BW/VL, two blocks per register, `vpmaddubsw` products.
    Avx512,
    /// As `Avx512` with VNNI `vpdpbusd`.
    Avx512Vnni,
    /// NEON with widening multiplies.
    Neon,
    /// NEON with the dot-product extension (`sdot`).
    NeonDot,
}

impl Isa {
    /// Every variant this CPU can run, the scalar reference first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            if avx2 {
                v.push(Isa::Avx2);
            }
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                v.push(Isa::Avx512);
                if is_x86_feature_detected!("avx512vnni") {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                v.push(Isa::Neon);
                if std::arch::is_aarch64_feature_detected!("dotprod") {
                    v.push(Isa::NeonDot);
                }
            }
        }
        v
    }

    /// The fastest available variant (detected once).
    pub fn best() -> Isa {
        kernels().isa
    }
}

/// Multiply-add panel of one 32-block format: all rows of `x` × the panel's weight rows.
pub(super) type PanelFn = unsafe fn(&mut Panel<'_>);

/// Function pointers for one instruction set: a panel per 32-block format, indexed by
/// format id (`None` for the K-quants, which take the Q8_K path).
struct Kernels {
    isa: Isa,
    panels: [Option<PanelFn>; WeightFormat::COUNT],
}

/// The panel table of kernel `$k` (a const-generic panel): `$k` for Q4_0, Q4_1 and Q8_0,
/// `$q5` (the scalar panel unless given) for Q5_0 and Q5_1, none for the K-quants.
macro_rules! panels {
    ($k:ident) => {
        panels!($k, scalar_panel)
    };
    ($k:ident, $q5:ident) => {{
        use WeightFormat as W;
        W::ALL.map(|f| match f {
            W::Q4_0 => Some($k::<{ W::Q4_0 as u8 }> as PanelFn),
            W::Q4_1 => Some($k::<{ W::Q4_1 as u8 }> as PanelFn),
            W::Q8_0 => Some($k::<{ W::Q8_0 as u8 }> as PanelFn),
            W::Q5_0 => Some($q5::<{ W::Q5_0 as u8 }> as PanelFn),
            W::Q5_1 => Some($q5::<{ W::Q5_1 as u8 }> as PanelFn),
            W::Q4_K | W::Q5_K | W::Q6_K => None,
        })
    }};
}

impl Kernels {
    /// `None` when this CPU cannot run `isa`.
    fn for_isa(isa: Isa) -> Option<Kernels> {
        if !Isa::available().contains(&isa) {
            return None;
        }
        let k = |panels| Some(Kernels { isa, panels });
        match isa {
            Isa::Scalar => k(panels!(scalar_panel)),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                use super::x86::*;
                k(panels!(panel_avx2))
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                use super::x86::*;
                k(panels!(panel_avx512))
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                use super::x86::*;
                k(panels!(panel_avx512_vnni))
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => {
                use super::neon::*;
                k(panels!(panel_neon, panel_neon))
            }
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                use super::neon::*;
                k(panels!(panel_neon_dot, panel_neon_dot))
            }
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    fn panel(&self, fmt: WeightFormat) -> PanelFn {
        self.panels[fmt as usize].unwrap_or_else(|| unreachable!("{fmt:?} has no 32-block panel"))
    }
}

/// The kernel tables of every available instruction set, the best last (detected once).
fn tables() -> &'static [Kernels] {
    static TABLES: OnceLock<Vec<Kernels>> = OnceLock::new();
    TABLES.get_or_init(|| Isa::available().into_iter().filter_map(Kernels::for_isa).collect())
}

/// The best table, or the one named by `MLLM_QUANT_ISA` (`scalar`, `avx2`, `avx512`,
/// `avx512vnni`, `neon`, `neondot`; for comparisons and benchmarks) when this CPU has it.
fn kernels() -> &'static Kernels {
    static CHOSEN: OnceLock<&'static Kernels> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let wanted = std::env::var("MLLM_QUANT_ISA").unwrap_or_default().to_ascii_lowercase();
        tables()
            .iter()
            .find(|k| !wanted.is_empty() && format!("{:?}", k.isa).to_ascii_lowercase() == wanted)
            .unwrap_or_else(|| tables().last().expect("scalar is always available"))
    })
}

fn kernels_for(isa: Isa) -> &'static Kernels {
    tables().iter().find(|k| k.isa == isa).unwrap_or_else(|| panic!("{isa:?} is not available on this CPU"))
}

/// Columns `j0..j0 + cols` of every row of a row-major `[rows, ldo]` output. Panels of
/// different tasks cover disjoint columns, so each hands out its rows as plain slices.
pub(super) struct OutCols<'a> {
    ptr: *mut f32,
    ldo: usize,
    rows: usize,
    cols: usize,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: an `OutCols` is the only handle to its (disjoint) columns; moving it to another
// thread moves that exclusive access, like sending a `&mut [f32]`.
unsafe impl Send for OutCols<'_> {}

impl<'a> OutCols<'a> {
    /// All of `out` (`rows` x `cols`).
    fn whole(out: &'a mut [f32], rows: usize, cols: usize) -> OutCols<'a> {
        assert_eq!(out.len(), rows * cols, "quantized matmul: output size");
        OutCols { ptr: out.as_mut_ptr(), ldo: cols, rows, cols, _out: PhantomData }
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn cols(&self) -> usize {
        self.cols
    }

    /// The panel's part of output row `r`.
    pub(super) fn row(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows, "output row {r} of {}", self.rows);
        // SAFETY: `r < rows`, so the `cols` values from `ptr + r * ldo` lie inside the
        // output this panel borrows, and no other `OutCols` covers these columns
        // (see `split_cols`); `&mut self` keeps the returned slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.ldo), self.cols) }
    }
}

/// The output shared by the tasks of one parallel matmul, each taking its own columns.
struct SharedOut {
    ptr: *mut f32,
    ldo: usize,
    rows: usize,
}

// SAFETY: tasks only reach the output through `SharedOut::cols`, whose contract gives each
// task columns no other task touches.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Columns `j0..j0 + n` of every row.
    ///
    /// # Safety
    /// `j0 + n <= ldo`, and no two live `OutCols` taken from one `SharedOut` may overlap.
    unsafe fn cols(&self, j0: usize, n: usize) -> OutCols<'_> {
        debug_assert!(j0 + n <= self.ldo);
        // SAFETY: `j0 <= ldo` (caller), so the pointer stays within row 0 of the output.
        OutCols { ptr: unsafe { self.ptr.add(j0) }, ldo: self.ldo, rows: self.rows, cols: n, _out: PhantomData }
    }
}

/// Runs `run(j0, columns)` for consecutive column panels of `chunk` (the last may be
/// shorter), in parallel on the current pool when `parallel`.
fn for_each_panel(out: OutCols<'_>, chunk: usize, parallel: bool, run: impl Fn(usize, OutCols<'_>) + Sync) {
    if !parallel {
        return run(0, out);
    }
    let shared = SharedOut { ptr: out.ptr, ldo: out.ldo, rows: out.rows };
    let cols = out.cols;
    (0..cols.div_ceil(chunk)).into_par_iter().for_each(|t| {
        let j0 = t * chunk;
        // SAFETY: `j0 + n <= cols = ldo`; each task index `t` runs once, so the column
        // ranges `j0..j0 + n` of different tasks are disjoint.
        run(j0, unsafe { shared.cols(j0, chunk.min(cols - j0)) })
    });
}

/// One panel's work: weight rows (`cols` of `row_bytes`), all activation rows.
pub(super) struct Panel<'a> {
    pub w: &'a [u8],
    pub row_bytes: usize,
    /// Blocks per weight row.
    pub nb: usize,
    pub x: &'a Q8Acts,
    pub out: OutCols<'a>,
    pub accumulate: bool,
}

impl<'a> Panel<'a> {
    fn new(fmt: WeightFormat, w: &'a [u8], x: &'a Q8Acts, out: OutCols<'a>, accumulate: bool) -> Panel<'a> {
        let nb = x.k() / QK8;
        let row_bytes = nb * fmt.block_bytes();
        assert_eq!(w.len(), out.cols() * row_bytes, "quantized matmul: weight panel size");
        assert_eq!(out.rows(), x.rows(), "quantized matmul: output rows");
        Panel { w, row_bytes, nb, x, out, accumulate }
    }

    /// Store or add a result.
    #[inline(always)]
    pub(super) fn put(&mut self, r: usize, c: usize, v: f32) {
        let acc = self.accumulate;
        let o = &mut self.out.row(r)[c];
        *o = if acc { *o + v } else { v };
    }
}

/// The scalar reference as a panel, for the 32-block format of id `F`.
///
/// # Safety
/// Always safe to call; `unsafe` only to share the panel function type.
unsafe fn scalar_panel<const F: u8>(p: &mut Panel<'_>) {
    let dot = match const { WeightFormat::from_id(F) } {
        WeightFormat::Q4_0 => vec_dot_q4_0_q8,
        WeightFormat::Q4_1 => vec_dot_q4_1_q8,
        WeightFormat::Q5_0 => vec_dot_q5_0_q8,
        WeightFormat::Q5_1 => vec_dot_q5_1_q8,
        WeightFormat::Q8_0 => vec_dot_q8_0_q8,
        f @ (WeightFormat::Q4_K | WeightFormat::Q5_K | WeightFormat::Q6_K) => {
            unreachable!("{f:?} has no 32-block panel")
        }
    };
    for r in 0..p.x.rows() {
        for c in 0..p.out.cols() {
            let v = dot(&p.w[c * p.row_bytes..(c + 1) * p.row_bytes], p.x.row(r));
            p.put(r, c, v);
        }
    }
}

thread_local! {
    static Q8_BUF: RefCell<Q8Acts> = RefCell::new(Q8Acts::new());
    static Q8K_BUF: RefCell<Vec<BlockQ8_K>> = const { RefCell::new(Vec::new()) };
}

/// Output rows per parallel task: at least four tasks per thread and at most 64 rows each
/// (so weight panels stay in cache), the task count a multiple of the thread count (equal
/// shares), at least 16 rows and a multiple of 4 (the kernels' tile width).
pub(super) fn grain(n_out: usize, threads: usize) -> usize {
    let tasks = (4 * threads).max(n_out.div_ceil(64)).next_multiple_of(threads);
    n_out.div_ceil(tasks).next_multiple_of(4).max(16)
}

/// Below this many multiply-adds a matmul runs on the calling thread.
const PAR_MIN_WORK: usize = 1 << 16;

/// `out[i, j] (+)= Σ_k x[i, k] w[j, k]` for `w` `[n_out, k]` in `fmt` (row-major blocks),
/// `x` `[m, k]` f32 and `out` `[m, n_out]`, with the activations quantised to 8 bits first.
/// Uses the best instruction set; parallel over output rows on the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul(
    fmt: WeightFormat,
    w: &[u8],
    n_out: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    quantized_matmul_with(Isa::best(), fmt, w, n_out, k, x, m, out, accumulate)
}

/// [`quantized_matmul`] with a chosen instruction set (for tests and benchmarks); panics
/// if this CPU cannot run `isa`.
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul_with(
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
    assert!(k.is_multiple_of(fmt.block_len()), "quantized matmul: k = {k} is not whole {fmt:?} blocks");
    let row_bytes = k / fmt.block_len() * fmt.block_bytes();
    assert_eq!(w.len(), n_out * row_bytes, "quantized matmul: {fmt:?} weight of {n_out} x {k}");
    assert_eq!(x.len(), m * k, "quantized matmul: input is not {m} x {k}");
    assert_eq!(out.len(), m * n_out, "quantized matmul: output is not {m} x {n_out}");
    if m == 0 || n_out == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m * n_out * k >= PAR_MIN_WORK;
    let out = OutCols::whole(out, m, n_out);
    let chunk = if parallel { grain(n_out, threads) } else { n_out };
    if fmt.block_len() == QK8 {
        let panel_fn = kernels_for(isa).panel(fmt);
        with_thread_buf(&Q8_BUF, |acts| {
            acts.quantize(x, m, k);
            let acts = &*acts;
            for_each_panel(out, chunk, parallel, |j0, cols| {
                let n = cols.cols();
                let mut p = Panel::new(fmt, &w[j0 * row_bytes..(j0 + n) * row_bytes], acts, cols, accumulate);
                // SAFETY: `kernels` was built by `Kernels::for_isa`, which only returns the
                // functions of an instruction set this CPU supports; `Panel::new` checked
                // that the weight, activation and output sizes agree.
                unsafe { panel_fn(&mut p) }
            });
        });
    } else {
        let dot = match fmt {
            WeightFormat::Q4_K => vec_dot_q4_k_q8_k,
            WeightFormat::Q5_K => vec_dot_q5_k_q8_k,
            WeightFormat::Q6_K => vec_dot_q6_k_q8_k,
            _ => unreachable!("{fmt:?} has 32-weight blocks"),
        };
        with_thread_buf(&Q8K_BUF, |acts| {
            let nb = k / QK_K;
            if acts.len() < m * nb {
                acts.resize(m * nb, BlockQ8_K::zeroed());
            }
            let acts = &mut acts[..m * nb];
            quantize_q8_k(x, acts);
            let acts = &*acts;
            for_each_panel(out, chunk, parallel, |j0, mut cols| {
                for i in 0..cols.rows() {
                    let xr = &acts[i * nb..(i + 1) * nb];
                    for (c, o) in cols.row(i).iter_mut().enumerate() {
                        let v = dot(&w[(j0 + c) * row_bytes..(j0 + c + 1) * row_bytes], xr);
                        *o = if accumulate { *o + v } else { v };
                    }
                }
            });
        });
    }
}
