//! `Linear`: `y = x @ W^T + b` with `W` of shape `[out, in]` in any float or quantised
//! dtype, so model code never sees how the weight is stored. A `Linear` may stack several
//! declared matrices along its output (q|k|v, gate|up): each keeps its own name in the
//! file, and after [`Linear::prepare`] they are one [`Weight`] multiplied in one call.

use std::sync::{Arc, RwLock};

use crate::nn::{Accepts, Module, Param, Registry};
use crate::tensor::ops::MatmulPrecision;
use crate::tensor::{Tensor, Weight, WeightOptions};
use crate::{Error, Result};

/// One declared matrix of a (possibly stacked) linear layer.
#[derive(Clone)]
struct Part {
    weight: Param,
    bias: Option<Param>,
    out_features: usize,
}

#[derive(Clone)]
pub struct Linear {
    registry: Registry,
    parts: Vec<Part>,
    in_features: usize,
    out_features: usize,
    /// The weight built by `prepare`, and the biases of all parts side by side.
    prepared: Arc<RwLock<Option<Prepared>>>,
}

#[derive(Clone)]
struct Prepared {
    weight: Arc<Weight>,
    bias: Option<Arc<[f32]>>,
}

impl Linear {
    /// A linear layer with a bias: parameters `<name>.weight` `[out, in]` and
    /// `<name>.bias` `[out]`.
    pub fn new(registry: &Registry, in_features: usize, out_features: usize) -> Linear {
        Linear::stacked(registry, in_features, &[(registry, out_features)], true)
    }

    /// A linear layer without bias (only `<name>.weight`).
    pub fn no_bias(registry: &Registry, in_features: usize, out_features: usize) -> Linear {
        Linear::stacked(registry, in_features, &[(registry, out_features)], false)
    }

    /// Matrices declared under their own names (`blk.0.attn_q`, `blk.0.attn_k`, ...),
    /// computed as one layer whose outputs are theirs side by side. `registry` names the
    /// stack (for errors and forks); with `bias` every part has `<part>.bias`.
    pub fn stacked(registry: &Registry, in_features: usize, parts: &[(&Registry, usize)], bias: bool) -> Linear {
        let parts: Vec<Part> = parts
            .iter()
            .map(|&(reg, n)| Part {
                weight: reg.param("weight", &[n, in_features], Accepts::FloatOrQuantized),
                bias: bias.then(|| reg.param("bias", &[n], Accepts::Float)),
                out_features: n,
            })
            .collect();
        let out_features = parts.iter().map(|p| p.out_features).sum();
        Linear { registry: registry.clone(), parts, in_features, out_features, prepared: Default::default() }
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The first (for a plain layer, the only) declared weight.
    pub fn weight(&self) -> &Param {
        &self.parts[0].weight
    }

    /// Every declared weight, in stacking order.
    pub fn weights(&self) -> impl Iterator<Item = &Param> {
        self.parts.iter().map(|p| &p.weight)
    }

    pub fn has_bias(&self) -> bool {
        self.parts[0].bias.is_some()
    }

    /// Build the layer's [`Weight`] from the loaded parameters (repacking quantised
    /// matrices for the fast kernels where their format and shape allow). Call after
    /// `load`; a later `load` needs a new `prepare`.
    pub fn prepare(&self, opts: WeightOptions) -> Result<()> {
        let tensors = self.parts.iter().map(|p| p.weight.get()).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let weight = Arc::new(Weight::new(&refs, &format!("{}.packed", self.name_or_weight()), opts)?);
        let bias = if self.has_bias() {
            let mut all = Vec::with_capacity(self.out_features);
            for p in &self.parts {
                all.extend(p.bias.as_ref().expect("every part has a bias").get()?.to_f32_vec()?);
            }
            Some(Arc::from(all))
        } else {
            None
        };
        *self.prepared.write().unwrap_or_else(|e| e.into_inner()) = Some(Prepared { weight, bias });
        Ok(())
    }

    fn name_or_weight(&self) -> String {
        if self.parts.len() == 1 {
            self.parts[0].weight.name().trim_end_matches(".weight").to_string()
        } else {
            self.name().to_string()
        }
    }

    fn prepared(&self) -> Result<Prepared> {
        if let Some(p) = self.prepared.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(p.clone());
        }
        // Not prepared yet: build a plain (unpacked) weight now and keep it.
        self.prepare(WeightOptions { pack: false, ..Default::default() })?;
        self.prepared()
    }

