//! numpy/PyTorch conventions of the Tensor API (issue 18): negative axes, several axes at
//! once, `reshape` with `-1`, squeeze and unsqueeze of several dims, two-way broadcasting,
//! the index ops' axis-first order with N-D indices, 1-D matmul, and the 0-d scalar.

use std::sync::Arc;

use manychips::{CpuDevice, DType, DeviceRef, ErrorKind, Shape, Tensor, broadcast_shapes};

fn cpu() -> DeviceRef {
    Arc::new(CpuDevice::new().expect("the CPU device always exists"))
}

/// `0, 1, 2, ..` as f32 of `shape`.
fn iota(shape: &[usize], dev: &DeviceRef) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
    Tensor::from_slice(&data, shape, dev).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

fn expect_err<T: std::fmt::Debug>(r: manychips::Result<T>, kind: ErrorKind, words: &[&str]) {
    let e = r.expect_err("should be refused");
    assert_eq!(e.kind(), kind, "{e}");
    let text = e.to_string();
    for w in words {
        assert!(text.contains(w), "{text:?} should mention {w:?}");
    }
}

#[test]
fn negative_axes_count_from_the_back() {
    let dev = cpu();
    let x = iota(&[2, 3, 4], &dev);
    assert_eq!(values(&x.sum(-1).unwrap()), values(&x.sum(2).unwrap()));
    assert_eq!(values(&x.sum(-3).unwrap()), values(&x.sum(0usize).unwrap()));
    assert_eq!(x.transpose(-1, -3).unwrap().dims(), &[4, 3, 2]);
    assert_eq!(values(&x.softmax(-1).unwrap()), values(&x.softmax(2).unwrap()));
    assert_eq!(values(&x.narrow(-2, 1, 2).unwrap()), values(&x.narrow(1, 1, 2).unwrap()));
    assert_eq!(Tensor::cat(&[&x, &x], -1).unwrap().dims(), &[2, 3, 8]);
    assert_eq!(x.permute([-1, 0, 1]).unwrap().dims(), &[4, 2, 3]);
    assert_eq!(x.argmax(-1).unwrap().to_vec::<u32>().unwrap(), vec![3; 6]);
    // unsqueeze counts positions of its result: -1 appends.
    assert_eq!(x.unsqueeze(-1).unwrap().dims(), &[2, 3, 4, 1]);
    assert_eq!(x.unsqueeze(-4).unwrap().dims(), &[1, 2, 3, 4]);
    expect_err(x.sum(-4), ErrorKind::IndexOutOfRange, &["sum", "axis -4", "[2, 3, 4]"]);
    expect_err(x.transpose(0, 3), ErrorKind::IndexOutOfRange, &["transpose", "axis 3"]);
    expect_err(x.unsqueeze(5), ErrorKind::IndexOutOfRange, &["unsqueeze", "axis 5"]);
}

#[test]
fn reductions_over_several_axes_and_all() {
    let dev = cpu();
    let x = iota(&[2, 3, 4], &dev);
    // Sum over the first and last axes: for each middle index j, Σ_i Σ_k (12i + 4j + k).
    let want: Vec<f32> = (0..3)
        .map(|j| (0..2).flat_map(|i| (0..4).map(move |k| (12 * i + 4 * j + k) as f32)).sum())
        .collect();
    assert_eq!(values(&x.sum([0, 2]).unwrap()), want);
    assert_eq!(values(&x.sum([-1, 0]).unwrap()), want);
    assert_eq!(x.sum_keepdim([0, 2]).unwrap().dims(), &[1, 3, 1]);
    let means: Vec<f32> = want.iter().map(|s| s / 8.0).collect();
    assert_eq!(values(&x.mean([0, 2]).unwrap()), means);
    assert_eq!(values(&x.max([0, 1]).unwrap()), vec![20.0, 21.0, 22.0, 23.0]);
    assert_eq!(values(&x.min_keepdim([1, 2]).unwrap()), vec![0.0, 12.0]);
    assert_eq!(x.min_keepdim([1, 2]).unwrap().dims(), &[2, 1, 1]);
    // No axes: the tensor itself, as numpy's axis=().
    assert_eq!(x.sum(Vec::<usize>::new()).unwrap().dims(), &[2, 3, 4]);
    expect_err(x.sum([0, -3]), ErrorKind::InvalidArgument, &["sum", "axis 0 named twice"]);
    for all in [x.max_all().unwrap(), x.min_all().unwrap(), x.sum_all().unwrap()] {
        assert_eq!(all.dims(), &[] as &[usize], "a 0-d scalar");
    }
    assert_eq!(values(&x.max_all().unwrap()), vec![23.0]);
    assert_eq!(values(&x.min_all().unwrap()), vec![0.0]);
}

