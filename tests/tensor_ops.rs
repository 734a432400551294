//! The Tensor API on the CPU device: views, broadcasting and composite ops give the values
//! a user expects (the conformance kit covers each device op in depth).

use std::sync::Arc;

use manychips::{CpuDevice, DType, DeviceRef, Tensor};

fn cpu() -> DeviceRef {
    Arc::new(CpuDevice::new().expect("the CPU device always exists"))
}

fn t(data: &[f32], shape: &[usize], dev: &DeviceRef) -> Tensor {
    Tensor::from_slice(data, shape, dev).unwrap()
}

#[test]
fn broadcasting_arithmetic_and_scalars() {
    let dev = cpu();
    let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], &dev);
    let row = t(&[10.0, 20.0, 30.0], &[3], &dev);
    let col = t(&[100.0, 200.0], &[2, 1], &dev);
    let y = ((&a + &row).unwrap() + &col).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![111.0, 122.0, 133.0, 214.0, 225.0, 236.0]);
    let z = ((&a * 2.0).unwrap() - 1.0).unwrap();
    assert_eq!(z.to_vec::<f32>().unwrap(), vec![1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
    let neg = (-&a).unwrap().relu().unwrap();
    assert_eq!(neg.to_vec::<f32>().unwrap(), vec![0.0; 6]);
    let mask = a.gt(&t(&[3.0], &[1], &dev)).unwrap();
    assert_eq!(mask.to_vec::<u8>().unwrap(), vec![0, 0, 0, 1, 1, 1]);
    let picked = mask.where_cond(&a, &row).unwrap();
    assert_eq!(picked.to_vec::<f32>().unwrap(), vec![10.0, 20.0, 30.0, 4.0, 5.0, 6.0]);
}

#[test]
fn views_share_the_buffer_and_copy_only_when_asked() {
    let dev = cpu();
    let a = t(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[2, 3], &dev);
    let at = a.t().unwrap();
    assert!(at.shares_buffer(&a) && !at.is_contiguous());
    assert_eq!(at.to_vec::<f32>().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let col = a.narrow(1, 1, 2).unwrap();
    assert_eq!(col.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 4.0, 5.0]);
    assert_eq!(col.reshape([4]).unwrap().to_vec::<f32>().unwrap(), vec![1.0, 2.0, 4.0, 5.0]);
    let row = a.narrow(0, 1, 1).unwrap().reshape([3]).unwrap();
    assert!(row.shares_buffer(&a), "reshaping a contiguous slice is a view");
    assert_eq!(row.to_vec::<f32>().unwrap(), vec![3.0, 4.0, 5.0]);
    let p = a.unsqueeze(0).unwrap().permute([2, 0, 1]).unwrap();
    assert_eq!(p.dims(), &[3, 1, 2]);
    assert_eq!(p.squeeze(1).unwrap().to_vec::<f32>().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn matmul_with_transposes_and_broadcast_batches() {
    let dev = cpu();
    let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], &dev);
    let b = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2], &dev);
    assert_eq!(a.matmul(&b).unwrap().to_vec::<f32>().unwrap(), vec![4.0, 5.0, 10.0, 11.0]);
    // (b^T a^T)^T == a b, with both transposes as views.
    let via_t = b.t().unwrap().matmul(&a.t().unwrap()).unwrap().t().unwrap();
    assert_eq!(via_t.to_vec::<f32>().unwrap(), vec![4.0, 5.0, 10.0, 11.0]);
    // A batch of 2 lhs against one shared rhs.
    let batch = Tensor::cat(&[&a.unsqueeze(0).unwrap(), &a.unsqueeze(0).unwrap()], 0).unwrap();
    let out = batch.matmul(&b).unwrap();
    assert_eq!(out.dims(), &[2, 2, 2]);
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![4.0, 5.0, 10.0, 11.0, 4.0, 5.0, 10.0, 11.0]);
}

#[test]
fn reductions_softmax_and_argmax() {
    let dev = cpu();
    let a = t(&[1.0, 5.0, 3.0, 4.0, 2.0, 6.0], &[2, 3], &dev);
    assert_eq!(a.sum(1).unwrap().to_vec::<f32>().unwrap(), vec![9.0, 12.0]);
    assert_eq!(a.sum_keepdim(0).unwrap().dims(), &[1, 3]);
    assert_eq!(a.mean(0).unwrap().to_vec::<f32>().unwrap(), vec![2.5, 3.5, 4.5]);
    assert_eq!(a.max(1).unwrap().to_vec::<f32>().unwrap(), vec![5.0, 6.0]);
    assert_eq!(a.argmax(1).unwrap().to_vec::<u32>().unwrap(), vec![1, 2]);
    assert_eq!(a.sum_all().unwrap().to_scalar::<f32>().unwrap(), 21.0);
    let p = a.softmax(1).unwrap().to_vec::<f32>().unwrap();
    let row: f32 = p[..3].iter().sum();
    assert!((row - 1.0).abs() < 1e-6);
    let lp = a.log_softmax(1).unwrap().exp().unwrap().to_vec::<f32>().unwrap();
    for (x, y) in p.iter().zip(&lp) {
        assert!((x - y).abs() < 1e-6);
    }
}

