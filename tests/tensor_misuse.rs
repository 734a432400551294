//! Every user mistake the Tensor API can see is an `Err` of the right kind whose message
//! names the op, the shapes, the dtypes and the device; none panics.

use std::sync::Arc;

mod common;

use common::Posing;
use manychips::{CpuDevice, DType, DeviceRef, ErrorKind, Op, Result, Tensor, f16};

fn cpu() -> DeviceRef {
    Arc::new(CpuDevice::new().expect("the CPU device always exists"))
}

/// Asserts the error kind and that the message mentions every fragment.
fn expect_err<T: std::fmt::Debug>(result: Result<T>, kind: ErrorKind, fragments: &[&str]) {
    let err = result.expect_err("misuse must be an Err");
    let text = err.to_string();
    assert_eq!(err.kind(), kind, "wrong kind for: {text}");
    for fragment in fragments {
        assert!(text.contains(fragment), "{text:?} should mention {fragment:?}");
    }
}

fn f32s(shape: &[usize], device: &DeviceRef) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
    Tensor::from_slice(&data, shape, device).unwrap()
}

#[test]
fn matmul_inner_dims_must_agree() {
    let dev = cpu();
    let (a, b) = (f32s(&[2, 3], &dev), f32s(&[4, 5], &dev));
    expect_err(
        a.matmul(&b),
        ErrorKind::Shape,
        &["matmul", "f32[2, 3]", "f32[4, 5]", "cpu:0", "3 vs 4"],
    );
    // A vector is a row on the left (numpy's rule), so its length must meet b's rows.
    expect_err(f32s(&[3], &dev).matmul(&b), ErrorKind::Shape, &["f32[3]", "3 vs 4"]);
    expect_err(b.matmul(&f32s(&[4], &dev)), ErrorKind::Shape, &["f32[4]", "5 vs 4"]);
    let scalar = f32s(&[], &dev);
    expect_err(scalar.matmul(&b), ErrorKind::Shape, &["matmul", "at least 1 dim"]);
    let batched = f32s(&[2, 3, 4], &dev);
    expect_err(batched.matmul(&f32s(&[5, 4, 2], &dev)), ErrorKind::Shape, &["batch dims"]);
}

#[test]
fn incompatible_broadcast_is_a_shape_error() {
    let dev = cpu();
    let (a, b) = (f32s(&[2, 3], &dev), f32s(&[4], &dev));
    expect_err(
        a.add(&b),
        ErrorKind::Shape,
        &["add", "f32[2, 3]", "f32[4]", "do not broadcast", "cpu:0"],
    );
    expect_err(&a * &b, ErrorKind::Shape, &["mul"]);
    expect_err(a.lt(&b), ErrorKind::Shape, &["lt"]);
    expect_err(a.broadcast_as([3, 3]), ErrorKind::Shape, &["broadcast_as", "[3, 3]"]);
}

#[test]
fn mixed_dtypes_are_refused() {
    let dev = cpu();
    let a = f32s(&[2], &dev);
    let b = a.cast(DType::F16).unwrap();
    expect_err(a.add(&b), ErrorKind::DType, &["add", "f32[2]", "f16[2]", "cast one first"]);
    expect_err(a.to_vec::<u32>(), ErrorKind::DType, &["to_vec", "u32", "f32[2]"]);
    let mask = a.gt(&a).unwrap();
    expect_err(a.where_cond(&a, &b), ErrorKind::DType, &["where"]);
    expect_err(mask.where_cond(&a, &b), ErrorKind::DType, &["where", "f16"]);
}