#[test]
fn argmin_and_argmax_keep_dims_and_take_the_first_tie() {
    let dev = cpu();
    let x = Tensor::from_slice(&[3.0f32, 1.0, 1.0, 5.0, 5.0, 0.0], [2, 3], &dev).unwrap();
    assert_eq!(x.argmin(-1).unwrap().to_vec::<u32>().unwrap(), vec![1, 2]);
    assert_eq!(x.argmax(1).unwrap().to_vec::<u32>().unwrap(), vec![0, 0]);
    let kept = x.argmin_keepdim(0).unwrap();
    assert_eq!(kept.dims(), &[1, 3]);
    assert_eq!(kept.to_vec::<u32>().unwrap(), vec![0, 0, 1]);
    assert_eq!(x.argmax_keepdim(-1).unwrap().dims(), &[2, 1]);
}

#[test]
fn reshape_infers_one_dim() {
    let dev = cpu();
    let x = iota(&[2, 3, 4], &dev);
    assert_eq!(x.reshape([-1]).unwrap().dims(), &[24]);
    assert_eq!(x.reshape([4, -1]).unwrap().dims(), &[4, 6]);
    assert_eq!(x.reshape([-1, 2, 3]).unwrap().dims(), &[4, 2, 3]);
    assert_eq!(values(&x.reshape([6, -1]).unwrap()), values(&x));
    let dims: Vec<usize> = vec![3, 8];
    assert_eq!(x.reshape(&dims).unwrap().dims(), &[3, 8]);
    expect_err(x.reshape([-1, -1]), ErrorKind::Shape, &["reshape", "more than one -1"]);
    expect_err(x.reshape([5, -1]), ErrorKind::Shape, &["24 elements do not divide"]);
    expect_err(x.reshape([2, -2]), ErrorKind::Shape, &["-2 is not a dim"]);
    expect_err(x.reshape([5, 5]), ErrorKind::Shape, &["reshape", "25 elements"]);
    let empty = iota(&[0, 3], &dev);
    expect_err(empty.reshape([0, -1]), ErrorKind::Shape, &["do not divide"]);
}

#[test]
fn squeeze_and_unsqueeze_several_dims() {
    let dev = cpu();
    let x = iota(&[1, 3, 1, 2], &dev);
    assert_eq!(x.squeeze_all().unwrap().dims(), &[3, 2]);
    assert_eq!(x.squeeze([0, 2]).unwrap().dims(), &[3, 2]);
    assert_eq!(x.squeeze(-2).unwrap().dims(), &[1, 3, 2]);
    assert_eq!(values(&x.squeeze_all().unwrap()), values(&x));
    expect_err(x.squeeze([0, 1]), ErrorKind::Shape, &["squeeze", "axis 1", "is not 1"]);
    let y = iota(&[3, 2], &dev);
    assert_eq!(y.unsqueeze([0, 2]).unwrap().dims(), &[1, 3, 1, 2]);
    assert_eq!(y.unsqueeze([0, -1]).unwrap().dims(), &[1, 3, 2, 1]);
    expect_err(y.unsqueeze([1, 1]), ErrorKind::InvalidArgument, &["named twice"]);
    let s = iota(&[1], &dev).squeeze_all().unwrap();
    assert_eq!(s.dims(), &[] as &[usize]);
}

#[test]
fn broadcasting_both_ways() {
    let dev = cpu();
    let col = iota(&[3, 1], &dev);
    let row = iota(&[4], &dev);
    let both = Tensor::broadcast_tensors(&[&col, &row]).unwrap();
    assert_eq!(both[0].dims(), &[3, 4]);
    assert_eq!(both[1].dims(), &[3, 4]);
    assert_eq!(values(&both[0])[..4], [0.0; 4]);
    assert_eq!(values(&both[1])[4..8], [0.0, 1.0, 2.0, 3.0]);
    let shape = broadcast_shapes(&[&Shape::new(vec![5, 1, 4]), &Shape::new(vec![3, 1])]);
    assert_eq!(shape.unwrap().dims(), &[5, 3, 4]);
    assert_eq!(col.expand([2, -1, 5]).unwrap().dims(), &[2, 3, 5]);
    expect_err(col.expand([-1, 5, 2]), ErrorKind::Shape, &["expand", "[3, 1]"]);
    expect_err(col.expand([4, 5]), ErrorKind::Shape, &["does not expand"]);
    let bad = iota(&[2], &dev);
    expect_err(Tensor::broadcast_tensors(&[&col, &row, &bad]), ErrorKind::Shape, &["[4], [2]"]);
}

