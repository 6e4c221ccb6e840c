//! `Embedding`: token ids to vectors, one row of a `[vocab, dim]` table per id. The
//! table may be stored in any float or quantised dtype (it is often tied to the
//! output head); the lookup itself is `Tensor::embedding`.

use crate::nn::{Accepts, Module, Param, Registry};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone)]
pub struct Embedding {
    registry: Registry,
    weight: Param,
    vocab: usize,
    dim: usize,
}

impl Embedding {
    /// An embedding table: parameter `<name>.weight` `[vocab, dim]`.
    pub fn new(registry: &Registry, vocab: usize, dim: usize) -> Embedding {
        let weight = registry.param("weight", &[vocab, dim], Accepts::FloatOrQuantized);
        Embedding { registry: registry.clone(), weight, vocab, dim }
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The table, e.g. to reuse it as a tied output projection.
    pub fn weight(&self) -> &Param {
        &self.weight
    }

    /// Look up `ids` (I32, any shape) → f32 `[...ids.dims(), dim]`.
    pub fn apply(&self, ids: &Tensor) -> Result<Tensor> {
        Tensor::embedding(&self.weight.get()?, ids)
    }
}

impl Module for Embedding {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let ids = inputs
            .first()
            .ok_or_else(|| Error::invalid(format!("{}: Embedding takes one input (ids), got none", self.name())))?;
        Ok(vec![self.apply(ids)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParameterFile;
    use crate::tensor::DType;

    #[test]
    fn loads_and_looks_up_rows() {
        let reg = Registry::new("model");
        let emb = Embedding::new(&reg.child("tok"), 5, 3);
        assert_eq!(emb.weight().name(), "model.tok.weight");
        let table: Vec<f32> = (0..15).map(|i| i as f32).collect();
        let mut params = ParameterFile::create();
        params.push("model.tok.weight", Tensor::from_vec(table, &[5, 3]).unwrap()).unwrap();
        let ids = Tensor::from_vec(vec![4i32, 0, 2, 2], &[2, 2]).unwrap();
        assert!(emb.apply(&ids).unwrap_err().to_string().contains("not loaded"));
        emb.load(&params).unwrap();
        let out = emb.forward(std::slice::from_ref(&ids)).unwrap();
        assert_eq!(out[0].dims(), &[2, 2, 3]);
        assert_eq!(out[0].to_vec::<f32>().unwrap(), [12., 13., 14., 0., 1., 2., 6., 7., 8., 6., 7., 8.]);
        let bad = Tensor::from_vec(vec![5i32], &[1]).unwrap();
        assert!(emb.apply(&bad).unwrap_err().to_string().contains("0..5"));
        assert!(emb.forward(&[]).unwrap_err().to_string().contains("model.tok"));
    }

    #[test]
    fn quantised_tables_look_up_dequantised_rows() {
        let values: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
        let q = crate::kernels::quant::quantize_q8_0(&values);
        let table = Tensor::from_bytes(&q, DType::Q8_0, &[2, 32], crate::MemType::ParamsNormal).unwrap();
        let emb = Embedding::new(&Registry::new("tok"), 2, 32);
        let mut params = ParameterFile::create();
        params.push("tok.weight", table.clone()).unwrap();
        emb.load(&params).unwrap();
        let ids = Tensor::from_vec(vec![1i32, 0], &[2]).unwrap();
        let got = emb.apply(&ids).unwrap().to_vec::<f32>().unwrap();
        let all = table.to_f32_vec().unwrap();
        assert_eq!(&got[..32], &all[32..]);
        assert_eq!(&got[32..], &all[..32]);
        for (g, v) in got[32..].iter().zip(&values[..32]) {
            assert!((g - v).abs() < 0.05, "{g} vs {v}");
        }
    }
}
