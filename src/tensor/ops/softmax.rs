//! Softmax along any dimension and the reductions `sum_dim` / `max_dim`. The last
//! dimension is the fast path; another dimension is first permuted to the end.

use crate::context::trace::Span;
use crate::kernels::{reduce, softmax};
use crate::tensor::ops::strided::{f32_output, f32_working_copy, order_from_last, order_to_last};
use crate::tensor::Tensor;
use crate::Result;

impl Tensor {
    /// Softmax along `dim` (negative counts from the end), numerically stable. A
    /// slice that is entirely `-inf` (fully masked) becomes zeros, not NaN.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        let _span = Span::new("op", || "softmax".into());
        let d = self.shape().dim_index(dim, "softmax")?;
        let r = self.rank();
        if d == r - 1 {
            let x = self.to_f32_contiguous("softmax")?;
            let mut out = f32_output(self.dims())?;
            softmax::softmax(x.as_slice()?, self.dims()[d], out.data_mut()?);
            return Ok(out);
        }
        let moved = self.to_f32("softmax")?.permute(&order_to_last(r, d))?;
        let mut work = f32_working_copy(&moved, "softmax")?;
        softmax::softmax_in_place(work.data_mut()?, self.dims()[d]);
        work.permute(&order_from_last(r, d))?.contiguous()
    }

    /// Sum along `dim`, which is removed from the shape (accumulated in f64).
    pub fn sum_dim(&self, dim: isize) -> Result<Tensor> {
        let _span = Span::new("op", || "sum_dim".into());
        self.reduce_dim(dim, "sum_dim", reduce::sum_rows)
    }

    /// Maximum along `dim`, which is removed from the shape.
    pub fn max_dim(&self, dim: isize) -> Result<Tensor> {
        let _span = Span::new("op", || "max_dim".into());
        self.reduce_dim(dim, "max_dim", reduce::max_rows)
    }

    fn reduce_dim(&self, dim: isize, op: &'static str, kernel: fn(&[f32], usize, &mut [f32])) -> Result<Tensor> {
        let d = self.shape().dim_index(dim, op)?;
        let r = self.rank();
        let x = self.to_f32(op)?.permute(&order_to_last(r, d))?.contiguous()?;
        let mut out_dims = self.dims().to_vec();
        let n = out_dims.remove(d);
        let mut out = f32_output(&out_dims)?;
        kernel(x.as_slice()?, n, out.data_mut()?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::tensor::ops::test_util::*;
    use crate::tensor::{DType, Tensor};

    /// Softmax along `d` by explicit multi-index loops, in f64.
    fn softmax_ref(v: &[f32], dims: &[usize], d: usize) -> Vec<f64> {
        (0..v.len())
            .map(|i| {
                let idx = unravel(i, dims);
                let along = |k: usize| {
                    let mut j = idx.clone();
                    j[d] = k;
                    v[ravel(&j, dims)] as f64
                };
                let m = (0..dims[d]).map(along).fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = (0..dims[d]).map(|k| (along(k) - m).exp()).sum();
                (v[i] as f64 - m).exp() / s
            })
            .collect()
    }

    #[test]
    fn softmax_any_dim_any_layout() {
        for dims in [&[1usize][..], &[7], &[3, 33], &[4, 5, 6], &[2, 1031]] {
            let v = random_vec(dims.iter().product(), 21, 8.0);
            let mut inputs = vec![Tensor::from_slice(&v, dims).unwrap(), strided(&v, dims)];
            if dims.len() >= 2 {
                inputs.push(transposed(&v, dims));
            }
            for d in 0..dims.len() {
                let want = softmax_ref(&v, dims, d);
                for t in &inputs {
                    for dim in [d as isize, d as isize - dims.len() as isize] {
                        let got = t.softmax(dim).unwrap();
                        assert_eq!(got.dims(), dims);
                        assert!(got.is_contiguous());
                        assert_close(
                            &got.to_vec::<f32>().unwrap(),
                            &want,
                            1e-6,
                            &format!("softmax {dims:?} dim {dim}"),
                        );
                    }
                }
            }
        }
        // The input is never modified, even when a permuted view is already contiguous.
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3, 1]).unwrap();
        let s = t.softmax(0).unwrap();
        assert_eq!(t.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0]);
        assert!((s.to_vec::<f32>().unwrap().iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn reductions_any_dim() {
        let dims = [3, 4, 5];
        let v = random_vec(60, 3, 4.0);
        for t in [Tensor::from_slice(&v, &dims).unwrap(), strided(&v, &dims), transposed(&v, &dims)] {
            for d in 0..3 {
                let mut out_dims = dims.to_vec();
                out_dims.remove(d);
                let n: usize = out_dims.iter().product();
                let (mut sums, mut maxs) = (vec![0.0f64; n], vec![f64::NEG_INFINITY; n]);
                for (i, &x) in v.iter().enumerate() {
                    let mut idx = unravel(i, &dims);
                    idx.remove(d);
                    let o = ravel(&idx, &out_dims);
                    sums[o] += x as f64;
                    maxs[o] = maxs[o].max(x as f64);
                }
                let s = t.sum_dim(d as isize).unwrap();
                assert_eq!(s.dims(), &out_dims[..]);
                assert_close(&s.to_vec::<f32>().unwrap(), &sums, 1e-6, "sum_dim");
                let m = t.max_dim(d as isize - 3).unwrap();
                assert_close(&m.to_vec::<f32>().unwrap(), &maxs, 0.0, "max_dim");
            }
        }
    }

    #[test]
    fn bad_dims_are_errors() {
        let t = Tensor::zeros(&[2, 3], DType::F32).unwrap();
        for dim in [2, -3, 100] {
            let e = t.softmax(dim).unwrap_err().to_string();
            assert!(e.contains("softmax") && e.contains("[2, 3]"), "{e}");
            assert!(t.sum_dim(dim).is_err() && t.max_dim(dim).is_err());
        }
        assert!(Tensor::from_vec(vec![1.0f32], &[]).unwrap().softmax(0).is_err());
    }
}
