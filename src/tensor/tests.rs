//! Tests of tensor construction and views: reshape, permute, narrow, squeeze,
//! broadcast, contiguous copies, copy-on-write `data_mut`, and `Display`.

use crate::tensor::ops::test_util::{random_tensor, ravel, unravel};
use crate::tensor::{DType, MemType, Tensor};

/// Value at a multi-index, computed from the view's strides and offset directly.
fn at(t: &Tensor, idx: &[usize]) -> f32 {
    let pos = t.offset + idx.iter().zip(t.strides()).map(|(i, s)| i * s).sum::<usize>();
    bytemuck::cast_slice::<u8, f32>(t.storage.bytes())[pos]
}

#[test]
fn reshape_views_and_infers() {
    let t = random_tensor(&[2, 3, 4], 1);
    let v = t.to_vec::<f32>().unwrap();
    let r = t.reshape(&[6, usize::MAX]).unwrap();
    assert_eq!(r.dims(), &[6, 4]);
    assert!(r.same_storage(&t));
    assert_eq!(r.to_vec::<f32>().unwrap(), v);
    assert_eq!(t.reshape(&[24]).unwrap().dims(), &[24]);
    assert_eq!(t.reshape(&[usize::MAX]).unwrap().dims(), &[24]);
    assert!(t.reshape(&[5, 5]).is_err());
    assert!(t.reshape(&[5, usize::MAX]).is_err());
    assert!(t.reshape(&[0, usize::MAX]).is_err());
    // A non-contiguous view is copied, in logical order.
    let tt = t.transpose(0, 2).unwrap();
    let flat = tt.reshape(&[24]).unwrap();
    assert!(!flat.same_storage(&t));
    let want: Vec<f32> = (0..24).map(|i| at(&tt, &unravel(i, &[4, 3, 2]))).collect();
    assert_eq!(flat.to_vec::<f32>().unwrap(), want);
}

#[test]
fn permute_and_transpose_follow_index_arithmetic() {
    let dims = [2, 3, 5];
    let t = random_tensor(&dims, 2);
    let v = t.to_vec::<f32>().unwrap();
    let p = t.permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.dims(), &[5, 2, 3]);
    assert!(!p.is_contiguous() && p.same_storage(&t));
    let got = p.to_vec::<f32>().unwrap();
    for (i, &g) in got.iter().enumerate() {
        let q = unravel(i, &[5, 2, 3]);
        assert_eq!(g, v[ravel(&[q[1], q[2], q[0]], &dims)]);
    }
    assert_eq!(t.transpose(-1, 0).unwrap().dims(), &[5, 3, 2]);
    assert!(t.permute(&[0, 1]).is_err());
    assert!(t.permute(&[0, 1, 1]).is_err());
    assert!(t.permute(&[0, 1, 3]).is_err());
    assert!(t.transpose(0, 3).is_err());
    // Permuting back restores a contiguous view.
    assert!(p.permute(&[1, 2, 0]).unwrap().is_contiguous());
}

#[test]
fn narrow_squeeze_unsqueeze() {
    let t = random_tensor(&[4, 7], 3);
    let v = t.to_vec::<f32>().unwrap();
    let n = t.narrow(1, 2, 3).unwrap();
    assert_eq!(n.dims(), &[4, 3]);
    assert!(!n.is_contiguous() && n.same_storage(&t));
    let want: Vec<f32> = v.chunks(7).flat_map(|r| r[2..5].to_vec()).collect();
    assert_eq!(n.to_vec::<f32>().unwrap(), want);
    let rows = t.narrow(0, 1, 2).unwrap();
    assert!(rows.is_contiguous());
    assert_eq!(rows.to_vec::<f32>().unwrap(), v[7..21]);
    assert_eq!(t.narrow(-1, 7, 0).unwrap().dims(), &[4, 0]);
    assert!(t.narrow(1, 5, 3).is_err());
    assert!(t.narrow(1, usize::MAX, 2).is_err());
    assert!(t.narrow(2, 0, 1).is_err());
    let u = n.unsqueeze(1).unwrap();
    assert_eq!(u.dims(), &[4, 1, 3]);
    assert_eq!(u.to_vec::<f32>().unwrap(), want);
    assert_eq!(u.squeeze(1).unwrap().dims(), &[4, 3]);
    assert_eq!(t.unsqueeze(2).unwrap().dims(), &[4, 7, 1]);
    assert!(t.unsqueeze(3).is_err());
    assert!(t.squeeze(0).is_err());
}

