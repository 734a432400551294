//! Property tests: for random shapes, broadcasting arithmetic and view chains on the CPU
//! device agree with a naive host computation over multi-indices.

use std::sync::{Arc, OnceLock};

use manychips::{CpuDevice, DType, DeviceRef, Layout, Shape, Tensor, non_overlapping};
use proptest::prelude::*;

fn cpu() -> DeviceRef {
    static DEV: OnceLock<DeviceRef> = OnceLock::new();
    DEV.get_or_init(|| Arc::new(CpuDevice::new().expect("cpu device"))).clone()
}

/// All multi-indices of `dims` in row-major order.
fn indices(dims: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &d in dims {
        out = out
            .into_iter()
            .flat_map(|p| (0..d).map(move |i| [p.clone(), vec![i]].concat()))
            .collect();
    }
    out
}

/// A shape and a second shape that broadcasts with it (some dims set to 1, some dropped).
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(0usize..5, 0..4)
        .prop_flat_map(|dims| {
            let n = dims.len();
            (Just(dims), prop::collection::vec(any::<bool>(), n), 0..=n)
        })
        .prop_map(|(dims, ones, keep)| {
            let other: Vec<usize> =
                dims.iter().zip(&ones).map(|(&d, &one)| if one { 1 } else { d }).collect();
            (dims, other[other.len() - keep..].to_vec())
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn broadcast_add_matches_the_host((a_dims, b_dims) in broadcast_pair(), swap in any::<bool>()) {
        let (a_dims, b_dims) = if swap { (b_dims, a_dims) } else { (a_dims, b_dims) };
        let dev = cpu();
        let a_host: Vec<f32> = (0..a_dims.iter().product::<usize>()).map(|i| i as f32).collect();
        let b_host: Vec<f32> = (0..b_dims.iter().product::<usize>()).map(|i| 100.0 * i as f32).collect();
        let a = Tensor::from_slice(&a_host, a_dims.as_slice(), &dev).unwrap();
        let b = Tensor::from_slice(&b_host, b_dims.as_slice(), &dev).unwrap();
        let sum = a.add(&b).unwrap();
        let shape = Shape::from(a_dims.as_slice()).broadcast(&Shape::from(b_dims.as_slice())).unwrap();
        prop_assert_eq!(sum.dims(), shape.dims());
        let la = Layout::contiguous(a_dims.as_slice()).broadcast_to(&shape).unwrap();
        let lb = Layout::contiguous(b_dims.as_slice()).broadcast_to(&shape).unwrap();
        let want: Vec<f32> = indices(shape.dims())
            .iter()
            .map(|idx| a_host[la.index_of(idx)] + b_host[lb.index_of(idx)])
            .collect();
        prop_assert_eq!(sum.to_vec::<f32>().unwrap(), want);
    }

    #[test]
    fn view_chains_read_the_right_elements(
        dims in prop::collection::vec(1usize..5, 2..4),
        start in 0usize..3,
        a in 0usize..3,
        b in 0usize..3,
    ) {
        let dev = cpu();
        let n: usize = dims.iter().product();
        let host: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let x = Tensor::from_slice(&host, dims.as_slice(), &dev).unwrap();
        let (a, b) = (a % dims.len(), b % dims.len());
        let start = start % dims[0];
        let view = x.transpose(a, b).unwrap().narrow(0, 0, 1).unwrap();
        let stretched: Vec<usize> = [&[2][..], view.dims()].concat();
        let view = view.unsqueeze(0).unwrap().broadcast_as(stretched).unwrap();
        let view2 = x.narrow(0, start, dims[0] - start).unwrap().t().unwrap();
        for v in [view, view2] {
            let want: Vec<f32> = indices(v.dims()).iter().map(|i| host[v.layout().index_of(i)]).collect();
            prop_assert_eq!(v.to_vec::<f32>().unwrap(), want.clone());
            prop_assert_eq!(v.contiguous().unwrap().to_vec::<f32>().unwrap(), want);
        }
    }

    #[test]
    fn casts_round_trip_through_f32(values in prop::collection::vec(-1e4f32..1e4, 1..50)) {
        let dev = cpu();
        let x = Tensor::from_slice(&values, [values.len()], &dev).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let back = x.cast(dtype).unwrap().cast(DType::F32).unwrap().to_vec::<f32>().unwrap();
            let rel = if dtype == DType::F16 { 1e-3 } else { 8e-3 };
            for (v, w) in values.iter().zip(&back) {
                prop_assert!((v - w).abs() <= rel * v.abs() + 1e-3, "{v} -> {w} via {dtype}");
            }
        }
    }

    #[test]
    fn contiguous_layouts_never_overlap(dims in prop::collection::vec(0usize..6, 0..5)) {
        let layout = Layout::contiguous(dims.as_slice());
        prop_assert!(non_overlapping(&layout));
        if layout.numel() > 0 && dims.iter().any(|&d| d > 1) {
            let mut bad = layout.clone();
            let axis = dims.iter().position(|&d| d > 1).unwrap();
            bad.strides[axis] = 0;
            prop_assert!(!non_overlapping(&bad));
        }
    }
}
