//! Normalisation layers over the last dimension: `RmsNorm` (LLaMA family) and
//! `LayerNorm` (with bias). Their weights are small, so only float dtypes are accepted.

use crate::nn::{Accepts, Module, Param, Registry};
use crate::tensor::Tensor;
use crate::{Error, Result};

fn one_input<'a>(inputs: &'a [Tensor], module: &str, kind: &str) -> Result<&'a Tensor> {
    inputs.first().ok_or_else(|| Error::invalid(format!("{module}: {kind} takes one input, got none")))
}

/// `x * weight / sqrt(mean(x^2) + eps)` over the last dimension.
#[derive(Clone)]
pub struct RmsNorm {
    registry: Registry,
    weight: Param,
    eps: f32,
}

impl RmsNorm {
    /// Parameter `<name>.weight` `[dim]`.
    pub fn new(registry: &Registry, dim: usize, eps: f32) -> RmsNorm {
        let weight = registry.param("weight", &[dim], Accepts::Float);
        RmsNorm { registry: registry.clone(), weight, eps }
    }

    pub fn eps(&self) -> f32 {
        self.eps
    }

    pub fn weight(&self) -> &Param {
        &self.weight
    }

    /// Normalise `x` `[..., dim]` → f32 `[..., dim]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.rms_norm(&self.weight.get()?, self.eps)
    }
}

impl Module for RmsNorm {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(vec![self.apply(one_input(inputs, self.name(), "RmsNorm")?)?])
    }
}

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension.
#[derive(Clone)]
pub struct LayerNorm {
    registry: Registry,
    weight: Param,
    bias: Param,
    eps: f32,
}

impl LayerNorm {
    /// Parameters `<name>.weight` and `<name>.bias`, both `[dim]`.
    pub fn new(registry: &Registry, dim: usize, eps: f32) -> LayerNorm {
        let weight = registry.param("weight", &[dim], Accepts::Float);
        let bias = registry.param("bias", &[dim], Accepts::Float);
        LayerNorm { registry: registry.clone(), weight, bias, eps }
    }

    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Normalise `x` `[..., dim]` → f32 `[..., dim]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.weight.get()?, Some(&self.bias.get()?), self.eps)
    }
}

impl Module for LayerNorm {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(vec![self.apply(one_input(inputs, self.name(), "LayerNorm")?)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParameterFile;
    use crate::tensor::DType;

    #[test]
    fn rms_norm_layer_loads_and_normalises() {
        let norm = RmsNorm::new(&Registry::new("blk.0.attn_norm"), 4, 1e-6);
        let mut params = ParameterFile::create();
        params.push("blk.0.attn_norm.weight", Tensor::from_vec(vec![1.0f32, 2.0, 1.0, 0.5], &[4]).unwrap()).unwrap();
        norm.load(&params).unwrap();
        let x = Tensor::from_vec(vec![1.0f32, -1.0, 1.0, -1.0, 2.0, 2.0, 2.0, 2.0], &[2, 4]).unwrap();
        let y = norm.forward(&[x]).unwrap().remove(0);
        let want = [1.0, -2.0, 1.0, -0.5, 1.0, 2.0, 1.0, 0.5];
        for (g, w) in y.to_vec::<f32>().unwrap().iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        let e = norm.forward(&[Tensor::zeros(&[2, 5], DType::F32).unwrap()]).unwrap_err().to_string();
        assert!(e.contains("rms_norm"), "{e}");
        assert!(norm.forward(&[]).unwrap_err().to_string().contains("blk.0.attn_norm"));
        // Quantised weights are refused at load time, naming the parameter.
        let q = RmsNorm::new(&Registry::new("n"), 32, 1e-6);
        let mut params = ParameterFile::create();
        params.push("n.weight", Tensor::zeros(&[32], DType::Q8_0).unwrap()).unwrap();
        assert!(q.load(&params).unwrap_err().to_string().contains("n.weight"));
    }

    #[test]
    fn layer_norm_layer_needs_both_params() {
        let ln = LayerNorm::new(&Registry::new("ln"), 3, 1e-5);
        assert_eq!(ln.params().len(), 2);
        let mut params = ParameterFile::create();
        params.push("ln.weight", Tensor::from_vec(vec![1.0f32, 1.0, 2.0], &[3]).unwrap()).unwrap();
        assert!(ln.load(&params).unwrap_err().to_string().contains("ln.bias"));
        params.push("ln.bias", Tensor::from_vec(vec![0.0f32, 1.0, 0.0], &[3]).unwrap()).unwrap();
        ln.load(&params).unwrap();
        let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3]).unwrap();
        let y = ln.apply(&x).unwrap().to_vec::<f32>().unwrap();
        let s = (2.0f32 / 3.0 + 1e-5).sqrt();
        let want = [-1.0 / s, 1.0, 2.0 / s];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
