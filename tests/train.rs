// Training: data-parallel over unlike devices equals one device, shares follow measured
// speed, optimizers and loss scaling follow their formulas, bf16 with f32 master weights
// learns. The examples' end-to-end runs are in tests/examples.rs (a binary of their own, so
// their two busy cores do not disturb the timing test here).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use manychips::plan::DeviceProfile;
use manychips::sim::{SimDevice, SimProfile};
use manychips::train::models::Mlp;
use manychips::train::nn::{self, Activation, CrossEntropy, Ctx, Dropout, Reduction};
use manychips::train::optim::{AdamW, LossScaler, Optimizer, Sgd, clip_grad_norm, grad_norm};
use manychips::train::{DataParallel, Grads, ParamStore, Var};
use manychips::{CpuDevice, DType, Device, DeviceRef, Result, Tensor};

fn cpu() -> DeviceRef {
    Arc::new(CpuDevice::with_threads(1).expect("cpu"))
}

/// The fleet's Vulkan device (lavapipe in CI), or `None` after saying why. With `CI` set a
/// missing device fails the test: the mixed-fleet equality must really run there.
fn vulkan() -> Option<DeviceRef> {
    let found = manychips::discover();
    if let Some(d) = found.devices.iter().find(|d| d.info().backend == "vulkan") {
        return Some(d.clone());
    }
    assert!(std::env::var_os("CI").is_none(), "CI is set but no Vulkan device was found");
    println!("skipped the Vulkan replica: no Vulkan device ({:?})", found.unavailable);
    None
}

/// A GELU MLP with dropout 0.25: data-parallel must reproduce the masks too.
fn mlp(store: &ParamStore, inputs: usize, hidden: usize, classes: usize) -> Result<Mlp> {
    Ok(Mlp::new(store, &[inputs, hidden, classes], Activation::Gelu)?
        .with_dropout(Dropout::new(0.25, 7)?))
}

/// A fixed synthetic classification set: `n` rows of `dim` features, labels from a hidden
/// linear rule.
fn dataset(n: usize, dim: usize, classes: usize) -> (Vec<f32>, Vec<u32>) {
    let host = cpu();
    let x = Tensor::randn(0.0, 1.0, [n, dim], DType::F32, 11, &host).unwrap();
    let w = Tensor::randn(0.0, 1.0, [dim, classes], DType::F32, 12, &host).unwrap();
    let labels = x.matmul(&w).unwrap().argmax(1).unwrap().to_vec::<u32>().unwrap();
    (x.to_vec::<f32>().unwrap(), labels)
}

/// Trains `steps` steps on `devices` (weights fixed per device when given) and returns the
/// master parameters' values and the losses.
fn train(
    devices: Vec<DeviceRef>,
    weights: Option<Vec<f64>>,
    steps: usize,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (dim, classes, batch) = (12, 5, 24);
    let (x, y) = dataset(batch * steps, dim, classes);
    let (x, y) = (Arc::new(x), Arc::new(y));
    let members = devices.into_iter().map(|d| {
        let profile = DeviceProfile::for_device(d.info());
        (d, profile)
    });
    let mut dp =
        DataParallel::new(members.collect(), 3, move |s| mlp(s, dim, 16, classes)).unwrap();
    dp.set_fixed_split(weights).unwrap();
    let mut opt = AdamW::new(dp.params().to_vec(), 1e-2).unwrap();
    let mut losses = Vec::new();
    for step in 0..steps {
        let rows0 = step * batch;
        let (x, y) = (x.clone(), y.clone());
        let loss =
            move |m: &Mlp, device: &DeviceRef, rows: Range<usize>, ctx: &Ctx| -> Result<Var> {
                let (a, b) = (rows0 + rows.start, rows0 + rows.end);
                let input = Tensor::from_slice(&x[a * dim..b * dim], [b - a, dim], device)?;
                let logits = m.forward(&Var::constant(input), ctx)?;
                let opts = CrossEntropy {
                    reduction: Reduction::None,
                    label_smoothing: 0.05,
                    ..Default::default()
                };
                nn::cross_entropy_with(&logits, &y[a..b], &opts)
            };
        let report = dp.step(batch, loss, &mut opt).unwrap();
        let used: usize = report.devices.iter().map(|d| d.rows.len()).sum();
        assert_eq!(used, batch, "shares must cover the batch: {report:?}");
        losses.push(report.loss);
    }
    let params = dp.params().iter().map(|p| p.value().to_f64_vec().unwrap()).collect();
    (params, losses)
}