#[test]
fn index_ops_select_gather_and_accumulate() {
    let dev = cpu();
    let table = t(&[0.0, 1.0, 10.0, 11.0, 20.0, 21.0], &[3, 2], &dev);
    let idx = Tensor::from_slice(&[2u32, 0, 2], [3], &dev).unwrap();
    let rows = table.index_select(0, &idx).unwrap();
    assert_eq!(rows.to_vec::<f32>().unwrap(), vec![20.0, 21.0, 0.0, 1.0, 20.0, 21.0]);
    let grad = Tensor::zeros([3, 2], DType::F32, &dev).unwrap();
    let acc = grad.index_add(0, &idx, &Tensor::ones([3, 2], DType::F32, &dev).unwrap()).unwrap();
    assert_eq!(acc.to_vec::<f32>().unwrap(), vec![1.0, 1.0, 0.0, 0.0, 2.0, 2.0]);
    let pick = Tensor::from_slice(&[1u32, 0, 1], [3, 1], &dev).unwrap();
    let g = table.gather(1, &pick).unwrap();
    assert_eq!(g.to_vec::<f32>().unwrap(), vec![1.0, 10.0, 21.0]);
    let back = Tensor::zeros([3, 2], DType::F32, &dev).unwrap().scatter_add(1, &pick, &g).unwrap();
    assert_eq!(back.to_vec::<f32>().unwrap(), vec![0.0, 1.0, 10.0, 0.0, 0.0, 21.0]);
}

#[test]
fn seeded_random_tensors_repeat_and_casts_round() {
    let dev = cpu();
    let a = Tensor::randn(0.0, 1.0, [1000], DType::F32, 7, &dev).unwrap().to_vec::<f32>().unwrap();
    let b = Tensor::randn(0.0, 1.0, [1000], DType::F32, 7, &dev).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(a, b);
    let mean = a.iter().sum::<f32>() / 1000.0;
    assert!(mean.abs() < 0.15, "mean {mean}");
    let u = Tensor::rand(2.0, 3.0, [100], DType::BF16, 1, &dev).unwrap().to_f64_vec().unwrap();
    assert!(u.iter().all(|v| (2.0..=3.0).contains(v)));
    let x = t(&[1.5, -2.7, 300.0], &[3], &dev);
    assert_eq!(x.cast(DType::U8).unwrap().to_vec::<u8>().unwrap(), vec![1, 0, 255]);
    assert_eq!(x.cast(DType::BF16).unwrap().to_f64_vec().unwrap(), vec![1.5, -2.703125, 300.0]);
}

#[test]
fn fused_programs_broadcast_like_numpy_and_refuse_misuse() {
    use manychips::{BinaryOp, ErrorKind, Instr, UnaryOp};
    let dev = cpu();
    let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0], [3, 1], &dev).unwrap();
    let b =
        Tensor::from_slice(&[0.5f32, -1.0, 2.0, 4.0], [4], &dev).unwrap().cast(DType::F16).unwrap();
    // exp(a · b) + 1, with a [3, 1] and b [4] broadcast to [3, 4], b in f16, the result bf16.
    let program = [
        Instr::Input(0),
        Instr::Input(1),
        Instr::Binary(BinaryOp::Mul, 0, 1),
        Instr::Unary(UnaryOp::Exp, 2),
        Instr::Affine(3, 1.0, 1.0),
    ];
    let y = Tensor::fused(&[&a, &b], &program, DType::BF16).unwrap();
    assert_eq!(y.dims(), &[3, 4]);
    assert_eq!(y.dtype(), DType::BF16);
    let got = y.to_f64_vec().unwrap();
    for (i, &g) in got.iter().enumerate() {
        let want = ((i / 4 + 1) as f64 * [0.5, -1.0, 2.0, 4.0][i % 4]).exp() + 1.0;
        assert!((g - want).abs() <= want * 8e-3, "{i}: {g} vs {want}");
    }
    // The same as the unfused ops, exactly, in f32.
    let bf = b.cast(DType::F32).unwrap();
    let unfused = a.mul(&bf).unwrap().exp().unwrap().affine(1.0, 1.0).unwrap();
    let fused = Tensor::fused(&[&a, &bf], &program, DType::F32).unwrap();
    assert_eq!(fused.to_vec::<f32>().unwrap(), unfused.to_vec::<f32>().unwrap());

    let c = Tensor::zeros([2, 1], DType::F32, &dev).unwrap();
    let err = Tensor::fused(&[&a, &c], &program, DType::F32).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Shape, "{err}");
    let err = Tensor::fused(&[], &program, DType::F32).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let err = Tensor::fused(&[&a], &program, DType::F32).unwrap_err();
    assert!(err.to_string().contains("reads input 1 of 1"), "{err}");
    let other = cpu();
    let d = Tensor::zeros([3, 1], DType::F32, &other).unwrap();
    let err = Tensor::fused(&[&a, &d], &program, DType::F32).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeviceMismatch, "{err}");
}
