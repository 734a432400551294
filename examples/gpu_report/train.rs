//! The character transformer of `train_charlm` trained for a fixed number of steps, the same
//! step as `scripts/peers/charlm_step.py` runs on PyTorch: milliseconds per step on one
//! device, and on several as one `DataParallel` job.

use std::ops::Range;
use std::sync::Arc;

use manychips::plan::DeviceProfile;
use manychips::train::models::{Gpt, GptConfig};
use manychips::train::nn::{self, CrossEntropy, Ctx, Reduction};
use manychips::train::optim::AdamW;
use manychips::train::{DataParallel, Var};
use manychips::{DType, DeviceRef, Result, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

static TEXT: &str = include_str!("../../data/tempest.txt");

/// A model size, as `charlm_step.py` names it.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub name: &'static str,
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub context: usize,
    pub batch: usize,
}

/// `train_charlm`'s defaults, and nanoGPT's shakespeare-char model.
pub const SHAPES: [Shape; 2] = [
    Shape { name: "small", layers: 2, dim: 96, heads: 4, context: 64, batch: 32 },
    Shape { name: "large", layers: 6, dim: 384, heads: 6, context: 256, batch: 64 },
];

/// The training text as class ids (the first 90%, as `train_charlm` trains on), and the
/// vocabulary's size.
fn corpus() -> (Arc<[u32]>, usize) {
    let mut chars: Vec<char> = TEXT.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let ids: Vec<u32> =
        TEXT.chars().map(|c| chars.binary_search(&c).map_or(0, |i| i as u32)).collect();
    let train = ids.len() * 9 / 10;
    (Arc::from(&ids[..train]), chars.len())
}

/// Trains `shape` for `warmup + steps` steps on `devices`; the median step time of the last
/// `steps`, the first and last loss, and the last step's shares.
pub fn steps(
    devices: Vec<(DeviceRef, DeviceProfile)>,
    shape: Shape,
    warmup: usize,
    steps: usize,
) -> Result<Value> {
    let (text, vocab) = corpus();
    let config = GptConfig {
        vocab,
        context: shape.context,
        dim: shape.dim,
        heads: shape.heads,
        layers: shape.layers,
        dtype: DType::F32,
    };
    let mut dp = DataParallel::new(devices, 0, move |store| Gpt::new(store, config))?;
    dp.set_max_grad_norm(Some(1.0))?;
    let weights: usize = dp.params().iter().map(|p| p.value().numel()).sum();
    let mut opt = AdamW::new(dp.params().to_vec(), 3e-3)?.with_weight_decay(0.01)?;
    let t = shape.context;
    let mut times = Vec::new();
    let (mut first, mut last, mut shares) = (f64::NAN, f64::NAN, String::new());
    for step in 0..warmup + steps {
        let mut rng = ChaCha8Rng::seed_from_u64(step as u64);
        let starts: Vec<usize> =
            (0..shape.batch).map(|_| rng.random_range(0..text.len() - t - 1)).collect();
        let text = text.clone();
        let loss = move |model: &Gpt, device: &DeviceRef, rows: Range<usize>, _: &Ctx| {
            let mut inputs = Vec::with_capacity(rows.len() * t);
            let mut targets = Vec::with_capacity(rows.len() * t);
            for &s in &starts[rows.clone()] {
                inputs.extend_from_slice(&text[s..s + t]);
                targets.extend_from_slice(&text[s + 1..s + t + 1]);
            }
            let ids = Tensor::from_slice(&inputs, [rows.len(), t], device)?;
            let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
            let per_char: Var = nn::cross_entropy_with(&model.forward(&ids)?, &targets, &opts)?;
            per_char.reshape([rows.len(), t])?.mean(1)
        };
        let report = dp.step(shape.batch, loss, &mut opt)?;
        if step == 0 {
            first = report.loss;
        }
        last = report.loss;
        shares = report.shares_line();
        if step >= warmup {
            times.push(report.secs);
        }
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2] * 1e3;
    Ok(json!({
        "shape": shape.name, "layers": shape.layers, "dim": shape.dim, "heads": shape.heads,
        "context": shape.context, "batch": shape.batch, "weights": weights,
        "steps": steps, "ms_per_step": ms, "loss_first": first, "loss_last": last,
        "shares": shares,
    }))
}
