//! Per-sequence key/value cache: one `[rows, kv_dim]` tensor per layer for keys and one
//! for values, in f32 or f16, accounted as `MemType::KvCache`. It starts small and
//! doubles when full, up to its capacity, so a sequence that may reach a long context but
//! stays short holds little memory, and allocations are O(log n), never one per token.
//!
//! A layer with a sliding window (Gemma 3's local layers) keeps only what its queries can
//! still see: once its rows reach twice the window, the last `window - 1` rows move to the
//! front and older ones are forgotten, so its memory stays about twice the window however
//! long the sequence grows (one move of `window` rows every `window` tokens).

use half::f16;

use crate::tensor::{DType, MemType, Tensor};
use crate::{Error, Result};

/// Rows allocated up front (at most the capacity).
const INITIAL_ROWS: usize = 256;

/// One layer's cached keys and values (rows of `kv_dim`), in the cache's element type.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

/// The rows of one layer as [`KvCache::layer`] gives them: `rows` hold the positions
/// `first..` of the sequence (`first` is 0 unless the layer has a sliding window).
#[derive(Clone, Copy, Debug)]
pub struct KvLayer<'a> {
    pub rows: KvRows<'a>,
    pub first: usize,
}

/// One layer's storage.
struct LayerRows {
    keys: Tensor,
    values: Tensor,
    /// Rows allocated.
    rows: usize,
    /// Sequence position of row 0.
    first: usize,
    window: Option<usize>,
}

pub struct KvCache {
    dtype: DType,
    layers: Vec<LayerRows>,
    len: usize,
    capacity: usize,
    kv_dim: usize,
}

fn alloc_rows(layer: usize, rows: usize, kv_dim: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    let t = |what: &str| {
        Tensor::empty(&[rows, kv_dim], dtype).mem_type(MemType::KvCache).name(format!("kv.{layer}.{what}")).alloc()
    };
    Ok((t("k")?, t("v")?))
}

/// `dst[..src.len()] = src` as f16 (the `half` crate's slice conversion, which uses the
/// CPU's F16C instructions when present: the scalar conversion cost 8% of a pp512 pass).
fn store_f16(dst: &mut [f16], src: &[f32]) {
    use half::slice::HalfFloatSliceExt;
    dst[..src.len()].convert_from_f32_slice(src);
}

/// Move rows `from` of `t` to its front.
fn shift_to_front(dtype: DType, t: &mut Tensor, from: std::ops::Range<usize>, kv_dim: usize) -> Result<()> {
    let range = from.start * kv_dim..from.end * kv_dim;
    match dtype {
        DType::F16 => t.data_mut::<f16>()?.copy_within(range, 0),
        _ => t.data_mut::<f32>()?.copy_within(range, 0),
    }
    Ok(())
}

/// Copy rows `from` of `src` to `dst` starting at row 0.
fn move_rows(dtype: DType, src: &Tensor, dst: &mut Tensor, from: std::ops::Range<usize>, kv_dim: usize) -> Result<()> {
    let (a, b) = (from.start * kv_dim, from.end * kv_dim);
    match dtype {
        DType::F16 => {
            dst.data_mut::<f16>()?[..b - a].copy_from_slice(&src.as_slice::<f16>()?[a..b]);
        }
        _ => {
            dst.data_mut::<f32>()?[..b - a].copy_from_slice(&src.as_slice::<f32>()?[a..b]);
        }
    }
    Ok(())
}

impl KvCache {
    /// An f32 cache that can hold up to `capacity` positions in each of `n_layers` layers.
    pub fn new(n_layers: usize, capacity: usize, kv_dim: usize) -> Result<KvCache> {
        KvCache::with_dtype(n_layers, capacity, kv_dim, DType::F32)
    }

    /// A cache storing keys and values as `dtype`: F32, or F16 (half the memory and the
    /// bytes attention reads per token; values rounded to f16 as llama.cpp's default does).
    pub fn with_dtype(n_layers: usize, capacity: usize, kv_dim: usize, dtype: DType) -> Result<KvCache> {
        KvCache::with_windows(&vec![None; n_layers], capacity, kv_dim, dtype)
    }

    /// A cache with one layer per entry of `windows`: a layer with `Some(w)` keeps only the
    /// rows its sliding window of `w` positions can still see.
    pub fn with_windows(windows: &[Option<usize>], capacity: usize, kv_dim: usize, dtype: DType) -> Result<KvCache> {
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(Error::dtype("kv_cache", dtype));
        }
        if windows.contains(&Some(0)) {
            return Err(Error::invalid("kv_cache: a sliding window of 0 positions"));
        }
        let layers = windows
            .iter()
            .enumerate()
            .map(|(l, &window)| {
                let rows = capacity.min(window.map_or(INITIAL_ROWS, |w| INITIAL_ROWS.min(2 * w)));
                let (keys, values) = alloc_rows(l, rows, kv_dim, dtype)?;
                Ok(LayerRows { keys, values, rows, first: 0, window })
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { dtype, layers, len: 0, capacity, kv_dim })
    }

