//! Every op against a naive f64 reference, on awkward layouts and all the dtypes it allows.

mod common;

use common::*;
use half::{bf16, f16};
use manychips_api::{BinaryOp, CompareOp, DType, Device, Element, Op, ReduceOp, UnaryOp, View};
use manychips_cpu::CpuDevice;

/// Uploads `vals` as `dtype`; returns the buffer and the values as stored (rounded).
fn upload_as(dev: &CpuDevice, vals: &[f64], dtype: DType) -> (manychips_api::BufferId, Vec<f64>) {
    match dtype {
        DType::F32 => {
            let v: Vec<f32> = convert(vals);
            (upload(dev, &v), to_f64(&v))
        }
        DType::F16 => {
            let v: Vec<f16> = convert(vals);
            (upload(dev, &v), to_f64(&v))
        }
        DType::BF16 => {
            let v: Vec<bf16> = convert(vals);
            (upload(dev, &v), to_f64(&v))
        }
        DType::U32 => {
            let v: Vec<u32> = convert(vals);
            (upload(dev, &v), to_f64(&v))
        }
        DType::U8 => {
            let v: Vec<u8> = convert(vals);
            (upload(dev, &v), to_f64(&v))
        }
        DType::I32 => {
            let v: Vec<i32> = convert(vals);
            (upload(dev, &v), to_f64(&v))
        }
        DType::I64 => {
            let v: Vec<i64> = convert(vals);
            (upload(dev, &v), to_f64(&v))
        }
    }
}

fn download_as(dev: &CpuDevice, buf: manychips_api::BufferId, n: usize, dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => to_f64(&download::<f32>(dev, buf, n)),
        DType::F16 => to_f64(&download::<f16>(dev, buf, n)),
        DType::BF16 => to_f64(&download::<bf16>(dev, buf, n)),
        DType::U32 => to_f64(&download::<u32>(dev, buf, n)),
        DType::U8 => to_f64(&download::<u8>(dev, buf, n)),
        DType::I32 => to_f64(&download::<i32>(dev, buf, n)),
        DType::I64 => to_f64(&download::<i64>(dev, buf, n)),
    }
}

fn round_to(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F32 => <f32 as Element>::from_f64(v).to_f64(),
        DType::F16 => <f16 as Element>::from_f64(v).to_f64(),
        DType::BF16 => <bf16 as Element>::from_f64(v).to_f64(),
        DType::U32 => <u32 as Element>::from_f64(v).to_f64(),
        DType::U8 => <u8 as Element>::from_f64(v).to_f64(),
        DType::I32 => <i32 as Element>::from_f64(v).to_f64(),
        DType::I64 => <i64 as Element>::from_f64(v).to_f64(),
    }
}

#[test]
fn matmul_matches_naive_on_views_and_dtypes() {
    let dev = device();
    // (batch, m, k, n): odd sizes, one big enough for gemm's threads, many small matrices.
    for &(batch, m, k, n) in &[(1, 37, 53, 29), (3, 5, 7, 4), (2, 130, 70, 90), (16, 12, 9, 10)] {
        for dtype in DType::FLOATS {
            let (a, av) = upload_as(&dev, &random(batch * m * k, 3), dtype);
            // rhs stored transposed ([n, k]) and shared by every batch (stride 0).
            let (b, bv) = upload_as(&dev, &random(n * k, 4), dtype);
            let out = dev.alloc(batch * m * n * dtype.size_in_bytes()).unwrap();
            let lhs = contiguous(a, &[batch, m, k], dtype);
            let rhs = strided(b, &[batch, k, n], &[0, 1, k], 0, dtype);
            dev.run(&Op::Matmul { lhs, rhs, out: contiguous(out, &[batch, m, n], dtype) }).unwrap();
            let got = download_as(&dev, out, batch * m * n, dtype);
            let mut want = vec![0.0; batch * m * n];
            for p in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k).map(|q| av[(p * m + i) * k + q] * bv[j * k + q]).sum();
                        want[(p * m + i) * n + j] = s;
                    }
                }
            }
            let tol = tol(dtype) * (k as f64).sqrt();
            assert_close(&got, &want, tol, &format!("matmul {dtype} {batch}x{m}x{k}x{n}"));
        }
    }
    // Transposed lhs written into a transposed output.
    let (m, k, n) = (6, 5, 4);
    let (a, av) = upload_as(&dev, &random(k * m, 5), DType::F32);
    let (b, bv) = upload_as(&dev, &random(k * n, 6), DType::F32);
    let out = dev.alloc(m * n * 4).unwrap();
    let lhs = strided(a, &[m, k], &[1, m], 0, DType::F32);
    let o = strided(out, &[m, n], &[1, m], 0, DType::F32);
    dev.run(&Op::Matmul { lhs, rhs: contiguous(b, &[k, n], DType::F32), out: o }).unwrap();
    let got = download_as(&dev, out, m * n, DType::F32);
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|q| av[q * m + i] * bv[q * n + j]).sum();
            assert!((got[j * m + i] - s).abs() < 1e-5, "({i}, {j})");
        }
    }
}

