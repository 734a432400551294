// Every differentiable op's gradient against central finite differences on random inputs,
// including broadcast operands and non-contiguous (transposed) inputs.
//
// The loss is `sum(f(x) ⊙ R)` with a fixed random `R`, so every output element's gradient
// matters and none is trivially uniform. Finite differences run in f32 on the CPU device
// with step 1e-2; the tolerance (2e-3 absolute + 1e-2 relative) sits well above their
// rounding and truncation error and well below any real mistake (a wrong factor or sign).

use std::sync::{Arc, OnceLock};

use manychips::train::nn::{self, Activation, CrossEntropy, Reduction};
use manychips::train::{Grads, ParamStore, Var, no_grad};
use manychips::{CpuDevice, DType, DeviceRef, Result, ScatterOp, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One CPU device for the whole file: tensors made by a test and by `check` must meet.
fn cpu() -> DeviceRef {
    static DEVICE: OnceLock<DeviceRef> = OnceLock::new();
    DEVICE.get_or_init(|| Arc::new(CpuDevice::with_threads(1).expect("cpu device"))).clone()
}

/// One input: logical shape, values, and whether it is stored transposed (its last two dims
/// swapped in memory, then viewed through `t()`).
#[derive(Clone)]
struct Input {
    dims: Vec<usize>,
    data: Vec<f64>,
    transposed: bool,
}

fn input(dims: &[usize], seed: u64) -> Input {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = dims.iter().product();
    Input {
        dims: dims.to_vec(),
        data: (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect(),
        transposed: false,
    }
}

/// Values kept at least `gap` from zero (for relu's kink, and for division).
fn away_from_zero(mut i: Input, gap: f64) -> Input {
    for v in &mut i.data {
        *v = v.signum() * (v.abs() + gap);
    }
    i
}

fn positive(mut i: Input) -> Input {
    for v in &mut i.data {
        *v = v.abs() + 0.5;
    }
    i
}

fn transposed(mut i: Input) -> Input {
    i.transposed = true;
    i
}

impl Input {
    fn tensor(&self, device: &DeviceRef) -> Tensor {
        if !self.transposed {
            return Tensor::from_f64(&self.data, self.dims.clone(), DType::F32, device)
                .expect("upload");
        }
        let r = self.dims.len();
        let (rows, cols) = (self.dims[r - 2], self.dims[r - 1]);
        let batch: usize = self.dims[..r - 2].iter().product();
        let mut stored = vec![0.0; self.data.len()];
        for b in 0..batch {
            for i in 0..rows {
                for j in 0..cols {
                    stored[b * rows * cols + j * rows + i] =
                        self.data[b * rows * cols + i * cols + j];
                }
            }
        }
        let mut dims = self.dims.clone();
        dims.swap(r - 2, r - 1);
        let t =
            Tensor::from_f64(&stored, dims, DType::F32, device).expect("upload").t().expect("t");
        assert!(!t.is_contiguous());
        t
    }
}

/// `sum(f(xs) ⊙ R)` as f64.
fn loss_value(
    f: &dyn Fn(&[Var]) -> Result<Var>,
    inputs: &[Input],
    r: &Tensor,
    device: &DeviceRef,
) -> f64 {
    let vars: Vec<Var> = inputs.iter().map(|i| Var::constant(i.tensor(device))).collect();
    let out = f(&vars).expect("forward");
    let out = out.tensor().cast(DType::F32).expect("cast");
    out.mul(r).expect("mul").to_f64_vec().expect("read").iter().sum()
}

/// Checks the analytic gradient of every input against central differences.
fn check(name: &str, inputs: Vec<Input>, f: impl Fn(&[Var]) -> Result<Var>) {
    let device = cpu();
    let leaves: Vec<Var> = inputs.iter().map(|i| Var::leaf(i.tensor(&device))).collect();
    let out = f(&leaves).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let r = Tensor::randn(0.0, 1.0, out.dims().to_vec(), DType::F32, 99, &device).expect("r");
    let r_var = Var::constant(r.cast(out.tensor().dtype()).expect("cast"));
    let grads: Grads =
        out.mul(&r_var).expect("mul").sum_all().expect("sum").backward().expect("backward");
    let h = 1e-2;
    for (k, leaf) in leaves.iter().enumerate() {
        let analytic = grads
            .get(leaf.id())
            .unwrap_or_else(|| panic!("{name}: input {k} got no gradient"))
            .to_f64_vec()
            .expect("read grad");
        assert_eq!(analytic.len(), inputs[k].data.len(), "{name}: gradient {k} has the wrong size");
        for (j, &analytic) in analytic.iter().enumerate() {
            let mut plus = inputs.clone();
            plus[k].data[j] += h;
            let mut minus = inputs.clone();
            minus[k].data[j] -= h;
            let numeric = (loss_value(&f, &plus, &r, &device)
                - loss_value(&f, &minus, &r, &device))
                / (2.0 * h);
            let tol = 2e-3 + 1e-2 * numeric.abs();
            assert!(
                (analytic - numeric).abs() <= tol,
                "{name}: d/d input{k}[{j}] analytic {analytic} vs numeric {numeric}"
            );
        }
    }
}

#[test]
fn elementwise_binary_with_broadcasting() {
    check("add", vec![input(&[3, 4], 1), input(&[4], 2)], |x| x[0].add(&x[1]));
    check("add [2,1,4]+[3,1]", vec![input(&[2, 1, 4], 3), input(&[3, 1], 4)], |x| x[0].add(&x[1]));
    check("sub", vec![input(&[3, 4], 5), input(&[3, 1], 6)], |x| x[0].sub(&x[1]));
    check("mul", vec![input(&[2, 3], 7), input(&[1, 3], 8)], |x| x[0].mul(&x[1]));
    check("div", vec![input(&[2, 3], 9), away_from_zero(input(&[3], 10), 0.5)], |x| {
        x[0].div(&x[1])
    });
    check("mul transposed", vec![transposed(input(&[3, 4], 11)), input(&[3, 4], 12)], |x| {
        x[0].mul(&x[1])
    });
    check("mul same var", vec![input(&[5], 13)], |x| x[0].mul(&x[0]));
}

#[test]
fn elementwise_unary() {
    check("neg", vec![input(&[2, 3], 20)], |x| x[0].neg());
    check("affine", vec![input(&[2, 3], 21)], |x| x[0].affine(-1.5, 0.25));
    check("exp", vec![input(&[2, 3], 22)], |x| x[0].exp());
    check("log", vec![positive(input(&[2, 3], 23))], |x| x[0].log());
    check("sqrt", vec![positive(input(&[2, 3], 24))], |x| x[0].sqrt());
    check("rsqrt", vec![positive(input(&[2, 3], 25))], |x| x[0].rsqrt());
    check("tanh", vec![input(&[2, 3], 26)], |x| x[0].tanh());
    check("sigmoid", vec![input(&[2, 3], 27)], |x| x[0].sigmoid());
    check("relu", vec![away_from_zero(input(&[2, 3], 28), 0.05)], |x| x[0].relu());
    check("gelu", vec![input(&[3, 3], 29)], |x| x[0].affine(2.0, 0.0)?.gelu());
    check("silu", vec![input(&[3, 3], 30)], |x| x[0].affine(2.0, 0.0)?.silu());
    check("square transposed", vec![transposed(input(&[2, 3], 31))], |x| x[0].square());
}

#[test]
fn matmul_plain_batched_and_transposed() {
    check("matmul", vec![input(&[3, 4], 40), input(&[4, 2], 41)], |x| x[0].matmul(&x[1]));
    check("matmul batch broadcast", vec![input(&[2, 3, 4], 42), input(&[4, 5], 43)], |x| {
        x[0].matmul(&x[1])
    });
    check("matmul both batched", vec![input(&[2, 2, 3], 44), input(&[2, 3, 2], 45)], |x| {
        x[0].matmul(&x[1])
    });
    check("matmul transposed lhs", vec![transposed(input(&[3, 4], 46)), input(&[4, 2], 47)], |x| {
        x[0].matmul(&x[1])
    });
    check("matmul t()", vec![input(&[3, 4], 48), input(&[2, 4], 49)], |x| x[0].matmul(&x[1].t()?));
}

#[test]
fn reductions_and_softmax() {
    check("sum axis 0", vec![input(&[3, 4], 50)], |x| x[0].sum(0));
    check("sum keepdim", vec![input(&[3, 4], 51)], |x| x[0].sum_keepdim(1));
    check("mean", vec![input(&[2, 3, 4], 52)], |x| x[0].mean(1));
    check("mean keepdim transposed", vec![transposed(input(&[3, 4], 53))], |x| {
        x[0].mean_keepdim(0)
    });
    check("sum_all", vec![input(&[2, 3], 54)], |x| x[0].sum_all());
    check("mean_all", vec![input(&[2, 3], 55)], |x| x[0].mean_all());
    check("softmax", vec![input(&[3, 5], 56)], |x| x[0].softmax(1));
    check("softmax axis 0", vec![transposed(input(&[4, 3], 57))], |x| x[0].softmax(0));
    check("log_softmax", vec![input(&[3, 5], 58)], |x| x[0].log_softmax(1));
    check("log_softmax 3-d", vec![input(&[2, 3, 4], 59)], |x| x[0].log_softmax(2));
}

#[test]
fn shape_ops() {
    check("reshape", vec![input(&[2, 6], 60)], |x| x[0].reshape([3, 4]));
    check("reshape transposed", vec![transposed(input(&[3, 4], 61))], |x| x[0].reshape([6, 2]));
    check("permute", vec![input(&[2, 3, 4], 62)], |x| x[0].permute([2, 0, 1]));
    check("transpose", vec![input(&[2, 3, 4], 63)], |x| x[0].transpose(0, 2));
    check("narrow", vec![input(&[3, 5], 64)], |x| x[0].narrow(1, 1, 3));
    check("narrow at start", vec![input(&[4, 2], 65)], |x| x[0].narrow(0, 0, 2));
    check("broadcast_as", vec![input(&[3, 1], 66)], |x| x[0].broadcast_as([2, 3, 4]));
    check("unsqueeze/squeeze", vec![input(&[3, 4], 67)], |x| x[0].unsqueeze(1)?.squeeze(1));
    check("flatten", vec![transposed(input(&[2, 3], 68))], |x| x[0].flatten());
    check("contiguous", vec![transposed(input(&[2, 3], 69))], |x| x[0].contiguous());
    check("cat", vec![input(&[2, 3], 70), input(&[1, 3], 71), input(&[2, 3], 72)], |x| {
        Var::cat(&[&x[0], &x[1], &x[2]], 0)
    });
    check("cat axis 1", vec![input(&[2, 3], 73), transposed(input(&[2, 2], 74))], |x| {
        Var::cat(&[&x[0], &x[1]], 1)
    });
}

#[test]
fn selection_ops() {
    let device = cpu();
    let ids = Tensor::from_slice(&[2u32, 0, 2, 3], [4], &device).expect("ids");
    check("index_select (repeated rows)", vec![input(&[4, 3], 80)], move |x| {
        x[0].index_select(0, &ids)
    });
    let picks = Tensor::from_slice(&[1u32, 0, 3, 3, 2, 0], [3, 2], &device).expect("picks");
    check("gather", vec![input(&[3, 4], 81)], move |x| x[0].gather(1, &picks));
}

#[test]
fn losses() {
    check("cross_entropy", vec![input(&[4, 5], 90)], |x| nn::cross_entropy(&x[0], &[1, 0, 4, 2]));
    let opts =
        CrossEntropy { ignore_index: Some(7), label_smoothing: 0.1, reduction: Reduction::Sum };
    check("cross_entropy smoothing + ignore", vec![input(&[4, 5], 91)], move |x| {
        nn::cross_entropy_with(&x[0], &[1, 7, 4, 2], &opts)
    });
    // Per-row losses (what a data-parallel share returns), weighted into one number so that
    // each row's gradient differs: the ignored row, the smoothing and the repeated target
    // each change a different term of the fused backward.
    let per_row = |ignore, smoothing| CrossEntropy {
        ignore_index: ignore,
        label_smoothing: smoothing,
        reduction: Reduction::None,
    };
    for (name, opts, seed) in [
        ("cross_entropy rows", per_row(None, 0.0), 94),
        ("cross_entropy rows + ignore", per_row(Some(7), 0.0), 95),
        ("cross_entropy rows + smoothing", per_row(None, 0.25), 96),
    ] {
        check(name, vec![input(&[4, 5], seed)], move |x| {
            let targets = if opts.ignore_index.is_some() { [2, 7, 2, 0] } else { [2, 3, 2, 0] };
            let rows = nn::cross_entropy_with(&x[0], &targets, &opts)?;
            let device = x[0].tensor().device().clone();
            let scale = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0], [4], &device)?;
            rows.mul(&Var::constant(scale))?.sum_all()
        });
    }
    check("mse", vec![input(&[3, 2], 92), input(&[3, 2], 93)], |x| {
        nn::mse(&x[0], &x[1], Reduction::Mean)
    });
}

