//! Activation functions on tensors: `silu`, `gelu` (exact, erf) and `gelu_tanh`
//! (approximation). Any float dtype and layout in; contiguous f32 out.

use crate::context::trace::Span;
use crate::kernels::elementwise;
use crate::tensor::ops::strided::f32_output;
use crate::tensor::Tensor;
use crate::Result;

impl Tensor {
    fn unary(&self, op: &'static str, kernel: fn(&[f32], &mut [f32])) -> Result<Tensor> {
        let _span = Span::new("op", || op.into());
        let x = self.to_f32_contiguous(op)?;
        let mut out = f32_output(self.dims())?;
        kernel(x.as_slice::<f32>()?, out.data_mut::<f32>()?);
        Ok(out)
    }

    /// SiLU (swish), `x * sigmoid(x)`: the LLaMA MLP's activation.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary("silu", elementwise::silu)
    }

    /// GELU with the exact Gaussian CDF, `x * Phi(x)` (PyTorch's default, HF's
    /// `"gelu"`). For the tanh approximation use [`Tensor::gelu_tanh`].
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary("gelu", elementwise::gelu)
    }

    /// GELU's tanh approximation (HF's `"gelu_pytorch_tanh"`, GGML's `gelu`).
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary("gelu_tanh", elementwise::gelu_tanh)
    }
}

#[cfg(test)]
mod tests {
    use crate::tensor::ops::test_util::*;
    use crate::tensor::{DType, Tensor};

    /// erf by composite Simpson's rule: independent of the kernel's series/fraction.
    fn erf_quad(x: f64) -> f64 {
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let inner: f64 = (1..n).map(|i| f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 }).sum();
        (f(0.0) + f(x) + inner) * h / 3.0 * std::f64::consts::FRAC_2_SQRT_PI
    }

    #[test]
    fn activations_match_reference_in_all_layouts() {
        type Op = fn(&Tensor) -> crate::Result<Tensor>;
        type Reference = fn(f64) -> f64;
        let cases: [(&str, Op, Reference); 3] = [
            ("silu", Tensor::silu, |x| x / (1.0 + (-x).exp())),
            ("gelu", Tensor::gelu, |x| 0.5 * x * (1.0 + erf_quad(x / 2f64.sqrt()))),
            ("gelu_tanh", Tensor::gelu_tanh, |x| {
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
            }),
        ];
        for dims in [&[1usize][..], &[7], &[3, 11], &[2, 33, 17]] {
            let v: Vec<f32> = random_vec(dims.iter().product(), 4, 6.0);
            for (name, op, f) in cases {
                let want: Vec<f64> = v.iter().map(|&x| f(x as f64)).collect();
                let mut inputs = vec![Tensor::from_slice(&v, dims).unwrap(), strided(&v, dims)];
                if dims.len() >= 2 {
                    inputs.push(transposed(&v, dims));
                }
                for t in inputs {
                    let got = op(&t).unwrap();
                    assert_eq!(got.dims(), dims);
                    assert_close(&got.to_vec::<f32>().unwrap(), &want, 2e-6, name);
                }
            }
        }
        // A big input goes through the parallel split.
        let v = random_vec(70_001, 5, 6.0);
        let got = Tensor::from_slice(&v, &[70_001]).unwrap().silu().unwrap().to_vec::<f32>().unwrap();
        let want: Vec<f64> = v.iter().map(|&x| x as f64 / (1.0 + (-x as f64).exp())).collect();
        assert_close(&got, &want, 2e-6, "silu 70001");
    }

    #[test]
    fn integer_input_is_a_dtype_error() {
        let e = Tensor::zeros(&[3], DType::I32).unwrap().silu().unwrap_err().to_string();
        assert!(e.contains("silu"), "{e}");
    }
}