#[test]
fn broadcast_binary_ops() {
    let dev = device();
    let (d0, d1, d2) = (4, 3, 5);
    for dtype in DType::FLOATS {
        // lhs [4, 1, 5] broadcast over dim 1, rhs [1, 3, 5] over dim 0, rhs also at an offset.
        let (a, av) =
            upload_as(&dev, &random(d0 * d2, 7).iter().map(|x| x * 2.0).collect::<Vec<_>>(), dtype);
        let (b, bv) = upload_as(
            &dev,
            &random(1 + d1 * d2, 8).iter().map(|x| x + 1.5).collect::<Vec<_>>(),
            dtype,
        );
        let lhs = strided(a, &[d0, d1, d2], &[d2, 0, 1], 0, dtype);
        let rhs = strided(b, &[d0, d1, d2], &[0, d2, 1], 1, dtype);
        let out = dev.alloc(d0 * d1 * d2 * dtype.size_in_bytes()).unwrap();
        for op in BinaryOp::ALL {
            dev.run(&Op::Binary {
                op,
                lhs: lhs.clone(),
                rhs: rhs.clone(),
                out: contiguous(out, &[d0, d1, d2], dtype),
            })
            .unwrap();
            let got = download_as(&dev, out, d0 * d1 * d2, dtype);
            let mut want = vec![];
            for i in 0..d0 {
                for j in 0..d1 {
                    for k in 0..d2 {
                        let (x, y) = (av[i * d2 + k], bv[1 + j * d2 + k]);
                        want.push(match op {
                            BinaryOp::Add => x + y,
                            BinaryOp::Sub => x - y,
                            BinaryOp::Mul => x * y,
                            BinaryOp::Div => x / y,
                            BinaryOp::Max => x.max(y),
                            BinaryOp::Min => x.min(y),
                            BinaryOp::Pow => x.powf(y),
                            BinaryOp::Rem => x - (x / y).floor() * y,
                        });
                    }
                }
            }
            assert_close(&got, &want, tol(dtype), &format!("{op:?} {dtype}"));
        }
    }
    // Large enough to run in parallel, with a scalar broadcast.
    let n = 300_001;
    let (a, av) = upload_as(&dev, &random(n, 9), DType::F32);
    let (s, sv) = upload_as(&dev, &[0.25], DType::F32);
    let out = dev.alloc(n * 4).unwrap();
    let rhs = strided(s, &[n], &[0], 0, DType::F32);
    dev.run(&Op::Binary {
        op: BinaryOp::Mul,
        lhs: contiguous(a, &[n], DType::F32),
        rhs,
        out: contiguous(out, &[n], DType::F32),
    })
    .unwrap();
    let got = download_as(&dev, out, n, DType::F32);
    assert!(got.iter().zip(&av).all(|(g, x)| *g == x * sv[0]));
}

/// Outputs past half the last-level cache are written with non-temporal stores: the
/// results equal the cached loops' bit for bit, whatever the operands' offsets.
#[test]
fn large_outputs_stream_the_same_values() {
    let dev = device();
    let n = (16 << 20) + 5; // 64 MiB of f32 out: past half of any last-level cache
    let a: Vec<f32> = (0..n + 1).map(|i| (i % 1013) as f32 * 0.37 - 100.0).collect();
    let b: Vec<f32> = (0..n).map(|i| (i % 977) as f32 * 0.11 + 0.5).collect();
    let (ab, bb) = (upload(&dev, &a), upload(&dev, &b));
    let scalar = upload(&dev, &[1.75f32]);
    let out = dev.alloc((n + 1) * 4).unwrap();
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
        let f = |x: f32, y: f32| match op {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            _ => x / y,
        };
        // lhs one element in (unaligned), out one element in, then a broadcast scalar.
        let cases = [
            (strided(ab, &[n], &[1], 1, DType::F32), contiguous(bb, &[n], DType::F32)),
            (contiguous(ab, &[n], DType::F32), strided(scalar, &[n], &[0], 0, DType::F32)),
        ];
        for (k, (lhs, rhs)) in cases.into_iter().enumerate() {
            let out_view = strided(out, &[n], &[1], 1, DType::F32);
            dev.run(&Op::Binary { op, lhs, rhs, out: out_view }).unwrap();
            let got = download::<f32>(&dev, out, n + 1);
            let bad = (0..n).find(|&i| {
                let want = if k == 0 { f(a[i + 1], b[i]) } else { f(a[i], 1.75) };
                got[i + 1].to_bits() != want.to_bits()
            });
            assert_eq!(bad, None, "{op:?}, case {k}");
        }
    }
}