#[test]
fn layers() {
    // Layers' parameters are leaves too: check the gradient with respect to the input, and
    // the parameters' gradients through the same finite differences by making them inputs.
    check("layer_norm", vec![input(&[3, 4], 100), input(&[4], 101), input(&[4], 102)], |x| {
        let centred = x[0].sub(&x[0].mean_keepdim(1)?)?;
        let var = centred.square()?.mean_keepdim(1)?;
        centred.mul(&var.affine(1.0, 1e-5)?.rsqrt()?)?.mul(&x[1])?.add(&x[2])
    });
    let device = cpu();
    let store = ParamStore::new(&device, 3);
    let ln = nn::LayerNorm::new(&store.sub("ln"), 4).expect("ln");
    let rms = nn::RmsNorm::new(&store.sub("rms"), 4).expect("rms");
    let lin = nn::Linear::new(&store.sub("lin"), 4, 3, true).expect("lin");
    let attn = nn::CausalSelfAttention::new(&store.sub("attn"), 4, 2).expect("attn");
    check("LayerNorm layer", vec![input(&[3, 4], 103)], |x| ln.forward(&x[0]));
    check("RmsNorm layer", vec![input(&[3, 4], 104)], |x| rms.forward(&x[0]));
    check("Linear layer 3-d", vec![input(&[2, 3, 4], 105)], |x| lin.forward(&x[0]));
    for act in [Activation::Relu, Activation::Gelu, Activation::Silu, Activation::Tanh] {
        check(&format!("Linear + {act:?}"), vec![input(&[2, 3, 4], 107)], |x| {
            lin.forward_activated(&x[0], Some(act))
        });
    }
    check("attention", vec![input(&[2, 3, 4], 106)], |x| attn.forward(&x[0]));
    // The op itself, every operand's gradient, causal or not, one transposed.
    for causal in [true, false] {
        let operands = vec![
            input(&[2, 5, 3], 108),
            transposed(input(&[2, 5, 3], 109)),
            input(&[2, 5, 3], 110),
        ];
        check(&format!("Var::attention causal={causal}"), operands, |x| {
            x[0].attention(&x[1], &x[2], 0.7, causal)
        });
    }

    // And the parameters of a layer: the gradient `backward` reports under a param's id.
    let x = Var::constant(Tensor::randn(0.0, 1.0, [5, 4], DType::F32, 7, &device).expect("x"));
    let loss = lin.forward(&x).expect("fwd").square().expect("sq").sum_all().expect("sum");
    let grads = loss.backward().expect("backward");
    let gw = grads.get(lin.weight.id()).expect("weight grad").to_f64_vec().expect("read");
    let w = lin.weight.value().to_f64_vec().expect("w");
    let h = 1e-2;
    for j in 0..w.len() {
        let eval = |delta: f64| -> f64 {
            let mut v = w.clone();
            v[j] += delta;
            let wt = Tensor::from_f64(&v, [3, 4], DType::F32, &device).expect("w");
            let y = x.tensor().matmul(&wt.t().expect("t")).expect("mm");
            let y = y.add(&lin.bias.as_ref().expect("bias").value()).expect("bias");
            y.mul(&y).expect("sq").to_f64_vec().expect("read").iter().sum()
        };
        let numeric = (eval(h) - eval(-h)) / (2.0 * h);
        assert!(
            (gw[j] - numeric).abs() < 2e-3 + 1e-2 * numeric.abs(),
            "weight[{j}] {} vs {numeric}",
            gw[j]
        );
    }
}

