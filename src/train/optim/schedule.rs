use std::f64::consts::PI;

/// The learning rate as a function of the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    Constant,
    /// Linear warm-up from 0 over `warmup` steps, then constant.
    Warmup {
        warmup: u64,
    },
    /// Linear warm-up, then a cosine decay to `min_ratio`·base at step `total`.
    WarmupCosine {
        warmup: u64,
        total: u64,
        min_ratio: f64,
    },
}

impl LrSchedule {
    /// The rate for (0-based) `step` given the base rate.
    pub fn at(&self, step: u64, base: f64) -> f64 {
        let warm = |warmup: u64| {
            if warmup > 0 && step < warmup { (step + 1) as f64 / warmup as f64 } else { 1.0 }
        };
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Warmup { warmup } => base * warm(warmup),
            LrSchedule::WarmupCosine { warmup, total, min_ratio } => {
                if step < warmup {
                    return base * warm(warmup);
                }
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + (PI * progress).cos());
                base * (min_ratio + (1.0 - min_ratio) * cosine)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule::WarmupCosine { warmup: 10, total: 110, min_ratio: 0.1 };
        assert!((s.at(0, 1.0) - 0.1).abs() < 1e-12);
        assert!((s.at(9, 1.0) - 1.0).abs() < 1e-12);
        assert!((s.at(10, 1.0) - 1.0).abs() < 1e-12);
        assert!((s.at(60, 1.0) - 0.55).abs() < 1e-12);
        assert!((s.at(110, 1.0) - 0.1).abs() < 1e-12);
        assert!((s.at(1000, 1.0) - 0.1).abs() < 1e-12);
        assert_eq!(LrSchedule::Warmup { warmup: 4 }.at(1, 2.0), 1.0);
        assert_eq!(LrSchedule::Constant.at(7, 0.3), 0.3);
    }
}