#[test]
fn integers_take_only_integer_arithmetic() {
    let dev = cpu();
    let idx = Tensor::from_slice(&[1u32, 2, 3], [3], &dev).unwrap();
    expect_err(idx.exp(), ErrorKind::UnsupportedDType, &["exp", "u32", "cpu:0"]);
    expect_err(idx.mean(0), ErrorKind::UnsupportedDType, &["mean", "u32", "sum, max, min"]);
    expect_err(idx.pow(&idx), ErrorKind::UnsupportedDType, &["pow", "u32", "f32, f16 or bf16"]);
    expect_err(idx.neg(), ErrorKind::UnsupportedDType, &["neg", "u32", "signed"]);
    expect_err(idx.matmul(&idx), ErrorKind::UnsupportedDType, &["matmul", "u32"]);
    expect_err(idx.softmax(0), ErrorKind::UnsupportedDType, &["softmax", "u32"]);
    let signed = Tensor::from_slice(&[-7i32, 7], [2], &dev).unwrap();
    expect_err(signed.add(&idx), ErrorKind::DType, &["add", "i32", "u32", "cast one first"]);
    expect_err(signed.sqrt(), ErrorKind::UnsupportedDType, &["sqrt", "i32"]);
    // What they do take: the contract's integer arithmetic, comparisons, casts and moves.
    assert_eq!(idx.add(&idx).unwrap().to_vec::<u32>().unwrap(), vec![2, 4, 6]);
    assert_eq!(idx.sum(0).unwrap().to_vec::<u32>().unwrap(), vec![6]);
    assert_eq!(signed.neg().unwrap().to_vec::<i32>().unwrap(), vec![7, -7]);
    assert_eq!(idx.eq(&idx).unwrap().to_vec::<u8>().unwrap(), vec![1, 1, 1]);
    assert_eq!(idx.cast(DType::F32).unwrap().to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
}

#[test]
fn tensors_on_different_devices_do_not_mix() {
    let (dev_a, dev_b) = (cpu(), cpu());
    let (a, b) = (f32s(&[2, 2], &dev_a), f32s(&[2, 2], &dev_b));
    expect_err(a.add(&b), ErrorKind::DeviceMismatch, &["add", "different devices", "to_device"]);
    expect_err(a.matmul(&b), ErrorKind::DeviceMismatch, &["matmul"]);
    expect_err(Tensor::cat(&[&a, &b], 0), ErrorKind::DeviceMismatch, &["cat"]);
    // A raw buffer of one device handed to the other is refused by the device itself.
    let foreign = a.view();
    let mut out = [0u8; 4];
    expect_err(dev_b.read(foreign.buffer, 0, &mut out), ErrorKind::DeviceMismatch, &[]);
    let op = Op::Unary { op: manychips::UnaryOp::Exp, input: foreign.clone(), out: b.view() };
    expect_err(dev_b.run(&op), ErrorKind::DeviceMismatch, &[]);
    // Moving one across makes it work.
    let moved = b.to_device(&dev_a).unwrap();
    assert_eq!(a.add(&moved).unwrap().to_vec::<f32>().unwrap(), vec![0.0, 2.0, 4.0, 6.0]);
}

#[test]
fn out_of_range_indices_are_caught_not_undefined() {
    let dev = cpu();
    let table = f32s(&[3, 2], &dev);
    let bad = Tensor::from_slice(&[0u32, 5, 1], [3], &dev).unwrap();
    expect_err(
        table.index_select(0, &bad),
        ErrorKind::IndexOutOfRange,
        &["index_select", "index 5", "axis 0 of length 3", "f32[3, 2]"],
    );
    let bad2 = Tensor::from_slice(&[0u32, 2], [1, 2], &dev).unwrap();
    expect_err(table.gather(1, &bad2), ErrorKind::IndexOutOfRange, &["gather", "index 2"]);
    let src = f32s(&[3, 2], &dev);
    expect_err(table.index_add(0, &bad, &src), ErrorKind::IndexOutOfRange, &["index_add"]);
    let floats = f32s(&[3], &dev);
    expect_err(table.index_select(0, &floats), ErrorKind::DType, &["indices must be u32"]);
    expect_err(table.narrow(1, 1, 2), ErrorKind::IndexOutOfRange, &["narrow", "1..3", "length 2"]);
    expect_err(table.sum(2), ErrorKind::IndexOutOfRange, &["sum", "axis 2", "rank 2"]);
    expect_err(table.softmax(5), ErrorKind::IndexOutOfRange, &["softmax", "axis 5"]);
    expect_err(table.transpose(0, 2), ErrorKind::IndexOutOfRange, &["transpose"]);
    expect_err(table.permute([0, 0]), ErrorKind::InvalidArgument, &["permute"]);
    // The device stays usable after each refusal.
    let good = Tensor::from_slice(&[2u32, 0], [2], &dev).unwrap();
    let picked = table.index_select(0, &good).unwrap();
    assert_eq!(picked.to_vec::<f32>().unwrap(), vec![4.0, 5.0, 0.0, 1.0]);
}

#[test]
fn reshape_must_keep_the_element_count() {
    let dev = cpu();
    let a = f32s(&[2, 3], &dev);
    expect_err(
        a.reshape([4, 2]),
        ErrorKind::Shape,
        &["reshape", "f32[2, 3]", "6 elements", "[4, 2]"],
    );
    let data = [1.0f32, 2.0, 3.0];
    expect_err(
        Tensor::from_slice(&data, [2, 2], &dev),
        ErrorKind::Shape,
        &["from_slice", "3 elements"],
    );
    expect_err(a.to_scalar::<f32>(), ErrorKind::Shape, &["to_scalar"]);
    let huge = [usize::MAX / 2, 3];
    expect_err(
        Tensor::zeros(huge, DType::F32, &dev),
        ErrorKind::InvalidArgument,
        &["full", "address space"],
    );
    expect_err(a.reshape(huge), ErrorKind::Shape, &["reshape"]);
}

#[test]
fn zero_size_dims_are_values_not_panics() {
    let dev = cpu();
    let empty = Tensor::zeros([0, 3], DType::F32, &dev).unwrap();
    assert_eq!(empty.to_vec::<f32>().unwrap(), Vec::<f32>::new());
    let sum = (&empty + &Tensor::ones([3], DType::F32, &dev).unwrap()).unwrap();
    assert_eq!(sum.dims(), &[0, 3]);
    assert_eq!(empty.sum(0).unwrap().to_vec::<f32>().unwrap(), vec![0.0; 3]);
    assert_eq!(empty.sum(1).unwrap().dims(), &[0]);
    assert_eq!(empty.softmax(1).unwrap().numel(), 0);
    let (a, b) = (f32s(&[2, 0], &dev), f32s(&[0, 3], &dev));
    assert_eq!(a.matmul(&b).unwrap().to_vec::<f32>().unwrap(), vec![0.0; 6]);
    assert_eq!(Tensor::cat(&[&empty, &f32s(&[1, 3], &dev)], 0).unwrap().dims(), &[1, 3]);
    assert_eq!(empty.t().unwrap().contiguous().unwrap().dims(), &[3, 0]);
    expect_err(empty.max(0), ErrorKind::InvalidArgument, &["max", "empty"]);
    let none = Tensor::from_slice::<u32>(&[], [0], &dev).unwrap();
    assert_eq!(f32s(&[0, 2], &dev).index_select(0, &none).unwrap().dims(), &[0, 2]);
}

#[test]
fn a_dtype_the_device_lacks_is_refused() {
    // Like a chip without half-precision units.
    let inner = cpu();
    let mut info = inner.info().clone();
    info.dtypes = vec![DType::F32];
    info.name = "f32-only".into();
    let dev: DeviceRef = Arc::new(Posing::new(info, inner));
    let halves = [f16::from_f32(1.0)];
    expect_err(
        Tensor::from_slice(&halves, [1], &dev),
        ErrorKind::UnsupportedDType,
        &["from_slice", "dtype f16 is not supported", "cpu:0", "[\"f32\"]"],
    );
    let a = f32s(&[2, 2], &dev);
    expect_err(a.cast(DType::BF16), ErrorKind::UnsupportedDType, &["cast", "bf16"]);
    expect_err(Tensor::zeros([2], DType::F16, &dev), ErrorKind::UnsupportedDType, &["full"]);
    assert_eq!(a.exp().unwrap().numel(), 4);
}

#[test]
fn huge_random_tensors_are_an_error_not_an_abort() {
    // Each used to fill a host Vec of the whole size first: 8 TB, or a capacity overflow.
    let device: DeviceRef = Arc::new(CpuDevice::with_threads(1).unwrap());
    let checks = [
        Tensor::randn(0.0, 1.0, [1_000_000, 1_000_000], DType::F32, 1, &device),
        Tensor::rand(0.0, 1.0, [usize::MAX, 2], DType::F32, 1, &device),
        Tensor::arange(usize::MAX / 2, DType::F32, &device),
    ];
    for result in checks {
        let e = result.unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::OutOfMemory | ErrorKind::InvalidArgument), "{e}");
    }
    for bad in [
        Tensor::randn(0.0, f64::NAN, [4], DType::F32, 1, &device),
        Tensor::randn(0.0, -1.0, [4], DType::F32, 1, &device),
        Tensor::rand(1.0, 0.0, [4], DType::F32, 1, &device),
        Tensor::rand(0.0, f64::INFINITY, [4], DType::F32, 1, &device),
    ] {
        assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
    // The same numbers for a seed as one host pass over the generator (chunk boundaries
    // included), so seeded initial weights did not change.
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let want: Vec<f32> = (0..70_000).map(|_| (-1.0 + 2.0 * rng.random::<f64>()) as f32).collect();
    let big = Tensor::rand(-1.0, 1.0, [70_000], DType::F32, 5, &device).unwrap();
    assert_eq!(big.to_vec::<f32>().unwrap(), want);
    let a = Tensor::arange(70_000, DType::F32, &device).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(a[69_999], 69_999.0);
}