    /// The weight [`Linear::prepare`] built.
    pub fn prepared_weight(&self) -> Result<Arc<Weight>> {
        Ok(self.prepared()?.weight)
    }

    /// `out[m, out] (+)= x[m, in] · Wᵀ (+ b)` on slices: the model's hot path.
    pub fn matmul_into(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        accumulate: bool,
        precision: MatmulPrecision,
    ) -> Result<()> {
        let p = self.prepared()?;
        p.weight.matmul_into(x, m, out, accumulate, precision)?;
        if let Some(b) = &p.bias {
            for row in out.chunks_exact_mut(self.out_features) {
                row.iter_mut().zip(b.iter()).for_each(|(o, b)| *o += b);
            }
        }
        Ok(())
    }

    /// Apply to one tensor `[..., in]` → `[..., out]` (quantised weights at
    /// [`MatmulPrecision::Fast`]).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.apply_with(x, MatmulPrecision::Fast)
    }

    /// [`Linear::apply`] at a chosen precision for quantised weights.
    pub fn apply_with(&self, x: &Tensor, precision: MatmulPrecision) -> Result<Tensor> {
        if self.parts.len() == 1 && self.prepared.read().unwrap_or_else(|e| e.into_inner()).is_none() {
            let w = self.parts[0].weight.get()?;
            let b = self.parts[0].bias.as_ref().map(Param::get).transpose()?;
            return x.linear_with(&w, b.as_ref(), precision);
        }
        let dims = x.dims();
        if dims.last() != Some(&self.in_features) {
            return Err(Error::shape(
                "linear",
                format!("{}: input {dims:?} does not end in {}", self.name(), self.in_features),
            ));
        }
        let x = x.to_f32_contiguous("linear")?;
        let m = x.elem_count() / self.in_features.max(1);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = self.out_features;
        let mut out = Tensor::zeros(&out_dims, crate::tensor::DType::F32)?;
        self.matmul_into(x.as_slice::<f32>()?, m, out.data_mut::<f32>()?, false, precision)?;
        Ok(out)
    }
}

impl Module for Linear {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The parts' parameters (declared under their own names, not under the stack's).
    fn params(&self) -> Vec<Param> {
        self.parts.iter().flat_map(|p| std::iter::once(p.weight.clone()).chain(p.bias.clone())).collect()
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let x = inputs
            .first()
            .ok_or_else(|| Error::invalid(format!("{}: Linear takes one input, got none", self.name())))?;
        Ok(vec![self.apply(x)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParameterFile;

    #[test]
    fn stacked_parts_load_by_their_own_names_and_compute_side_by_side() {
        let reg = Registry::new("blk");
        let (q, k) = (reg.child("q"), reg.child("k"));
        let qk = Linear::stacked(&reg.child("qk"), 2, &[(&q, 2), (&k, 1)], true);
        let mut params = ParameterFile::create();
        params.push("blk.q.weight", Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0], &[2, 2]).unwrap()).unwrap();
        params.push("blk.q.bias", Tensor::from_vec(vec![0.5f32, -0.5], &[2]).unwrap()).unwrap();
        params.push("blk.k.weight", Tensor::from_vec(vec![1.0f32, 1.0], &[1, 2]).unwrap()).unwrap();
        assert!(qk.load(&params).unwrap_err().to_string().contains("blk.k.bias"));
        params.push("blk.k.bias", Tensor::from_vec(vec![10.0f32], &[1]).unwrap()).unwrap();
        qk.load(&params).unwrap();
        qk.prepare(WeightOptions::default()).unwrap();
        let x = Tensor::from_vec(vec![2.0f32, 3.0], &[1, 2]).unwrap();
        assert_eq!(qk.apply(&x).unwrap().to_vec::<f32>().unwrap(), [2.5, 2.5, 15.0]);
        assert_eq!(qk.out_features(), 3);
        assert!(qk.apply(&Tensor::zeros(&[1, 3], crate::tensor::DType::F32).unwrap()).is_err());
    }
}