#[test]
fn unary_and_affine() {
    let dev = device();
    let n = 50_000;
    let vals: Vec<f64> = random(n, 10).iter().map(|x| x * 12.0).collect();
    for dtype in DType::FLOATS {
        let (a, av) = upload_as(&dev, &vals, dtype);
        let out = dev.alloc(n * dtype.size_in_bytes()).unwrap();
        for op in UnaryOp::ALL {
            let input = contiguous(a, &[n], dtype);
            dev.run(&Op::Unary { op, input, out: contiguous(out, &[n], dtype) }).unwrap();
            let got = download_as(&dev, out, n, dtype);
            let want: Vec<f64> = av
                .iter()
                .map(|&x| {
                    let y = match op {
                        UnaryOp::Neg => -x,
                        UnaryOp::Abs => x.abs(),
                        UnaryOp::Exp => x.exp(),
                        UnaryOp::Log => x.ln(),
                        UnaryOp::Sqrt => x.sqrt(),
                        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
                        UnaryOp::Tanh => x.tanh(),
                        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
                        UnaryOp::Relu => x.max(0.0),
                        UnaryOp::GeluTanh => {
                            let c = (2.0 / std::f64::consts::PI).sqrt();
                            0.5 * x * (1.0 + (c * (x + 0.044715 * x.powi(3))).tanh())
                        }
                        UnaryOp::GeluErf => 0.5 * x * erfc(-x / 2f64.sqrt()),
                        UnaryOp::Silu => x / (1.0 + (-x).exp()),
                        UnaryOp::Sin => x.sin(),
                        UnaryOp::Cos => x.cos(),
                    };
                    round_to(y, dtype)
                })
                .collect();
            let t = tol(dtype) + if matches!(op, UnaryOp::Sin | UnaryOp::Cos) { 1e-5 } else { 0.0 };
            assert_close(&got, &want, t, &format!("{op:?} {dtype}"));
        }
        // Affine on a strided (every other element) input.
        let half_n = n / 2;
        let input = strided(a, &[half_n], &[2], 1, dtype);
        dev.run(&Op::Affine { input, out: contiguous(out, &[half_n], dtype), mul: -0.5, add: 3.0 })
            .unwrap();
        let got = download_as(&dev, out, half_n, dtype);
        let want: Vec<f64> = (0..half_n).map(|i| av[2 * i + 1] * -0.5 + 3.0).collect();
        assert_close(&got, &want, tol(dtype), &format!("affine {dtype}"));
    }
}

/// erfc in f64: Taylor series for erf where it converges well, a continued fraction beyond.
fn erfc(x: f64) -> f64 {
    if x.abs() < 3.0 {
        let (mut term, mut sum, mut k) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            k += 1.0;
            term *= -x * x / k;
            sum += term / (2.0 * k + 1.0);
        }
        1.0 - sum * 2.0 / std::f64::consts::PI.sqrt()
    } else if x > 0.0 {
        let mut f = 0.0;
        for k in (1..200).rev() {
            f = (k as f64 / 2.0) / (x + f);
        }
        (-x * x).exp() / std::f64::consts::PI.sqrt() / (x + f)
    } else {
        2.0 - erfc(-x)
    }
}

