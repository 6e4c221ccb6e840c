//! Elementwise arithmetic on tensors: `add`, `sub`, `mul`, `div` with NumPy
//! broadcasting, plus `scale` and `add_scalar`. Inputs may be any float dtype and any
//! layout (broadcast and strided views are read in place); results are contiguous f32.

use crate::context::trace::Span;
use crate::kernels::elementwise::{self, BinaryOp};
use crate::kernels::rows::for_each_row;
use crate::tensor::ops::broadcast_dims;
use crate::tensor::ops::strided::{f32_output, f32_storage, row_start};
use crate::tensor::Tensor;
use crate::{Error, Result};

impl Tensor {
    /// `self + rhs`, broadcasting (NumPy rules) to a common shape.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }

    /// `self - rhs`, broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }

    /// `self * rhs` elementwise, broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }

    /// `self / rhs` elementwise, broadcasting (IEEE: `x / 0` is `±inf` or NaN).
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }

    fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let name = op.name();
        let _span = Span::new("op", || name.into());
        let dims = broadcast_dims(self.dims(), rhs.dims()).ok_or_else(|| {
            Error::shape(name, format!("{:?} and {:?} do not broadcast to one shape", self.shape(), rhs.shape()))
        })?;
        let a = self.to_f32(name)?.broadcast_as(&dims)?;
        let b = rhs.to_f32(name)?.broadcast_as(&dims)?;
        let mut out = f32_output(&dims)?;
        let os = out.data_mut::<f32>()?;
        let (ad, bd) = (f32_storage(&a, name)?, f32_storage(&b, name)?);
        let n = os.len();
        if a.is_contiguous() && b.is_contiguous() {
            elementwise::binary(op, &ad[a.offset..a.offset + n], &bd[b.offset..b.offset + n], os);
            return Ok(out);
        }
        // Row by row over the last dimension, whose strides are 1 (plain), 0
        // (broadcast) or anything else (transposed views, read one value at a time).
        let r = dims.len(); // >= 1: a rank-0 tensor is contiguous
        let d = dims[r - 1];
        let outer = &dims[..r - 1];
        let (sa, sb) = (a.strides[r - 1], b.strides[r - 1]);
        for_each_row(os, d, |i, o| {
            let pa = row_start(outer, &a.strides, a.offset, i);
            let pb = row_start(outer, &b.strides, b.offset, i);
            match (sa, sb) {
                (1, 1) => elementwise::binary(op, &ad[pa..pa + d], &bd[pb..pb + d], o),
                (1, 0) => elementwise::binary_scalar_rhs(op, &ad[pa..pa + d], bd[pb], o),
                (0, 1) => elementwise::binary_scalar_lhs(op, ad[pa], &bd[pb..pb + d], o),
                _ => {
                    for (j, o) in o.iter_mut().enumerate() {
                        *o = op.apply(ad[pa + j * sa], bd[pb + j * sb]);
                    }
                }
            }
        });
        Ok(out)
    }

    /// `self * s`.
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        let _span = Span::new("op", || "scale".into());
        let x = self.to_f32_contiguous("scale")?;
        let mut out = f32_output(self.dims())?;
        elementwise::scale(x.as_slice::<f32>()?, s, out.data_mut::<f32>()?);
        Ok(out)
    }

    /// `self + s`.
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        let _span = Span::new("op", || "add_scalar".into());
        let x = self.to_f32_contiguous("add_scalar")?;
        let mut out = f32_output(self.dims())?;
        elementwise::add_scalar(x.as_slice::<f32>()?, s, out.data_mut::<f32>()?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use crate::tensor::ops::test_util::*;
    use crate::tensor::{DType, Tensor};

    /// Broadcast `a op b` by multi-index arithmetic, in f64.
    fn reference(a: &[f32], ad: &[usize], b: &[f32], bd: &[usize], f: fn(f64, f64) -> f64) -> (Vec<usize>, Vec<f64>) {
        let r = ad.len().max(bd.len());
        let pad =
            |d: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, r - d.len()).chain(d.iter().copied()).collect() };
        let (pa, pb) = (pad(ad), pad(bd));
        let out: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
        let n: usize = out.iter().product();
        let vals = (0..n)
            .map(|i| {
                let idx = unravel(i, &out);
                let ia: Vec<usize> = idx.iter().zip(&pa).map(|(&k, &s)| if s == 1 { 0 } else { k }).collect();
                let ib: Vec<usize> = idx.iter().zip(&pb).map(|(&k, &s)| if s == 1 { 0 } else { k }).collect();
                f(a[ravel(&ia, &pa)] as f64, b[ravel(&ib, &pb)] as f64)
            })
            .collect();
        (out, vals)
    }

    type OpFn = fn(&Tensor, &Tensor) -> crate::Result<Tensor>;
    type Reference = fn(f64, f64) -> f64;

    fn ops() -> [(&'static str, OpFn, Reference); 4] {
        [
            ("add", Tensor::add, |x, y| x + y),
            ("sub", Tensor::sub, |x, y| x - y),
            ("mul", Tensor::mul, |x, y| x * y),
            ("div", Tensor::div, |x, y| x / y),
        ]
    }

    #[test]
    fn broadcasting_matches_reference_in_all_layouts() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[1], &[1]),
            (&[7], &[7]),
            (&[3, 33], &[33]),
            (&[3, 33], &[3, 1]),
            (&[4, 1, 7], &[5, 1]),
            (&[1, 5], &[6, 1]),
            (&[], &[2, 3]),
            (&[2, 3, 1031], &[2, 1, 1031]),
            (&[65, 1024], &[65, 1024]),
            (&[2, 2, 3, 5], &[3, 1]),
        ];
        for (ci, &(ad, bd)) in cases.iter().enumerate() {
            let a = random_vec(ad.iter().product(), 10 + ci as u64, 2.0);
            // Keep divisors away from zero.
            let b: Vec<f32> = random_vec(bd.iter().product(), 50 + ci as u64, 1.0).iter().map(|v| v + 3.0).collect();
            for (name, op, f) in ops() {
                let (dims, want) = reference(&a, ad, &b, bd, f);
                let plain = |v: &[f32], d: &[usize]| Tensor::from_slice(v, d).unwrap();
                let mut layouts = vec![(plain(&a, ad), plain(&b, bd))];
                if !ad.is_empty() {
                    layouts.push((strided(&a, ad), strided(&b, bd)));
                }
                if ad.len() >= 2 && bd.len() >= 2 {
                    layouts.push((transposed(&a, ad), transposed(&b, bd)));
                    layouts.push((plain(&a, ad), transposed(&b, bd)));
                }
                for (l, (ta, tb)) in layouts.iter().enumerate() {
                    let got = op(ta, tb).unwrap();
                    assert_eq!(got.dims(), &dims[..], "{name} {ad:?} {bd:?}");
                    assert_eq!(got.dtype(), DType::F32);
                    assert_close(
                        &got.to_vec::<f32>().unwrap(),
                        &want,
                        1e-6,
                        &format!("{name} {ad:?} {bd:?} layout {l}"),
                    );
                }
                // Swapped operands broadcast the other way round.
                let (dims2, want2) = reference(&b, bd, &a, ad, f);
                let got = op(&plain(&b, bd), &plain(&a, ad)).unwrap();
                assert_eq!(got.dims(), &dims2[..]);
                assert_close(&got.to_vec::<f32>().unwrap(), &want2, 1e-5, &format!("{name} swapped"));
            }
        }
    }

    #[test]
    fn half_precision_inputs_are_computed_in_f32() {
        let a = random_vec(33, 1, 2.0);
        let b = random_vec(33, 2, 2.0);
        let ah: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
        let bb: Vec<bf16> = b.iter().map(|&v| bf16::from_f32(v)).collect();
        let ta = Tensor::from_vec(ah.clone(), &[3, 11]).unwrap();
        let tb = Tensor::from_vec(bb.clone(), &[3, 11]).unwrap();
        let got = ta.mul(&tb).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let want: Vec<f64> = ah.iter().zip(&bb).map(|(x, y)| x.to_f64() * y.to_f64()).collect();
        assert_close(&got.to_vec::<f32>().unwrap(), &want, 1e-6, "f16 * bf16");
    }

    #[test]
    fn scalar_ops() {
        for dims in [&[1usize][..], &[7], &[33, 40], &[3, 1000]] {
            let v = random_vec(dims.iter().product(), 3, 2.0);
            for t in [Tensor::from_slice(&v, dims).unwrap(), strided(&v, dims)] {
                let s = t.scale(-1.5).unwrap();
                assert_close(
                    &s.to_vec::<f32>().unwrap(),
                    &v.iter().map(|&x| x as f64 * -1.5).collect::<Vec<_>>(),
                    1e-7,
                    "scale",
                );
                let s = t.add_scalar(0.75).unwrap();
                assert_close(
                    &s.to_vec::<f32>().unwrap(),
                    &v.iter().map(|&x| x as f64 + 0.75).collect::<Vec<_>>(),
                    1e-7,
                    "add_scalar",
                );
            }
            // scale never writes through to its input.
            let t = Tensor::from_slice(&v, dims).unwrap();
            let _ = t.scale(2.0).unwrap();
            assert_eq!(t.to_vec::<f32>().unwrap(), v);
        }
    }

    #[test]
    fn shape_and_dtype_errors() {
        let a = Tensor::zeros(&[2, 3], DType::F32).unwrap();
        let b = Tensor::zeros(&[4], DType::F32).unwrap();
        let e = a.add(&b).unwrap_err().to_string();
        assert!(e.contains("add") && e.contains("[2, 3]") && e.contains("[4]"), "{e}");
        assert!(a.div(&Tensor::zeros(&[3, 3], DType::F32).unwrap()).is_err());
        let ids = Tensor::zeros(&[2, 3], DType::I32).unwrap();
        let e = a.sub(&ids).unwrap_err().to_string();
        assert!(e.contains("sub") && e.contains("I32"), "{e}");
        let q = Tensor::zeros(&[2, 32], DType::Q8_0).unwrap();
        assert!(q.mul(&q).is_err());
        assert!(ids.scale(2.0).is_err());
    }
}