#[test]
fn index_ops_take_the_axis_first_and_nd_indices() {
    let dev = cpu();
    let table = iota(&[4, 3], &dev);
    let ids = Tensor::from_slice(&[3u32, 0, 1, 3], [2, 2], &dev).unwrap();
    let rows = table.index_select(0, &ids).unwrap();
    assert_eq!(rows.dims(), &[2, 2, 3]);
    assert_eq!(values(&rows)[..6], [9.0, 10.0, 11.0, 0.0, 1.0, 2.0]);
    let cols = table.index_select(-1, &Tensor::from_slice(&[2u32], [1, 1], &dev).unwrap());
    assert_eq!(cols.unwrap().dims(), &[4, 1, 1]);
    let picks = Tensor::from_slice(&[2u32, 0, 1, 1], [4, 1], &dev).unwrap();
    assert_eq!(values(&table.gather(-1, &picks).unwrap()), vec![2.0, 3.0, 7.0, 10.0]);
}

#[test]
fn matmul_takes_vectors_as_numpy_does() {
    let dev = cpu();
    let m = iota(&[2, 3], &dev);
    let v = Tensor::from_slice(&[1.0f32, 2.0, 3.0], [3], &dev).unwrap();
    let w = Tensor::from_slice(&[1.0f32, -1.0], [2], &dev).unwrap();
    let mv = m.matmul(&v).unwrap();
    assert_eq!(mv.dims(), &[2]);
    assert_eq!(values(&mv), vec![8.0, 26.0]);
    let vm = w.matmul(&m).unwrap();
    assert_eq!(vm.dims(), &[3]);
    assert_eq!(values(&vm), vec![-3.0, -3.0, -3.0]);
    let dot = v.matmul(&v).unwrap();
    assert_eq!(dot.dims(), &[] as &[usize]);
    assert_eq!(values(&dot), vec![14.0]);
    let batched = iota(&[4, 2, 3], &dev).matmul(&v).unwrap();
    assert_eq!(batched.dims(), &[4, 2]);
    expect_err(v.matmul(&w), ErrorKind::Shape, &["matmul", "inner dims differ"]);
    let s = v.sum_all().unwrap();
    expect_err(s.matmul(&v), ErrorKind::Shape, &["at least 1 dim"]);
    assert_eq!(DType::F32, dot.dtype());
}

