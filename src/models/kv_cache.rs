//! Per-sequence key/value cache: one `[rows, kv_dim]` f32 tensor per layer for keys and
//! one for values, accounted as `MemType::KvCache`. It starts small and doubles when
//! full, up to its capacity, so a sequence that may reach a long context but stays
//! short holds little memory, and allocations are O(log n), never one per token.

use crate::tensor::{DType, MemType, Tensor};
use crate::{Error, Result};

/// Rows allocated up front (at most the capacity).
const INITIAL_ROWS: usize = 256;

/// Work buffers a model reuses across the forward passes of one sequence, so that a
/// decode step allocates nothing. Their contents mean nothing between passes.
#[derive(Default)]
pub(crate) struct Scratch {
    pub bufs: [Vec<f32>; 6],
}

pub struct KvCache {
    pub(crate) scratch: Scratch,
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    /// Rows allocated now in every layer's tensors.
    rows: usize,
    capacity: usize,
    kv_dim: usize,
}

fn alloc_layers(n_layers: usize, rows: usize, kv_dim: usize, what: &str) -> Result<Vec<Tensor>> {
    (0..n_layers)
        .map(|l| {
            Tensor::empty(&[rows, kv_dim], DType::F32).mem_type(MemType::KvCache).name(format!("kv.{l}.{what}")).alloc()
        })
        .collect()
}

impl KvCache {
    /// A cache that can hold up to `capacity` positions in each of `n_layers` layers.
    pub fn new(n_layers: usize, capacity: usize, kv_dim: usize) -> Result<KvCache> {
        let rows = capacity.min(INITIAL_ROWS);
        Ok(KvCache {
            scratch: Scratch::default(),
            keys: alloc_layers(n_layers, rows, kv_dim, "k")?,
            values: alloc_layers(n_layers, rows, kv_dim, "v")?,
            len: 0,
            rows,
            capacity,
            kv_dim,
        })
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
            let mut fresh = alloc_layers(old.len(), rows, self.kv_dim, what)?;
            for (new, prev) in fresh.iter_mut().zip(old.iter()) {
                new.data_mut::<f32>()?[..used].copy_from_slice(&prev.as_slice::<f32>()?[..used]);
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
        self.reserve(n)?;
        let at = self.len * self.kv_dim;
        self.keys[layer].data_mut::<f32>()?[at..at + k.len()].copy_from_slice(k);
        self.values[layer].data_mut::<f32>()?[at..at + v.len()].copy_from_slice(v);
        Ok(())
    }

    /// The next `n` key and value rows of `layer` after the filled ones, to be written in
    /// place (the cache grows first if needed). Call [`KvCache::advance`] once all layers
    /// are written.
    pub fn rows_mut(&mut self, layer: usize, n: usize) -> Result<(&mut [f32], &mut [f32])> {
        if layer >= self.keys.len() {
            return Err(Error::invalid(format!("kv_cache: layer {layer} of {}", self.keys.len())));
        }
        self.reserve(n)?;
        let (at, len) = (self.len * self.kv_dim, n * self.kv_dim);
        let k = &mut self.keys[layer].data_mut::<f32>()?[at..at + len];
        let v = &mut self.values[layer].data_mut::<f32>()?[at..at + len];
        Ok((k, v))
    }

    /// Mark `n` written positions as filled.
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.rows);
    }

    /// Keys and values of `layer` for the first `n` positions.
    pub fn layer(&self, layer: usize, n: usize) -> Result<(&[f32], &[f32])> {
        let n = n.min(self.rows) * self.kv_dim;
        Ok((&self.keys[layer].as_slice::<f32>()?[..n], &self.values[layer].as_slice::<f32>()?[..n]))
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
        let (k, v) = c.layer(1, 1000).unwrap();
        for p in 0..1000 {
            assert_eq!(&k[p * 3..p * 3 + 3], &[p as f32, 1.0, 1.0]);
            assert_eq!(v[p * 3], -(p as f32));
        }
        let err = c.write(0, &[0.0; 3], &[0.0; 3]).unwrap_err().to_string();
        assert!(err.contains("context full"), "{err}");
    }
}
