//! Normalisations over the last dimension: `rms_norm` (LLaMA family) and
//! `layer_norm`. Any float dtype and layout in; contiguous f32 out.

use crate::context::trace::Span;
use crate::kernels::norm;
use crate::tensor::ops::strided::f32_output;
use crate::tensor::Tensor;
use crate::{Error, Result};

impl Tensor {
    fn check_norm_param(&self, op: &'static str, what: &str, p: &Tensor) -> Result<usize> {
        let d = *self.dims().last().ok_or_else(|| Error::shape(op, "input is a scalar; need [..., dim]"))?;
        if p.dims() != [d] {
            return Err(Error::shape(
                op,
                format!("{what} {:?} does not match the last dimension of input {:?}", p.shape(), self.shape()),
            ));
        }
        Ok(d)
    }

    /// RMSNorm over the last dimension: `x * weight / sqrt(mean(x^2) + eps)`, with
    /// `weight` of shape `[dim]`.
    pub fn rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        let _span = Span::new("op", || "rms_norm".into());
        self.check_norm_param("rms_norm", "weight", weight)?;
        let x = self.to_f32_contiguous("rms_norm")?;
        let w = weight.to_f32_contiguous("rms_norm")?;
        let mut out = f32_output(self.dims())?;
        norm::rms_norm(x.as_slice()?, w.as_slice()?, eps, out.data_mut()?);
        Ok(out)
    }

    /// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`,
    /// with `weight` and `bias` of shape `[dim]`.
    pub fn layer_norm(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        let _span = Span::new("op", || "layer_norm".into());
        self.check_norm_param("layer_norm", "weight", weight)?;
        if let Some(b) = bias {
            self.check_norm_param("layer_norm", "bias", b)?;
        }
        let x = self.to_f32_contiguous("layer_norm")?;
        let w = weight.to_f32_contiguous("layer_norm")?;
        let b = bias.map(|b| b.to_f32_contiguous("layer_norm")).transpose()?;
        let mut out = f32_output(self.dims())?;
        let bs = b.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
        norm::layer_norm(x.as_slice()?, w.as_slice()?, bs, eps, out.data_mut()?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use crate::tensor::ops::test_util::*;
    use crate::tensor::{DType, Tensor};

    fn rms_ref(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
        x.chunks(w.len())
            .flat_map(|r| {
                let ms = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / r.len() as f64;
                r.iter().zip(w).map(move |(&v, &g)| v as f64 * g as f64 / (ms + eps).sqrt())
            })
            .collect()
    }

    fn ln_ref(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f64) -> Vec<f64> {
        x.chunks(w.len())
            .flat_map(|r| {
                let n = r.len() as f64;
                let mean = r.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                r.iter().enumerate().map(move |(i, &v)| {
                    (v as f64 - mean) / (var + eps).sqrt() * w[i] as f64 + b.map_or(0.0, |b| b[i] as f64)
                })
            })
            .collect()
    }

    #[test]
    fn norms_match_reference_in_all_layouts() {
        for dims in [&[1usize][..], &[7], &[3, 33], &[2, 5, 576], &[40, 1031]] {
            let d = *dims.last().unwrap();
            let v = random_vec(dims.iter().product(), 7, 3.0);
            let w = random_vec(d, 8, 1.5);
            let b = random_vec(d, 9, 1.0);
            let (tw, tb) = (Tensor::from_slice(&w, &[d]).unwrap(), Tensor::from_slice(&b, &[d]).unwrap());
            let mut inputs = vec![Tensor::from_slice(&v, dims).unwrap(), strided(&v, dims)];
            if dims.len() >= 2 {
                inputs.push(transposed(&v, dims));
            }
            for t in &inputs {
                let got = t.rms_norm(&tw, 1e-5).unwrap();
                assert_eq!(got.dims(), dims);
                assert_close(&got.to_vec::<f32>().unwrap(), &rms_ref(&v, &w, 1e-5), 1e-5, "rms_norm");
                let got = t.layer_norm(&tw, Some(&tb), 1e-5).unwrap();
                assert_close(&got.to_vec::<f32>().unwrap(), &ln_ref(&v, &w, Some(&b), 1e-5), 1e-5, "layer_norm");
                let got = t.layer_norm(&strided(&w, &[d]), None, 1e-3).unwrap();
                assert_close(&got.to_vec::<f32>().unwrap(), &ln_ref(&v, &w, None, 1e-3), 1e-5, "layer_norm no bias");
            }
        }
    }

    #[test]
    fn f16_weight_is_accepted() {
        let v = random_vec(2 * 64, 1, 2.0);
        let w: Vec<f16> = random_vec(64, 2, 1.0).into_iter().map(f16::from_f32).collect();
        let wf: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
        let got =
            Tensor::from_slice(&v, &[2, 64]).unwrap().rms_norm(&Tensor::from_vec(w, &[64]).unwrap(), 1e-6).unwrap();
        assert_close(&got.to_vec::<f32>().unwrap(), &rms_ref(&v, &wf, 1e-6), 1e-5, "f16 weight");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = Tensor::zeros(&[2, 8], DType::F32).unwrap();
        let e = x.rms_norm(&Tensor::zeros(&[7], DType::F32).unwrap(), 1e-5).unwrap_err().to_string();
        assert!(e.contains("rms_norm") && e.contains("[7]") && e.contains("[2, 8]"), "{e}");
        assert!(x.rms_norm(&Tensor::zeros(&[1, 8], DType::F32).unwrap(), 1e-5).is_err());
        let w = Tensor::zeros(&[8], DType::F32).unwrap();
        let e = x.layer_norm(&w, Some(&Tensor::zeros(&[4], DType::F32).unwrap()), 1e-5).unwrap_err().to_string();
        assert!(e.contains("bias"), "{e}");
        let scalar = Tensor::from_vec(vec![1.0f32], &[]).unwrap();
        assert!(scalar.rms_norm(&w, 1e-5).is_err());
    }
}
