//! Joining and cutting along one dimension: `Tensor::cat` copies its inputs into one
//! new tensor (any dtype); `split` returns views that share the input's storage.

use std::sync::Arc;

use crate::context::trace::Span;
use crate::tensor::{MemType, Shape, Storage, Tensor};
use crate::{Error, Result};

impl Tensor {
    /// Concatenate `tensors` along `dim` (negative counts from the end). All must have
    /// the same dtype and rank, and the same size in every other dimension. Works for
    /// every dtype, including block-quantised ones (whole rows are copied as bytes).
    pub fn cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let _span = Span::new("op", || "cat".into());
        let first = *tensors.first().ok_or_else(|| Error::shape("cat", "no tensors to concatenate"))?;
        let d = first.shape().dim_index(dim, "cat")?;
        let dtype = first.dtype();
        let mut out_dims = first.dims().to_vec();
        out_dims[d] = 0;
        for (i, t) in tensors.iter().enumerate() {
            if t.dtype() != dtype {
                return Err(Error::DType {
                    op: "cat",
                    dtype: t.dtype(),
                    msg: format!("tensor {i} is {}, tensor 0 is {dtype}", t.dtype()),
                });
            }
            let fits = t.rank() == first.rank()
                && t.dims().iter().zip(first.dims()).enumerate().all(|(k, (a, b))| k == d || a == b);
            if !fits {
                return Err(Error::shape(
                    "cat",
                    format!("tensor {i} {:?} does not fit tensor 0 {:?} along dimension {d}", t.shape(), first.shape()),
                ));
            }
            out_dims[d] += t.dims()[d];
        }
        let shape = Shape::from(out_dims);
        let n = shape.checked_elem_count()?;
        let total = dtype.bytes_for(n).ok_or_else(|| Error::Overflow(format!("cat output {shape:?}")))?;
        let parts: Vec<Tensor> = tensors.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
        // Each input contributes, per index of the dimensions before `d`, one chunk of
        // `dims[d..]` elements; these chunks interleave in the output.
        let outer: usize = shape.dims()[..d].iter().product();
        let chunk_bytes: Vec<usize> =
            parts.iter().map(|t| dtype.bytes_for(t.dims()[d..].iter().product()).unwrap_or(0)).collect();
        let mut bytes = Vec::with_capacity(total);
        let srcs: Vec<&[u8]> = parts.iter().map(|t| t.raw_bytes()).collect::<Result<_>>()?;
        for o in 0..outer {
            for (src, &cb) in srcs.iter().zip(&chunk_bytes) {
                bytes.extend_from_slice(&src[o * cb..(o + 1) * cb]);
            }
        }
        debug_assert_eq!(bytes.len(), total);
        let storage = Storage::copy_of(&bytes, MemType::Normal, dtype, None);
        Ok(Tensor::from_parts(Arc::new(storage), shape, dtype, None))
    }

    /// Cut along `dim` into consecutive pieces of the given `sizes`, which must add
    /// up to the dimension's size. The pieces are views (no copy).
    pub fn split(&self, dim: isize, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let _span = Span::new("op", || "split".into());
        let d = self.shape().dim_index(dim, "split")?;
        let total = sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s));
        if total != Some(self.dims()[d]) {
            return Err(Error::shape(
                "split",
                format!("sizes {sizes:?} do not add up to dimension {d} of {:?}", self.shape()),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                let piece = self.narrow(d as isize, start, s);
                start += s;
                piece
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::tensor::ops::test_util::*;
    use crate::tensor::{DType, MemType, Tensor};

    #[test]
    fn cat_matches_index_arithmetic_for_every_dim() {
        let a_dims = [2, 3, 4];
        for d in 0..3 {
            let mut b_dims = a_dims;
            b_dims[d] = 5;
            let (va, vb) = (random_vec(24, 1, 1.0), random_vec(b_dims.iter().product(), 2, 1.0));
            let mut out_dims = a_dims;
            out_dims[d] += 5;
            let want: Vec<f64> = (0..out_dims.iter().product())
                .map(|i| {
                    let mut idx = unravel(i, &out_dims);
                    if idx[d] < a_dims[d] {
                        va[ravel(&idx, &a_dims)] as f64
                    } else {
                        idx[d] -= a_dims[d];
                        vb[ravel(&idx, &b_dims)] as f64
                    }
                })
                .collect();
            for (ta, tb) in [
                (Tensor::from_slice(&va, &a_dims).unwrap(), Tensor::from_slice(&vb, &b_dims).unwrap()),
                (strided(&va, &a_dims), transposed(&vb, &b_dims)),
            ] {
                let got = Tensor::cat(&[&ta, &tb], d as isize - 3).unwrap();
                assert_eq!(got.dims(), &out_dims);
                assert_close(&got.to_vec::<f32>().unwrap(), &want, 0.0, &format!("cat dim {d}"));
                // split undoes cat, with views of the result.
                let parts = got.split(d as isize, &[a_dims[d], 5]).unwrap();
                assert!(parts.iter().all(|p| p.same_storage(&got)));
                assert_eq!(parts[0].to_vec::<f32>().unwrap(), va);
                assert_eq!(parts[1].to_vec::<f32>().unwrap(), vb);
            }
        }
    }

    #[test]
    fn cat_of_three_and_of_other_dtypes() {
        let a = Tensor::from_vec(vec![1i32, 2], &[2, 1]).unwrap();
        let b = Tensor::from_vec(vec![3i32, 4, 5, 6], &[2, 2]).unwrap();
        let got = Tensor::cat(&[&a, &b, &a], 1).unwrap();
        assert_eq!(got.to_vec::<i32>().unwrap(), [1, 3, 4, 1, 2, 5, 6, 2]);
        // Quantised rows are whole blocks: concatenating rows copies the bytes.
        let q1 = Tensor::from_bytes(&[7u8; 34], DType::Q8_0, &[1, 32], MemType::Normal).unwrap();
        let q2 = Tensor::from_bytes(&[9u8; 68], DType::Q8_0, &[2, 32], MemType::Normal).unwrap();
        let q = Tensor::cat(&[&q1, &q2], 0).unwrap();
        assert_eq!(q.dims(), &[3, 32]);
        let raw = q.raw_bytes().unwrap();
        assert!(raw[..34].iter().all(|&x| x == 7) && raw[34..].iter().all(|&x| x == 9));
        let q = Tensor::cat(&[&q1, &q1], 1).unwrap();
        assert_eq!(q.dims(), &[1, 64]);
    }

    #[test]
    fn split_pieces_are_views_with_odd_sizes() {
        let v = random_vec(7 * 33, 4, 1.0);
        let t = Tensor::from_slice(&v, &[7, 33]).unwrap();
        let parts = t.split(-1, &[1, 0, 32]).unwrap();
        assert_eq!(parts.iter().map(|p| p.dims().to_vec()).collect::<Vec<_>>(), [vec![7, 1], vec![7, 0], vec![7, 32]]);
        assert!(parts.iter().all(|p| p.same_storage(&t)));
        let col0: Vec<f32> = v.chunks(33).map(|r| r[0]).collect();
        assert_eq!(parts[0].to_vec::<f32>().unwrap(), col0);
        let rest: Vec<f32> = v.chunks(33).flat_map(|r| r[1..].to_vec()).collect();
        assert_eq!(parts[2].to_vec::<f32>().unwrap(), rest);
    }

    #[test]
    fn errors() {
        let a = Tensor::zeros(&[2, 3], DType::F32).unwrap();
        let b = Tensor::zeros(&[3, 3], DType::F32).unwrap();
        let e = Tensor::cat(&[&a, &b], 1).unwrap_err().to_string();
        assert!(e.contains("cat") && e.contains("[3, 3]"), "{e}");
        assert!(Tensor::cat(&[&a, &b], 0).is_ok());
        assert!(Tensor::cat(&[&a, &Tensor::zeros(&[2, 3], DType::F16).unwrap()], 0).is_err());
        assert!(Tensor::cat(&[&a, &Tensor::zeros(&[2, 3, 1], DType::F32).unwrap()], 0).is_err());
        assert!(Tensor::cat(&[], 0).is_err());
        assert!(Tensor::cat(&[&a], 2).is_err());
        let e = a.split(1, &[1, 1]).unwrap_err().to_string();
        assert!(e.contains("split") && e.contains("[1, 1]"), "{e}");
        assert!(a.split(1, &[usize::MAX, 4]).is_err());
        assert!(a.split(5, &[3]).is_err());
    }
}