#[test]
fn clamp_powf_and_masked_fill() {
    let dev = cpu();
    let x = Tensor::from_slice(&[-2.0f32, -0.5, 0.0, 0.5, 2.0], [5], &dev).unwrap();
    assert_eq!(values(&x.clamp(-1.0, 1.0).unwrap()), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
    assert_eq!(values(&x.clamp(0.0, f64::INFINITY).unwrap()), vec![0.0, 0.0, 0.0, 0.5, 2.0]);
    // lo above hi: hi everywhere, as in PyTorch.
    assert_eq!(values(&x.clamp(1.0, -1.0).unwrap()), vec![-1.0; 5]);
    assert_eq!(values(&x.powf(2.0).unwrap()), vec![4.0, 0.25, 0.0, 0.25, 4.0]);
    let mask = x.lt(&Tensor::zeros([1], DType::F32, &dev).unwrap()).unwrap();
    assert_eq!(values(&x.masked_fill(&mask, 9.0).unwrap()), vec![9.0, 9.0, 0.0, 0.5, 2.0]);
    let rows = iota(&[2, 3], &dev);
    let col = Tensor::from_slice(&[1u8, 0], [2, 1], &dev).unwrap();
    assert_eq!(
        values(&rows.masked_fill(&col, -1.0).unwrap()),
        vec![-1.0, -1.0, -1.0, 3.0, 4.0, 5.0]
    );
    let wide = Tensor::from_slice(&[1u8, 0, 1, 0], [4, 1, 1], &dev).unwrap();
    expect_err(
        rows.masked_fill(&wide, 0.0),
        ErrorKind::Shape,
        &["masked_fill", "does not broadcast"],
    );
    let ints = Tensor::from_slice(&[1u32, 2], [2], &dev).unwrap();
    expect_err(ints.clamp(0.0, 1.0), ErrorKind::UnsupportedDType, &["clamp", "u32"]);
}

#[test]
fn clamp_with_open_and_crossed_bounds() {
    let dev = cpu();
    let x = Tensor::from_slice(&[-2.0f32, 0.5, 2.0], [3], &dev).unwrap();
    let inf = f64::INFINITY;
    assert_eq!(values(&x.clamp(-inf, 1.0).unwrap()), vec![-2.0, 0.5, 1.0]);
    assert_eq!(values(&x.clamp(-inf, inf).unwrap()), vec![-2.0, 0.5, 2.0]);
    assert_eq!(values(&x.clamp(inf, 1.0).unwrap()), vec![1.0; 3]);
    assert_eq!(values(&x.clamp(0.0, -inf).unwrap()), vec![f32::NEG_INFINITY; 3]);
    expect_err(x.clamp(f64::NAN, 1.0), ErrorKind::InvalidArgument, &["clamp", "NaN"]);
}

/// Hostile axes and shapes are errors, never panics or wrapped arithmetic.
#[test]
fn extreme_axes_and_shapes_are_refused() {
    let dev = cpu();
    let x = iota(&[2, 3], &dev);
    assert!(x.sum(i64::MIN).is_err());
    assert!(x.sum([i64::MAX, 0]).is_err());
    assert!(x.unsqueeze(i64::MIN).is_err());
    assert!(x.unsqueeze(usize::MAX).is_err());
    assert!(x.transpose(isize::MIN, 0).is_err());
    assert!(x.permute([i64::MIN, 0]).is_err());
    assert!(x.reshape([i64::MAX, -1]).is_err());
    assert!(x.reshape([i64::MAX, i64::MAX]).is_err());
    assert!(x.reshape([usize::MAX, 2]).is_err());
    assert!(x.reshape([i64::MIN]).is_err());
    assert!(x.expand([i64::MIN, 3]).is_err());
    assert!(x.expand([-1, -1, -1]).is_err());
    assert!(x.squeeze([i64::MAX]).is_err());
    assert!(x.argmin(i32::MIN).is_err());
    assert!(x.index_select(i64::MIN, &Tensor::from_slice(&[0u32], [1], &dev).unwrap()).is_err());
}

#[test]
fn running_sums_and_products_along_any_axis() {
    let dev = cpu();
    for n in [0usize, 1, 2, 3, 5, 8, 13, 64, 100] {
        let data: Vec<f32> = (0..2 * n).map(|i| ((i * 7) % 5) as f32 - 1.5).collect();
        let x = Tensor::from_slice(&data, [2, n], &dev).unwrap();
        let sums = values(&x.cumsum(-1).unwrap());
        let prods = values(&x.narrow(1, 0, n.min(12)).unwrap().cumprod(1).unwrap());
        for row in 0..2 {
            let mut acc = 0.0f32;
            let mut prod = 1.0f32;
            for i in 0..n {
                acc += data[row * n + i];
                let got = sums[row * n + i];
                assert!((got - acc).abs() <= 1e-4 * acc.abs().max(1.0), "n {n}: {got} vs {acc}");
                if i < 12 {
                    prod *= data[row * n + i];
                    let m = n.min(12);
                    assert_eq!(prods[row * m + i], prod, "cumprod n {n} at {i}");
                }
            }
        }
    }
    let cols = iota(&[3, 2], &dev);
    assert_eq!(values(&cols.cumsum(0).unwrap()), vec![0.0, 1.0, 2.0, 4.0, 6.0, 9.0]);
    expect_err(cols.cumsum(2), ErrorKind::IndexOutOfRange, &["cumsum", "axis 2"]);
    let ints = Tensor::from_slice(&[1u32, 2, 3, 4], [4], &dev).unwrap();
    assert_eq!(ints.cumprod(0).unwrap().to_vec::<u32>().unwrap(), vec![1, 2, 6, 24]);
    let bytes = Tensor::from_slice(&[200u8, 100], [2], &dev).unwrap();
    assert_eq!(bytes.cumsum(0).unwrap().to_vec::<u8>().unwrap(), vec![200, 44], "u8 wraps");
}

#[test]
fn reshape_takes_one_integer_as_numpy_does() {
    let dev = cpu();
    let x = iota(&[2, 3], &dev);
    assert_eq!(x.reshape(-1).unwrap().dims(), &[6]);
    assert_eq!(x.reshape(6usize).unwrap().dims(), &[6]);
    expect_err(x.reshape(5), ErrorKind::Shape, &["reshape"]);
}

#[test]
fn integer_arithmetic_wraps_and_floors() {
    let dev = cpu();
    let i32s = |v: &[i32]| Tensor::from_slice(v, [v.len()], &dev).unwrap();
    let (a, b) = (i32s(&[7, -7, 7, -7, i32::MIN, i32::MAX, 5]), i32s(&[2, 2, -2, -2, -1, 1, 0]));
    let div = a.div(&b).unwrap().to_vec::<i32>().unwrap();
    assert_eq!(div, vec![3, -4, -4, 3, i32::MIN, i32::MAX, 0], "floor division, x // 0 = 0");
    let rem = a.remainder(&b).unwrap().to_vec::<i32>().unwrap();
    assert_eq!(rem, vec![1, 1, -1, -1, 0, 0, 0], "the divisor's sign");
    let wrapped = a.add(&b).unwrap().to_vec::<i32>().unwrap();
    assert_eq!(wrapped[4..6], [i32::MAX, i32::MIN], "MIN + -1 and MAX + 1 wrap");
    assert_eq!(a.abs().unwrap().to_vec::<i32>().unwrap()[4], i32::MIN, "abs(MIN) wraps");
    assert_eq!(i32s(&[i32::MAX, 1]).sum(0).unwrap().to_vec::<i32>().unwrap(), vec![i32::MIN]);

    let big = Tensor::from_slice(&[i64::MAX, 3], [2], &dev).unwrap();
    let two = Tensor::from_slice(&[2i64], [1], &dev).unwrap();
    assert_eq!(big.mul(&two).unwrap().to_vec::<i64>().unwrap(), vec![-2, 6]);
    let run = big.cumsum(0).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(run, vec![i64::MAX, i64::MIN + 2]);
    let bytes = Tensor::from_slice(&[200u8, 3], [2], &dev).unwrap();
    let sum = bytes.add(&Tensor::from_slice(&[100u8, 5], [2], &dev).unwrap()).unwrap();
    assert_eq!(sum.to_vec::<u8>().unwrap(), vec![44, 8]);

    // Exact past 2^24, where f32 would merge the two values.
    let wide = Tensor::from_slice(&[16_777_217u32, 16_777_216, 16_777_218], [3], &dev).unwrap();
    assert_eq!(wide.argmin(0).unwrap().to_vec::<u32>().unwrap(), vec![1]);
    assert_eq!(wide.max(0).unwrap().to_vec::<u32>().unwrap(), vec![16_777_218]);
    let lt = wide.lt(&Tensor::from_slice(&[16_777_218u32], [1], &dev).unwrap()).unwrap();
    assert_eq!(lt.to_vec::<u8>().unwrap(), vec![1, 1, 0]);

    let floats = Tensor::from_slice(&[-1.0f32, 5.5, 4.0], [3], &dev).unwrap();
    let by = Tensor::from_slice(&[3.0f32, -2.0, 0.0], [3], &dev).unwrap();
    let r = floats.remainder(&by).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(r[..2], [2.0, -0.5]);
    assert!(r[2].is_nan(), "x % 0.0 is NaN on floats");
}

#[test]
fn signed_indices_count_from_the_end() {
    let dev = cpu();
    let x = iota(&[3, 2], &dev);
    let back = Tensor::from_slice(&[-1i64, 0, -3], [3], &dev).unwrap();
    assert_eq!(values(&x.index_select(0, &back).unwrap()), vec![4.0, 5.0, 0.0, 1.0, 0.0, 1.0]);
    let cols = Tensor::from_slice(&[-1i32, 0, -2], [3, 1], &dev).unwrap();
    assert_eq!(values(&x.gather(1, &cols).unwrap()), vec![1.0, 2.0, 4.0]);
    let bad = Tensor::from_slice(&[0i32, -4], [2], &dev).unwrap();
    expect_err(x.index_select(0, &bad), ErrorKind::IndexOutOfRange, &["-4", "length 3"]);
    let floats = Tensor::from_slice(&[0.0f32], [1], &dev).unwrap();
    expect_err(x.index_select(0, &floats), ErrorKind::DType, &["u32, i32 or i64", "f32"]);
}

#[test]
fn argmax_and_argmin_pick_the_first_or_the_last_tie() {
    use manychips::Ties;
    let dev = cpu();
    let x = Tensor::from_slice(&[1.0f32, 3.0, 3.0, 0.0, 0.0, 2.0], [2, 3], &dev).unwrap();
    let at = |t: manychips::Result<Tensor>| t.unwrap().to_vec::<u32>().unwrap();
    assert_eq!(at(x.argmax_ties(1, false, Ties::First)), vec![1, 2]);
    assert_eq!(at(x.argmax_ties(-1, false, Ties::Last)), vec![2, 2]);
    assert_eq!(at(x.argmin_ties(1, false, Ties::Last)), vec![0, 1]);
    assert_eq!(x.argmin_ties(1, true, Ties::Last).unwrap().dims(), &[2, 1]);
    let ints = Tensor::from_slice(&[5i64, -2, 5, -2], [4], &dev).unwrap();
    assert_eq!(at(ints.argmax_ties(0, false, Ties::Last)), vec![2]);
    assert_eq!(at(ints.argmin(0)), vec![1]);
}

/// numpy's stable sort order of `v` (NaNs last, -0.0 equal to 0.0), as positions.
fn stable_order(v: &[f32], descending: bool) -> Vec<u32> {
    let key = |x: f32| if x.is_nan() { f32::INFINITY } else { x };
    let mut order: Vec<u32> = (0..v.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (v[a as usize], v[b as usize]);
        let by_nan = x.is_nan().cmp(&y.is_nan());
        let by_value = key(x).partial_cmp(&key(y)).expect("no NaN keys");
        let o = by_nan.then(by_value);
        if descending { o.reverse() } else { o }
    });
    order
}