#[test]
fn cast_passes_the_gradient_back_in_the_source_dtype() {
    let device = cpu();
    let x = Var::leaf(Tensor::randn(0.0, 1.0, [3, 4], DType::F32, 1, &device).expect("x"));
    let r = Tensor::randn(0.0, 1.0, [3, 4], DType::F32, 2, &device).expect("r");
    let y = x.cast(DType::BF16).expect("cast").cast(DType::F32).expect("cast back");
    let grads = y
        .mul(&Var::constant(r.clone()))
        .expect("mul")
        .sum_all()
        .expect("sum")
        .backward()
        .expect("bwd");
    let g = grads.get(x.id()).expect("grad");
    assert_eq!(g.dtype(), DType::F32);
    // d/dx sum(cast(cast(x)) ⊙ r) passes r through two casts: r rounded to bf16.
    let want =
        r.cast(DType::BF16).expect("c").cast(DType::F32).expect("c").to_vec::<f32>().expect("r");
    assert_eq!(g.to_vec::<f32>().expect("g"), want);
}

#[test]
fn gradients_accumulate_and_no_grad_records_nothing() {
    let device = cpu();
    let x = Var::leaf(Tensor::from_slice(&[1.0f32, 2.0, 3.0], [3], &device).expect("x"));
    let mut total = x.square().expect("sq").sum_all().expect("sum").backward().expect("bwd");
    let second = x.affine(3.0, 0.0).expect("a").sum_all().expect("sum").backward().expect("bwd");
    total.accumulate(second).expect("accumulate");
    assert_eq!(total.get(x.id()).expect("g").to_vec::<f32>().expect("read"), vec![5.0, 7.0, 9.0]);

    let y = no_grad(|| x.square().expect("sq"));
    assert!(!y.requires_grad(), "no_grad recorded an op");
    assert!(x.square().expect("sq").requires_grad(), "recording did not resume after no_grad");
    let constant_only = Var::constant(x.tensor().clone()).exp().expect("exp");
    assert!(!constant_only.requires_grad());
    assert!(constant_only.sum_all().expect("sum").backward().expect("bwd").is_empty());
}

