// Random shapes, dtypes, axes, indices and device mixes thrown at the public API: nothing
// panics, ever; every refusal is an `Err` with a message naming the op. Results that are
// `Ok` are read back, so errors found while the work runs (bad index values) surface too.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use manychips::sim::{SimDevice, SimProfile};
use manychips::train::Var;
use manychips::train::nn;
use manychips::{
    BinaryOp, CompareOp, CpuDevice, DType, DeviceRef, ReduceOp, Result, Tensor, UnaryOp,
};
use proptest::prelude::*;

/// Two CPU devices and a simulated chip: tensors of different devices must be refused.
fn devices() -> &'static [DeviceRef; 3] {
    static DEVICES: OnceLock<[DeviceRef; 3]> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let a: DeviceRef = Arc::new(CpuDevice::with_threads(1).expect("cpu"));
        let b: DeviceRef = Arc::new(CpuDevice::with_threads(1).expect("cpu"));
        let sim: DeviceRef =
            Arc::new(SimDevice::new(a.clone(), SimProfile::new("chip"), 0).expect("sim"));
        [a, b, sim]
    })
}

const DTYPES: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::U32, DType::U8];

#[derive(Clone, Debug)]
struct Spec {
    dims: Vec<usize>,
    dtype: usize,
    device: usize,
    seed: u64,
    transposed: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (prop::collection::vec(0usize..5, 0..4), 0usize..5, 0usize..3, any::<u64>(), any::<bool>())
        .prop_map(|(dims, dtype, device, seed, transposed)| Spec {
            dims,
            dtype,
            device,
            seed,
            transposed,
        })
}

impl Spec {
    fn make(&self) -> Result<Tensor> {
        let device = &devices()[self.device % 3];
        let dtype = DTYPES[self.dtype % 5];
        // Small non-negative values, so u32/u8 tensors are valid indices sometimes.
        let t = Tensor::rand(0.0, 4.0, self.dims.clone(), DType::F32, self.seed, device)?
            .affine(1.0, 0.0)?;
        let t = if dtype == DType::F32 { t } else { t.cast(dtype)? };
        if self.transposed && t.rank() >= 2 { t.t() } else { Ok(t) }
    }
}

#[derive(Clone, Debug)]
enum Call {
    Binary(usize),
    Compare(usize),
    Unary(usize),
    Cast(usize),
    Reduce(usize, usize, bool),
    Softmax(usize, bool),
    Matmul,
    Reshape(Vec<usize>),
    Transpose(usize, usize),
    Narrow(usize, usize, usize),
    BroadcastAs(Vec<usize>),
    Cat(usize),
    IndexSelect(usize),
    Gather(usize),
    IndexAdd(usize),
    ScatterAdd(usize),
    Where,
    ToDevice(usize),
    Backward(usize),
    CrossEntropy(Vec<u32>),
}

fn call() -> impl Strategy<Value = Call> {
    let dims = prop::collection::vec(0usize..6, 0..4);
    prop_oneof![
        (0usize..7).prop_map(Call::Binary),
        (0usize..6).prop_map(Call::Compare),
        (0usize..16).prop_map(Call::Unary),
        (0usize..5).prop_map(Call::Cast),
        (0usize..5, 0usize..5, any::<bool>()).prop_map(|(o, a, k)| Call::Reduce(o, a, k)),
        (0usize..5, any::<bool>()).prop_map(|(a, l)| Call::Softmax(a, l)),
        Just(Call::Matmul),
        dims.clone().prop_map(Call::Reshape),
        (0usize..5, 0usize..5).prop_map(|(a, b)| Call::Transpose(a, b)),
        (0usize..5, 0usize..6, 0usize..6).prop_map(|(a, s, l)| Call::Narrow(a, s, l)),
        dims.prop_map(Call::BroadcastAs),
        (0usize..5).prop_map(Call::Cat),
        (0usize..5).prop_map(Call::IndexSelect),
        (0usize..5).prop_map(Call::Gather),
        (0usize..5).prop_map(Call::IndexAdd),
        (0usize..5).prop_map(Call::ScatterAdd),
        Just(Call::Where),
        (0usize..3).prop_map(Call::ToDevice),
        (0usize..6).prop_map(Call::Backward),
        prop::collection::vec(0u32..8, 0..6).prop_map(Call::CrossEntropy),
    ]
}

fn run(call: &Call, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match call {
        Call::Binary(i) => a.binary(BinaryOp::ALL[*i % BinaryOp::ALL.len()], b),
        Call::Compare(i) => a.compare(CompareOp::ALL[*i % CompareOp::ALL.len()], b),
        Call::Unary(i) => a.unary(UnaryOp::ALL[*i % UnaryOp::ALL.len()]),
        Call::Cast(d) => a.cast(DTYPES[*d]),
        Call::Reduce(o, axis, keep) => {
            a.reduce(ReduceOp::ALL[*o % ReduceOp::ALL.len()], *axis, *keep)
        }
        Call::Softmax(axis, log) => {
            if *log {
                a.log_softmax(*axis)
            } else {
                a.softmax(*axis)
            }
        }
        Call::Matmul => a.matmul(b),
        Call::Reshape(dims) => a.reshape(dims.clone()),
        Call::Transpose(x, y) => a.transpose(*x, *y),
        Call::Narrow(axis, start, len) => a.narrow(*axis, *start, *len),
        Call::BroadcastAs(dims) => a.broadcast_as(dims.clone()),
        Call::Cat(axis) => Tensor::cat(&[a, b], *axis),
        Call::IndexSelect(axis) => a.index_select(*axis, b),
        Call::Gather(axis) => a.gather(*axis, b),
        Call::IndexAdd(axis) => a.index_add(*axis, b, a),
        Call::ScatterAdd(axis) => a.scatter_add(*axis, b, a),
        Call::Where => b.where_cond(a, a),
        Call::ToDevice(d) => a.to_device(&devices()[*d]),
        Call::Backward(k) => {
            let x = Var::leaf(a.clone());
            let y = match k {
                0 => x.mul(&Var::constant(b.clone()))?,
                1 => x.matmul(&Var::leaf(b.clone()))?,
                2 => x.softmax(0)?,
                3 => x.gelu()?,
                4 => x.sum_all()?,
                _ => x.index_select(0, b)?,
            };
            let grads = y.sum_all()?.backward()?;
            grads.get(x.id()).cloned().map_or_else(|| Ok(a.clone()), Ok)
        }
        Call::CrossEntropy(targets) => {
            nn::cross_entropy(&Var::leaf(a.clone()), targets).map(|l| l.tensor().clone())
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_public_api_never_panics(a in spec(), b in spec(), call in call()) {
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<f64>> {
            let (a, b) = (a.make()?, b.make()?);
            run(&call, &a, &b)?.to_f64_vec()
        }));
        match outcome {
            Err(_) => prop_assert!(false, "{call:?} on {a:?}, {b:?} panicked"),
            Ok(Err(e)) => prop_assert!(!e.to_string().trim().is_empty(), "{call:?}: an empty message"),
            Ok(Ok(_)) => {}
        }
    }
}