#[test]
fn reductions_over_every_position_of_the_axis() {
    let dev = device();
    for &(dims, axis) in &[
        (&[3usize, 7, 5][..], 1usize),
        (&[4, 9][..], 1),
        (&[6, 300][..], 0),
        (&[2, 40_000][..], 1),
        (&[100_000, 3][..], 0),
    ] {
        let numel: usize = dims.iter().product();
        let (outer, len, inner): (usize, usize, usize) =
            (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product());
        for dtype in DType::FLOATS {
            let (a, av) = upload_as(&dev, &random(numel, 11), dtype);
            let mut out_dims = dims.to_vec();
            out_dims[axis] = 1;
            for op in ReduceOp::ALL {
                let out_dtype = if op.is_arg() { DType::U32 } else { dtype };
                let out = dev.alloc(outer * inner * out_dtype.size_in_bytes()).unwrap();
                let input = contiguous(a, dims, dtype);
                dev.run(&Op::Reduce {
                    op,
                    input,
                    out: contiguous(out, &out_dims, out_dtype),
                    axis,
                })
                .unwrap();
                let got = download_as(&dev, out, outer * inner, out_dtype);
                let mut want = vec![];
                for o in 0..outer {
                    for i in 0..inner {
                        let xs: Vec<f64> =
                            (0..len).map(|r| av[(o * len + r) * inner + i]).collect();
                        let first_max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let first_min = xs.iter().cloned().fold(f64::INFINITY, f64::min);
                        want.push(match op {
                            ReduceOp::Sum => xs.iter().sum(),
                            ReduceOp::Mean => xs.iter().sum::<f64>() / len as f64,
                            ReduceOp::Max => first_max,
                            ReduceOp::Min => xs.iter().cloned().fold(f64::INFINITY, f64::min),
                            ReduceOp::ArgMax => {
                                xs.iter().position(|&x| x == first_max).unwrap() as f64
                            }
                            ReduceOp::ArgMin => {
                                xs.iter().position(|&x| x == first_min).unwrap() as f64
                            }
                        });
                    }
                }
                let t = match op {
                    ReduceOp::Sum => tol(dtype) * (len as f64).sqrt(),
                    ReduceOp::ArgMax | ReduceOp::ArgMin => 0.0,
                    _ => tol(dtype),
                };
                assert_close(&got, &want, t, &format!("{op:?} {dtype} {dims:?} axis {axis}"));
            }
        }
    }
    // A transposed (non-contiguous) input, with ties: the first maximum wins.
    let a = upload(&dev, &[1.0f32, 5.0, 5.0, 2.0, 0.0, 2.0]); // [3, 2] stored, read as [2, 3]
    let out = dev.alloc(8).unwrap();
    let input = strided(a, &[2, 3], &[1, 2], 0, DType::F32);
    dev.run(&Op::Reduce {
        op: ReduceOp::ArgMax,
        input,
        out: contiguous(out, &[2, 1], DType::U32),
        axis: 1,
    })
    .unwrap();
    assert_eq!(download::<u32>(&dev, out, 2), vec![1, 0]);
}

fn softmax_ref(xs: &[f64], log: bool) -> Vec<f64> {
    let m = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = xs.iter().map(|x| (x - m).exp()).sum();
    xs.iter().map(|x| if log { x - m - s.ln() } else { (x - m).exp() / s }).collect()
}

#[test]
fn softmax_along_any_axis() {
    let dev = device();
    for &(dims, axis) in
        &[(&[5usize, 33][..], 1usize), (&[4, 6, 3][..], 1), (&[7, 2][..], 0), (&[3, 5000][..], 1)]
    {
        let numel: usize = dims.iter().product();
        let (outer, len, inner): (usize, usize, usize) =
            (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product());
        for dtype in DType::FLOATS {
            let vals: Vec<f64> = random(numel, 12).iter().map(|x| x * 8.0).collect();
            let (a, av) = upload_as(&dev, &vals, dtype);
            let out = dev.alloc(numel * dtype.size_in_bytes()).unwrap();
            for log in [false, true] {
                let op = Op::Softmax {
                    input: contiguous(a, dims, dtype),
                    out: contiguous(out, dims, dtype),
                    axis,
                    log,
                };
                dev.run(&op).unwrap();
                let got = download_as(&dev, out, numel, dtype);
                let mut want = vec![0.0; numel];
                for o in 0..outer {
                    for i in 0..inner {
                        let at = |r: usize| (o * len + r) * inner + i;
                        let row: Vec<f64> = (0..len).map(|r| av[at(r)]).collect();
                        for (r, y) in softmax_ref(&row, log).into_iter().enumerate() {
                            want[at(r)] = y;
                        }
                    }
                }
                assert_close(
                    &got,
                    &want,
                    tol(dtype) * 2.0,
                    &format!("softmax log={log} {dtype} {dims:?} axis {axis}"),
                );
            }
        }
    }
}