#[test]
fn a_deep_graph_does_not_overflow_the_stack() {
    let device = cpu();
    let x = Var::leaf(Tensor::ones([4], DType::F32, &device).expect("x"));
    let mut y = x.clone();
    for _ in 0..20_000 {
        y = y.affine(1.0, 0.0).expect("affine");
    }
    let grads = y.sum_all().expect("sum").backward().expect("backward");
    assert_eq!(grads.get(x.id()).expect("g").to_vec::<f32>().expect("read"), vec![1.0; 4]);
}

#[test]
fn misuse_is_an_error() {
    let device = cpu();
    let x = Var::leaf(Tensor::ones([2, 3], DType::F32, &device).expect("x"));
    let y = Var::leaf(Tensor::ones([4, 5], DType::F32, &device).expect("y"));
    let e = x.matmul(&y).expect_err("bad matmul");
    assert!(e.to_string().contains("matmul"), "{e}");
    let e = nn::cross_entropy(&x, &[0]).expect_err("wrong target count");
    assert!(e.to_string().contains("cross_entropy"), "{e}");
    let e = nn::cross_entropy(&x, &[0, 3]).expect_err("class out of range");
    assert!(e.to_string().contains("target class 3"), "{e}");
    let seed = Tensor::ones([7], DType::F32, &device).expect("seed");
    assert!(x.backward_with(seed).is_err());
    let store = ParamStore::new(&device, 0);
    store.param("w", [2], manychips::train::Init::Zeros).expect("first");
    assert!(store.param("w", [2], manychips::train::Init::Zeros).is_err(), "duplicate name");
    assert!(nn::CausalSelfAttention::new(&store, 6, 4).is_err(), "6 does not split into 4 heads");
    assert!(nn::Dropout::new(1.0, 0).is_err());
}

#[test]
fn streaming_backward_reports_each_leaf_once_as_soon_as_it_is_final() {
    use manychips::train::models::Mlp;
    use manychips::train::nn::{Activation, Ctx};
    let device = cpu();
    let store = ParamStore::new(&device, 5);
    let mlp = Mlp::new(&store, &[6, 8, 8, 3], Activation::Gelu).expect("mlp");
    let x = Var::constant(Tensor::randn(0.0, 1.0, [4, 6], DType::F32, 1, &device).expect("x"));
    let loss = nn::cross_entropy(&mlp.forward(&x, &Ctx::eval()).expect("fwd"), &[0, 1, 2, 0])
        .expect("loss");
    let whole = loss.backward().expect("backward");
    let params = store.params();
    let name = |id| params.iter().find(|p| p.id() == id).map(|p| p.name().to_string());
    let mut order = Vec::new();
    assert_eq!(loss.dims(), &[] as &[usize], "a loss is a 0-d scalar, as in PyTorch");
    let seed = Tensor::ones(loss.tensor().shape().clone(), DType::F32, &device).expect("seed");
    loss.backward_streaming(seed, |id, grad| {
        let want = whole.get(id).expect("a leaf backward() also reports");
        assert_eq!(grad.to_vec::<f32>()?, want.to_vec::<f32>()?, "{:?}", name(id));
        order.push(name(id).expect("a parameter"));
        Ok(())
    })
    .expect("streaming backward");
    assert_eq!(order.len(), params.len(), "each parameter once: {order:?}");
    // The layer used last in the forward pass is final first.
    let layer = |n: &String| n.split('.').next().map(str::to_string).expect("name");
    let layers: Vec<String> = order.iter().map(layer).collect();
    assert_eq!(layers, ["fc3", "fc3", "fc2", "fc2", "fc1", "fc1"], "{order:?}");

    // A leaf used by several ops is reported once, with every use summed; a leaf the value
    // does not depend on is not reported; the value itself as a leaf reports its seed.
    let a = Var::leaf(Tensor::from_slice(&[2.0f32], [1], &device).expect("a"));
    let unused = Var::leaf(Tensor::from_slice(&[1.0f32], [1], &device).expect("u"));
    let y = a.mul(&a).expect("mul").add(&a).expect("add").sum_all().expect("sum");
    let mut got = Vec::new();
    let scalar = Tensor::ones(manychips::Shape::scalar(), DType::F32, &device).expect("seed");
    y.backward_streaming(scalar, |id, g| {
        got.push((id, g.to_vec::<f32>()?));
        Ok(())
    })
    .expect("bwd");
    assert_eq!(got, vec![(a.id(), vec![5.0])]);
    assert!(!got.iter().any(|(id, _)| *id == unused.id()));
    let mut own = Vec::new();
    a.backward_streaming(Tensor::from_slice(&[3.0f32], [1], &device).expect("s"), |id, g| {
        own.push((id, g.to_vec::<f32>()?));
        Ok(())
    })
    .expect("bwd");
    assert_eq!(own, vec![(a.id(), vec![3.0])]);
}

