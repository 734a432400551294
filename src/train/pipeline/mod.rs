//! Pipeline parallelism: a layered model cut into stages of contiguous layers, each stage
//! on its own device (or on a data-parallel group of devices, [`Candidate::group`]; or, in
//! an interleaved plan, [`PipelinePlan::interleaved`], several non-adjacent stages on each
//! device) with its own parameters, gradients and optimizer state, so that a model no
//! single chip holds trains on several.
//!
//! Three steps, each a value that can be looked at before the next:
//! 1. [`profile_layers`] runs one micro-batch through the model and counts, per layer,
//!    its parameters, what it keeps for the backward pass, its output and its flops;
//! 2. [`PipelinePlan::search`] cuts the layers into stages sized by each device's
//!    calibrated speed and free memory (or [`PipelinePlan::manual`] prices a cut the
//!    caller chose); a plan that does not fit is refused before anything moves;
//! 3. [`Pipeline`] moves each stage's parameters to its device and trains: every step runs
//!    the micro-batches through the stages under the 1F1B schedule (interleaved, or
//!    zero-bubble with backward passes split, where the plan says), one thread per stage,
//!    activations and their gradients copied between stages, gradients accumulated over
//!    the micro-batches, and each stage's optimizer updating its own parameters where they
//!    live.
//!
//! The result is the same as running the same micro-batches one after another on one
//! device: the stages run the same ops in the same order on each micro-batch, and each
//! stage adds its micro-batches' gradients in micro-batch order.

mod cost;
mod group;
mod grouping;
mod interleave;
mod plan;
#[cfg(feature = "mpi")]
mod ranks;
mod replica_plan;
mod replicas;
mod run;
mod schedule;
mod simulate;
mod stage;
mod zero_bubble;

use std::ops::Range;

pub use cost::{LayerCost, TransformerShape, profile_layers};
pub use plan::{Candidate, HelperPlan, PipelinePlan, StageMemory, StagePlan, StateHost};
#[cfg(feature = "mpi")]
pub use ranks::RankPipeline;
pub use replica_plan::{ReplicaPlan, balanced_shares};
pub use replicas::{PipelineReplicas, ReplicasReport};
pub use run::{Pipeline, PipelineReport};
pub use schedule::{Work, chunk_in_flight, in_flight, interleaved, one_f_one_b, zero_bubble};
pub use simulate::{Played, play};

use super::nn::Ctx;
use super::{Param, Var};
use crate::Result;

/// A model as a chain of layers, the unit a pipeline cuts into stages. Layer 0 takes the
/// micro-batch's input (token ids, say); each later layer takes the one before's output;
/// the last one's output goes to the loss.
pub trait Layered: Send + Sync {
    /// How many layers.
    fn depth(&self) -> usize;

    /// Layer `layer` applied to `x`.
    fn forward_layer(&self, layer: usize, x: &Var, ctx: &Ctx) -> Result<Var>;

    /// Whether [`forward_layer`](Self::forward_layer) joins layer `layer`'s output from
    /// parts into one buffer only to hand it on, where [`forward_layers`](Self::forward_layers)
    /// passes the parts along as they are to a next layer of the same run: that buffer then
    /// exists only where a stage ends after `layer` (its cost is
    /// [`LayerCost::joined_bytes`](cost::LayerCost::joined_bytes), not its activations).
    fn joins_output(&self, _layer: usize) -> bool {
        false
    }

    /// The parameters layer `layer` uses. A parameter two layers share (tied embeddings)
    /// must have both in one stage; a stage holds, updates and saves it once.
    fn layer_params(&self, layer: usize) -> Vec<Param>;

    /// The parameters layers `layers` use, each once, in first-use order.
    fn params_of(&self, layers: Range<usize>) -> Vec<Param> {
        let mut seen = std::collections::HashSet::new();
        layers.flat_map(|l| self.layer_params(l)).filter(|p| seen.insert(p.id())).collect()
    }

    /// Layers `layers` applied in turn to `x`.
    fn forward_layers(&self, layers: Range<usize>, x: &Var, ctx: &Ctx) -> Result<Var> {
        let mut h = x.clone();
        for layer in layers {
            h = self.forward_layer(layer, &h, ctx)?;
        }
        Ok(h)
    }
}