#[test]
fn hostile_views_are_refused_on_every_device_without_overflow() {
    // Strides, offsets and dims a caller of `Device::run` controls: each must be an `Err`
    // (now, or at the next synchronize), never an arithmetic overflow (CI runs this test
    // in the debug profile too, where overflow panics).
    use manychips::{Layout, UnaryOp, View};
    let mut devices: Vec<DeviceRef> = vec![cpu()];
    devices.extend(manychips::devices().unwrap_or_default().into_iter().skip(1));
    let labels: Vec<String> = devices.iter().map(|d| d.info().label()).collect();
    println!("devices: {labels:?}");
    let huge = usize::MAX / 2;
    let layouts = [
        (vec![3, 2], vec![huge, 1], 0),
        (vec![2, 2], vec![1, 1], usize::MAX - 1),
        (vec![huge, 4], vec![4, 1], 0),
        (vec![usize::MAX, usize::MAX], vec![usize::MAX, 1], 0),
        (vec![4, 4], vec![usize::MAX, usize::MAX], usize::MAX),
    ];
    for device in &devices {
        let a = device.alloc(64).unwrap();
        let b = device.alloc(64).unwrap();
        let good = View::new(a, Layout::contiguous([4, 4]), DType::F32);
        for (dims, strides, offset) in &layouts {
            let mut layout = Layout::contiguous(dims.clone());
            layout.strides = strides.clone();
            layout.offset = *offset;
            let bad = View::new(b, layout, DType::F32);
            let ops = [
                Op::Fill { out: bad.clone(), value: 1.0 },
                Op::Copy { input: bad.clone(), out: good.clone() },
                Op::Copy { input: good.clone(), out: bad.clone() },
                Op::Unary { op: UnaryOp::Exp, input: bad.clone(), out: good.clone() },
                Op::Matmul { lhs: bad.clone(), rhs: good.clone(), out: good.clone() },
                Op::Reduce {
                    op: manychips::ReduceOp::Sum,
                    input: bad.clone(),
                    out: good.clone(),
                    axis: 1,
                },
            ];
            for op in ops {
                let ran = device.run(&op).and_then(|()| device.synchronize());
                assert!(ran.is_err(), "{}: {op:?} was accepted", device.info().label());
            }
        }
        device.synchronize().ok();
        device.free(a).unwrap();
        device.free(b).unwrap();
    }
}

