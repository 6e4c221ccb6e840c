//! `Linear`: `y = x @ W^T + b` with `W` of shape `[out, in]` in any float or
//! quantised dtype, so model code never sees how the weight is stored.

use crate::nn::{Accepts, Module, Param, Registry};
use crate::tensor::ops::MatmulPrecision;
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone)]
pub struct Linear {
    registry: Registry,
    weight: Param,
    bias: Option<Param>,
    in_features: usize,
    out_features: usize,
}

impl Linear {
    /// A linear layer with a bias: parameters `<name>.weight` `[out, in]` and
    /// `<name>.bias` `[out]`.
    pub fn new(registry: &Registry, in_features: usize, out_features: usize) -> Linear {
        Linear::build(registry, in_features, out_features, true)
    }

    /// A linear layer without bias (only `<name>.weight`).
    pub fn no_bias(registry: &Registry, in_features: usize, out_features: usize) -> Linear {
        Linear::build(registry, in_features, out_features, false)
    }

    fn build(registry: &Registry, in_features: usize, out_features: usize, bias: bool) -> Linear {
        let weight = registry.param("weight", &[out_features, in_features], Accepts::FloatOrQuantized);
        let bias = bias.then(|| registry.param("bias", &[out_features], Accepts::Float));
        Linear { registry: registry.clone(), weight, bias, in_features, out_features }
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn weight(&self) -> &Param {
        &self.weight
    }

    /// Apply to one tensor `[..., in]` → `[..., out]` (quantised weights at
    /// [`MatmulPrecision::Fast`]).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.apply_with(x, MatmulPrecision::Fast)
    }

    /// [`Linear::apply`] at a chosen precision for quantised weights.
    pub fn apply_with(&self, x: &Tensor, precision: MatmulPrecision) -> Result<Tensor> {
        let w = self.weight.get()?;
        let b = self.bias.as_ref().map(Param::get).transpose()?;
        x.linear_with(&w, b.as_ref(), precision)
    }
}

impl Module for Linear {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let x = inputs
            .first()
            .ok_or_else(|| Error::invalid(format!("{}: Linear takes one input, got none", self.name())))?;
        Ok(vec![self.apply(x)?])
    }
}
