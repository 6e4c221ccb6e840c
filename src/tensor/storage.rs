//! Tensor storage: a reference-counted block of bytes on the heap (64-byte aligned)
//! or a range of a memory-mapped file. Every storage is accounted in the memory report.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use memmap2::{Mmap, MmapMut};

use crate::context::memory::{self, Ticket};
use crate::tensor::{DType, MemType};

/// Unit of heap allocation: 64 bytes aligned to 64, so SIMD loads and any element
/// type's alignment are satisfied without `unsafe`.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Line([u8; 64]);

pub(crate) enum Bytes {
    Heap(Vec<Line>),
    /// Large buffers: anonymous pages, zero-filled lazily by the OS on first touch.
    Anon(MmapMut),
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
    },
}

/// From this size on, zeroed storage is an anonymous mapping: the OS hands out zero pages
/// as they are first written (by whichever thread computes into them), where a 64-byte
/// aligned heap allocation would be memset on the allocating thread first.
const ANON_FROM: usize = 1 << 20;

/// Bytes of one or more tensors (views share a storage).
pub struct Storage {
    bytes: Bytes,
    len: usize,
    mem_type: MemType,
    ticket: Ticket,
}

impl Storage {
    /// Zero-filled storage of `len` bytes: on the heap when small, else an anonymous map
    /// whose pages the OS zero-fills lazily (page aligned, so any element type fits).
    pub(crate) fn zeroed(len: usize, mem_type: MemType, dtype: DType, label: Option<&Arc<str>>) -> Storage {
        let bytes = match (len >= ANON_FROM).then(|| MmapMut::map_anon(len)) {
            // (Asking for transparent huge pages made loading slower here: 151 vs 123 ms.)
            Some(Ok(map)) => Bytes::Anon(map),
            // Small, or the OS refused a mapping: the heap (which reports exhaustion itself).
            _ => Bytes::Heap(bytemuck::allocation::zeroed_vec(len.div_ceil(64))),
        };
        let ticket = memory::record(len, mem_type, dtype, label);
        Storage { bytes, len, mem_type, ticket }
    }

    /// Heap storage holding a copy of `src`.
    pub(crate) fn copy_of(src: &[u8], mem_type: MemType, dtype: DType, label: Option<&Arc<str>>) -> Storage {
        let mut s = Storage::zeroed(src.len(), mem_type, dtype, label);
        s.bytes_mut().copy_from_slice(src);
        s
    }

    /// A range of a mapped file, read in place. The caller checked the range.
    pub(crate) fn mapped(map: Arc<Mmap>, offset: usize, len: usize, dtype: DType, label: Option<&Arc<str>>) -> Storage {
        debug_assert!(offset + len <= map.len());
        let ticket = memory::record(len, MemType::ParamsMmap, dtype, label);
        Storage { bytes: Bytes::Mapped { map, offset }, len, mem_type: MemType::ParamsMmap, ticket }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn mem_type(&self) -> MemType {
        self.mem_type
    }

    pub(crate) fn rename(&self, label: &str) {
        memory::rename(&self.ticket, label);
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Heap(v) => &bytemuck::cast_slice(v)[..self.len],
            Bytes::Anon(m) => &m[..self.len],
            Bytes::Mapped { map, offset } => &map[*offset..*offset + self.len],
        }
    }

    /// For a mapped file: tell the OS that bytes `start..start + len` of this storage are
    /// not needed now, so their pages leave the process's resident set (they are read
    /// from the file again on the next access). No effect on heap storage.
    pub(crate) fn release_mapped(&self, start: usize, len: usize) {
        #[cfg(unix)]
        if let Bytes::Mapped { map, offset } = &self.bytes {
            if start + len <= self.len && len > 0 {
                // SAFETY: `Mmap` is a read-only private mapping, so MADV_DONTNEED discards no
                // data: later reads fault the same file bytes back in. The range lies inside
                // the map (checked above and at construction); the call only changes which
                // pages are resident, not what any live reference reads.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset + start, len) };
            }
        }
        #[cfg(not(unix))]
        let _ = (start, len);
    }

    /// For a mapped file: expect reads of scattered rows (an embedding table), so the OS
    /// maps only the pages touched instead of reading ahead around each one.
    pub(crate) fn advise_random(&self) {
        if let Bytes::Mapped { map, offset } = &self.bytes {
            let _ = map.advise_range(memmap2::Advice::Random, *offset, self.len);
        }
    }

    /// Mutable bytes; `None` for a read-only mapped file.
    pub(crate) fn try_bytes_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.bytes {
            Bytes::Heap(v) => Some(&mut bytemuck::cast_slice_mut(v)[..self.len]),
            Bytes::Anon(m) => Some(&mut m[..self.len]),
            Bytes::Mapped { .. } => None,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.try_bytes_mut().expect("heap storage is writable")
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        memory::release(&self.ticket);
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("len", &self.len).field("mem_type", &self.mem_type).finish()
    }
}
