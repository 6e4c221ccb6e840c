//! Memory accounting: every tensor storage reports its bytes here when created and
//! when dropped, so the report is exact (live, peak, counts by memory and element type).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::tensor::{DType, MemType};

/// Storages at least this large are listed by name in the report's "largest" table.
const TRACK_LARGEST_FROM: usize = 64 * 1024;

struct Counter {
    live: AtomicUsize,
    peak: AtomicUsize,
    allocs: AtomicU64,
}

impl Counter {
    const fn new() -> Self {
        Counter { live: AtomicUsize::new(0), peak: AtomicUsize::new(0), allocs: AtomicU64::new(0) }
    }
    fn add(&self, bytes: usize) {
        let now = self.live.fetch_add(bytes, Relaxed) + bytes;
        self.peak.fetch_max(now, Relaxed);
        self.allocs.fetch_add(1, Relaxed);
    }
    fn sub(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Relaxed);
    }
    fn read(&self) -> Usage {
        Usage { live: self.live.load(Relaxed), peak: self.peak.load(Relaxed), allocs: self.allocs.load(Relaxed) }
    }
}

const N_MEM: usize = MemType::ALL.len();
const N_DTYPE: usize = DType::ALL.len();

static TOTAL: Counter = Counter::new();
static BY_MEM: [Counter; N_MEM] = [const { Counter::new() }; N_MEM];
static BY_DTYPE: [Counter; N_DTYPE] = [const { Counter::new() }; N_DTYPE];
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static LARGE: Mutex<Option<HashMap<u64, LiveTensor>>> = Mutex::new(None);

fn dtype_index(d: DType) -> usize {
    DType::ALL.iter().position(|&x| x == d).unwrap_or(0)
}

/// A ticket for one accounted allocation; hand it back with [`release`].
#[derive(Debug)]
pub(crate) struct Ticket {
    id: u64,
    bytes: usize,
    mem: MemType,
    dtype: DType,
}

pub(crate) fn record(bytes: usize, mem: MemType, dtype: DType, label: Option<&Arc<str>>) -> Ticket {
    let id = NEXT_ID.fetch_add(1, Relaxed);
    TOTAL.add(bytes);
    BY_MEM[mem.index()].add(bytes);
    BY_DTYPE[dtype_index(dtype)].add(bytes);
    if bytes >= TRACK_LARGEST_FROM {
        let name = label.map(|s| s.to_string()).unwrap_or_else(|| "(unnamed)".into());
        let mut g = LARGE.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert_with(HashMap::new).insert(id, LiveTensor { name, bytes, mem_type: mem, dtype });
    }
    Ticket { id, bytes, mem, dtype }
}

pub(crate) fn rename(ticket: &Ticket, label: &str) {
    if ticket.bytes >= TRACK_LARGEST_FROM {
        let mut g = LARGE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = g.as_mut().and_then(|m| m.get_mut(&ticket.id)) {
            t.name = label.to_string();
        }
    }
}

pub(crate) fn release(ticket: &Ticket) {
    TOTAL.sub(ticket.bytes);
    BY_MEM[ticket.mem.index()].sub(ticket.bytes);
    BY_DTYPE[dtype_index(ticket.dtype)].sub(ticket.bytes);
    if ticket.bytes >= TRACK_LARGEST_FROM {
        let mut g = LARGE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = g.as_mut() {
            m.remove(&ticket.id);
        }
    }
}

/// Live bytes, peak bytes and number of allocations of one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub live: usize,
    pub peak: usize,
    pub allocs: u64,
}

/// One live tensor storage among the largest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveTensor {
    pub name: String,
    pub bytes: usize,
    pub mem_type: MemType,
    pub dtype: DType,
}

/// A snapshot of the engine's memory use. Peaks are per group: the total peak is the
/// largest total seen, not the sum of the groups' peaks. `ParamsMmap` bytes are mapped
/// file ranges; the OS loads their pages on demand, so they may not all be resident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    pub total: Usage,
    pub by_mem_type: Vec<(MemType, Usage)>,
    pub by_dtype: Vec<(DType, Usage)>,
    /// Live storages of 64 KiB or more, largest first (at most 10).
    pub largest: Vec<LiveTensor>,
}

impl MemoryReport {
    /// Take a snapshot now.
    pub fn capture() -> Self {
        let mut largest: Vec<LiveTensor> = {
            let g = LARGE.lock().unwrap_or_else(|p| p.into_inner());
            g.as_ref().map(|m| m.values().cloned().collect()).unwrap_or_default()
        };
        largest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
        largest.truncate(10);
        MemoryReport {
            total: TOTAL.read(),
            by_mem_type: MemType::ALL.iter().map(|&m| (m, BY_MEM[m.index()].read())).collect(),
            by_dtype: DType::ALL.iter().map(|&d| (d, BY_DTYPE[dtype_index(d)].read())).collect(),
            largest,
        }
    }

    /// Usage of one memory type.
    pub fn mem_type(&self, m: MemType) -> Usage {
        self.by_mem_type.iter().find(|(k, _)| *k == m).map(|(_, u)| *u).unwrap_or_default()
    }

    /// Usage of one element type.
    pub fn dtype(&self, d: DType) -> Usage {
        self.by_dtype.iter().find(|(k, _)| *k == d).map(|(_, u)| *u).unwrap_or_default()
    }
}

/// This machine's read bandwidth in bytes per second, as the context's pool reads: the
/// best of `passes` sums of a buffer of `bytes` (make it much larger than the caches),
/// split over the pool's threads. The roof a memory-bound step (decode) can reach.
pub fn read_bandwidth(bytes: usize, passes: usize) -> f64 {
    use rayon::prelude::*;
    let words = vec![1u64; (bytes / 8).max(1 << 16)];
    let pool = crate::context::context().pool();
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let t0 = std::time::Instant::now();
        let sum: u64 =
            pool.install(|| words.par_chunks(1 << 15).map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x))).sum());
        let dt = t0.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max((words.len() * 8) as f64 / dt);
    }
    best
}

/// Bytes in a human unit: `1.50 MiB`.
pub fn human_bytes(b: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "memory report")?;
        writeln!(f, "  {:<14} {:>12} {:>12} {:>8}", "group", "live", "peak", "allocs")?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, u: &Usage| {
            writeln!(f, "  {:<14} {:>12} {:>12} {:>8}", name, human_bytes(u.live), human_bytes(u.peak), u.allocs)
        };
        row(f, "total", &self.total)?;
        for (m, u) in &self.by_mem_type {
            if u.allocs > 0 {
                row(f, &format!("{m:?}"), u)?;
            }
        }
        for (d, u) in &self.by_dtype {
            if u.allocs > 0 {
                row(f, &format!("dtype {d}"), u)?;
            }
        }
        if !self.largest.is_empty() {
            writeln!(f, "  largest live tensors:")?;
            for t in &self.largest {
                writeln!(f, "    {:<40} {:>12} {:?} {}", t.name, human_bytes(t.bytes), t.mem_type, t.dtype)?;
            }
        }
        Ok(())
    }
}

/// Print the memory report to stdout (as the seed's `mllm::memoryReport()`) and return it.
pub fn memory_report() -> MemoryReport {
    let r = MemoryReport::capture();
    print!("{r}");
    super::trace::flush();
    r
}

/// Hand memory the allocator holds but no longer uses back to the OS (glibc keeps freed
/// heap pages for reuse; after loading a model, the parsing temporaries are megabytes of
/// them). Cheap to call; does nothing on other platforms.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of the allocator's arenas to the OS; it
    // touches no live allocation and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
