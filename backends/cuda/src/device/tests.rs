//! The device over the emulator, against the CPU backend (the reference): the layouts cuBLAS
//! and the tiled kernel are handed, the scatter kernels, the status words, and the error
//! paths (sticky faults, out of memory, foreign buffers). The whole conformance kit runs on
//! the emulator in the root crate's tests/cuda.rs.

use cudarc::driver::sys::CUresult;
use manychips_api::{
    BinaryOp, BufferId, DType, Device, DeviceId, ErrorKind, Layout, Op, ReduceOp, ScatterOp, Shape,
    View, bf16, f16,
};
use manychips_cpu::CpuDevice;

use super::*;

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn float(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    }
}

/// Buffers (their bytes) and an op over them; views name buffer `i` as index `i` of a
/// placeholder device.
struct Case {
    data: Vec<Vec<u8>>,
    op: Op,
}

fn placeholder() -> DeviceId {
    static ID: std::sync::OnceLock<DeviceId> = std::sync::OnceLock::new();
    *ID.get_or_init(DeviceId::fresh)
}

fn view(index: usize, dims: &[usize], strides: &[usize], offset: usize, dtype: DType) -> View {
    let layout = Layout { shape: Shape::from(dims), strides: strides.to_vec(), offset };
    View::new(BufferId { device: placeholder(), index: index as u64 }, layout, dtype)
}

fn contiguous(index: usize, dims: &[usize], dtype: DType) -> View {
    let l = Layout::contiguous(dims);
    view(index, dims, &l.strides, 0, dtype)
}

fn random_bytes(rng: &mut Rng, elements: usize, dtype: DType, index_limit: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements * dtype.size_in_bytes());
    for _ in 0..elements {
        let x = rng.float();
        match dtype {
            DType::F32 => out.extend_from_slice(&x.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&bf16::from_f32(x).to_le_bytes()),
            DType::U32 => {
                out.extend_from_slice(&(rng.below(index_limit as usize) as u32).to_le_bytes())
            }
            DType::U8 => out.push((rng.next() & 1) as u8),
            DType::I32 => {
                out.extend_from_slice(&(rng.below(index_limit as usize) as i32).to_le_bytes())
            }
            DType::I64 => {
                out.extend_from_slice(&(rng.below(index_limit as usize) as i64).to_le_bytes())
            }
        }
    }
    out
}

/// Runs the case on `dev`; every buffer's bytes afterwards.
fn run_on(dev: &dyn Device, case: &Case) -> manychips_api::Result<Vec<Vec<u8>>> {
    let mut ids = Vec::new();
    for d in &case.data {
        let id = dev.alloc(d.len())?;
        dev.write(id, 0, d)?;
        ids.push(id);
    }
    let mut op = case.op.clone();
    for v in op.views_mut() {
        v.buffer = ids[v.buffer.index as usize];
    }
    let ran = dev.run(&op).and_then(|()| dev.synchronize());
    let mut out = Vec::new();
    for (id, d) in ids.iter().zip(&case.data) {
        let mut back = vec![0u8; d.len()];
        if ran.is_ok() {
            dev.read(*id, 0, &mut back)?;
        }
        out.push(back);
        dev.free(*id)?;
    }
    ran.map(|()| out)
}

