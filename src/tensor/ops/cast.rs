//! `to_dtype`: conversion between the float element types F32, F16 and BF16 (and from
//! I32/U8 to them), always through f32. Quantising is not done here.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::context::trace::Span;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

impl Tensor {
    /// A contiguous copy converted to `dtype` (F32, F16 or BF16; round to nearest
    /// even). Converting to the tensor's own dtype returns the same tensor (no copy).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let _span = Span::new("op", || "to_dtype".into());
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if !dtype.is_float() {
            return Err(Error::DType {
                op: "to_dtype",
                dtype,
                msg: "only f32, f16 and bf16 can be converted to".into(),
            });
        }
        let values = self.to_f32_vec()?;
        match dtype {
            DType::F32 => Tensor::from_vec(values, self.dims()),
            DType::F16 => {
                let mut out = vec![f16::ZERO; values.len()];
                out.convert_from_f32_slice(&values);
                Tensor::from_vec(out, self.dims())
            }
            DType::BF16 => {
                let mut out = vec![bf16::ZERO; values.len()];
                out.convert_from_f32_slice(&values);
                Tensor::from_vec(out, self.dims())
            }
            _ => unreachable!("is_float covers exactly F32, F16 and BF16"),
        }
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use crate::tensor::ops::test_util::*;
    use crate::tensor::{DType, Tensor};

    #[test]
    fn round_trips_and_rounding() {
        let v = random_vec(7 * 33, 9, 100.0);
        for t in [Tensor::from_slice(&v, &[7, 33]).unwrap(), transposed(&v, &[7, 33])] {
            let h = t.to_dtype(DType::F16).unwrap();
            assert_eq!(h.dtype(), DType::F16);
            assert_eq!(h.to_vec::<f16>().unwrap(), v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>());
            let b = t.to_dtype(DType::BF16).unwrap();
            assert_eq!(b.to_vec::<bf16>().unwrap(), v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>());
            let back = h.to_dtype(DType::F32).unwrap();
            assert_eq!(back.dims(), &[7, 33]);
            let want: Vec<f64> = v.iter().map(|&x| f16::from_f32(x).to_f64()).collect();
            assert_close(&back.to_vec::<f32>().unwrap(), &want, 0.0, "f16 -> f32");
            let hb = h.to_dtype(DType::BF16).unwrap();
            assert_eq!(
                hb.to_vec::<bf16>().unwrap(),
                v.iter().map(|&x| bf16::from_f32(f16::from_f32(x).to_f32())).collect::<Vec<_>>()
            );
            assert!(t.to_dtype(DType::F32).unwrap().same_storage(&t));
        }
        let ints = Tensor::from_vec(vec![1i32, -7, 300], &[3]).unwrap();
        assert_eq!(ints.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), [1.0, -7.0, 300.0]);
        // Out-of-range values saturate to infinity in f16.
        let big = Tensor::from_vec(vec![1e6f32], &[1]).unwrap().to_dtype(DType::F16).unwrap();
        assert!(big.to_vec::<f16>().unwrap()[0].is_infinite());
    }

    #[test]
    fn unsupported_targets_are_errors() {
        let t = Tensor::zeros(&[2, 32], DType::F32).unwrap();
        for d in [DType::I32, DType::U8, DType::Q8_0, DType::Q4_K] {
            let e = t.to_dtype(d).unwrap_err().to_string();
            assert!(e.contains("to_dtype"), "{e}");
        }
    }
}