#[test]
fn copy_concat_fill_where() {
    let dev = device();
    // Transpose a [3, 4] u32 matrix into the right half of a [4, 6] buffer.
    let a = upload(&dev, &(0..12u32).collect::<Vec<_>>());
    let out = upload(&dev, &[99u32; 24]);
    let input = strided(a, &[4, 3], &[1, 4], 0, DType::U32);
    dev.run(&Op::Copy { input, out: strided(out, &[4, 3], &[6, 1], 3, DType::U32) }).unwrap();
    let got = download::<u32>(&dev, out, 24);
    for r in 0..4 {
        assert_eq!(&got[r * 6..r * 6 + 3], &[99; 3]);
        assert_eq!(&got[r * 6 + 3..r * 6 + 6], &[r as u32, 4 + r as u32, 8 + r as u32]);
    }
    // Concat f16 along axis 1: [2, 1] ++ [2, 0] ++ [2, 3] -> [2, 4].
    let x = upload(&dev, &convert::<f16>(&[1.0, 2.0]));
    let y = upload(&dev, &convert::<f16>(&[3.0, 4.0, 5.0, 6.0, 7.0, 8.0]));
    let z = dev.alloc(16).unwrap();
    let empty = dev.alloc(0).unwrap();
    let inputs = vec![
        contiguous(x, &[2, 1], DType::F16),
        contiguous(empty, &[2, 0], DType::F16),
        contiguous(y, &[2, 3], DType::F16),
    ];
    dev.run(&Op::Concat { inputs, out: contiguous(z, &[2, 4], DType::F16), axis: 1 }).unwrap();
    assert_eq!(to_f64(&download::<f16>(&dev, z, 8)), vec![1.0, 3.0, 4.0, 5.0, 2.0, 6.0, 7.0, 8.0]);
    // Fill every dtype, converted like Cast; a strided u8 fill leaves the gaps alone.
    for (dtype, value, want) in [
        (DType::F32, 0.1, 0.1f32 as f64),
        (DType::F16, 0.1, round_to(0.1, DType::F16)),
        (DType::BF16, -3.3, round_to(-3.3, DType::BF16)),
        (DType::BF16, 6_701_057.0, 6_717_440.0), // just past a tie: rounds up
        (DType::U32, 7.9, 7.0),
        (DType::U8, 300.0, 255.0),
    ] {
        let buf = dev.alloc(5 * dtype.size_in_bytes()).unwrap();
        dev.run(&Op::Fill { out: contiguous(buf, &[5], dtype), value }).unwrap();
        assert_eq!(download_as(&dev, buf, 5, dtype), vec![want; 5], "{dtype}");
    }
    let m = upload(&dev, &[0u8; 6]);
    dev.run(&Op::Fill { out: strided(m, &[3], &[2], 1, DType::U8), value: 1.0 }).unwrap();
    assert_eq!(download::<u8>(&dev, m, 6), vec![0, 1, 0, 1, 0, 1]);
    // Where with a broadcast condition row.
    let cond = upload(&dev, &[1u8, 0, 2]);
    let t = upload(&dev, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let f = upload(&dev, &[-1.0f32]);
    let w = dev.alloc(24).unwrap();
    dev.run(&Op::Where {
        cond: strided(cond, &[2, 3], &[0, 1], 0, DType::U8),
        on_true: contiguous(t, &[2, 3], DType::F32),
        on_false: strided(f, &[2, 3], &[0, 0], 0, DType::F32),
        out: contiguous(w, &[2, 3], DType::F32),
    })
    .unwrap();
    assert_eq!(download::<f32>(&dev, w, 6), vec![1.0, -1.0, 3.0, 4.0, -1.0, 6.0]);
}

#[test]
fn compare_and_cast_follow_the_rules() {
    let dev = device();
    // u32 compares as integers: 2^24 + 1 > 2^24, which f32 could not tell apart.
    let a = upload(&dev, &[16_777_217u32, 5, 0]);
    let b = upload(&dev, &[16_777_216u32, 5, 1]);
    let view = |buf, dt| contiguous(buf, &[3], dt);
    for (op, want) in [
        (CompareOp::Gt, [1u8, 0, 0]),
        (CompareOp::Eq, [0, 1, 0]),
        (CompareOp::Ne, [1, 0, 1]),
        (CompareOp::Le, [0, 1, 1]),
        (CompareOp::Lt, [0, 0, 1]),
        (CompareOp::Ge, [1, 1, 0]),
    ] {
        let out = dev.alloc(3).unwrap();
        dev.run(&Op::Compare {
            op,
            lhs: view(a, DType::U32),
            rhs: view(b, DType::U32),
            out: view(out, DType::U8),
        })
        .unwrap();
        assert_eq!(download::<u8>(&dev, out, 3), want.to_vec(), "{op:?}");
    }
    // Float compare into the input dtype, NaN unequal to itself.
    let x = upload(&dev, &convert::<bf16>(&[1.0, f64::NAN, -2.0]));
    let y = upload(&dev, &convert::<bf16>(&[1.0, f64::NAN, 3.0]));
    let out = dev.alloc(6).unwrap();
    dev.run(&Op::Compare {
        op: CompareOp::Eq,
        lhs: view(x, DType::BF16),
        rhs: view(y, DType::BF16),
        out: view(out, DType::BF16),
    })
    .unwrap();
    assert_eq!(to_f64(&download::<bf16>(&dev, out, 3)), vec![1.0, 0.0, 0.0]);
    // Casts between every pair of dtypes agree with the api's conversions through f64.
    let vals =
        [0.0, 1.5, -2.7, 300.6, 70_000.0, 1e-3, 16_777_217.0, f64::NAN, 65_519.0, 6_701_057.0];
    for from in DType::ALL {
        let (src, sv) = upload_as(&dev, &vals, from);
        for to in DType::ALL {
            let out = dev.alloc(vals.len() * to.size_in_bytes()).unwrap();
            let op = Op::Cast {
                input: contiguous(src, &[vals.len()], from),
                out: contiguous(out, &[vals.len()], to),
            };
            dev.run(&op).unwrap();
            let got = download_as(&dev, out, vals.len(), to);
            let want: Vec<f64> = sv.iter().map(|&v| round_to(v, to)).collect();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g == w || (g.is_nan() && w.is_nan()),
                    "cast {from}->{to} of {}: {g} vs {w}",
                    sv[i]
                );
            }
        }
    }
}

