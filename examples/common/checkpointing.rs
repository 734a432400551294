//! The examples' `--checkpoint-dir` / `--resume`: open the directory, resume from its newest
//! valid checkpoint, save every N steps in the background, flush at the end.

use std::path::PathBuf;

use manychips::train::optim::Optimizer;
use manychips::train::{Checkpoints, DataParallel, Snapshot};

#[derive(clap::Args, Debug)]
pub struct CheckpointArgs {
    /// Write a checkpoint here every `--checkpoint-every` steps (and at the end).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 3)]
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
}

impl Checkpointing {
    /// Opens the directory and, with `--resume`, loads its newest valid checkpoint into the
    /// model and the optimizer. A checkpoint of another seed is refused.
    pub fn open<M: Send + Sync + 'static>(
        args: &CheckpointArgs,
        seed: u64,
        dp: &mut DataParallel<M>,
        opt: &mut dyn Optimizer,
    ) -> Result<(Checkpointing, Start), String> {
        let checkpoints = match &args.checkpoint_dir {
            Some(dir) => Some(Checkpoints::open(dir, args.keep).map_err(|e| e.to_string())?),
            None if args.resume => return Err("--resume needs --checkpoint-dir".into()),
            None => None,
        };
        let me = Checkpointing { checkpoints, every: args.checkpoint_every, seed };
        let fresh = Start { step: 0, state: None };
        let Some(c) = me.checkpoints.as_ref().filter(|_| args.resume) else {
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
        loaded.snapshot.restore(dp.params(), opt, &loaded.path).map_err(|e| e.to_string())?;
        dp.resume_at(loaded.snapshot.step);
        println!("resumed from {} (step {})", loaded.path.display(), loaded.snapshot.step);
        let start = Start { step: loaded.snapshot.step, state: Some(loaded.snapshot.state) };
        Ok((me, start))
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