#[test]
fn indices_from_the_host_are_checked_without_waiting_for_the_device() {
    let inner = cpu();
    let counting = Arc::new(Posing::new(inner.info().clone(), inner));
    let dev: DeviceRef = counting.clone();
    let reads = || counting.reads.load(std::sync::atomic::Ordering::SeqCst);
    let table = f32s(&[3, 2], &dev);
    let rows = Tensor::from_slice(&[2u32, 0, 2], [3], &dev).unwrap();
    let cols = Tensor::from_slice(&[1u32, 0, 1], [3, 1], &dev).unwrap();
    let picked = table.index_select(0, &rows).unwrap();
    let gathered = table.gather(1, &cols).unwrap();
    let added = table.index_add(0, &rows, &picked).unwrap();
    let scattered =
        Tensor::zeros([3, 2], DType::F32, &dev).unwrap().scatter_add(1, &cols, &gathered).unwrap();
    // A view of host indices keeps what the host knew about them.
    let view = rows.narrow(0, 1, 2).unwrap();
    let narrowed = table.index_select(0, &view).unwrap();
    assert_eq!(reads(), 0, "host-made indices were read back");
    assert_eq!(picked.to_vec::<f32>().unwrap(), vec![4.0, 5.0, 0.0, 1.0, 4.0, 5.0]);
    assert_eq!(gathered.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 5.0]);
    assert_eq!(added.to_vec::<f32>().unwrap(), vec![0.0, 2.0, 2.0, 3.0, 12.0, 15.0]);
    assert_eq!(scattered.to_vec::<f32>().unwrap(), vec![0.0, 1.0, 2.0, 0.0, 0.0, 5.0]);
    assert_eq!(narrowed.to_vec::<f32>().unwrap(), vec![0.0, 1.0, 4.0, 5.0]);

    // Indices computed on the device are still read back and checked at the call.
    let before = reads();
    let computed = table.argmax(1).unwrap(); // [1, 1, 1]
    assert_eq!(table.index_select(0, &computed).unwrap().dims(), &[3, 2]);
    assert_eq!(reads(), before + 1, "device-made indices must be checked");
    let too_big = computed.cast(DType::F32).unwrap().affine(1.0, 5.0).unwrap();
    let too_big = too_big.cast(DType::U32).unwrap();
    expect_err(table.index_select(0, &too_big), ErrorKind::IndexOutOfRange, &["index 6"]);
}