#[test]
fn gathers_and_scatters() {
    let dev = device();
    // Embedding lookup: index_select rows of a [5, 4] table, repeated indices.
    let (t, tv) = upload_as(&dev, &random(20, 13), DType::F32);
    let idx = upload(&dev, &[4u32, 0, 4, 2]);
    let out = dev.alloc(16 * 4).unwrap();
    let indices = contiguous(idx, &[4], DType::U32);
    dev.run(&Op::IndexSelect {
        input: contiguous(t, &[5, 4], DType::F32),
        indices: indices.clone(),
        out: contiguous(out, &[4, 4], DType::F32),
        axis: 0,
    })
    .unwrap();
    let got = download_as(&dev, out, 16, DType::F32);
    for (r, &i) in [4usize, 0, 4, 2].iter().enumerate() {
        assert_eq!(&got[r * 4..r * 4 + 4], &tv[i * 4..i * 4 + 4]);
    }
    // Columns, from a transposed view, in bf16.
    let (tb, tbv) = upload_as(&dev, &random(20, 14), DType::BF16);
    let outb = dev.alloc(5 * 4 * 2).unwrap();
    let input = strided(tb, &[5, 4], &[1, 5], 0, DType::BF16);
    dev.run(&Op::IndexSelect {
        input,
        indices,
        out: contiguous(outb, &[5, 4], DType::BF16),
        axis: 1,
    })
    .unwrap();
    // Column index 4 is out of range for 4 columns: an error, and zeros in its place.
    assert!(dev.synchronize().is_err());
    let got = download_as(&dev, outb, 20, DType::BF16);
    for r in 0..5 {
        for (c, &i) in [4usize, 0, 4, 2].iter().enumerate() {
            let want = if i < 4 { tbv[i * 5 + r] } else { 0.0 };
            assert_eq!(got[r * 4 + c], want);
        }
    }

    // index_add with duplicate indices (rows 1 and 3 get two rows each), f16 and f32.
    for dtype in [DType::F32, DType::F16] {
        let (o, ov) = upload_as(&dev, &random(4 * 3, 15), dtype);
        let (s, sv) = upload_as(&dev, &random(5 * 3, 16), dtype);
        let idx = upload(&dev, &[1u32, 3, 1, 0, 3]);
        dev.run(&Op::IndexAdd {
            src: contiguous(s, &[5, 3], dtype),
            indices: contiguous(idx, &[5], DType::U32),
            out: contiguous(o, &[4, 3], dtype),
            axis: 0,
        })
        .unwrap();
        let got = download_as(&dev, o, 12, dtype);
        let mut want = ov.clone();
        for (r, &i) in [1usize, 3, 1, 0, 3].iter().enumerate() {
            for c in 0..3 {
                want[i * 3 + c] += sv[r * 3 + c];
            }
        }
        assert_close(&got, &want, tol(dtype), &format!("index_add {dtype}"));
    }

    // scatter_add along the last axis, big enough to be cut into parallel tasks by row.
    let (rows, cols, k) = (3000, 40, 25);
    let (o, ov) = upload_as(&dev, &vec![0.5; rows * cols], DType::F32);
    let (s, sv) = upload_as(&dev, &random(rows * k, 17), DType::F32);
    let iv: Vec<u32> = (0..rows * k).map(|i| ((i * 7919) % cols) as u32 % 11).collect();
    let idx = upload(&dev, &iv);
    dev.run(&Op::ScatterAdd {
        src: contiguous(s, &[rows, k], DType::F32),
        indices: contiguous(idx, &[rows, k], DType::U32),
        out: contiguous(o, &[rows, cols], DType::F32),
        axis: 1,
    })
    .unwrap();
    let got = download_as(&dev, o, rows * cols, DType::F32);
    let mut want = ov;
    for r in 0..rows {
        for j in 0..k {
            want[r * cols + iv[r * k + j] as usize] += sv[r * k + j];
        }
    }
    assert_close(&got, &want, 1e-5, "scatter_add");
    dev.synchronize().unwrap();

    // gather along axis 0 of a [3, 4] u8 tensor.
    let g = upload(&dev, &(0..12u8).collect::<Vec<_>>());
    let gi = upload(&dev, &[2u32, 0, 1, 2, 0, 0, 2, 1]);
    let go = dev.alloc(8).unwrap();
    dev.run(&Op::Gather {
        input: contiguous(g, &[3, 4], DType::U8),
        indices: contiguous(gi, &[2, 4], DType::U32),
        out: contiguous(go, &[2, 4], DType::U8),
        axis: 0,
    })
    .unwrap();
    assert_eq!(download::<u8>(&dev, go, 8), vec![8, 1, 6, 11, 0, 1, 10, 7]);
}