#[test]
fn broadcast_repeats_by_stride_zero() {
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3, 1]).unwrap();
    let b = t.broadcast_as(&[2, 3, 4]).unwrap();
    assert_eq!(b.strides()[0], 0);
    assert_eq!(b.strides()[2], 0);
    let got = b.to_vec::<f32>().unwrap();
    for (i, &g) in got.iter().enumerate() {
        assert_eq!(g, (unravel(i, &[2, 3, 4])[1] + 1) as f32);
    }
    assert!(t.broadcast_as(&[3, 2, 1]).is_err());
    assert!(t.broadcast_as(&[4]).is_err());
    let q = Tensor::zeros(&[1, 32], DType::Q4_0).unwrap();
    assert!(q.broadcast_as(&[2, 32]).is_err());
}

#[test]
fn contiguous_copies_only_when_needed() {
    let t = random_tensor(&[3, 5], 4);
    assert!(t.contiguous().unwrap().same_storage(&t));
    let tt = t.transpose(0, 1).unwrap();
    let c = tt.contiguous().unwrap();
    assert!(c.is_contiguous() && !c.same_storage(&t));
    assert_eq!(c.to_vec::<f32>().unwrap(), tt.to_vec::<f32>().unwrap());
    for i in 0..15 {
        let idx = unravel(i, &[5, 3]);
        assert_eq!(at(&c, &idx), at(&t, &[idx[1], idx[0]]));
    }
    let p = t.copy_to(MemType::KvCache).unwrap();
    assert_eq!(p.mem_type(), MemType::KvCache);
    assert!(!p.same_storage(&t));
}

#[test]
fn data_mut_copies_on_write() {
    // A unique contiguous tensor is written in place.
    let mut a = Tensor::zeros(&[2, 3], DType::F32).unwrap();
    let before = a.raw_bytes().unwrap().as_ptr();
    a.data_mut::<f32>().unwrap()[4] = 5.0;
    assert_eq!(a.raw_bytes().unwrap().as_ptr(), before);
    // A shared one is copied first: the other handle does not see the change.
    let b = a.clone();
    a.data_mut::<f32>().unwrap()[0] = 1.0;
    assert!(!a.same_storage(&b));
    assert_eq!(b.to_vec::<f32>().unwrap(), [0.0, 0.0, 0.0, 0.0, 5.0, 0.0]);
    assert_eq!(a.to_vec::<f32>().unwrap(), [1.0, 0.0, 0.0, 0.0, 5.0, 0.0]);
    // A view gets its own storage holding just its elements.
    let mut col = b.narrow(1, 1, 2).unwrap();
    let data = col.data_mut::<f32>().unwrap();
    assert_eq!(data, [0.0, 0.0, 5.0, 0.0]);
    data[0] = 9.0;
    assert!(col.is_contiguous());
    assert_eq!(b.to_vec::<f32>().unwrap()[1], 0.0);
    assert!(a.data_mut::<i32>().is_err());
}

#[test]
fn element_access_checks_dtype_and_layout() {
    let t = random_tensor(&[2, 2], 5);
    assert!(t.to_vec::<i32>().is_err());
    assert!(t.transpose(0, 1).unwrap().as_slice::<f32>().is_err());
    assert!(t.transpose(0, 1).unwrap().raw_bytes().is_err());
    assert!(Tensor::from_vec(vec![1.0f32; 5], &[2, 2]).is_err());
    assert!(Tensor::from_bytes(&[0u8; 33], DType::Q8_0, &[32], MemType::Normal).is_err());
    assert!(Tensor::zeros(&[2, 33], DType::Q8_0).is_err());
    assert!(Tensor::zeros(&[usize::MAX, 4], DType::F32).is_err());
}

#[test]
fn display_shows_header_and_elided_values() {
    let t = Tensor::from_vec((0..20).map(|i| i as f32).collect(), &[2, 10]).unwrap().with_name("w");
    let s = t.to_string();
    assert!(s.starts_with("Tensor([2, 10], f32, Normal, name=\"w\")"), "{s}");
    assert!(s.contains("[[0.0000, 1.0000, 2.0000, ..., 7.0000, 8.0000, 9.0000]"), "{s}");
    assert!(s.contains("[10.0000, 11.0000, 12.0000, ..., 17.0000, 18.0000, 19.0000]]"), "{s}");
    let small = Tensor::from_vec(vec![1.5f32, -2.0], &[2]).unwrap();
    assert!(small.to_string().contains("[1.5000, -2.0000]"));
    // A transposed view prints its logical order.
    let tt = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap().transpose(0, 1).unwrap();
    assert!(tt.to_string().contains("[[1.0000, 3.0000],\n [2.0000, 4.0000]]"), "{tt}");
    assert!(format!("{:?}", Tensor::zeros(&[1, 32], DType::Q4_0).unwrap()).contains("q4_0"));
}
