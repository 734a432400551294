use crate::train::Var;
use crate::{DType, Error, Result, Tensor};

/// How per-sample losses become one number, or stay one per sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// Divided by the number of samples that count (the usual training loss).
    #[default]
    Mean,
    /// Summed over the samples.
    Sum,
    /// One loss per sample: what a [`DataParallel`](crate::train::DataParallel) loss
    /// function returns (the step sums the rows and divides by the global batch).
    None,
}

/// Cross-entropy options: targets equal to `ignore_index` count for nothing, and
/// `label_smoothing` ε spreads ε of each target's weight evenly over all classes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropy {
    pub ignore_index: Option<u32>,
    pub label_smoothing: f64,
    pub reduction: Reduction,
}

/// Mean cross-entropy of `logits` `[n, classes]` against class ids `targets` (`n` of them).
pub fn cross_entropy(logits: &Var, targets: &[u32]) -> Result<Var> {
    cross_entropy_with(logits, targets, &CrossEntropy::default())
}

/// Cross-entropy from logits, computed in f32 whatever the logits' dtype (a half-precision
/// log-softmax loses the small probabilities the loss is made of).
pub fn cross_entropy_with(logits: &Var, targets: &[u32], opts: &CrossEntropy) -> Result<Var> {
    let name = "cross_entropy";
    let device = logits.tensor().device().clone();
    let label = device.info().label();
    let &[rows, classes] = logits.dims() else {
        return Err(Error::Shape {
            op: name.into(),
            device: label,
            detail: format!("logits {:?} are not [samples, classes]", logits.tensor()),
        });
    };
    if targets.len() != rows {
        return Err(Error::Shape {
            op: name.into(),
            device: label,
            detail: format!("{} targets for logits {:?}", targets.len(), logits.tensor()),
        });
    }
    if !(0.0..=1.0).contains(&opts.label_smoothing) {
        return Err(Error::InvalidArgument {
            op: name.into(),
            device: label,
            detail: format!("label_smoothing {} is outside [0, 1]", opts.label_smoothing),
        });
    }
    let ignored = |t: u32| opts.ignore_index == Some(t);
    if let Some(&bad) = targets.iter().find(|&&t| !ignored(t) && t as usize >= classes) {
        return Err(Error::IndexOutOfRange {
            op: name.into(),
            device: label,
            detail: format!("target class {bad} with {classes} classes"),
        });
    }
    // Ignored rows gather class 0 and are then weighted by 0.
    let picked: Vec<u32> = targets.iter().map(|&t| if ignored(t) { 0 } else { t }).collect();
    let weights: Vec<f32> = targets.iter().map(|&t| if ignored(t) { 0.0 } else { 1.0 }).collect();
    let counted = weights.iter().filter(|&&w| w > 0.0).count();

    let log_probs = logits.cast(DType::F32)?.log_softmax(1)?;
    let index = Tensor::from_slice(&picked, [rows, 1], &device)?;
    let mut per_row = log_probs.gather(&index, 1)?.neg()?;
    if opts.label_smoothing > 0.0 {
        let eps = opts.label_smoothing;
        let uniform = log_probs.mean_keepdim(1)?.neg()?;
        per_row = per_row.affine(1.0 - eps, 0.0)?.add(&uniform.affine(eps, 0.0)?)?;
    }
    let weights = Var::constant(Tensor::from_slice(&weights, [rows, 1], &device)?);
    let per_row = per_row.mul(&weights)?;
    match opts.reduction {
        Reduction::None => per_row.reshape([rows]),
        Reduction::Sum => per_row.sum_all(),
        Reduction::Mean => per_row.sum_all()?.affine(1.0 / counted.max(1) as f64, 0.0),
    }
}

/// Mean (or summed, or elementwise) squared error of same-shaped tensors.
pub fn mse(prediction: &Var, target: &Var, reduction: Reduction) -> Result<Var> {
    if prediction.dims() != target.dims() {
        return Err(Error::Shape {
            op: "mse".into(),
            device: prediction.tensor().device().info().label(),
            detail: format!(
                "prediction {:?} and target {:?} differ in shape",
                prediction.tensor(),
                target.tensor()
            ),
        });
    }
    let squared = prediction.sub(target)?.square()?;
    if reduction == Reduction::None {
        return Ok(squared);
    }
    let total = squared.sum_all()?;
    match reduction {
        Reduction::None | Reduction::Sum => Ok(total),
        Reduction::Mean => {
            let n = prediction.tensor().numel().max(1) as f64;
            total.affine(1.0 / n, 0.0)
        }
    }
}
