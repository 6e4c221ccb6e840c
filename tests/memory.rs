//! The memory report agrees with what was really allocated: exact byte deltas per
//! memory type and dtype, allocation counts, peaks, the largest-tensor table, and no
//! allocation for clones and views. One test: the counters are process-wide.

use mllm::context::memory::Usage;
use mllm::prelude::*;
use mllm::MemoryReport;

fn delta(a: Usage, b: Usage) -> (isize, u64) {
    (b.live as isize - a.live as isize, b.allocs - a.allocs)
}

#[test]
fn report_matches_real_allocations() {
    let r0 = MemoryReport::capture();

    // 1 MiB of f32 parameters, named.
    let w =
        Tensor::empty(&[512, 512], DType::F32).mem_type(MemType::ParamsNormal).name("layer.weight").alloc().unwrap();
    let r1 = MemoryReport::capture();
    assert_eq!(delta(r0.mem_type(MemType::ParamsNormal), r1.mem_type(MemType::ParamsNormal)), (1 << 20, 1));
    assert_eq!(delta(r0.dtype(DType::F32), r1.dtype(DType::F32)), (1 << 20, 1));
    assert_eq!(delta(r0.total, r1.total), (1 << 20, 1));
    assert!(r1.mem_type(MemType::ParamsNormal).peak >= r1.mem_type(MemType::ParamsNormal).live);
    let big = r1.largest.iter().find(|t| t.name == "layer.weight").expect("listed among the largest");
    assert_eq!((big.bytes, big.mem_type, big.dtype), (1 << 20, MemType::ParamsNormal, DType::F32));

    // An empty tensor owns nothing until allocated; clones and views allocate nothing.
    let declared = Tensor::empty(&[1024, 1024], DType::F16);
    let view = w.transpose(0, 1).unwrap().narrow(0, 3, 100).unwrap();
    let clone = w.clone();
    let r2 = MemoryReport::capture();
    assert_eq!(r2.total, r1.total);

    // 2 MiB of f16 activations.
    let act = declared.alloc().unwrap();
    let r3 = MemoryReport::capture();
    assert_eq!(delta(r2.mem_type(MemType::Normal), r3.mem_type(MemType::Normal)), (2 << 20, 1));
    assert_eq!(delta(r2.dtype(DType::F16), r3.dtype(DType::F16)), (2 << 20, 1));

    // contiguous() of a strided view copies exactly its elements.
    let copy = view.contiguous().unwrap();
    let r4 = MemoryReport::capture();
    assert_eq!(delta(r3.total, r4.total), (100 * 512 * 4, 1));

    // Writing through a shared handle copies (copy on write); the original is intact.
    let mut cow = clone.clone();
    cow.data_mut::<f32>().unwrap()[0] = 1.0;
    let r5 = MemoryReport::capture();
    assert_eq!(delta(r4.total, r5.total), (1 << 20, 1));
    assert_eq!(w.to_vec::<f32>().unwrap()[0], 0.0);

    // Dropping returns every byte; peaks stay.
    let peak = r5.total.live;
    drop((w, view, clone, act, copy, cow));
    let r6 = MemoryReport::capture();
    assert_eq!(r6.total.live, r0.total.live);
    assert_eq!(r6.mem_type(MemType::ParamsNormal).live, r0.mem_type(MemType::ParamsNormal).live);
    assert!(r6.total.peak >= peak);
    assert!(!r6.largest.iter().any(|t| t.name == "layer.weight"));

    let text = r5.to_string();
    assert!(text.contains("ParamsNormal") && text.contains("layer.weight") && text.contains("MiB"), "{text}");
}