    /// The element type of the cached keys and values.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions this cache may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions the allocated memory of the largest layer holds now (grows up to the
    /// capacity; a sliding-window layer stays near twice its window).
    pub fn allocated(&self) -> usize {
        self.layers.iter().map(|l| l.rows).max().unwrap_or(0)
    }

    /// Rows allocated for each layer now.
    pub fn allocated_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.rows).collect()
    }

    /// Forget everything (the memory is kept for reuse).
    pub fn clear(&mut self) {
        self.len = 0;
        self.layers.iter_mut().for_each(|l| l.first = 0);
    }

    /// Keep only the first `len` positions (a prefix another sequence goes on from) and
    /// allow up to `capacity` positions from now on; the memory is kept. Refused when a
    /// sliding-window layer has already dropped rows the next position would see.
    pub fn reuse(&mut self, len: usize, capacity: usize) -> Result<()> {
        if len > self.len || capacity < len {
            return Err(Error::invalid(format!(
                "kv_cache: cannot keep {len} of {} positions with a capacity of {capacity}",
                self.len
            )));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let need = l.window.map_or(0, |w| (len + 1).saturating_sub(w));
            if l.first > need {
                return Err(Error::invalid(format!(
                    "kv_cache: layer {i} keeps positions from {} on, position {len} needs {need}",
                    l.first
                )));
            }
        }
        self.len = len;
        self.capacity = capacity;
        Ok(())
    }

    /// Make room in layer `layer` for `n` more positions: a windowed layer at twice its
    /// window first drops the rows no query can see any more; otherwise the allocation
    /// doubles.
    fn reserve(&mut self, layer: usize, n: usize) -> Result<()> {
        let need = self.len + n;
        if need > self.capacity {
            return Err(Error::invalid(format!(
                "context full: {} positions + {n} new exceed the cache of {}",
                self.len, self.capacity
            )));
        }
        let (len, kv_dim, dtype, capacity) = (self.len, self.kv_dim, self.dtype, self.capacity);
        let l = &mut self.layers[layer];
        let mut held = len - l.first;
        if held + n <= l.rows {
            return Ok(());
        }
        if let Some(w) = l.window {
            let keep = w - 1;
            if held > keep && (l.rows >= 2 * w || l.rows >= capacity) {
                let from = held - keep..held;
                shift_to_front(dtype, &mut l.keys, from.clone(), kv_dim)?;
                shift_to_front(dtype, &mut l.values, from, kv_dim)?;
                l.first = len - keep;
                held = keep;
                if held + n <= l.rows {
                    return Ok(());
                }
            }
        }
        let rows = (held + n).max(l.rows * 2).min(capacity);
        let (mut keys, mut values) = alloc_rows(layer, rows, kv_dim, dtype)?;
        move_rows(dtype, &l.keys, &mut keys, 0..held, kv_dim)?;
        move_rows(dtype, &l.values, &mut values, 0..held, kv_dim)?;
        (l.keys, l.values, l.rows) = (keys, values, rows);
        Ok(())
    }

    /// Write `n` new positions of layer `layer` (rows of `kv_dim` in `k` and `v`) after
    /// the filled ones. Call [`KvCache::advance`] once all layers are written.
    pub fn write(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let n = k.len() / self.kv_dim.max(1);
        if k.len() != n * self.kv_dim || v.len() != k.len() {
            return Err(Error::shape(
                "kv_cache",
                format!("{} / {} values are not rows of {}", k.len(), v.len(), self.kv_dim),
            ));
        }
        if layer >= self.layers.len() {
            return Err(Error::invalid(format!("kv_cache: layer {layer} of {}", self.layers.len())));
        }
        self.reserve(layer, n)?;
        let l = &mut self.layers[layer];
        let at = (self.len - l.first) * self.kv_dim;
        let (kt, vt) = (&mut l.keys, &mut l.values);
        match self.dtype {
            DType::F16 => {
                store_f16(&mut kt.data_mut::<f16>()?[at..], k);
                store_f16(&mut vt.data_mut::<f16>()?[at..], v);
            }
            _ => {
                kt.data_mut::<f32>()?[at..at + k.len()].copy_from_slice(k);
                vt.data_mut::<f32>()?[at..at + v.len()].copy_from_slice(v);
            }
        }
        Ok(())
    }

    /// Mark `n` written positions as filled.
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.capacity);
    }

    /// Keys and values of `layer` for the positions before `n` that it still holds (all of
    /// them, unless the layer has a sliding window).
    pub fn layer(&self, layer: usize, n: usize) -> Result<KvLayer<'_>> {
        let Some(l) = self.layers.get(layer) else {
            return Err(Error::invalid(format!("kv_cache: layer {layer} of {}", self.layers.len())));
        };
        let n = n.saturating_sub(l.first).min(l.rows) * self.kv_dim;
        let (k, v) = (&l.keys, &l.values);
        let rows = match self.dtype {
            DType::F16 => KvRows::F16(&k.as_slice::<f16>()?[..n], &v.as_slice::<f16>()?[..n]),
            _ => KvRows::F32(&k.as_slice::<f32>()?[..n], &v.as_slice::<f32>()?[..n]),
        };
        Ok(KvLayer { rows, first: l.first })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_doubling_keeps_contents_and_stops_at_capacity() {
        let mut c = KvCache::new(2, 1000, 3).unwrap();
        assert_eq!(c.allocated(), 256);
        let mut pos = 0usize;
        for chunk in [200usize, 100, 300, 400] {
            for l in 0..2 {
                let k: Vec<f32> = (pos..pos + chunk).flat_map(|p| [p as f32, l as f32, 1.0]).collect();
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                c.write(l, &k, &v).unwrap();
            }
            c.advance(chunk);
            pos += chunk;
        }
        assert_eq!((c.len(), c.allocated()), (1000, 1000));
        let KvRows::F32(k, v) = c.layer(1, 1000).unwrap().rows else { panic!("an f32 cache") };
        for p in 0..1000 {
            assert_eq!(&k[p * 3..p * 3 + 3], &[p as f32, 1.0, 1.0]);
            assert_eq!(v[p * 3], -(p as f32));
        }
        let err = c.write(0, &[0.0; 3], &[0.0; 3]).unwrap_err().to_string();
        assert!(err.contains("context full"), "{err}");
    }

    #[test]
    fn f16_cache_rounds_and_keeps_rows_across_growth() {
        let mut c = KvCache::with_dtype(1, 600, 2, DType::F16).unwrap();
        for p in 0..600 {
            let k = [p as f32 * 0.1, 1.0 / 3.0];
            c.write(0, &k, &[-(p as f32), 2.0]).unwrap();
            c.advance(1);
        }
        let KvRows::F16(k, v) = c.layer(0, 600).unwrap().rows else { panic!("an f16 cache") };
        for p in 0..600 {
            assert_eq!(k[2 * p], f16::from_f32(p as f32 * 0.1), "row {p}");
            assert_eq!(k[2 * p + 1].to_f32(), f16::from_f32(1.0 / 3.0).to_f32());
            assert_eq!(v[2 * p].to_f32(), -(p as f32));
        }
        assert!(KvCache::with_dtype(1, 8, 2, DType::Q8_0).is_err());
        assert!(c.layer(3, 1).is_err());
    }

    #[test]
    fn a_windowed_layer_keeps_what_its_window_sees_in_bounded_memory() {
        for dtype in [DType::F32, DType::F16] {
            let (w, total) = (5usize, 200usize);
            let mut c = KvCache::with_windows(&[None, Some(w)], total, 1, dtype).unwrap();
            let mut pos = 0;
            // single steps, then chunks longer than the window, then single steps again
            for n in [1usize; 30].into_iter().chain([7, 3, 12, 1, 9]).chain([1; 40]) {
                let k: Vec<f32> = (pos..pos + n).map(|p| p as f32).collect();
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                for l in 0..2 {
                    c.write(l, &k, &v).unwrap();
                }
                c.advance(n);
                pos += n;
                // every query of the step sees its window: positions pos - n + 1 - w .. pos
                let need = (pos - n + 1).saturating_sub(w);
                let local = c.layer(1, pos).unwrap();
                assert!(local.first <= need, "step ending at {pos}: rows start at {}", local.first);
                let rows: Vec<f32> = match local.rows {
                    KvRows::F32(k, _) => k.to_vec(),
                    KvRows::F16(k, _) => k.iter().map(|x| x.to_f32()).collect(),
                };
                let expect: Vec<f32> = (local.first..pos).map(|p| p as f32).collect();
                assert_eq!(rows, expect, "{dtype} rows at {pos}");
                assert_eq!(c.layer(0, pos).unwrap().first, 0);
            }
            let rows = c.allocated_per_layer();
            assert!(rows[0] >= pos, "{rows:?}");
            assert!(rows[1] <= 2 * w + 12, "the windowed layer grew to {} rows", rows[1]);
        }
        assert!(KvCache::with_windows(&[Some(0)], 8, 1, DType::F32).is_err());
    }

    #[test]
    fn reuse_of_a_prefix_is_refused_where_a_window_dropped_its_rows() {
        let mut c = KvCache::with_windows(&[None, Some(4)], 64, 1, DType::F32).unwrap();
        for p in 0..40 {
            for l in 0..2 {
                c.write(l, &[p as f32], &[0.0]).unwrap();
            }
            c.advance(1);
        }
        let first = c.layer(1, 40).unwrap().first;
        assert!(first > 10, "the windowed layer dropped old rows (first {first})");
        assert!(c.reuse(10, 64).is_err(), "position 10's window is gone");
        c.reuse(38, 64).unwrap();
        assert_eq!(c.len(), 38);
        c.write(1, &[99.0], &[0.0]).unwrap();
        let KvRows::F32(k, _) = c.layer(1, 39).unwrap().rows else { panic!("f32") };
        assert_eq!(k.last(), Some(&99.0));
        assert_eq!(k[k.len() - 2], 37.0);
    }
}