fn as_f32(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => {
            bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        DType::F16 => bytes.chunks(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DType::BF16 => {
            bytes.chunks(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        DType::U32 => {
            bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect()
        }
        DType::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
        DType::I32 => {
            bytes.chunks(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect()
        }
        DType::I64 => bytes
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
    }
}

/// The emulated CUDA device gives the CPU backend's bytes in every buffer, up to `rtol`
/// (relative to the magnitude, for sums in another order).
fn agrees(cuda: &CudaDevice, case: &Case, rtol: f32) {
    let cpu = CpuDevice::with_threads(1).expect("cpu device");
    let want = run_on(&cpu, case).unwrap_or_else(|e| panic!("cpu: {e}; {}", case.op.describe()));
    let got = run_on(cuda, case).unwrap_or_else(|e| panic!("cuda: {e}; {}", case.op.describe()));
    let out = case.op.output();
    let out_index = out.buffer.index as usize;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if i != out_index || rtol == 0.0 {
            assert_eq!(w, g, "buffer {i} differs; {}", case.op.describe());
            continue;
        }
        let (w, g) = (as_f32(w, out.dtype), as_f32(g, out.dtype));
        for (j, (a, b)) in w.iter().zip(&g).enumerate() {
            let ok = a.to_bits() == b.to_bits()
                || (a.is_nan() && b.is_nan())
                || (a - b).abs() <= rtol * a.abs().max(1.0);
            assert!(ok, "element {j}: cpu {a}, cuda {b}; {}", case.op.describe());
        }
    }
}

fn emulated() -> CudaDevice {
    CudaDevice::emulated().expect("emulator")
}

/// Tolerance of a matmul of `k` terms in `dtype` (a different summation order).
fn matmul_tol(dtype: DType, k: usize) -> f32 {
    let eps = match dtype {
        DType::F32 => 1.2e-7,
        DType::F16 => 1e-3,
        _ => 8e-3,
    };
    eps * 4.0 * (k as f32).sqrt().max(1.0) * 4.0
}

#[test]
fn matmul_layouts_through_cublas_and_the_tiled_kernel() {
    let dev = emulated();
    let mut rng = Rng(0x1234_5678);
    let mut cublas_calls = 0;
    for round in 0..60 {
        let dtype = DType::FLOATS[round % 3];
        let (m, k, n) =
            ([1, 3, 17, 33][rng.below(4)], [1, 5, 16, 40][rng.below(4)], [1, 4, 19][rng.below(3)]);
        let batch: Vec<usize> = match rng.below(3) {
            0 => vec![],
            1 => vec![3],
            _ => vec![2, 3],
        };
        let dims = |a: usize, b: usize| {
            let mut d = batch.clone();
            d.extend([a, b]);
            d
        };
        // An operand as a (maybe transposed, broadcast, offset) view into a bigger buffer.
        let operand = |rng: &mut Rng, index: usize, rows: usize, cols: usize| -> (View, usize) {
            let transposed = rng.below(2) == 1;
            let broadcast = !batch.is_empty() && rng.below(3) == 0;
            let offset = rng.below(3);
            let pad = rng.below(2) * 3;
            let (r_stride, c_stride) = if transposed { (1, rows + pad) } else { (cols + pad, 1) };
            let matrix = if transposed {
                (cols - 1) * (rows + pad) + rows
            } else {
                (rows - 1) * (cols + pad) + cols
            };
            let mut strides = vec![0; batch.len()];
            let mut span = matrix;
            for (d, s) in batch.iter().enumerate().rev() {
                strides[d] = if broadcast && d == 0 { 0 } else { span };
                if !(broadcast && d == 0) {
                    span *= s;
                }
            }
            strides.extend([r_stride, c_stride]);
            (view(index, &dims(rows, cols), &strides, offset, dtype), offset + span)
        };
        let (lhs, lhs_len) = operand(&mut rng, 0, m, k);
        let (rhs, rhs_len) = operand(&mut rng, 1, k, n);
        // The output: contiguous, column-major matrices, or batch dims permuted.
        let out = match rng.below(3) {
            0 => contiguous(2, &dims(m, n), dtype),
            1 => {
                let mut strides = Layout::contiguous(dims(m, n)).strides;
                let r = strides.len();
                strides[r - 2] = 1;
                strides[r - 1] = m;
                view(2, &dims(m, n), &strides, 0, dtype)
            }
            _ if batch.len() == 2 => view(2, &dims(m, n), &[m * n, 2 * m * n, n, 1], 0, dtype),
            _ => contiguous(2, &dims(m, n), dtype),
        };
        let out_len = out.layout.end().unwrap_or(0);
        let case = Case {
            data: vec![
                random_bytes(&mut rng, lhs_len, dtype, 0),
                random_bytes(&mut rng, rhs_len, dtype, 0),
                random_bytes(&mut rng, out_len, dtype, 0),
            ],
            op: Op::Matmul { lhs: lhs.clone(), rhs: rhs.clone(), out: out.clone() },
        };
        if crate::gemm::plan(&lhs, &rhs, &out).is_some() {
            cublas_calls += 1;
        }
        for path in [MatmulPath::Cublas, MatmulPath::Tiled] {
            dev.set_matmul_path(path);
            agrees(&dev, &case, matmul_tol(dtype, k));
        }
    }
    assert!(cublas_calls > 30, "only {cublas_calls} layouts went to cuBLAS");
}

#[test]
fn tf32_is_an_opt_in_that_rounds_f32_products() {
    let dev = emulated();
    assert!(!dev.tf32() || std::env::var_os(crate::TF32_ENV).is_some());
    let a = dev.alloc(4).unwrap();
    let b = dev.alloc(4).unwrap();
    let c = dev.alloc(4).unwrap();
    let x = 1.0f32 + f32::EPSILON * 3.0;
    dev.write(a, 0, &x.to_le_bytes()).unwrap();
    dev.write(b, 0, &1.0f32.to_le_bytes()).unwrap();
    let v = |id| View::new(id, Layout::contiguous([1, 1]), DType::F32);
    let op = Op::Matmul { lhs: v(a), rhs: v(b), out: v(c) };
    let mut out = [0u8; 4];
    for (tf32, want) in [(false, x), (true, 1.0)] {
        dev.set_tf32(tf32);
        dev.run(&op).unwrap();
        dev.read(c, 0, &mut out).unwrap();
        assert_eq!(f32::from_le_bytes(out), want, "tf32 {tf32}");
    }
}

#[test]
fn scatter_kernels_agree_with_the_cpu() {
    let dev = emulated();
    let mut rng = Rng(99);
    for kernel in [ScatterKernel::Deterministic, ScatterKernel::Atomic, ScatterKernel::Auto] {
        dev.set_scatter_kernel(kernel);
        for dtype in DType::FLOATS {
            for index_add in [false, true] {
                let (rows, cols, len) = (7, 5, 11);
                // out [rows, cols] += src along axis 0 (index_add: src [len, cols], 1-D idx).
                let out = view(2, &[rows, cols], &[cols + 1, 1], 2, dtype);
                let src = contiguous(0, &[len, cols], dtype);
                let (indices, idx_len) = if index_add {
                    (view(1, &[len], &[2], 1, DType::U32), 2 * len)
                } else {
                    (contiguous(1, &[len, cols], DType::U32), len * cols)
                };
                let op = if index_add {
                    Op::IndexAdd { src: src.clone(), indices, out: out.clone(), axis: 0 }
                } else {
                    Op::ScatterAdd { src: src.clone(), indices, out: out.clone(), axis: 0 }
                };
                let case = Case {
                    data: vec![
                        random_bytes(&mut rng, len * cols, dtype, 0),
                        random_bytes(&mut rng, idx_len, DType::U32, rows as u32),
                        random_bytes(&mut rng, 2 + rows * (cols + 1), dtype, 0),
                    ],
                    op,
                };
                agrees(&dev, &case, if dtype == DType::F32 { 1e-5 } else { 1e-2 });
            }
        }
    }
}

#[test]
fn reductions_and_softmax_with_both_teams() {
    let dev = emulated();
    let mut rng = Rng(7);
    // Short rows with many of them (warp teams), long rows (block teams), a strided view.
    for (dims, axis) in [(vec![300, 7], 1), (vec![3, 2000], 1), (vec![5, 9, 4], 1), (vec![1, 1], 0)]
    {
        for dtype in DType::FLOATS {
            let len: usize = dims.iter().product();
            let input = contiguous(0, &dims, dtype);
            let mut out_dims = dims.clone();
            out_dims[axis] = 1;
            for op in ReduceOp::ALL {
                let out_dtype = if op.is_arg() { DType::U32 } else { dtype };
                let out = contiguous(1, &out_dims, out_dtype);
                let case = Case {
                    data: vec![
                        random_bytes(&mut rng, len, dtype, 0),
                        random_bytes(&mut rng, out.numel(), out_dtype, 1),
                    ],
                    op: Op::Reduce { op, input: input.clone(), out, axis },
                };
                // The CPU sums blocks of f32 into f64; the kernels sum in f64 throughout.
                let n = dims[axis] as f32;
                let tol = if op == ReduceOp::Sum { 2e-7 * n } else { 1e-6 };
                agrees(&dev, &case, if dtype == DType::F32 { tol } else { 1e-2 });
            }
            for log in [false, true] {
                let case = Case {
                    data: vec![
                        random_bytes(&mut rng, len, dtype, 0),
                        random_bytes(&mut rng, len, dtype, 0),
                    ],
                    op: Op::Softmax {
                        input: input.clone(),
                        out: contiguous(1, &dims, dtype),
                        axis,
                        log,
                    },
                };
                agrees(&dev, &case, if dtype == DType::F32 { 1e-5 } else { 1e-2 });
            }
        }
    }
}

#[test]
fn out_of_range_indices_are_reported_at_the_next_wait_and_then_cleared() {
    let dev = emulated();
    let input = dev.alloc(16).unwrap();
    let indices = dev.alloc(8).unwrap();
    let out = dev.alloc(8).unwrap();
    dev.write(input, 0, bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0])).unwrap();
    dev.write(indices, 0, bytemuck::cast_slice(&[2u32, 9])).unwrap();
    let f = |id, n| View::new(id, Layout::contiguous([n]), DType::F32);
    let op = Op::Gather {
        input: f(input, 4),
        indices: View::new(indices, Layout::contiguous([2]), DType::U32),
        out: f(out, 2),
        axis: 0,
    };
    dev.run(&op).unwrap();
    let err = dev.synchronize().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IndexOutOfRange, "{err}");
    assert!(err.to_string().contains("gather") && err.to_string().contains('9'), "{err}");
    assert!(!err.is_device_fault());
    // Reported once; the device carries on.
    dev.synchronize().unwrap();
    let mut back = [0u8; 8];
    dev.read(out, 0, &mut back).unwrap();
    assert_eq!(bytemuck::cast_slice::<u8, f32>(&back), &[3.0, 0.0]);
    // A read reports it too.
    dev.run(&op).unwrap();
    assert_eq!(dev.read(out, 0, &mut back).unwrap_err().kind(), ErrorKind::IndexOutOfRange);
}