#[test]
fn views_are_not_confused_with_buffers() {
    // A binary op writing every other element of a bigger buffer, from two views of one.
    let dev = device();
    let a = upload(&dev, &[1.0f32, 2.0, 3.0, 4.0]);
    let out = upload(&dev, &[0.0f32; 8]);
    let lhs = View::new(
        a,
        manychips_api::Layout { shape: [2, 2].into(), strides: vec![2, 1], offset: 0 },
        DType::F32,
    );
    let rhs = strided(a, &[2, 2], &[1, 2], 0, DType::F32); // the transpose
    let o = strided(out, &[2, 2], &[4, 2], 1, DType::F32);
    dev.run(&Op::Binary { op: BinaryOp::Add, lhs, rhs, out: o }).unwrap();
    assert_eq!(download::<f32>(&dev, out, 8), vec![0.0, 2.0, 0.0, 5.0, 0.0, 5.0, 0.0, 8.0]);
}

#[test]
fn big_strided_ops_split_across_threads_correctly() {
    // 120k elements (parallel), output a permuted slice of a bigger buffer with gaps, inputs
    // permuted and broadcast. Every element is checked, and the gaps must stay untouched.
    let dev = device();
    let dims = [40usize, 50, 60];
    let numel: usize = dims.iter().product();
    // Output: a [60, 42, 50] buffer; we write its [.., 1..41, ..] window, permuted to `dims`.
    let big = 60 * 42 * 50;
    let out = upload(&dev, &vec![-7.0f32; big]);
    let ov = strided(out, &dims, &[50, 1, 42 * 50], 50, DType::F32);
    // lhs: a [60, 50, 40] buffer read transposed; rhs: a [50] row broadcast over dims 0 and 2.
    let (a, av) = upload_as(&dev, &random(numel, 21), DType::F32);
    let (b, bv) = upload_as(&dev, &random(50, 22), DType::F32);
    let lhs = strided(a, &dims, &[1, 40, 2000], 0, DType::F32);
    let rhs = strided(b, &dims, &[0, 1, 0], 0, DType::F32);
    dev.run(&Op::Binary { op: BinaryOp::Sub, lhs: lhs.clone(), rhs, out: ov.clone() }).unwrap();
    let got = download::<f32>(&dev, out, big);
    let mut want = vec![-7.0f32; big];
    for i in 0..40 {
        for j in 0..50 {
            for k in 0..60 {
                let x = av[i + 40 * j + 2000 * k] as f32 - bv[j] as f32;
                want[50 + i * 50 + j + k * 42 * 50] = x;
            }
        }
    }
    assert_eq!(got, want);
    // The same window filled by a bf16 copy (2-byte words) and a cast back to f32.
    let (h, hv) = upload_as(&dev, &random(numel, 23), DType::BF16);
    let hb = upload(&dev, &vec![bf16::from_f32(-7.0); big]);
    let hin = strided(h, &dims, &[1, 40, 2000], 0, DType::BF16);
    let hout = strided(hb, &dims, &[50, 1, 42 * 50], 50, DType::BF16);
    dev.run(&Op::Copy { input: hin, out: hout.clone() }).unwrap();
    dev.run(&Op::Cast { input: hout, out: ov }).unwrap();
    let got = download::<f32>(&dev, out, big);
    for i in 0..40 {
        for j in 0..50 {
            for k in 0..60 {
                want[50 + i * 50 + j + k * 42 * 50] = hv[i + 40 * j + 2000 * k] as f32;
            }
        }
    }
    assert_eq!(got, want);
}