#[test]
fn data_parallel_on_a_mixed_fleet_equals_one_device() {
    let host = cpu();
    let mut fleet: Vec<DeviceRef> = vec![cpu()];
    fleet.extend(vulkan());
    for i in 0..2 {
        let profile = SimProfile::new(format!("sim{i}")).with_latency(Duration::ZERO);
        fleet.push(Arc::new(SimDevice::new(host.clone(), profile, i).unwrap()));
    }
    let labels: Vec<String> = fleet.iter().map(|d| d.info().label()).collect();
    // Unequal shares, every device used.
    let weights: Vec<f64> = (0..fleet.len()).map(|i| 1.0 + i as f64).collect();
    let (split, split_losses) = train(fleet, Some(weights), 6);
    let (alone, alone_losses) = train(vec![cpu()], None, 6);
    println!("fleet {labels:?}: losses {split_losses:?}\none device: {alone_losses:?}");
    for (a, b) in split_losses.iter().zip(&alone_losses) {
        assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "loss {a} vs {b}");
    }
    let mut worst: f64 = 0.0;
    for (p, q) in split.iter().zip(&alone) {
        for (a, b) in p.iter().zip(q) {
            worst = worst.max((a - b).abs() / (1e-3 + b.abs()));
        }
    }
    println!("largest relative parameter difference: {worst:.2e}");
    assert!(worst < 1e-3, "parameters differ by {worst:e} (relative)");
    assert!(split_losses.last() < split_losses.first(), "loss did not fall: {split_losses:?}");
}

#[test]
fn shares_follow_measured_speed() {
    // Three simulated chips on one CPU, 1 : 2 : 4 in speed, all calibrated as equals: the
    // measured step times must move the shares to about 1 : 2 : 4 of the batch. The step
    // times a simulated chip reports are on its virtual clock, so they do not depend on how
    // busy the CPU simulating all three is (on the wall clock, all three shares queue on
    // that one CPU and take about as long).
    let host = cpu();
    let rates = [1e9, 2e9, 4e9];
    let members: Vec<(DeviceRef, DeviceProfile)> = rates
        .iter()
        .enumerate()
        .map(|(i, &rate)| {
            let profile = SimProfile::new(format!("chip{i}"))
                .with_flops(rate)
                .with_bandwidth(rate)
                .with_latency(Duration::from_micros(5));
            let sim = SimDevice::new(host.clone(), profile.clone(), i).unwrap();
            let believed = DeviceProfile::simulated(sim.info(), &profile.with_flops(2e9));
            (Arc::new(sim) as DeviceRef, believed)
        })
        .collect();
    let (dim, batch) = (256, 448);
    let (x, y) = dataset(batch, dim, 8);
    let (x, y) = (Arc::new(x), Arc::new(y));
    let mut dp = DataParallel::new(members, 1, move |s| mlp(s, dim, 256, 8)).unwrap();
    let mut opt = Sgd::new(dp.params().to_vec(), 1e-2).unwrap();
    // The shares of every step that was split: a step may also give the whole batch to one
    // chip (the split must keep proving itself against the best chip alone), and on a
    // busy machine that probe can land on the last step.
    let mut splits: Vec<Vec<f64>> = Vec::new();
    for _ in 0..12 {
        let (x, y) = (x.clone(), y.clone());
        let loss = move |m: &Mlp, device: &DeviceRef, rows: Range<usize>, _: &Ctx| -> Result<Var> {
            let input = Tensor::from_slice(
                &x[rows.start * dim..rows.end * dim],
                [rows.len(), dim],
                device,
            )?;
            let logits = m.forward(&Var::constant(input), &Ctx::eval())?;
            let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
            nn::cross_entropy_with(&logits, &y[rows], &opts)
        };
        let report = dp.step(batch, loss, &mut opt).unwrap();
        println!("{}", report.shares_line());
        if report.devices.len() == 3 {
            splits
                .push(report.devices.iter().map(|d| d.rows.len() as f64 / batch as f64).collect());
        }
    }
    let last = splits.last().expect("at least one split step");
    let want = [1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0];
    for (got, want) in last.iter().zip(want) {
        assert!((got - want).abs() < 0.06, "shares {last:?}, want about {want:?}");
    }
}

