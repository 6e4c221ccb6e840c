//! Splitting slice work over the current rayon pool: by rows for row-wise ops, by
//! fixed chunks for elementwise ones. Small inputs stay on the calling thread.

use std::cell::RefCell;
use std::thread::LocalKey;

use rayon::prelude::*;

/// Runs `f` with this thread's buffer, or a fresh one if the buffer is in use (a pool
/// thread waiting inside one kernel call can pick up another call's task).
pub(crate) fn with_thread_buf<T: Default + 'static, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut f = Some(f);
    let done = key.with(|cell| cell.try_borrow_mut().ok().map(|mut b| (f.take().expect("once"))(&mut b)));
    match done {
        Some(r) => r,
        None => (f.take().expect("not run yet"))(&mut T::default()),
    }
}

/// An output pointer shared by the tasks of one kernel call, each of which writes only
/// its own, disjoint part of the output (the caller's `// SAFETY:` says which).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> SharedOut {
        SharedOut(out.as_mut_ptr())
    }

    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: tasks only write their own disjoint parts through it (see the type's contract),
// so sharing the pointer across threads is like splitting a `&mut [f32]`.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// Below this many elements an op runs single-threaded: splitting costs more than
/// it saves for decode-sized rows (a few thousand values).
pub const PARALLEL_FROM: usize = 1 << 15;

/// Each parallel task handles at least this many elements.
const MIN_TASK: usize = 1 << 13;

fn parallel(len: usize) -> bool {
    len >= PARALLEL_FROM && rayon::current_num_threads() > 1
}

/// Calls `f(row_index, row)` for each `row_len`-long row of `data`, in parallel when
/// `data` is large. A trailing partial row is not visited; `row_len == 0` visits none.
pub fn for_each_row(data: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if row_len == 0 {
        return;
    }
    if parallel(data.len()) {
        let min_rows = (MIN_TASK / row_len).max(1);
        data.par_chunks_exact_mut(row_len).with_min_len(min_rows).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        data.chunks_exact_mut(row_len).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// Calls `f(input_row, output_row)` for matching rows of `x` and `out` (both cut into
/// rows of `row_len`), in parallel when large.
pub fn for_each_row_pair(x: &[f32], out: &mut [f32], row_len: usize, f: impl Fn(&[f32], &mut [f32]) + Sync + Send) {
    assert_eq!(x.len(), out.len(), "for_each_row_pair: input and output lengths differ");
    if row_len == 0 {
        return;
    }
    if parallel(out.len()) {
        let min_rows = (MIN_TASK / row_len).max(1);
        out.par_chunks_exact_mut(row_len)
            .zip(x.par_chunks_exact(row_len))
            .with_min_len(min_rows)
            .for_each(|(o, r)| f(r, o));
    } else {
        out.chunks_exact_mut(row_len).zip(x.chunks_exact(row_len)).for_each(|(o, r)| f(r, o));
    }
}

/// Calls `f(offset, chunk)` over consecutive chunks of `out` (any split: only for
/// elementwise work where the position within a row does not matter).
pub fn for_each_chunk(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if parallel(out.len()) {
        out.par_chunks_mut(MIN_TASK).enumerate().for_each(|(i, c)| f(i * MIN_TASK, c));
    } else {
        f(0, out);
    }
}

/// Write (or add, with `accumulate`) `src` (`[m, cols]`) into columns `col0..col0 + cols`
/// of `out` (`[m, ldo]`): one part of a stacked matmul's output.
pub fn store_cols(src: &[f32], cols: usize, out: &mut [f32], ldo: usize, col0: usize, accumulate: bool) {
    for (s, d) in src.chunks_exact(cols.max(1)).zip(out.chunks_exact_mut(ldo)) {
        let d = &mut d[col0..col0 + cols];
        if accumulate {
            d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
        } else {
            d.copy_from_slice(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_chunks_cover_everything_once() {
        for n in [0, 1, 7, PARALLEL_FROM + 3, 3 * PARALLEL_FROM] {
            let mut v = vec![0.0f32; n];
            for_each_chunk(&mut v, |off, c| c.iter_mut().enumerate().for_each(|(i, x)| *x += (off + i) as f32));
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32), "chunks of {n}");
            let row = 7;
            let mut v = vec![0.0f32; n / row * row];
            for_each_row(&mut v, row, |r, xs| xs.iter_mut().enumerate().for_each(|(i, x)| *x += (r * row + i) as f32));
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32), "rows of {n}");
            let src: Vec<f32> = (0..v.len()).map(|i| i as f32).collect();
            let mut out = vec![0.0f32; v.len()];
            for_each_row_pair(&src, &mut out, row, |a, o| o.copy_from_slice(a));
            assert_eq!(out, src);
        }
    }
}