#[test]
fn attention_needs_one_shape_one_float_dtype_and_a_finite_scale() {
    let dev = cpu();
    let (q, k) = (f32s(&[2, 3, 4], &dev), f32s(&[2, 3, 5], &dev));
    expect_err(
        q.attention(&k, &q, 0.5, true),
        ErrorKind::Shape,
        &["attention", "f32[2, 3, 4]", "f32[2, 3, 5]", "cpu:0"],
    );
    let row = f32s(&[4], &dev);
    expect_err(row.attention(&row, &row, 0.5, false), ErrorKind::Shape, &["attention", "f32[4]"]);
    expect_err(q.attention(&q, &q, f64::NAN, false), ErrorKind::InvalidArgument, &["scale"]);
    let half = q.cast(DType::F16).unwrap();
    expect_err(q.attention(&half, &q, 0.5, true), ErrorKind::DType, &["attention", "f16"]);
    let ids = Tensor::from_slice(&[1u32, 2, 3, 4], [2, 2], &dev).unwrap();
    expect_err(ids.attention(&ids, &ids, 0.5, true), ErrorKind::UnsupportedDType, &["attention"]);
    let g = f32s(&[2, 3, 5], &dev);
    expect_err(
        q.attention_backward(&q, &q, &g, 0.5, true),
        ErrorKind::Shape,
        &["attention_backward", "f32[2, 3, 5]"],
    );
}