/// A layer's bias and activation are one autograd node with one pass each way: its output
/// and the input, weight and bias gradients equal those of the bias add and the activation
/// as separate ops.
#[test]
fn bias_activation_node_matches_its_decomposition() {
    let device = cpu();
    let store = ParamStore::new(&device, 21);
    let lin = nn::Linear::new(&store.sub("lin"), 5, 7, true).expect("lin");
    let x = Var::leaf(Tensor::randn(0.0, 1.5, [2, 3, 5], DType::F32, 22, &device).expect("x"));
    let r = Tensor::randn(0.0, 1.0, [2, 3, 7], DType::F32, 23, &device).expect("r");
    let loss = |y: &Var| y.mul(&Var::constant(r.clone())).expect("mul").sum_all().expect("sum");
    for act in [Activation::Relu, Activation::Gelu, Activation::Silu, Activation::Tanh] {
        let separate = act.apply(&lin.forward(&x).expect("linear")).expect("act");
        let fused = lin.forward_activated(&x, Some(act)).expect("fused");
        let want = loss(&separate).backward().expect("separate backward");
        let got = loss(&fused).backward().expect("fused backward");
        let pairs = [
            (fused.tensor().clone(), separate.tensor().clone(), "output"),
            (got.get(x.id()).expect("dx").clone(), want.get(x.id()).expect("dx").clone(), "dx"),
            (
                got.get(lin.weight.id()).expect("dw").clone(),
                want.get(lin.weight.id()).expect("dw").clone(),
                "dw",
            ),
            (
                got.get(lin.bias.as_ref().expect("b").id()).expect("db").clone(),
                want.get(lin.bias.as_ref().expect("b").id()).expect("db").clone(),
                "db",
            ),
        ];
        for (a, b, what) in pairs {
            let (a, b) = (a.to_f64_vec().expect("a"), b.to_f64_vec().expect("b"));
            assert_eq!(a.len(), b.len(), "{act:?} {what}");
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{act:?} {what}[{i}]: {x} vs {y}");
            }
        }
    }
}

/// The LayerNorm layer is one autograd node with fused passes: its output and all three
/// gradients (input, weight, bias) equal those of the same formula written with primitive
/// ops, on 2-d and 3-d inputs.
#[test]
fn layer_norm_node_matches_its_decomposition() {
    let device = cpu();
    let store = ParamStore::new(&device, 11);
    let ln = nn::LayerNorm::new(&store.sub("ln"), 6).expect("ln");
    ln.weight.set(Tensor::randn(1.0, 0.5, [6], DType::F32, 12, &device).expect("w")).expect("w");
    ln.bias.set(Tensor::randn(0.0, 0.5, [6], DType::F32, 13, &device).expect("b")).expect("b");
    for dims in [vec![5, 6], vec![2, 3, 6]] {
        let x = Var::leaf(
            Tensor::randn(0.5, 2.0, dims.as_slice(), DType::F32, 14, &device).expect("x"),
        );
        let r = Tensor::randn(0.0, 1.0, dims.as_slice(), DType::F32, 15, &device).expect("r");
        let axis = dims.len() - 1;
        let (w, b) = (Var::leaf(ln.weight.value()), Var::leaf(ln.bias.value()));
        let composite = {
            let centred = x.sub(&x.mean_keepdim(axis).expect("mean")).expect("sub");
            let var = centred.square().expect("sq").mean_keepdim(axis).expect("var");
            let normed = centred.mul(&var.affine(1.0, 1e-5).expect("eps").rsqrt().expect("rsqrt"));
            normed.expect("normed").mul(&w).expect("w").add(&b).expect("b")
        };
        let fused = ln.forward(&x).expect("layer norm");
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let (a, b) = (a.to_f64_vec().expect("a"), b.to_f64_vec().expect("b"));
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{what}[{i}] {dims:?}: {x} vs {y}"
                );
            }
        };
        close(fused.tensor(), composite.tensor(), "output");
        let loss = |y: &Var| y.mul(&Var::constant(r.clone())).expect("mul").sum_all().expect("sum");
        let want = loss(&composite).backward().expect("composite backward");
        let got = loss(&fused).backward().expect("fused backward");
        close(got.get(x.id()).expect("dx"), want.get(x.id()).expect("dx"), "dx");
        close(got.get(ln.weight.id()).expect("dw"), want.get(w.id()).expect("dw"), "dw");
        close(got.get(ln.bias.id()).expect("db"), want.get(b.id()).expect("db"), "db");
    }
}

/// `to_device` is differentiable: the graph crosses to another device and back, and the
/// leaf's gradient arrives on the leaf's own device, equal to the one computed without the
/// crossing.
#[test]
fn to_device_sends_the_gradient_back_to_the_source_device() -> Result<()> {
    let other: DeviceRef = Arc::new(CpuDevice::with_threads(1)?);
    let x = Var::leaf(Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5], [2, 2], &cpu())?);
    let w = Tensor::from_slice(&[0.5f32, 1.5, -1.0, 2.0], [2, 2], &other)?;
    let crossed = x.to_device(&other)?.square()?.mul(&Var::constant(w.clone()))?.sum_all()?;
    assert_eq!(crossed.tensor().device().info().id, other.info().id);
    let grads = crossed.backward()?;
    let g = grads.get(x.id()).expect("a gradient for x");
    assert_eq!(g.device().info().id, cpu().info().id, "the gradient is on x's device");
    // d/dx Σ w·x² = 2·w·x.
    assert_eq!(g.to_vec::<f32>()?, vec![1.0, -6.0, -6.0, 2.0]);
    // Onto its own device it is the same var: nothing recorded.
    assert_eq!(x.to_device(&cpu())?.id(), x.id());
    Ok(())
}