#[test]
fn buckets_are_handed_over_while_the_backward_pass_still_runs() {
    // One paced chip (every op takes its modelled time) and a 4-layer MLP, one bucket per
    // layer, last layer first: the last layer's bucket must come well before the share
    // ends, and the sums must equal the unbucketed ones bit for bit.
    let host = cpu();
    let profile = SimProfile::new("paced").with_flops(1e9).with_latency(Duration::ZERO);
    let chip = SimDevice::new(host, profile.clone(), 0).unwrap();
    chip.set_pacing(true);
    let believed = DeviceProfile::simulated(chip.info(), &profile);
    let chip: DeviceRef = Arc::new(chip);
    let (dim, batch) = (192, 64);
    let (x, y) = dataset(batch, dim, 8);
    let (x, y) = (Arc::new(x), Arc::new(y));
    let build = move |s: &ParamStore| Mlp::new(s, &[dim, dim, dim, dim, 8], Activation::Gelu);
    let mut dp = DataParallel::new(vec![(chip, believed)], 1, build).unwrap();
    let loss = move |m: &Mlp, device: &DeviceRef, rows: Range<usize>, _: &Ctx| -> Result<Var> {
        let input =
            Tensor::from_slice(&x[rows.start * dim..rows.end * dim], [rows.len(), dim], device)?;
        let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
        nn::cross_entropy_with(&m.forward(&Var::constant(input), &Ctx::eval())?, &y[rows], &opts)
    };
    let plain = dp.gradients(0..batch, batch, loss.clone()).unwrap();
    // Parameters are fc1.weight, fc1.bias, fc2.weight, ...: a bucket per layer, fc4 first.
    let buckets: Vec<Range<usize>> = (0..4).rev().map(|l| 2 * l..2 * l + 2).collect();
    let started = std::time::Instant::now();
    let mut handed = Vec::new();
    let bucketed = dp
        .gradients_bucketed(0..batch, batch, loss, &buckets, &mut |params, _| {
            handed.push((params[0].name().to_string(), started.elapsed().as_secs_f64()));
            Ok(())
        })
        .unwrap();
    let names: Vec<&str> = handed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fc4.weight", "fc3.weight", "fc2.weight", "fc1.weight"]);
    let (first, end) = (handed[0].1, bucketed.computed_s);
    println!("buckets at {handed:?}; the share ended at {end:.4} s");
    assert!(first < 0.75 * end, "the first bucket came at {first:.4} s of {end:.4} s");
    for p in dp.params() {
        let (a, b) = (plain.grads.get(p.id()).unwrap(), bucketed.grads.get(p.id()).unwrap());
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "{}", p.name());
    }
    // Malformed buckets are refused before any work.
    let beyond: Vec<Range<usize>> = vec![0..2, 0..99];
    let err = dp.gradients_bucketed(
        0..batch,
        batch,
        |_, _, _, _| unreachable!(),
        &beyond,
        &mut |_, _| Ok(()),
    );
    assert!(err.is_err_and(|e| e.to_string().contains("0..99")));
}

#[test]
fn sgd_with_momentum_and_clipping_follow_their_formulas() {
    let device = cpu();
    let store = ParamStore::new(&device, 0);
    let w = store.param("w", [2], manychips::train::Init::Ones).unwrap();
    let mut opt = Sgd::new(vec![w.clone()], 0.5)
        .and_then(|o| o.with_momentum(0.9))
        .and_then(|o| o.with_weight_decay(0.1))
        .unwrap();
    let grad = |g: [f32; 2]| {
        let mut grads = Grads::default();
        grads.insert(w.id(), Tensor::from_slice(&g, [2], &device).unwrap());
        grads
    };
    // v1 = g + λw = [1.1, -0.9]; w1 = 1 - 0.5·v1.
    opt.step(&grad([1.0, -1.0])).unwrap();
    let w1 = w.value().to_vec::<f32>().unwrap();
    assert!((w1[0] - 0.45).abs() < 1e-6 && (w1[1] - 1.45).abs() < 1e-6, "{w1:?}");
    // v2 = 0.9·v1 + (g + λw1).
    opt.step(&grad([0.0, 0.0])).unwrap();
    let w2 = w.value().to_vec::<f32>().unwrap();
    let v2 = [0.9 * 1.1 + 0.1 * 0.45, 0.9 * -0.9 + 0.1 * 1.45];
    assert!((w2[0] - (0.45 - 0.5 * v2[0])).abs() < 1e-6, "{w2:?}");
    assert!((w2[1] - (1.45 - 0.5 * v2[1])).abs() < 1e-6, "{w2:?}");

    let mut grads = grad([3.0, 4.0]);
    assert!((grad_norm(std::slice::from_ref(&w), &grads).unwrap() - 5.0).abs() < 1e-6);
    let before = clip_grad_norm(std::slice::from_ref(&w), &mut grads, 1.0).unwrap();
    assert!((before - 5.0).abs() < 1e-6);
    let after = grad_norm(std::slice::from_ref(&w), &grads).unwrap();
    assert!((after - 1.0).abs() < 1e-4, "clipped norm {after}");
}

