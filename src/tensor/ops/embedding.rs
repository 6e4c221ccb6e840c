//! Embedding lookup: rows of a `[vocab, dim]` table gathered by integer ids. Only the
//! rows asked for are converted to f32, so a large F16/BF16 table is never copied.

use crate::context::trace::Span;
use crate::tensor::ops::strided::f32_output;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// Decode one row of little-endian `dtype` bytes into `out`.
fn row_to_f32(bytes: &[u8], dtype: DType, out: &mut [f32]) -> Result<()> {
    out.copy_from_slice(&super::convert::bytes_to_f32(bytes, dtype)?);
    Ok(())
}

impl Tensor {
    /// Look up rows of `table` (`[vocab, dim]`, F32/F16/BF16) for each id in `ids`
    /// (I32, any shape, any layout). The result is f32 `[...ids.dims(), dim]`. An id
    /// outside `0..vocab` is an error naming the id and where it was found.
    pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let _span = Span::new("op", || "embedding".into());
        if table.rank() != 2 {
            return Err(Error::shape("embedding", format!("table must be [vocab, dim], got {:?}", table.shape())));
        }
        if !table.dtype().is_float() && !table.dtype().is_quantized() {
            return Err(Error::dtype("embedding", table.dtype()));
        }
        if ids.dtype() != DType::I32 {
            return Err(Error::DType { op: "embedding", dtype: ids.dtype(), msg: "ids must be i32".into() });
        }
        let (vocab, dim) = (table.dims()[0], table.dims()[1]);
        let id_values = ids.to_vec::<i32>()?;
        let rows: Vec<usize> = id_values
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                usize::try_from(id).ok().filter(|&r| r < vocab).ok_or_else(|| {
                    Error::invalid(format!(
                        "embedding: id {id} (element {i} of ids {:?}) is outside the table's vocabulary 0..{vocab}",
                        ids.shape()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let mut out_dims = ids.dims().to_vec();
        out_dims.push(dim);
        let mut out = f32_output(&out_dims)?;
        let os = out.data_mut::<f32>()?;
        if dim == 0 {
            return Ok(out);
        }
        for (o, &r) in os.chunks_exact_mut(dim).zip(&rows) {
            let row = table.narrow(0, r, 1)?;
            if row.is_contiguous() {
                row_to_f32(row.raw_bytes()?, table.dtype(), o)?;
            } else {
                o.copy_from_slice(&row.to_f32_vec()?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use crate::tensor::ops::test_util::*;
    use crate::tensor::{DType, Tensor};

    #[test]
    fn gathers_rows_for_any_id_shape_and_table_layout() {
        let (vocab, dim) = (37, 33);
        let w = random_vec(vocab * dim, 5, 1.0);
        let ids: Vec<i32> = vec![0, 36, 5, 5, 17, 1];
        let want = |shape_ids: &[i32]| -> Vec<f64> {
            shape_ids.iter().flat_map(|&i| w[i as usize * dim..][..dim].iter().map(|&v| v as f64)).collect()
        };
        let tables =
            [Tensor::from_slice(&w, &[vocab, dim]).unwrap(), strided(&w, &[vocab, dim]), transposed(&w, &[vocab, dim])];
        for table in &tables {
            for id_dims in [&[6usize][..], &[2, 3], &[1, 6, 1]] {
                let t_ids = Tensor::from_slice(&ids, id_dims).unwrap();
                let got = Tensor::embedding(table, &t_ids).unwrap();
                let mut out_dims = id_dims.to_vec();
                out_dims.push(dim);
                assert_eq!(got.dims(), &out_dims[..]);
                assert_close(&got.to_vec::<f32>().unwrap(), &want(&ids), 0.0, "embedding");
            }
            // Non-contiguous ids: the transpose of [[0, 36, 5], [5, 17, 1]].
            let t_ids = Tensor::from_slice(&ids, &[2, 3]).unwrap().transpose(0, 1).unwrap();
            let got = Tensor::embedding(table, &t_ids).unwrap();
            assert_eq!(got.dims(), &[3, 2, dim]);
            assert_close(&got.to_vec::<f32>().unwrap(), &want(&[0, 5, 36, 17, 5, 1]), 0.0, "transposed ids");
        }
        // A scalar id gives one row of shape [dim].
        let one = Tensor::from_vec(vec![3i32], &[]).unwrap();
        assert_eq!(Tensor::embedding(&tables[0], &one).unwrap().dims(), &[dim]);
    }

    #[test]
    fn half_tables_convert_only_the_rows() {
        let w = random_vec(10 * 8, 6, 1.0);
        let ids = Tensor::from_vec(vec![9i32, 0, 4], &[3]).unwrap();
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let want = |f: &dyn Fn(usize) -> f64| -> Vec<f64> {
            [9, 0, 4].iter().flat_map(|&r| (0..8).map(move |c| (r, c))).map(|(r, c)| f(r * 8 + c)).collect()
        };
        let got = Tensor::embedding(&Tensor::from_vec(h.clone(), &[10, 8]).unwrap(), &ids).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        assert_close(&got.to_vec::<f32>().unwrap(), &want(&|i| h[i].to_f64()), 0.0, "f16");
        let got = Tensor::embedding(&Tensor::from_vec(b.clone(), &[10, 8]).unwrap(), &ids).unwrap();
        assert_close(&got.to_vec::<f32>().unwrap(), &want(&|i| b[i].to_f64()), 0.0, "bf16");
    }

    #[test]
    fn errors_name_the_problem() {
        let table = Tensor::zeros(&[10, 4], DType::F32).unwrap();
        for bad in [10, -1, i32::MAX] {
            let ids = Tensor::from_vec(vec![1i32, bad], &[2]).unwrap();
            let e = Tensor::embedding(&table, &ids).unwrap_err().to_string();
            assert!(e.contains("embedding") && e.contains(&bad.to_string()) && e.contains("0..10"), "{e}");
        }
        let f_ids = Tensor::zeros(&[2], DType::F32).unwrap();
        assert!(Tensor::embedding(&table, &f_ids).unwrap_err().to_string().contains("i32"));
        let ids = Tensor::zeros(&[2], DType::I32).unwrap();
        assert!(Tensor::embedding(&Tensor::zeros(&[10], DType::F32).unwrap(), &ids).is_err());
        assert!(Tensor::embedding(&Tensor::zeros(&[10, 4], DType::I32).unwrap(), &ids).is_err());
    }
}
