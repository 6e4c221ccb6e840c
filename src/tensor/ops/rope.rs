//! Rotary position embedding on tensors laid out `[..., seq, n_heads, head_dim]`.
//! The angle tables and the per-row rotation live in `kernels::rope`.

pub use crate::kernels::rope::{RopeLayout, RopeTable};

use crate::context::trace::Span;
use crate::kernels::rope::rope_row_with;
use crate::kernels::rows::for_each_row;
use crate::tensor::ops::strided::f32_working_copy;
use crate::tensor::Tensor;
use crate::{Error, Result};

impl Tensor {
    /// Rotary position embedding of queries or keys.
    ///
    /// `self` is `[..., seq, n_heads, head_dim]` (rank >= 3): dimension -3 is the
    /// sequence, -2 the heads, -1 the values of one head; any leading dimensions
    /// (a batch) share the positions. Token `s` of the sequence is at position
    /// `start_pos + s` (pass the number of tokens already in the KV cache), and all
    /// heads of a token rotate alike. `head_dim` must equal `table.head_dim()` and
    /// `start_pos + seq` must not exceed `table.max_pos()`. The result is contiguous
    /// f32 of the same shape. For the HF layout `[batch, n_heads, seq, head_dim]`,
    /// pass `x.transpose(1, 2)` (views are accepted).
    pub fn rope(&self, table: &RopeTable, start_pos: usize, layout: RopeLayout) -> Result<Tensor> {
        let _span = Span::new("op", || "rope".into());
        let r = self.rank();
        if r < 3 {
            return Err(Error::shape(
                "rope",
                format!("input {:?} is not [..., seq, n_heads, head_dim] (rank >= 3)", self.shape()),
            ));
        }
        let (seq, n_heads, head_dim) = (self.dims()[r - 3], self.dims()[r - 2], self.dims()[r - 1]);
        if head_dim != table.head_dim() {
            return Err(Error::shape(
                "rope",
                format!(
                    "head_dim {head_dim} of input {:?} differs from the table's {}",
                    self.shape(),
                    table.head_dim()
                ),
            ));
        }
        if start_pos.checked_add(seq).is_none_or(|end| end > table.max_pos()) {
            return Err(Error::shape(
                "rope",
                format!(
                    "positions {start_pos}..{} of input {:?} exceed the rope table's {} positions",
                    start_pos.saturating_add(seq),
                    self.shape(),
                    table.max_pos()
                ),
            ));
        }
        let mut out = f32_working_copy(self, "rope")?;
        let data = out.data_mut::<f32>()?;
        // A token's heads at a time: its position's angles once for all of them.
        let half = head_dim / 2;
        for_each_row(data, n_heads * head_dim, |t, heads| {
            let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
            table.angles(start_pos + t % seq, &mut cos, &mut sin);
            for row in heads.chunks_exact_mut(head_dim) {
                rope_row_with(row, &cos, &sin, layout);
            }
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ops::test_util::*;
    use crate::tensor::DType;

    /// Direct formula on `[batch, seq, heads, d]` values, in f64.
    fn reference(v: &[f32], dims: &[usize], start: usize, theta: f64, layout: RopeLayout) -> Vec<f64> {
        let r = dims.len();
        let (seq, d) = (dims[r - 3], dims[r - 1]);
        let mut out: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        for (i, row) in v.chunks(d).enumerate() {
            let pos = start + (i / dims[r - 2]) % seq;
            for k in 0..d / 2 {
                let angle = pos as f64 * theta.powf(-(2.0 * k as f64) / d as f64);
                let (a, b) = match layout {
                    RopeLayout::HalfSplit => (k, k + d / 2),
                    RopeLayout::Interleaved => (2 * k, 2 * k + 1),
                };
                let (x, y) = (row[a] as f64, row[b] as f64);
                out[i * d + a] = x * angle.cos() - y * angle.sin();
                out[i * d + b] = x * angle.sin() + y * angle.cos();
            }
        }
        out
    }

    #[test]
    fn matches_direct_formula_for_both_layouts() {
        let theta = 100000.0;
        let table = RopeTable::new(64, 2048, theta).unwrap();
        for dims in [&[1usize, 1, 64][..], &[7, 3, 64], &[2, 5, 9, 64], &[33, 1, 64]] {
            let v = random_vec(dims.iter().product(), 31, 2.0);
            for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
                for start in [0, 1, 1000] {
                    let want = reference(&v, dims, start, theta as f64, layout);
                    let mut inputs = vec![Tensor::from_slice(&v, dims).unwrap(), strided(&v, dims)];
                    if dims[dims.len() - 2] > 1 {
                        // [.., seq, heads, d] stored as [.., heads, seq, d]: the HF layout.
                        let r = dims.len();
                        let t = Tensor::from_slice(&v, dims).unwrap();
                        let hf = t.transpose(r as isize - 3, r as isize - 2).unwrap().contiguous().unwrap();
                        inputs.push(hf.transpose(r as isize - 3, r as isize - 2).unwrap());
                    }
                    for t in &inputs {
                        let got = t.rope(&table, start, layout).unwrap();
                        assert_eq!(got.dims(), dims);
                        assert_close(
                            &got.to_vec::<f32>().unwrap(),
                            &want,
                            3e-6,
                            &format!("{dims:?} {layout:?} {start}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn position_zero_is_identity_and_input_is_untouched() {
        let table = RopeTable::new(8, 4, 10000.0).unwrap();
        let v = random_vec(8, 1, 1.0);
        let t = Tensor::from_slice(&v, &[1, 1, 8]).unwrap();
        for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
            assert_eq!(t.rope(&table, 0, layout).unwrap().to_vec::<f32>().unwrap(), v);
            let moved = t.rope(&table, 3, layout).unwrap().to_vec::<f32>().unwrap();
            assert_ne!(moved, v);
        }
        assert_eq!(t.to_vec::<f32>().unwrap(), v);
    }

    #[test]
    fn a_large_batch_runs_in_parallel_and_agrees() {
        let table = RopeTable::new(64, 512, 10000.0).unwrap();
        let dims = [300, 9, 64];
        let v = random_vec(dims.iter().product(), 2, 1.0);
        let t = Tensor::from_slice(&v, &dims).unwrap();
        let got = t.rope(&table, 100, RopeLayout::Interleaved).unwrap();
        let want = reference(&v, &dims, 100, 10000.0, RopeLayout::Interleaved);
        assert_close(&got.to_vec::<f32>().unwrap(), &want, 3e-6, "large");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let table = RopeTable::new(8, 4, 10000.0).unwrap();
        let t = Tensor::zeros(&[3, 2, 8], DType::F32).unwrap();
        assert!(t.rope(&table, 1, RopeLayout::HalfSplit).is_ok());
        let e = t.rope(&table, 2, RopeLayout::HalfSplit).unwrap_err().to_string();
        assert!(e.contains("rope") && e.contains("2..5"), "{e}");
        assert!(t.rope(&table, usize::MAX, RopeLayout::HalfSplit).is_err());
        let e = Tensor::zeros(&[3, 2, 6], DType::F32).unwrap().rope(&table, 0, RopeLayout::HalfSplit).unwrap_err();
        assert!(e.to_string().contains("head_dim"), "{e}");
        assert!(Tensor::zeros(&[2, 8], DType::F32).unwrap().rope(&table, 0, RopeLayout::HalfSplit).is_err());
        assert!(Tensor::zeros(&[3, 2, 8], DType::I32).unwrap().rope(&table, 0, RopeLayout::HalfSplit).is_err());
    }
}