#[test]
fn sort_and_topk_along_any_axis() {
    let dev = cpu();
    // Lengths around powers of two, ties, both zeros, infinities and NaNs.
    for n in [1usize, 2, 3, 5, 8, 13, 64, 100] {
        let data: Vec<f32> = (0..3 * n)
            .map(|i| match i % 11 {
                3 => f32::NAN,
                5 => -0.0,
                6 => 0.0,
                7 => f32::NEG_INFINITY,
                9 => f32::INFINITY,
                _ => ((i * 7919) % 13) as f32 - 6.0,
            })
            .collect();
        let x = Tensor::from_slice(&data, [3, n], &dev).unwrap();
        for descending in [false, true] {
            let (values, order) = x.sort(-1, descending).unwrap();
            let order = order.to_vec::<u32>().unwrap();
            let values = values.to_vec::<f32>().unwrap();
            for row in 0..3 {
                let want = stable_order(&data[row * n..][..n], descending);
                assert_eq!(order[row * n..][..n], want, "n {n} row {row} descending {descending}");
                for (i, &p) in want.iter().enumerate() {
                    let (got, src) = (values[row * n + i], data[row * n + p as usize]);
                    assert!(got.to_bits() == src.to_bits() || (got.is_nan() && src.is_nan()));
                }
            }
        }
    }
    // Along the first axis of an integer tensor, both ends of the range.
    let ints = Tensor::from_slice(&[3i64, i64::MIN, 7, i64::MAX, 3, -1], [3, 2], &dev).unwrap();
    let (v, i) = ints.sort(0, false).unwrap();
    assert_eq!(v.to_vec::<i64>().unwrap(), vec![3, i64::MIN, 3, -1, 7, i64::MAX]);
    assert_eq!(i.to_vec::<u32>().unwrap(), vec![0, 0, 2, 2, 1, 1]);
    let (v, _) = ints.sort(0, true).unwrap();
    assert_eq!(v.to_vec::<i64>().unwrap(), vec![7, i64::MAX, 3, -1, 3, i64::MIN]);
    let bytes = Tensor::from_slice(&[255u8, 0, 7, 255], [4], &dev).unwrap();
    assert_eq!(bytes.argsort(0, true).unwrap().to_vec::<u32>().unwrap(), vec![0, 3, 2, 1]);

    let logits = Tensor::from_slice(&[0.5f32, 2.0, -1.0, 2.0, 1.5], [1, 5], &dev).unwrap();
    let (top, at) = logits.topk(3, 1, true).unwrap();
    assert_eq!(values(&top), vec![2.0, 2.0, 1.5]);
    assert_eq!(at.to_vec::<u32>().unwrap(), vec![1, 3, 4], "the first of equal values first");
    let (low, _) = logits.topk(2, -1, false).unwrap();
    assert_eq!(values(&low), vec![-1.0, 0.5]);
    expect_err(logits.topk(6, 1, true), ErrorKind::InvalidArgument, &["topk", "k = 6", "5"]);
    let half = logits.cast(DType::BF16).unwrap();
    assert_eq!(half.argsort(1, false).unwrap().to_vec::<u32>().unwrap(), vec![2, 0, 4, 1, 3]);
    let empty = Tensor::zeros([2, 0], DType::F32, &dev).unwrap();
    assert_eq!(empty.sort(1, false).unwrap().1.dims(), &[2, 0]);
}