/// The numpy-style forms of issue 18 differentiate like the ops they are made of.
#[test]
fn numpy_style_forms() {
    check("sum over two axes", vec![input(&[2, 3, 4], 130)], |x| x[0].sum([0, -1]));
    check("mean keepdim over two axes", vec![input(&[2, 3, 4], 131)], |x| {
        x[0].mean_keepdim([2, 1])
    });
    check("softmax(-1)", vec![input(&[3, 5], 132)], |x| x[0].softmax(-1));
    check("reshape(-1)", vec![input(&[2, 6], 133)], |x| x[0].reshape([-1, 4]));
    check("unsqueeze/squeeze several", vec![input(&[3, 4], 134)], |x| {
        x[0].unsqueeze([0, -1])?.squeeze_all()
    });
    check("expand", vec![input(&[3, 1], 135)], |x| x[0].expand([2, -1, 4]));
    check("matrix · vector", vec![input(&[3, 4], 136), input(&[4], 137)], |x| x[0].matmul(&x[1]));
    check("vector · matrix", vec![input(&[3], 138), input(&[3, 5], 139)], |x| x[0].matmul(&x[1]));
    check("vector · vector", vec![input(&[4], 140), input(&[4], 141)], |x| x[0].matmul(&x[1]));
    let device = cpu();
    let ids = Tensor::from_slice(&[2u32, 0, 2, 1, 3, 3], [2, 3], &device).expect("ids");
    check("index_select with 2-D indices", vec![input(&[4, 3], 142)], move |x| {
        x[0].index_select(0, &ids)
    });
    let picks = Tensor::from_slice(&[1u32, 0, 3], [3, 1], &device).expect("picks");
    check("gather(-1)", vec![input(&[3, 4], 143)], move |x| x[0].gather(-1, &picks));
}

/// The differentiable forms `Var` gained for parity with `Tensor` (issue 18, item 13).
#[test]
fn var_parity_ops() {
    check("abs", vec![away_from_zero(input(&[3, 4], 150), 0.1)], |x| x[0].abs());
    check("sin", vec![input(&[3, 4], 151)], |x| x[0].sin());
    check("cos", vec![input(&[3, 4], 152)], |x| x[0].cos());
    check("powf", vec![away_from_zero(input(&[3, 4], 153), 0.1)], |x| x[0].abs()?.powf(1.5));
    check("pow", vec![away_from_zero(input(&[3, 4], 154), 0.2), input(&[4], 155)], |x| {
        x[0].abs()?.pow(&x[1])
    });
    check("maximum", vec![input(&[3, 4], 156), input(&[4], 157)], |x| x[0].maximum(&x[1]));
    check("minimum", vec![input(&[3, 4], 158), input(&[3, 1], 159)], |x| x[0].minimum(&x[1]));
    check("clamp", vec![input(&[4, 5], 160)], |x| x[0].clamp(-0.5, 0.5));
    check("max over an axis", vec![input(&[3, 5], 161)], |x| x[0].max(-1));
    check("min keepdim over two axes", vec![input(&[2, 3, 4], 162)], |x| x[0].min_keepdim([0, 2]));
    check("max_all", vec![input(&[3, 4], 163)], |x| x[0].max_all());
    check("cumsum", vec![input(&[3, 7], 167)], |x| x[0].cumsum(-1));
    check("cumsum of a transposed view", vec![transposed(input(&[4, 3], 168))], |x| x[0].cumsum(0));
    check("cumprod", vec![input(&[3, 7], 169)], |x| x[0].cumprod(-1));
    check("gelu_erf", vec![input(&[3, 5], 177)], |x| x[0].affine(3.0, 0.0)?.gelu_erf());
    let rows = Tensor::from_slice(&[2u32, 0, 2], [3], &cpu()).expect("rows");
    check("index_add", vec![input(&[4, 3], 178), input(&[3, 3], 179)], move |x| {
        x[0].index_add(0, &rows, &x[1])
    });
    let cols = Tensor::from_slice(&[1u32, 1, 0, 2], [2, 2], &cpu()).expect("cols");
    check("scatter_add", vec![input(&[2, 3], 180), input(&[2, 2], 181)], move |x| {
        x[0].scatter_add(1, &cols, &x[1])
    });
    check("broadcast_tensors", vec![input(&[3, 1], 182), input(&[4], 183)], |x| {
        let b = Var::broadcast_tensors(&[&x[0], &x[1]])?;
        b[0].mul(&b[1])
    });
    // Quotients a / b half-way between integers, so that no step of the finite differences
    // crosses the remainder's jumps.
    let fixed = |dims: &[usize], data: &[f64]| Input {
        dims: dims.to_vec(),
        data: data.to_vec(),
        transposed: false,
    };
    let a = fixed(&[2, 4], &[2.5, -1.7, 0.9, 5.3, -4.4, 1.2, -0.6, 3.9]);
    let b = fixed(&[4], &[1.0, 0.7, -2.0, 1.5]);
    check("remainder", vec![a, b], |x| x[0].remainder(&x[1]));
    check("sort", vec![input(&[3, 7], 171)], |x| Ok(x[0].sort(-1, true)?.0));
    let device = cpu();
    // Row 0 names column 1 twice (the second stays); -1 is the last column.
    let at = Tensor::from_slice(&[1i32, 3, 1, 0, 2, -1], [2, 3], &device).expect("indices");
    for op in ScatterOp::ALL {
        let at = at.clone();
        check(
            &format!("scatter_reduce {op:?}"),
            vec![input(&[2, 5], 173), input(&[2, 3], 174)],
            move |x| x[0].scatter_reduce(1, &at, &x[1], op),
        );
    }
    check("topk", vec![input(&[4, 6], 172)], |x| Ok(x[0].topk(2, 0, false)?.0));
    check("cumprod of a transposed view", vec![transposed(input(&[5, 3], 170))], |x| {
        x[0].cumprod(0)
    });
    let device = cpu();
    let cond = Tensor::from_slice(&[1u8, 0, 0, 1], [4], &device).expect("cond");
    check("where", vec![input(&[3, 4], 164), input(&[3, 1], 165)], move |x| {
        Var::where_cond(&cond, &x[0], &x[1])
    });
    let mask = Tensor::from_slice(&[0u8, 1, 0], [3, 1], &device).expect("mask");
    check("masked_fill", vec![input(&[3, 4], 166)], move |x| x[0].masked_fill(&mask, 2.0));
}

