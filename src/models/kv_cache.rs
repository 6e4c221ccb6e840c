//! Per-sequence key/value cache: one `[capacity, kv_dim]` f32 tensor per layer for
//! keys and one for values, allocated once for the context the sequence will use
//! (no allocation per token), accounted as `MemType::KvCache`.

use crate::tensor::{DType, MemType, Tensor};
use crate::{Error, Result};

pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    capacity: usize,
    kv_dim: usize,
}

impl KvCache {
    /// Room for `capacity` positions in each of `n_layers` layers.
    pub fn new(n_layers: usize, capacity: usize, kv_dim: usize) -> Result<KvCache> {
        let make = |what: &str, l: usize| {
            Tensor::empty(&[capacity, kv_dim], DType::F32)
                .mem_type(MemType::KvCache)
                .name(format!("kv.{l}.{what}"))
                .alloc()
        };
        let keys = (0..n_layers).map(|l| make("k", l)).collect::<Result<_>>()?;
        let values = (0..n_layers).map(|l| make("v", l)).collect::<Result<_>>()?;
        Ok(KvCache { keys, values, len: 0, capacity, kv_dim })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget everything (the memory is kept for reuse).
    pub fn clear(&mut self) {
        self.len = 0;
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
        if self.len + n > self.capacity {
            return Err(Error::invalid(format!(
                "context full: {} positions + {n} new exceed the cache of {}",
                self.len, self.capacity
            )));
        }
        let at = self.len * self.kv_dim;
        self.keys[layer].data_mut::<f32>()?[at..at + k.len()].copy_from_slice(k);
        self.values[layer].data_mut::<f32>()?[at..at + v.len()].copy_from_slice(v);
        Ok(())
    }

    /// Mark `n` written positions as filled.
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.capacity);
    }

    /// Keys and values of `layer` for the first `n` positions.
    pub fn layer(&self, layer: usize, n: usize) -> Result<(&[f32], &[f32])> {
        let n = n.min(self.capacity) * self.kv_dim;
        Ok((&self.keys[layer].as_slice::<f32>()?[..n], &self.values[layer].as_slice::<f32>()?[..n]))
    }
}
