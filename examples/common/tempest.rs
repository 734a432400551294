//! The character corpus the transformer examples learn: *The Tempest*, one class per
//! distinct character; and sampling text from a model of it.

use manychips::{DType, Result, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The text as class ids, and the characters they stand for.
pub struct Corpus {
    pub chars: Vec<char>,
    pub ids: Vec<u32>,
}

impl Corpus {
    /// *The Tempest*, `data/tempest.txt`.
    pub fn tempest() -> Result<Corpus, String> {
        Corpus::load(concat!(env!("CARGO_MANIFEST_DIR"), "/data/tempest.txt"))
    }

    pub fn load(path: &str) -> Result<Corpus, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        let ids = text
            .chars()
            .map(|c| chars.binary_search(&c).map(|i| i as u32))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| "a character outside the vocabulary".to_string())?;
        Ok(Corpus { chars, ids })
    }

    /// Entropy (nats) of the characters' frequencies: what a model that ignores context
    /// achieves at best.
    pub fn unigram_entropy(&self) -> f64 {
        let mut counts = vec![0usize; self.chars.len()];
        for &i in &self.ids {
            counts[i as usize] += 1;
        }
        let n = self.ids.len() as f64;
        counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n).map(|p| -p * p.ln()).sum()
    }
}

/// Inputs (`t` ids from each start) and targets (the next `t`), row after row.
pub fn windows(text: &[u32], starts: &[usize], t: usize) -> (Vec<u32>, Vec<u32>) {
    let mut inputs = Vec::with_capacity(starts.len() * t);
    let mut targets = Vec::with_capacity(starts.len() * t);
    for &s in starts {
        inputs.extend_from_slice(&text[s..s + t]);
        targets.extend_from_slice(&text[s + 1..s + t + 1]);
    }
    (inputs, targets)
}

/// Samples `n` characters after a newline, temperature 0.8. `logits` gives a context's
/// logits `[context, vocab]` (its last row scores the next character), wherever the model
/// runs.
pub fn generate(
    corpus: &Corpus,
    t: usize,
    n: usize,
    seed: u64,
    logits: impl Fn(&[u32]) -> Result<Tensor>,
) -> Result<String> {
    let newline = corpus.chars.binary_search(&'\n').map_or(0, |i| i as u32);
    let mut ids = vec![newline];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    for _ in 0..n {
        let context = &ids[ids.len().saturating_sub(t)..];
        let last = logits(context)?.narrow(0, context.len() - 1, 1)?.cast(DType::F32)?;
        let probs = last.affine(1.0 / 0.8, 0.0)?.softmax(1)?.to_vec::<f32>()?;
        let mut u = rng.random::<f32>();
        let mut next = probs.len() - 1;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                next = i;
                break;
            }
            u -= p;
        }
        ids.push(next as u32);
    }
    Ok(ids[1..].iter().map(|&i| corpus.chars[i as usize]).collect())
}