#[test]
fn bitcast_reinterprets_the_bytes() {
    let dev = cpu();
    let x = Tensor::from_slice(&[1.0f32, -2.0], [2], &dev).unwrap();
    let bits = x.bitcast(DType::U32).unwrap().to_vec::<u32>().unwrap();
    assert_eq!(bits, vec![1.0f32.to_bits(), (-2.0f32).to_bits()]);
    expect_err(x.bitcast(DType::F16), ErrorKind::DType, &["bitcast", "4-byte", "2-byte"]);
    // Indices written as i32 are checked again when seen as u32: -1 is then out of range.
    let back = Tensor::from_slice(&[-1i32], [1], &dev).unwrap();
    expect_err(
        x.index_select(0, &back.bitcast(DType::U32).unwrap()),
        ErrorKind::IndexOutOfRange,
        &["4294967295"],
    );
}

#[test]
fn scatter_overwrites_and_reduces_in_order() {
    use manychips::ScatterOp;
    let dev = cpu();
    let base = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0], [4], &dev).unwrap();
    let at = Tensor::from_slice(&[2i64, 0, 2, -1], [4], &dev).unwrap();
    let src = Tensor::from_slice(&[5.0f32, 6.0, 7.0, 3.0], [4], &dev).unwrap();
    // Position 2 is named twice: the later source element wins; -1 is the last.
    assert_eq!(values(&base.scatter(0, &at, &src).unwrap()), vec![6.0, 1.0, 7.0, 3.0]);
    let reduce = |op| values(&base.scatter_reduce(0, &at, &src, op).unwrap());
    assert_eq!(reduce(ScatterOp::Sum), vec![7.0, 1.0, 13.0, 4.0]);
    assert_eq!(reduce(ScatterOp::Prod), vec![6.0, 1.0, 35.0, 3.0]);
    assert_eq!(reduce(ScatterOp::Max), vec![6.0, 1.0, 7.0, 3.0]);
    assert_eq!(reduce(ScatterOp::Min), vec![1.0, 1.0, 1.0, 1.0]);
    assert_eq!(values(&base), vec![1.0; 4], "out of place");
    // Along axis 1 of a matrix, in integers (wrapping).
    let m = Tensor::from_slice(&[0i32, 0, 0, 0, 0, 0], [2, 3], &dev).unwrap();
    let cols = Tensor::from_slice(&[1u32, 1, 0, 2], [2, 2], &dev).unwrap();
    let v = Tensor::from_slice(&[i32::MAX, 1, 4, 5], [2, 2], &dev).unwrap();
    let sums = m.scatter_reduce(1, &cols, &v, ScatterOp::Sum).unwrap();
    assert_eq!(sums.to_vec::<i32>().unwrap(), vec![0, i32::MIN, 0, 4, 0, 5]);
    let bad = Tensor::from_slice(&[0u32, 3], [1, 2], &dev).unwrap();
    let one_row = v.narrow(0, 0, 1).unwrap();
    expect_err(m.scatter(1, &bad, &one_row), ErrorKind::IndexOutOfRange, &["scatter", "3"]);
    let wrong = Tensor::from_slice(&[0u32], [1], &dev).unwrap();
    expect_err(m.scatter(1, &wrong, &one_row), ErrorKind::Shape, &["scatter", "same shape"]);
}
