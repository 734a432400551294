use crate::train::Var;
use crate::train::backward::Backward;
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
    let counted = targets.iter().filter(|&&t| !ignored(t)).count();
    let weights = if counted < rows {
        let w: Vec<f32> = targets.iter().map(|&t| if ignored(t) { 0.0 } else { 1.0 }).collect();
        Some(Tensor::from_slice(&w, [rows, 1], &device)?)
    } else {
        None
    };

    // One autograd node (see `Backward::CrossEntropy`): log-softmax, the targets' values
    // and one fused pass forward; one fused pass and one add per row backward.
    let logits = logits.cast(DType::F32)?;
    let log_probs = logits.tensor().log_softmax(1)?;
    let index = Tensor::from_slice(&picked, [rows, 1], &device)?;
    let eps = opts.label_smoothing;
    let mut inputs = vec![log_probs.gather(1, &index)?];
    if eps > 0.0 {
        inputs.push(log_probs.mean_keepdim(1)?);
    }
    inputs.extend(weights.clone());
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let program = crate::programs::cross_entropy_rows(eps, weights.is_some());
    let per_row = Tensor::fused(&refs, &program, DType::F32)?.reshape([rows])?;
    let backward = Backward::CrossEntropy { log_probs, targets: index, weights, smoothing: eps };
    let per_row = Var::from_op(per_row, backward, &[&logits]);
    match opts.reduction {
        Reduction::None => Ok(per_row),
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