#[test]
fn signed_indices_count_from_the_end_and_bad_ones_are_reported_as_given() {
    let dev = emulated();
    let input = dev.alloc(16).unwrap();
    let indices = dev.alloc(24).unwrap();
    let out = dev.alloc(12).unwrap();
    dev.write(input, 0, bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0])).unwrap();
    dev.write(indices, 0, bytemuck::cast_slice(&[-1i64, 2, -7])).unwrap();
    let f = |id, n| View::new(id, Layout::contiguous([n]), DType::F32);
    let op = Op::IndexSelect {
        input: f(input, 4),
        indices: View::new(indices, Layout::contiguous([3]), DType::I64),
        out: f(out, 3),
        axis: 0,
    };
    dev.run(&op).unwrap();
    let err = dev.synchronize().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IndexOutOfRange, "{err}");
    assert!(err.to_string().contains("index_select") && err.to_string().contains("-7"), "{err}");
    let mut back = [0u8; 12];
    dev.read(out, 0, &mut back).unwrap();
    assert_eq!(bytemuck::cast_slice::<u8, f32>(&back), &[4.0, 3.0, 0.0]);
    // i32 indices, in range from both ends: no report.
    dev.write(indices, 0, bytemuck::cast_slice(&[-4i32, 3, 0])).unwrap();
    let op = Op::IndexSelect {
        input: f(input, 4),
        indices: View::new(indices, Layout::contiguous([3]), DType::I32),
        out: f(out, 3),
        axis: 0,
    };
    dev.run(&op).unwrap();
    dev.read(out, 0, &mut back).unwrap();
    assert_eq!(bytemuck::cast_slice::<u8, f32>(&back), &[1.0, 4.0, 1.0]);
}