#[test]
fn adamw_first_step_moves_each_weight_by_the_learning_rate() {
    // With bias correction, Adam's first update is lr·g/|g| (+ decoupled decay).
    let device = cpu();
    let store = ParamStore::new(&device, 0);
    let w = store.param("w", [3], manychips::train::Init::Ones).unwrap();
    let mut opt = AdamW::new(vec![w.clone()], 0.1).and_then(|o| o.with_weight_decay(0.5)).unwrap();
    let mut grads = Grads::default();
    grads.insert(w.id(), Tensor::from_slice(&[2.0f32, -0.001, 0.0], [3], &device).unwrap());
    opt.step(&grads).unwrap();
    let got = w.value().to_vec::<f32>().unwrap();
    let decayed = 1.0 - 0.1 * 0.5;
    assert!((got[0] - (decayed - 0.1)).abs() < 1e-5, "{got:?}");
    assert!((got[1] - (decayed + 0.1)).abs() < 1e-4, "{got:?}");
    assert!((got[2] - decayed).abs() < 1e-6, "{got:?}");
    let (steps, state) = opt.state();
    assert_eq!(steps, 1);
    assert_eq!(state.len(), 2, "exp_avg and exp_avg_sq of w");
}

#[test]
fn loss_scaler_skips_overflowing_steps_and_lowers_the_scale() {
    let device = cpu();
    let store = ParamStore::new(&device, 0);
    let w = store.param("w", [2], manychips::train::Init::Ones).unwrap();
    let params = vec![w.clone()];
    let mut scaler = LossScaler::new(1024.0, 2).unwrap();
    let mut grads = Grads::default();
    grads.insert(w.id(), Tensor::from_slice(&[f32::INFINITY, 1.0], [2], &device).unwrap());
    assert!(!scaler.unscale(&params, &mut grads).unwrap(), "an overflow must skip the step");
    assert_eq!(scaler.scale, 512.0);
    assert_eq!(scaler.skipped, 1);
    for _ in 0..2 {
        let mut grads = Grads::default();
        grads.insert(w.id(), Tensor::from_slice(&[512.0f32, 1024.0], [2], &device).unwrap());
        assert!(scaler.unscale(&params, &mut grads).unwrap());
        assert_eq!(grads.get(w.id()).unwrap().to_vec::<f32>().unwrap()[0], 1.0);
    }
    assert_eq!(scaler.scale, 1024.0, "two good steps double the scale");
}

#[test]
fn mixed_precision_training_with_f32_master_weights_learns() {
    // bf16 compute, f32 master weights: the loss falls and the weights stay f32.
    let device = cpu();
    let (dim, classes, batch) = (12, 5, 64);
    let (x, y) = dataset(batch, dim, classes);
    let store = ParamStore::new(&device, 5);
    let model = mlp(&store, dim, 32, classes).unwrap();
    let mut opt = AdamW::new(store.params(), 1e-2).unwrap();
    let input = Var::constant(
        Tensor::from_slice(&x, [batch, dim], &device).unwrap().cast(DType::BF16).unwrap(),
    );
    let mut losses = Vec::new();
    for step in 0..40 {
        let logits = model.forward(&input, &Ctx::train(step)).unwrap();
        assert_eq!(logits.tensor().dtype(), DType::BF16);
        let loss = nn::cross_entropy(&logits, &y).unwrap();
        losses.push(loss.tensor().to_scalar::<f32>().unwrap());
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    assert!(store.params().iter().all(|p| p.value().dtype() == DType::F32));
    assert!(losses[39] < 0.5 * losses[0], "bf16 loss did not halve: {losses:?}");
}

#[test]
fn hyper_parameters_that_make_no_sense_are_errors() {
    let device = cpu();
    let store = ParamStore::new(&device, 0);
    let w = store.param("w", [2], manychips::train::Init::Ones).unwrap();
    for lr in [f64::NAN, f64::INFINITY, -1.0] {
        assert!(AdamW::new(vec![w.clone()], lr).is_err(), "AdamW lr {lr}");
        assert!(Sgd::new(vec![w.clone()], lr).is_err(), "Sgd lr {lr}");
    }
    let mut opt = AdamW::new(vec![w.clone()], 1e-2).unwrap();
    let e = opt.set_learning_rate(-1.0).unwrap_err();
    assert!(e.to_string().contains("learning rate -1"), "{e}");
    assert!(opt.set_learning_rate(f64::NAN).is_err());
    assert_eq!(opt.learning_rate(), 1e-2, "a refused rate changes nothing");
    let opt = AdamW::new(vec![w.clone()], 1e-2).unwrap();
    assert!(opt.with_betas(0.9, 1.0).is_err(), "β = 1 divides by zero");
    let opt = AdamW::new(vec![w.clone()], 1e-2).unwrap();
    assert!(opt.with_weight_decay(f64::NAN).is_err());
    let sgd = Sgd::new(vec![w.clone()], 1e-2).unwrap();
    assert!(sgd.with_momentum(-0.5).is_err());
    assert!(LossScaler::new(f64::NAN, 2).is_err());
    assert!(LossScaler::new(1024.0, 0).is_err());
    let mut grads = Grads::default();
    grads.insert(w.id(), Tensor::from_slice(&[3.0f32, 4.0], [2], &device).unwrap());
    assert!(clip_grad_norm(std::slice::from_ref(&w), &mut grads, f64::NAN).is_err());
}