#[test]
fn max_sends_the_gradient_to_every_tie_evenly() {
    let device = cpu();
    let x = Var::leaf(Tensor::from_slice(&[1.0f32, 3.0, 3.0, 2.0], [4], &device).expect("x"));
    let grads = x.max_all().expect("max").backward().expect("backward");
    let g = grads.get(x.id()).expect("grad").to_vec::<f32>().expect("read");
    assert_eq!(g, vec![0.0, 0.5, 0.5, 0.0]);
    let a = Var::leaf(Tensor::from_slice(&[1.0f32, 2.0], [2], &device).expect("a"));
    let b = Var::leaf(Tensor::from_slice(&[1.0f32, 1.0], [2], &device).expect("b"));
    let grads = a.maximum(&b).expect("maximum").sum_all().expect("sum").backward().expect("bwd");
    assert_eq!(grads.get(a.id()).expect("a").to_vec::<f32>().expect("read"), vec![0.5, 1.0]);
    assert_eq!(grads.get(b.id()).expect("b").to_vec::<f32>().expect("read"), vec![0.5, 0.0]);
}

#[test]
fn cumprod_gradient_is_exact_at_zeros() {
    // d/dx_j Σ cumprod(x) = Σ_{i≥j} Π_{k≤i, k≠j} x_k; with one zero or two, dividing the
    // output by x would give NaN or lose these.
    let device = cpu();
    for (x, want) in [
        (vec![2.0f32, 0.0, 3.0, 4.0], vec![1.0, 2.0 + 6.0 + 24.0, 0.0, 0.0]),
        (vec![2.0f32, 0.0, 3.0, 0.0], vec![1.0, 2.0 + 6.0 + 0.0, 0.0, 0.0]),
        (vec![0.0f32, 5.0, 2.0], vec![1.0 + 5.0 + 10.0, 0.0, 0.0]),
    ] {
        let v = Var::leaf(Tensor::from_slice(&x, [x.len()], &device).expect("x"));
        let grads = v.cumprod(0).expect("cumprod").sum_all().expect("sum").backward().expect("bwd");
        assert_eq!(grads.get(v.id()).expect("grad").to_vec::<f32>().expect("read"), want, "{x:?}");
    }
}

#[test]
fn a_scattered_product_passes_gradients_past_zeros() {
    // Targets 0 and 2 get factors [x0, 2, 0] (one zero) and [x2, 0, 0] (two zeros); target
    // 1 keeps x1 alone; x3 gets [x3, 3].
    let device = cpu();
    let x = Var::leaf(Tensor::from_slice(&[5.0f32, 7.0, 4.0, 2.0], [4], &device).expect("x"));
    let src =
        Var::leaf(Tensor::from_slice(&[2.0f32, 0.0, 0.0, 0.0, 3.0], [5], &device).expect("s"));
    let at = Tensor::from_slice(&[0u32, 0, 2, 2, 3], [5], &device).expect("indices");
    let y = x.scatter_reduce(0, &at, &src, ScatterOp::Prod).expect("prod");
    assert_eq!(y.tensor().to_vec::<f32>().expect("y"), vec![0.0, 7.0, 0.0, 6.0]);
    let grads = y.sum_all().expect("sum").backward().expect("backward");
    let read = |v: &Var| grads.get(v.id()).expect("grad").to_vec::<f32>().expect("read");
    assert_eq!(read(&x), vec![0.0, 1.0, 0.0, 3.0]);
    assert_eq!(read(&src), vec![0.0, 10.0, 0.0, 0.0, 2.0]);
}

/// A simulated chip over the CPU, whose allocations it counts, and it as a device.
fn memory_counting_chip() -> Result<(Arc<manychips::sim::SimDevice>, DeviceRef)> {
    memory_counting_chip_numbered(0)
}

/// [`memory_counting_chip`] with its own ordinal, for several at once.
fn memory_counting_chip_numbered(
    ordinal: usize,
) -> Result<(Arc<manychips::sim::SimDevice>, DeviceRef)> {
    let profile = manychips::sim::SimProfile::new("chip");
    let chip = Arc::new(manychips::sim::SimDevice::new(cpu(), profile, ordinal)?);
    Ok((chip.clone(), chip))
}

/// The bytes `chip`'s buffers hold now.
fn held_now(chip: &manychips::sim::SimDevice) -> u64 {
    chip.reset_peak_memory();
    chip.peak_memory()
}

/// The graph keeps what the backward rules read, not every intermediate: of the 28
/// `[tokens, dim]` buffers a transformer block's forward pass writes, it keeps 12 (the
/// norms' outputs, q, k, v, the heads joined, the biased hidden activations, the residual
/// stream out; their GELU, which the second matmul's weight gradient reads, is made again
/// from the biased ones), plus the norms' per-token statistics. Measured as the bytes a
/// simulated chip holds once the forward pass is over; the gradients are still every
/// finite-difference check's above.
#[test]
fn a_blocks_forward_pass_keeps_only_what_its_backward_pass_reads() -> Result<()> {
    let (chip, device) = memory_counting_chip()?;
    let (batch, time, dim) = (2, 16, 32);
    let tokens = batch * time;
    let block = nn::TransformerBlock::new(&ParamStore::new(&device, 3), dim, 4)?;
    let values: Vec<f32> = (0..tokens * dim).map(|i| ((i * 7 % 19) as f32 - 9.0) / 9.0).collect();
    let x = Var::leaf(Tensor::from_slice(&values, [batch, time, dim], &device)?);
    let held = || held_now(&chip);
    let before = held();
    let y = block.forward(&x)?;
    let kept = held() - before;
    let stream = (tokens * dim * 4) as u64;
    let statistics = (2 * 2 * tokens * 4) as u64;
    assert_eq!(kept, 12 * stream + statistics, "{} buffers kept", kept as f64 / stream as f64);
    // And the backward pass still runs from it, leaving every buffer of the graph freed.
    let grads = y.sum_all()?.backward()?;
    assert!(grads.get(x.id()).is_some());
    drop((y, grads));
    assert_eq!(held(), before);
    Ok(())
}