/// Integer test data: the dtype's extremes, values around them and around 2^24 (where f32
/// stops being exact), small values, and random bits.
fn random_ints(rng: &mut Rng, elements: usize, dtype: DType) -> Vec<u8> {
    let (lo, hi) = dtype.int_range().expect("an integer dtype");
    let special = [lo, lo + 1, -1, 0, 1, 2, 3, -3, 1 << 24, (1 << 24) + 1, hi - 1, hi];
    let size = dtype.size_in_bytes();
    let mut out = Vec::with_capacity(elements * size);
    for _ in 0..elements {
        let v = match rng.below(3) {
            0 => special[rng.below(special.len())].clamp(lo, hi),
            1 => rng.below(7) as i128 - 3,
            _ => i128::from(rng.next()),
        };
        out.extend_from_slice(&(v as u64).to_le_bytes()[..size]);
    }
    out
}

#[test]
fn integer_arithmetic_matches_the_cpu_exactly() {
    let dev = emulated();
    let mut rng = Rng(0x1e57);
    let dims = [7, 9];
    let n = 63;
    for t in DType::INTS {
        let x = |i| contiguous(i, &dims, t);
        let mut ops: Vec<Op> = BinaryOp::ALL
            .into_iter()
            .filter(|&op| op != BinaryOp::Pow)
            .map(|op| Op::Binary { op, lhs: x(0), rhs: x(1), out: x(2) })
            .collect();
        ops.extend(manychips_api::CompareOp::ALL.into_iter().map(|op| Op::Compare {
            op,
            lhs: x(0),
            rhs: x(1),
            out: contiguous(2, &dims, DType::U8),
        }));
        if t.is_signed_int() {
            for op in [manychips_api::UnaryOp::Neg, manychips_api::UnaryOp::Abs] {
                ops.push(Op::Unary { op, input: x(0), out: x(2) });
            }
        }
        for op in ReduceOp::ALL.into_iter().filter(|&op| op != ReduceOp::Mean) {
            let out = contiguous(2, &[7, 1], if op.is_arg() { DType::U32 } else { t });
            ops.push(Op::Reduce { op, input: x(0), out, axis: 1 });
        }
        for d in DType::ALL {
            ops.push(Op::Cast { input: x(0), out: contiguous(2, &dims, d) });
        }
        for op in ops {
            let out = op.output();
            let case = Case {
                data: vec![
                    random_ints(&mut rng, n, t),
                    random_ints(&mut rng, n, t),
                    vec![0; out.numel() * out.dtype.size_in_bytes()],
                ],
                op,
            };
            agrees(&dev, &case, 0.0);
        }
    }
}

