//! The examples' `--checkpoint-dir` / `--resume`: open the directory, resume from its newest
//! valid checkpoint, save every N steps in the background, flush at the end.

use std::path::{Path, PathBuf};

use manychips::train::optim::Optimizer;
use manychips::train::{Checkpoints, DataParallel, Snapshot};

#[derive(clap::Args, Debug)]
pub struct CheckpointArgs {
    /// Write a checkpoint here every `--checkpoint-every` steps (and at the end).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub keep: usize,
    /// Continue from the newest valid checkpoint in `--checkpoint-dir` (if there is one).
    #[arg(long)]
    pub resume: bool,
}

pub struct Checkpointing {
    checkpoints: Option<Checkpoints>,
    every: u64,
    seed: u64,
}

/// Where a run starts: step 0, or a checkpoint's step and the state saved with it.
pub struct Start {
    pub step: u64,
    pub state: Option<serde_json::Value>,
    /// The newest checkpoint is at (or past) the run's last step: there is nothing to do,
    /// and nothing was restored.
    pub finished: bool,
}

impl Checkpointing {
    /// Opens the directory and, with `--resume`, loads its newest valid checkpoint into the
    /// model and the optimizer. A checkpoint of another seed is refused; one at or past
    /// `last_step` (a finished job) is reported as [`Start::finished`] and not restored.
    pub fn open<M: Send + Sync + 'static>(
        args: &CheckpointArgs,
        seed: u64,
        last_step: u64,
        dp: &mut DataParallel<M>,
        opt: &mut dyn Optimizer,
    ) -> Result<(Checkpointing, Start), String> {
        let checkpoints = match &args.checkpoint_dir {
            Some(dir) => Some(Checkpoints::open(dir, args.keep).map_err(|e| e.to_string())?),
            None if args.resume => return Err("--resume needs --checkpoint-dir".into()),
            None => None,
        };
        let me = Checkpointing { checkpoints, every: args.checkpoint_every, seed };
        let fresh = Start { step: 0, state: None, finished: false };
        let Some(c) = me.checkpoints.as_ref().filter(|_| args.resume) else {
            if let Some(newest) = me.checkpoints.as_ref().and_then(|c| c.list().ok()?.pop()) {
                println!(
                    "warning: {} already holds checkpoints up to {}; without --resume this run \
                     starts at step 0, and pruning keeps the highest steps",
                    args.checkpoint_dir.as_deref().unwrap_or(Path::new("-")).display(),
                    newest.display()
                );
            }
            return Ok((me, fresh));
        };
        let Some(loaded) = c.latest().map_err(|e| e.to_string())? else {
            println!("no checkpoint in {} yet: starting at step 0", c.dir().display());
            return Ok((me, fresh));
        };
        for skipped in &loaded.skipped {
            println!("skipped: {skipped}");
        }
        let saved = loaded.snapshot.state.get("seed").and_then(|s| s.as_u64());
        if saved != Some(seed) {
            return Err(format!(
                "{} was written with seed {saved:?}, this run has --seed {seed}",
                loaded.path.display()
            ));
        }
        let step = loaded.snapshot.step;
        if step >= last_step {
            println!(
                "{} is at step {step}, and this run ends at step {last_step}: the job is \
                 finished, nothing to do (its files are left as they are)",
                loaded.path.display()
            );
            return Ok((me, Start { step, state: None, finished: true }));
        }
        loaded.snapshot.restore(dp.params(), opt, &loaded.path).map_err(|e| e.to_string())?;
        dp.resume_at(step);
        println!("resumed from {} (step {step})", loaded.path.display());
        Ok((me, Start { step, state: Some(loaded.snapshot.state), finished: false }))
    }

    /// After `done` steps: saves a checkpoint when one is due (every N steps, and at
    /// `last`). `state` is the run's own (data position, schedule, loss scale); the seed is
    /// added.
    pub fn after_step<M: Send + Sync + 'static>(
        &mut self,
        done: u64,
        last: bool,
        dp: &DataParallel<M>,
        opt: &dyn Optimizer,
        mut state: serde_json::Value,
    ) -> Result<(), String> {
        let Some(c) = &mut self.checkpoints else { return Ok(()) };
        if !(done.is_multiple_of(self.every) || last) {
            return Ok(());
        }
        state["seed"] = self.seed.into();
        let snapshot =
            Snapshot::capture(done, dp.params(), opt, state).map_err(|e| e.to_string())?;
        c.save(snapshot).map_err(|e| e.to_string())
    }

    /// Waits for the background writes and names the last checkpoint.
    pub fn finish(&mut self) -> Result<(), String> {
        let Some(c) = &mut self.checkpoints else { return Ok(()) };
        let written = c.flush().map_err(|e| e.to_string())?;
        if let Some(last) = written.last() {
            println!("checkpoint: {}", last.display());
        }
        Ok(())
    }
}