#[test]
fn scalars_and_degenerate_matrices() {
    let dev = device();
    // Rank-0 operands.
    let a = upload(&dev, &[3.0f32, 0.5]);
    let o = dev.alloc(8).unwrap();
    let s = |buf, off| strided(buf, &[], &[], off, DType::F32);
    dev.run(&Op::Binary { op: BinaryOp::Pow, lhs: s(a, 0), rhs: s(a, 1), out: s(o, 1) }).unwrap();
    dev.run(&Op::Unary { op: UnaryOp::Neg, input: s(a, 1), out: s(o, 0) }).unwrap();
    assert_eq!(download::<f32>(&dev, o, 2), vec![-0.5, 3f32.powf(0.5)]);
    let u = dev.alloc(4).unwrap();
    dev.run(&Op::Cast { input: s(a, 0), out: strided(u, &[], &[], 0, DType::U32) }).unwrap();
    assert_eq!(download::<u32>(&dev, u, 1), vec![3]);
    // Matrix-vector, vector-matrix and outer products (size-1 dims with odd strides), in f32
    // and bf16.
    for dtype in [DType::F32, DType::BF16] {
        for &(m, k, n) in &[(1usize, 9usize, 1usize), (5, 7, 1), (1, 7, 5), (3, 1, 4)] {
            let (x, xv) = upload_as(&dev, &random(m * k, 30), dtype);
            let (y, yv) = upload_as(&dev, &random(k * n, 31), dtype);
            let out = dev.alloc(m * n * dtype.size_in_bytes()).unwrap();
            // Size-1 dims get a stride of 1000, which must never be used to address anything.
            let odd = |d: &[usize], st: [usize; 2]| {
                [if d[0] == 1 { 1000 } else { st[0] }, if d[1] == 1 { 1000 } else { st[1] }]
            };
            let lhs = strided(x, &[m, k], &odd(&[m, k], [k, 1]), 0, dtype);
            let rhs = strided(y, &[k, n], &odd(&[k, n], [n, 1]), 0, dtype);
            let ov = strided(out, &[m, n], &odd(&[m, n], [n, 1]), 0, dtype);
            dev.run(&Op::Matmul { lhs, rhs, out: ov }).unwrap();
            let got = download_as(&dev, out, m * n, dtype);
            let want: Vec<f64> = (0..m * n)
                .map(|p| (0..k).map(|q| xv[(p / n) * k + q] * yv[q * n + p % n]).sum())
                .collect();
            assert_close(&got, &want, tol(dtype) * 3.0, &format!("{dtype} {m}x{k}x{n}"));
        }
    }
}

/// Fused programs over many short rows run a group of rows per step: every group (the last
/// one partial), every parallel task, an operand per row (a mean), one per element of the row
/// (a bias), a half-precision operand read through a copy and a padded output written
/// row by row all give what the program computes element by element.
#[test]
fn fused_programs_over_short_rows() {
    use manychips_api::Instr::*;
    let dev = device();
    let (rows, len) = (517, 96);
    let (x, xv) = upload_as(&dev, &random(rows * len, 21), DType::F32);
    let (b, bv) = upload_as(&dev, &random(len, 22), DType::F32);
    let (m, mv) = upload_as(&dev, &random(rows, 23), DType::F32);
    let (h, hv) = upload_as(&dev, &random(rows * len, 24), DType::F16);
    // ((x − m) · 2 + b) · h, then its ReLU: every kind of operand in one program.
    let program = vec![
        Input(0),
        Input(1),
        Input(2),
        Input(3),
        Binary(BinaryOp::Sub, 0, 2),
        Affine(4, 2.0, 0.0),
        Binary(BinaryOp::Add, 5, 1),
        Binary(BinaryOp::Mul, 6, 3),
        Unary(UnaryOp::Relu, 7),
    ];
    let inputs = vec![
        contiguous(x, &[rows, len], DType::F32),
        strided(b, &[rows, len], &[0, 1], 0, DType::F32),
        strided(m, &[rows, len], &[1, 0], 0, DType::F32),
        contiguous(h, &[rows, len], DType::F16),
    ];
    let want: Vec<f64> = (0..rows * len)
        .map(|i| {
            let (r, c) = (i / len, i % len);
            (((xv[i] - mv[r]) * 2.0 + bv[c]) * hv[i]).max(0.0)
        })
        .collect();
    let pitch = len + 5;
    for (out_strides, pitch) in [([len, 1], len), ([pitch, 1], pitch)] {
        let out = dev.alloc(rows * pitch * 4).unwrap();
        let view = strided(out, &[rows, len], &out_strides, 0, DType::F32);
        dev.run(&Op::Fused { inputs: inputs.clone(), program: program.clone(), out: view })
            .unwrap();
        let all = download_as(&dev, out, rows * pitch, DType::F32);
        let got: Vec<f64> = (0..rows * len).map(|i| all[(i / len) * pitch + i % len]).collect();
        assert_close(&got, &want, 1e-5, &format!("rows of {len}, output pitch {pitch}"));
    }
}