#[test]
fn a_sticky_fault_fails_the_device_for_good() {
    let config = EmulatorConfig {
        fault_after: Some((1, CUresult::CUDA_ERROR_ILLEGAL_ADDRESS)),
        ..EmulatorConfig::default()
    };
    let dev = CudaDevice::emulated_with(config).unwrap();
    let a = dev.alloc(64).unwrap();
    let v = View::new(a, Layout::contiguous([16]), DType::F32);
    dev.run(&Op::Fill { out: v.clone(), value: 1.0 }).unwrap();
    // The second launch faults; like a GPU, the error shows at the next call.
    dev.run(&Op::Fill { out: v.clone(), value: 2.0 }).unwrap();
    let err = dev.synchronize().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeviceLost, "{err}");
    assert!(err.is_device_fault());
    assert!(err.to_string().contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{err}");
    // Every later call answers the same, without touching the context.
    let mut back = [0u8; 4];
    for e in [
        dev.read(a, 0, &mut back).unwrap_err(),
        dev.write(a, 0, &[0; 4]).unwrap_err(),
        dev.alloc(4).unwrap_err(),
        dev.run(&Op::Fill { out: v, value: 0.0 }).unwrap_err(),
        dev.memory().unwrap_err(),
        dev.free(a).unwrap_err(),
        dev.synchronize().unwrap_err(),
    ] {
        assert_eq!(e, err);
    }
}

