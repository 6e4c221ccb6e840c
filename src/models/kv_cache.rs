//! Per-sequence key/value cache: one `[rows, kv_dim]` tensor per layer for keys and one
//! for values, in f32 or f16, accounted as `MemType::KvCache`. It starts small and
//! doubles when full, up to its capacity, so a sequence that may reach a long context but
//! stays short holds little memory, and allocations are O(log n), never one per token.

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

pub struct KvCache {
    dtype: DType,
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    /// Rows allocated now in every layer's tensors.
    rows: usize,
    capacity: usize,
    kv_dim: usize,
}

fn alloc_layers(n_layers: usize, rows: usize, kv_dim: usize, dtype: DType, what: &str) -> Result<Vec<Tensor>> {
    (0..n_layers)
        .map(|l| {
            Tensor::empty(&[rows, kv_dim], dtype).mem_type(MemType::KvCache).name(format!("kv.{l}.{what}")).alloc()
        })
        .collect()
}

/// `dst[..src.len()] = src` as f16 (the `half` crate's slice conversion, which uses the
/// CPU's F16C instructions when present: the scalar conversion cost 8% of a pp512 pass).
fn store_f16(dst: &mut [f16], src: &[f32]) {
    use half::slice::HalfFloatSliceExt;
    dst[..src.len()].convert_from_f32_slice(src);
}

impl KvCache {
    /// An f32 cache that can hold up to `capacity` positions in each of `n_layers` layers.
    pub fn new(n_layers: usize, capacity: usize, kv_dim: usize) -> Result<KvCache> {
        KvCache::with_dtype(n_layers, capacity, kv_dim, DType::F32)
    }

    /// A cache storing keys and values as `dtype`: F32, or F16 (half the memory and the
    /// bytes attention reads per token; values rounded to f16 as llama.cpp's default does).
    pub fn with_dtype(n_layers: usize, capacity: usize, kv_dim: usize, dtype: DType) -> Result<KvCache> {
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(Error::dtype("kv_cache", dtype));
        }
        let rows = capacity.min(INITIAL_ROWS);
        Ok(KvCache {
            dtype,
            keys: alloc_layers(n_layers, rows, kv_dim, dtype, "k")?,
            values: alloc_layers(n_layers, rows, kv_dim, dtype, "v")?,
            len: 0,
            rows,
            capacity,
            kv_dim,
        })
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

    /// Positions the allocated memory holds now (grows up to the capacity).
    pub fn allocated(&self) -> usize {
        self.rows
    }

    /// Forget everything (the memory is kept for reuse).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` positions (a prefix another sequence goes on from) and
    /// allow up to `capacity` positions from now on; the memory is kept.
    pub fn reuse(&mut self, len: usize, capacity: usize) -> Result<()> {
        if len > self.len || capacity < len {
            return Err(Error::invalid(format!(
                "kv_cache: cannot keep {len} of {} positions with a capacity of {capacity}",
                self.len
            )));
        }
        self.len = len;
        self.capacity = capacity;
        Ok(())
    }

    /// Make room for `n` more positions, doubling the allocation as needed.
    fn reserve(&mut self, n: usize) -> Result<()> {
        let need = self.len + n;
        if need > self.capacity {
            return Err(Error::invalid(format!(
                "context full: {} positions + {n} new exceed the cache of {}",
                self.len, self.capacity
            )));
        }
        if need <= self.rows {
            return Ok(());
        }
        let rows = need.max(self.rows * 2).min(self.capacity);
        let used = self.len * self.kv_dim;
        for (old, what) in [(&mut self.keys, "k"), (&mut self.values, "v")] {
            let mut fresh = alloc_layers(old.len(), rows, self.kv_dim, self.dtype, what)?;
            for (new, prev) in fresh.iter_mut().zip(old.iter()) {
                match self.dtype {
                    DType::F16 => new.data_mut::<f16>()?[..used].copy_from_slice(&prev.as_slice::<f16>()?[..used]),
                    _ => new.data_mut::<f32>()?[..used].copy_from_slice(&prev.as_slice::<f32>()?[..used]),
                }
            }
            *old = fresh;
        }
        self.rows = rows;
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
        if layer >= self.keys.len() {
            return Err(Error::invalid(format!("kv_cache: layer {layer} of {}", self.keys.len())));
        }
        self.reserve(n)?;
        let at = self.len * self.kv_dim;
        let (kt, vt) = (&mut self.keys[layer], &mut self.values[layer]);
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
        self.len = (self.len + n).min(self.rows);
    }

    /// Keys and values of `layer` for the first `n` positions.
    pub fn layer(&self, layer: usize, n: usize) -> Result<KvRows<'_>> {
        if layer >= self.keys.len() {
            return Err(Error::invalid(format!("kv_cache: layer {layer} of {}", self.keys.len())));
        }
        let n = n.min(self.rows) * self.kv_dim;
        let (k, v) = (&self.keys[layer], &self.values[layer]);
        Ok(match self.dtype {
            DType::F16 => KvRows::F16(&k.as_slice::<f16>()?[..n], &v.as_slice::<f16>()?[..n]),
            _ => KvRows::F32(&k.as_slice::<f32>()?[..n], &v.as_slice::<f32>()?[..n]),
        })
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
        let KvRows::F32(k, v) = c.layer(1, 1000).unwrap() else { panic!("an f32 cache") };
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
        let KvRows::F16(k, v) = c.layer(0, 600).unwrap() else { panic!("an f16 cache") };
        for p in 0..600 {
            assert_eq!(k[2 * p], f16::from_f32(p as f32 * 0.1), "row {p}");
            assert_eq!(k[2 * p + 1].to_f32(), f16::from_f32(1.0 / 3.0).to_f32());
            assert_eq!(v[2 * p].to_f32(), -(p as f32));
        }
        assert!(KvCache::with_dtype(1, 8, 2, DType::Q8_0).is_err());
        assert!(c.layer(3, 1).is_err());
    }
}