/// A bf16 layer's f32 weight is cast once per value, not once per micro-batch: two
/// micro-batches in flight keep one bf16 copy between them, the copy is made again only
/// once the weight changes, and both micro-batches' gradients reach the f32 weight.
#[test]
fn a_weights_compute_copy_is_made_once_and_shared_by_the_micro_batches() -> Result<()> {
    let (chip, device) = memory_counting_chip()?;
    let (rows, inputs, outputs) = (8, 64, 32);
    let layer = nn::Linear::new(&ParamStore::new(&device, 5), inputs, outputs, false)?;
    let batch = |seed: usize| -> Result<Var> {
        let values: Vec<f32> = (0..rows * inputs).map(|i| ((i + seed) % 7) as f32 / 7.0).collect();
        Ok(Var::leaf(Tensor::from_slice(&values, [rows, inputs], &device)?.cast(DType::BF16)?))
    };
    let (a, b) = (batch(0)?, batch(3)?);
    let held = || held_now(&chip);
    let before = held();
    let ya = layer.forward(&a)?;
    let after_one = held() - before;
    let yb = layer.forward(&b)?;
    let after_two = held() - before;
    let (copy, output) = ((inputs * outputs * 2) as u64, (rows * outputs * 2) as u64);
    assert_eq!(after_one, copy + output, "the first pass makes the copy and its output");
    assert_eq!(after_two, copy + 2 * output, "the second shares the copy");
    let w = layer.weight.id();
    let mut grads = ya.sum_all()?.backward()?;
    grads.accumulate(yb.sum_all()?.backward()?)?;
    let g = grads.get(w).expect("the weight's gradient");
    assert_eq!(g.dtype(), DType::F32);
    let total: f32 = g.to_vec::<f32>()?.iter().sum();
    let want: f32 = [&a, &b]
        .iter()
        .map(|x| {
            x.tensor().to_vec::<half::bf16>().map(|v| v.iter().map(|x| x.to_f32()).sum::<f32>())
        })
        .sum::<Result<f32>>()?
        * outputs as f32;
    assert!((total - want).abs() <= 1e-2 * want.abs(), "{total} vs {want}");
    // A new value, a new copy; the old one goes. Untracked passes (a recomputed run's
    // first) read the current copy without replacing it.
    let first = layer.weight.var_as(DType::BF16)?.id();
    let untracked = no_grad(|| layer.weight.var_as(DType::BF16))?;
    assert!(!untracked.requires_grad());
    assert_eq!(layer.weight.var_as(DType::BF16)?.id(), first);
    layer.weight.set(layer.weight.value().affine(0.5, 0.0)?)?;
    assert_ne!(layer.weight.var_as(DType::BF16)?.id(), first);
    Ok(())
}

/// A weight whose master copy lives on another chip (a pipeline stage's lodged optimizer
/// state) is read from a bf16 copy on the chip that uses it: that chip holds the copy, not
/// the f32 master; the gradient arrives there, in f32; a new master value makes a new copy;
/// and moving the weight back makes it an ordinary one.
#[test]
fn a_weight_kept_on_another_chip_is_read_from_its_copy_where_it_is_used() -> Result<()> {
    let (home_chip, home) = memory_counting_chip_numbered(1)?;
    let (host_chip, host) = memory_counting_chip_numbered(2)?;
    let (rows, inputs, outputs) = (4, 32, 16);
    let layer = nn::Linear::new(&ParamStore::new(&home, 5), inputs, outputs, false)?;
    let master = (inputs * outputs * 4) as u64;
    let values: Vec<f32> = (0..rows * inputs).map(|i| (i % 5) as f32 / 5.0).collect();
    let x = Var::leaf(Tensor::from_slice(&values, [rows, inputs], &home)?.cast(DType::BF16)?);
    let at_home_grad = {
        let grads = layer.forward(&x)?.sum_all()?.backward()?;
        grads.get(layer.weight.id()).expect("the weight's gradient").to_vec::<f32>()?
    };
    // A new value drops the copy made for the master's own chip.
    layer.weight.set(layer.weight.value())?;
    let (at_home, on_host) = (held_now(&home_chip), held_now(&host_chip));
    layer.weight.keep_master_on(&host)?;
    assert_eq!(held_now(&home_chip), at_home - master, "the master left");
    assert_eq!(held_now(&host_chip), on_host + master, "for the host");
    assert_eq!(layer.weight.value().device().info().id, host.info().id);

    let before = held_now(&home_chip);
    let y = layer.forward(&x)?;
    let (copy, output) = (master / 2, (rows * outputs * 2) as u64);
    assert_eq!(held_now(&home_chip) - before, copy + output, "a bf16 copy and the output");
    assert_eq!(held_now(&host_chip), on_host + master, "nothing more on the host");
    let grads = y.sum_all()?.backward()?;
    let g = grads.get(layer.weight.id()).expect("the weight's gradient");
    assert_eq!((g.dtype(), g.device().info().id), (DType::F32, home.info().id));
    assert_eq!(g.to_vec::<f32>()?, at_home_grad, "the same as with the master at home");
    drop((y, grads));

    // A new master value: a new copy where the weight is used, the old one gone.
    let first = layer.weight.var_as(DType::BF16)?;
    assert_eq!(first.tensor().device().info().id, home.info().id);
    let held = held_now(&home_chip);
    layer.weight.set(layer.weight.value().affine(0.5, 0.0)?)?;
    drop(first);
    assert_eq!(held_now(&home_chip), held - copy, "the old copy went with its value");
    let second = layer.weight.var_as(DType::BF16)?;
    let halved: Vec<f32> = layer
        .weight
        .value()
        .cast(DType::BF16)?
        .to_vec::<half::bf16>()?
        .iter()
        .map(|v| v.to_f32())
        .collect();
    let read: Vec<f32> =
        second.tensor().to_vec::<half::bf16>()?.iter().map(|v| v.to_f32()).collect();
    assert_eq!(read, halved);
    drop(second);

    layer.weight.move_to(&home)?;
    assert_eq!(held_now(&host_chip), on_host, "the master came home");
    let y = layer.forward(&x)?;
    assert_eq!(y.tensor().device().info().id, home.info().id);
    // Kept on another chip, then on the one it is used on: home again, its own leaf.
    layer.weight.keep_master_on(&host)?;
    layer.weight.keep_master_on(&home)?;
    assert_eq!(held_now(&host_chip), on_host, "the master came home again");
    assert_eq!(layer.weight.var()?.id(), layer.weight.id());
    Ok(())
}