#[test]
fn memory_errors_and_misuse_are_clear_errs() {
    let dev = CudaDevice::emulated_with(EmulatorConfig { memory: 1 << 20, ..Default::default() })
        .unwrap();
    assert_eq!(dev.alloc(2 << 20).unwrap_err().kind(), ErrorKind::OutOfMemory);
    let a = dev.alloc(600 << 10).unwrap();
    let oom = dev.alloc(600 << 10).unwrap_err();
    assert_eq!(oom.kind(), ErrorKind::OutOfMemory, "{oom}");
    // Not sticky: after a free there is room again.
    dev.free(a).unwrap();
    let b = dev.alloc(600 << 10).unwrap();
    assert!(dev.memory().unwrap().free < 1 << 20);
    // A buffer of another device, a freed buffer, a view past the end.
    let other = emulated();
    let foreign = other.alloc(16).unwrap();
    let v = |id, n| View::new(id, Layout::contiguous([n]), DType::F32);
    let e = dev.run(&Op::Copy { input: v(foreign, 4), out: v(b, 4) }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeviceMismatch);
    let c = dev.alloc(16).unwrap();
    dev.free(c).unwrap();
    assert_eq!(dev.write(c, 0, &[0; 4]).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let e = dev.run(&Op::Fill { out: v(b, 1 << 20), value: 0.0 }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("cuda-emulator:0") && e.to_string().contains("fill"), "{e}");
    // Shape mistakes name op, shapes and dtypes.
    let d = dev.alloc(16).unwrap();
    let e = dev.run(&Op::Binary { op: BinaryOp::Add, lhs: v(b, 4), rhs: v(b, 3), out: v(d, 4) });
    let e = e.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    assert!(e.to_string().contains("binary.add") && e.to_string().contains("f32[3]"), "{e}");
    assert_eq!(dev.read(b, 600 << 10, &mut [0; 1]).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn copies_within_a_buffer_may_overlap() {
    let dev = emulated();
    let a = dev.alloc(16).unwrap();
    dev.write(a, 0, &(0u8..16).collect::<Vec<_>>()).unwrap();
    dev.copy(a, 0, a, 4, 10).unwrap();
    let mut back = [0u8; 16];
    dev.read(a, 0, &mut back).unwrap();
    assert_eq!(back, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 15]);
    let b = dev.alloc(8).unwrap();
    dev.copy(a, 8, b, 0, 8).unwrap();
    assert!(dev.copy_to_peer(a, 0, &dev, b, 0, 0).unwrap(), "a device reaches itself");
    // Two emulated devices share no peer link: the caller is told to stage the copy.
    let other = emulated();
    let c = other.alloc(8).unwrap();
    other.write(c, 0, &[0; 8]).unwrap();
    assert!(!dev.reaches(&other));
    assert!(!dev.copy_to_peer(b, 0, &other, c, 0, 8).unwrap());
    let mut back = [1u8; 8];
    other.read(c, 0, &mut back).unwrap();
    assert_eq!(back, [0; 8], "nothing was copied");
    let mut staged = [0u8; 8];
    dev.read(b, 0, &mut staged).unwrap();
    assert_eq!(staged, [4, 5, 6, 7, 8, 9, 14, 15]);
    assert!(!dev.info().peer_copy);
}

#[test]
fn a_dropped_device_with_live_buffers_and_queued_work_is_fine() {
    let dev = emulated();
    let a = dev.alloc(1024).unwrap();
    dev.run(&Op::Fill { out: View::new(a, Layout::contiguous([256]), DType::F32), value: 3.0 })
        .unwrap();
    drop(dev);
    assert!(emulated().memory().unwrap().free > 0);
}

/// `Op::Scatter` along axis 0: `out` [rows, cols] (its bytes `init`) from `src` [len, cols]
/// at i64 `indices` [len, cols]; out's bytes afterwards.
fn scatter_on(
    dev: &dyn Device,
    op: ScatterOp,
    t: DType,
    (rows, cols): (usize, usize),
    (init, src, indices): (&[u8], &[u8], &[i64]),
) -> manychips_api::Result<Vec<u8>> {
    let len = indices.len() / cols;
    let case = Case {
        data: vec![src.to_vec(), bytemuck::cast_slice(indices).to_vec(), init.to_vec()],
        op: Op::Scatter {
            op,
            src: contiguous(0, &[len, cols], t),
            indices: contiguous(1, &[len, cols], DType::I64),
            out: contiguous(2, &[rows, cols], t),
            axis: 0,
        },
    };
    run_on(dev, &case).map(|mut buffers| buffers.remove(2))
}

#[test]
fn scatter_applies_duplicates_in_order_along_the_axis() {
    let dev = emulated();
    let cpu = CpuDevice::with_threads(1).expect("cpu device");
    let f32s = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    // Column 0 names row 1 three times (-2 is row 1 of 3), then row 2; column 1 names row 0
    // four times (-3 is row 0).
    let init = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let src = f32s(&[10.0, 20.0, 11.0, 21.0, 12.0, 22.0, 13.0, 23.0]);
    let idx = [1i64, 0, 1, 0, -2, 0, 2, -3];
    let expect = [
        (ScatterOp::Assign, [1.0, 23.0, 12.0, 4.0, 13.0, 6.0]), // the last one wins
        (ScatterOp::Sum, [1.0, 88.0, 36.0, 4.0, 18.0, 6.0]),
        (ScatterOp::Max, [1.0, 23.0, 12.0, 4.0, 13.0, 6.0]),
        (ScatterOp::Min, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    ];
    for (op, want) in expect {
        for d in [&dev as &dyn Device, &cpu] {
            let got = scatter_on(d, op, DType::F32, (3, 2), (&init, &src, &idx)).unwrap();
            assert_eq!(bytemuck::cast_slice::<u8, f32>(&got), &want, "{op:?}");
        }
    }
    // f16 sums round at every store: 2048 + 1 is 2048 (ties to even), three times over; an
    // f32 accumulator would give 2052.
    let h = |v: &[f32]| v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect::<Vec<_>>();
    let got = scatter_on(
        &dev,
        ScatterOp::Sum,
        DType::F16,
        (1, 1),
        (&h(&[2048.0]), &h(&[1.0; 3]), &[0; 3]),
    );
    assert_eq!(got.unwrap(), h(&[2048.0]));
    // Integers wrap: 3 · 200 · 2 = 1200 = 176 mod 256; i32::MAX + 1 = i32::MIN.
    let got = scatter_on(&dev, ScatterOp::Prod, DType::U8, (1, 1), (&[3], &[200, 2], &[0, -1]));
    assert_eq!(got.unwrap(), [176]);
    let i32s = |v: &[i32]| bytemuck::cast_slice::<i32, u8>(v).to_vec();
    let got = scatter_on(
        &dev,
        ScatterOp::Sum,
        DType::I32,
        (1, 1),
        (&i32s(&[i32::MAX]), &i32s(&[1]), &[0]),
    );
    assert_eq!(got.unwrap(), i32s(&[i32::MIN]));
    // Max and min ignore a NaN operand, as binary maximum / minimum.
    let nan = f32s(&[f32::NAN, 0.5, 3.0]);
    let got = scatter_on(&dev, ScatterOp::Max, DType::F32, (1, 1), (&f32s(&[1.0]), &nan, &[0; 3]));
    assert_eq!(got.unwrap(), f32s(&[3.0]));
    let got = scatter_on(&dev, ScatterOp::Min, DType::F32, (1, 1), (&f32s(&[1.0]), &nan, &[0; 3]));
    assert_eq!(got.unwrap(), f32s(&[0.5]));
    // An index out of range is skipped and reported as given; the rest still applies.
    let out = dev.alloc(8).unwrap();
    let (s, x) = (dev.alloc(12).unwrap(), dev.alloc(24).unwrap());
    dev.write(out, 0, &f32s(&[1.0, 2.0])).unwrap();
    dev.write(s, 0, &f32s(&[10.0, 20.0, 30.0])).unwrap();
    dev.write(x, 0, bytemuck::cast_slice(&[1i64, 5, 0])).unwrap();
    let op = Op::Scatter {
        op: ScatterOp::Sum,
        src: View::new(s, Layout::contiguous([3]), DType::F32),
        indices: View::new(x, Layout::contiguous([3]), DType::I64),
        out: View::new(out, Layout::contiguous([2]), DType::F32),
        axis: 0,
    };
    dev.run(&op).unwrap();
    let err = dev.synchronize().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IndexOutOfRange, "{err}");
    assert!(err.to_string().contains("scatter.sum") && err.to_string().contains('5'), "{err}");
    let mut back = [0u8; 8];
    dev.read(out, 0, &mut back).unwrap();
    assert_eq!(bytemuck::cast_slice::<u8, f32>(&back), &[31.0, 12.0]);
}

#[test]
fn scatter_matches_the_cpu_bit_for_bit_on_strided_views() {
    let dev = emulated();
    let mut rng = Rng(0x5ca7);
    let (rows, cols, len) = (5, 4, 9);
    for t in DType::ALL {
        for index in DType::INDICES {
            for op in ScatterOp::ALL {
                // out transposed, src read with a gap between rows.
                let out = view(2, &[rows, cols], &[1, rows], 0, t);
                let src = view(0, &[len, cols], &[cols + 2, 1], 1, t);
                let data = |rng: &mut Rng, n| {
                    if t.is_float() { random_bytes(rng, n, t, 0) } else { random_ints(rng, n, t) }
                };
                let case = Case {
                    data: vec![
                        data(&mut rng, 1 + len * (cols + 2)),
                        random_bytes(&mut rng, len * cols, index, rows as u32),
                        data(&mut rng, rows * cols),
                    ],
                    op: Op::Scatter {
                        op,
                        src,
                        indices: contiguous(1, &[len, cols], index),
                        out,
                        axis: 0,
                    },
                };
                agrees(&dev, &case, 0.0);
            }
        }
    }
}

/// Values for argsort: floats with NaNs (both signs, other payloads, signalling), ±0, ±∞,
/// subnormals and many ties; integers with their extremes and many ties.
fn sort_values(rng: &mut Rng, elements: usize, t: DType) -> Vec<u8> {
    if !t.is_float() {
        return random_ints(rng, elements, t);
    }
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc0_1234),
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::from_bits(1),
        -f32::from_bits(1),
        f32::MAX,
        f32::MIN,
        1.0,
        -1.0,
        0.5,
    ];
    let mut out = Vec::with_capacity(elements * t.size_in_bytes());
    for _ in 0..elements {
        let x = match rng.below(3) {
            0 => specials[rng.below(specials.len())],
            1 => rng.below(5) as f32 - 2.0,
            _ => rng.float(),
        };
        match t {
            DType::F32 => out.extend_from_slice(&x.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
            _ => out.extend_from_slice(&bf16::from_f32(x).to_le_bytes()),
        }
    }
    out
}

/// Input dims, its strides and offset, out strides and offset, axis.
type SortForm = (&'static [usize], &'static [usize], usize, &'static [usize], usize, usize);

#[test]
fn argsort_matches_the_cpu_on_awkward_values_and_strided_views() {
    let dev = emulated();
    let mut rng = Rng(0x50f7);
    // (input dims, its strides and offset, out strides and offset, axis): a padded input and
    // a transposed output; the axis first with a gap; lanes long enough for the global
    // merge stages (m = 4096 > the 2048-element tile); lanes of one element; a lane of two.
    let forms: [SortForm; 6] = [
        (&[5, 37], &[40, 1], 2, &[1, 5], 0, 1),
        (&[37, 3], &[1, 41], 1, &[3, 1], 4, 0),
        (&[2, 2100], &[2100, 1], 0, &[1, 2], 0, 1),
        (&[2100, 3], &[3, 1], 0, &[3, 1], 3, 0),
        (&[4, 1], &[1, 1], 0, &[1, 4], 0, 1),
        (&[2], &[3], 1, &[1], 0, 0),
    ];
    for t in DType::ALL {
        for &(dims, in_strides, in_offset, out_strides, out_offset, axis) in &forms {
            let span = |strides: &[usize], offset: usize| {
                offset + dims.iter().zip(strides).map(|(d, s)| (d - 1) * s).sum::<usize>() + 1
            };
            for descending in [false, true] {
                let input = sort_values(&mut rng, span(in_strides, in_offset), t);
                let junk = random_bytes(&mut rng, span(out_strides, out_offset), DType::U32, 99);
                let case = Case {
                    data: vec![input, junk],
                    op: Op::ArgSort {
                        input: view(0, dims, in_strides, in_offset, t),
                        out: view(1, dims, out_strides, out_offset, DType::U32),
                        axis,
                        descending,
                    },
                };
                agrees(&dev, &case, 0.0);
            }
        }
    }
    // The orders themselves, on the CPU's word: NaN last ascending and first descending,
    // −0 equal to +0 (ties by position in both directions), i64 extremes exact.
    let f32s = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    let sorted = |t: DType, bytes: Vec<u8>, descending: bool| {
        let n = bytes.len() / t.size_in_bytes();
        let case = Case {
            data: vec![bytes, vec![0; 4 * n]],
            op: Op::ArgSort {
                input: contiguous(0, &[n], t),
                out: contiguous(1, &[n], DType::U32),
                axis: 0,
                descending,
            },
        };
        let got = run_on(&dev, &case).unwrap_or_else(|e| panic!("{e}"));
        bytemuck::cast_slice::<u8, u32>(&got[1]).to_vec()
    };
    let x = f32s(&[f32::NAN, 0.0, -0.0, f32::NEG_INFINITY, -f32::NAN, 1.0, 0.0]);
    assert_eq!(sorted(DType::F32, x.clone(), false), [3, 1, 2, 6, 5, 0, 4]);
    assert_eq!(sorted(DType::F32, x, true), [0, 4, 5, 1, 2, 6, 3]);
    let x: Vec<u8> = [i64::MAX, i64::MIN, -1, i64::MIN + 1, 0, i64::MAX - 1, i64::MIN]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(sorted(DType::I64, x.clone(), false), [1, 6, 3, 2, 4, 5, 0]);
    assert_eq!(sorted(DType::I64, x, true), [0, 5, 4, 2, 3, 1, 6]);
}
