//! What each layer of a model costs per micro-batch, measured by running one micro-batch
//! through it: the numbers the stage planner prices and packs.

use super::Layered;
use crate::plan::DeviceProfile;
use crate::train::nn::Ctx;
use crate::train::{Var, no_grad};
use crate::{DType, Result};

/// One layer's cost for one micro-batch, counted from the graph its forward pass recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerCost {
    /// Bytes of the layer's parameters.
    pub param_bytes: usize,
    /// Bytes of its parameters' copies in the compute dtype (a bf16 model's f32 master
    /// weights as its matmuls read them), made once a step and shared by every
    /// micro-batch ([`Param::var_as`](crate::train::Param::var_as)); 0 where the
    /// parameters are in the compute dtype already.
    pub copy_bytes: usize,
    /// Of `param_bytes`, those of the parameters `copy_bytes` are copies of: what a stage
    /// whose optimizer state (and master copy) lives on another device need not keep, its
    /// forward passes reading only the copies.
    pub cast_bytes: usize,
    /// Bytes its forward pass keeps for the backward pass (the values its ops' backward
    /// rules read, saved statistics) and its output (or, where it joins its output to hand
    /// on, the parts), per micro-batch.
    pub activation_bytes: usize,
    /// Bytes it needs only for a while, beyond what it keeps: attention's `[heads, time,
    /// time]` tensors, made in the forward pass and again in the backward pass.
    pub transient_bytes: usize,
    /// Bytes of its output: what crosses to the next stage, and its gradient back.
    pub output_bytes: usize,
    /// Bytes of its output that it makes only where a stage ends after it (its parts
    /// joined to be handed on, [`Layered::joins_output`]), kept for each micro-batch in
    /// flight there; 0 where the output is one of its activations anyway.
    pub joined_bytes: usize,
    /// Of `activation_bytes`, the parts of a joined output that the next layer of its
    /// stage keeps (q, k and v), which a stage ending after it frees, keeping the join.
    pub handed_bytes: usize,
    /// Flops of its matmuls, forward.
    pub matmul_flops: f64,
    /// Matmul flops its backward pass spends computing forward results again (attention's
    /// weights, which are not kept).
    pub recomputed_flops: f64,
    /// Flops of its forward matmuls with a weight operand: its backward pass spends as
    /// many again on the weights' gradients, the part a zero-bubble schedule runs later
    /// ([`Var::backward_split`]).
    pub weight_flops: f64,
    /// Bytes of its ops' output gradients that the weights' part of a split backward pass
    /// reads, kept per micro-batch from the input's part until it runs.
    pub kept_grad_bytes: usize,
    /// Bytes its ops write, forward (the memory-bound part).
    pub written_bytes: usize,
    /// Ops it records, forward (each one kernel launch or more).
    pub ops: usize,
    /// The dtype its matmuls run in (the activation's).
    pub dtype: DType,
    /// Rows of the micro-batch these are the costs of (the first dim of its input): what
    /// the members of a stage's group share out.
    pub rows: usize,
}

/// The shape of a GPT-style model ([`Gpt`](crate::train::models::Gpt)) and of its
/// micro-batches, to price its layers without building it: a 70B model on a thousand
/// chips is planned this way.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransformerShape {
    pub vocab: usize,
    /// Tokens per sequence.
    pub context: usize,
    pub dim: usize,
    pub heads: usize,
    pub blocks: usize,
    /// Sequences per micro-batch.
    pub rows: usize,
    /// Bytes per parameter as stored (4 for f32 master weights).
    pub param_bytes: usize,
    /// Bytes per activation element (4 for f32 compute, 2 for bf16; a 2-byte activation is
    /// priced at the device's bf16 matmul rate).
    pub activation_bytes: usize,
    /// Whether the chips run attention as one kernel
    /// ([`Device::has_attention_kernel`](crate::Device::has_attention_kernel)): the
    /// `[heads, context, context]` scores are then never stored (the kernel holds f32
    /// copies of its operands instead); without one they are written three times.
    pub attention_kernel: bool,
}

impl TransformerShape {
    /// Parameters of the whole model.
    pub fn weights(&self) -> usize {
        let (d, v) = (self.dim, self.vocab);
        (v + self.context) * d + self.blocks * (12 * d * d + 13 * d) + 2 * d + d * v
    }

    /// The model's layers as [`Layered for Gpt`](crate::train::models::Gpt) cuts them:
    /// the embeddings, each block's four quarters, the final norm with the head. Flops and
    /// parameters are exact; the activations follow what this library's layers keep
    /// (counted from their graphs: 12 `[tokens, dim]` buffers per block of the 28 it writes,
    /// per-token statistics, and the joins where a stage ends mid-block; attention's
    /// `[rows, heads, context, context]` tensors are computed again, not kept), checked
    /// against a measurement in the tests.
    pub fn layers(&self) -> Vec<LayerCost> {
        let (d, v, s) = (self.dim as f64, self.vocab as f64, self.context as f64);
        let tokens = (self.rows * self.context) as f64;
        let a = self.activation_bytes as f64;
        let p = self.param_bytes as f64;
        let scores = (self.rows * self.heads) as f64 * s * s;
        let dtype = if self.activation_bytes == 2 { DType::BF16 } else { DType::F32 };
        // A layer whose `linear` parameters (the `Linear` layers' weights and biases) are
        // cast for its matmuls, where the model's parameters are not in the compute dtype.
        let cast = |linear: f64, layer: LayerCost| match self.activation_bytes == self.param_bytes {
            true => layer,
            false => LayerCost {
                copy_bytes: (linear * a) as usize,
                cast_bytes: (linear * p) as usize,
                ..layer
            },
        };
        // `written` elements its ops write, `kept` of them the graph keeps for the backward
        // pass (what the rules read, and the output), `stats` more kept (norms' per-token
        // statistics, ids).
        // A split backward pass keeps the output gradients of the ops with weights (the
        // norms' and the projections'; a bias shares its product's, and the q, k and v
        // projections' are views of the joined `[x | q | k | v]` output's): measured in
        // `[tokens, dim]` buffers, 5 for the first and third quarters, 1 for the others.
        let layer =
            |params: f64, [written, kept, stats]: [f64; 3], flops: f64, ops: usize| LayerCost {
                param_bytes: (params * p) as usize,
                copy_bytes: 0,
                cast_bytes: 0,
                activation_bytes: ((kept + stats) * a) as usize,
                transient_bytes: 0,
                output_bytes: (tokens * d * a) as usize,
                joined_bytes: 0,
                handed_bytes: 0,
                matmul_flops: flops,
                recomputed_flops: 0.0,
                weight_flops: flops,
                kept_grad_bytes: (tokens * d * a) as usize,
                written_bytes: (written * a) as usize,
                ops,
                dtype,
                rows: self.rows,
            };
        let embed = layer((v + s) * d, [2.0 * tokens * d + s * d, tokens * d, tokens + s], 0.0, 3);
        // Each block is four layers, its quarters. The first and the third hand on the
        // residual stream beside what the next quarter reads (`[x | q | k | v]`,
        // `[x | hidden]`): joined into one buffer only where a stage ends there. Of a block's
        // 28 `[tokens, dim]` buffers written, 12 are kept: the norms' outputs, q, k and v,
        // attention's heads joined, the biased hidden activations, and the residual stream;
        // no rule reads the matmuls' outputs before their bias or the sums' operands, and
        // the GELU of the hidden activations is made again where it is read.
        let project = cast(
            3.0 * d * d + 3.0 * d,
            LayerCost {
                handed_bytes: (3.0 * tokens * d * a) as usize,
                kept_grad_bytes: (5.0 * tokens * d * a) as usize,
                output_bytes: (4.0 * tokens * d * a) as usize,
                joined_bytes: (4.0 * tokens * d * a) as usize,
                ..layer(
                    3.0 * d * d + 5.0 * d,
                    [7.0 * tokens * d, 4.0 * tokens * d, 2.0 * tokens],
                    6.0 * tokens * d * d,
                    7,
                )
            },
        );
        // Without an attention kernel, its `[rows, heads, s, s]` scores, masked scores and
        // weights are written and read but not kept (its backward pass computes them
        // again); with one, they stay in the kernel's cache-sized blocks.
        let (score_writes, transient) = match self.attention_kernel {
            true => (0.0, 7.0 * tokens * d * 4.0),
            false => (3.0 * scores, 4.0 * scores * a),
        };
        let attend = cast(
            d * d + d,
            LayerCost {
                written_bytes: ((5.0 * tokens * d + score_writes) * a) as usize,
                recomputed_flops: 2.0 * self.rows as f64 * s * s * d,
                weight_flops: 2.0 * tokens * d * d,
                transient_bytes: transient as usize,
                ..layer(
                    d * d + d,
                    [5.0 * tokens * d, 2.0 * tokens * d, 0.0],
                    2.0 * tokens * d * d + 4.0 * self.rows as f64 * s * s * d,
                    5,
                )
            },
        );
        let expand = cast(
            4.0 * d * d + 4.0 * d,
            LayerCost {
                kept_grad_bytes: (5.0 * tokens * d * a) as usize,
                output_bytes: (5.0 * tokens * d * a) as usize,
                joined_bytes: (5.0 * tokens * d * a) as usize,
                ..layer(
                    4.0 * d * d + 6.0 * d,
                    [13.0 * tokens * d, 5.0 * tokens * d, 2.0 * tokens],
                    8.0 * tokens * d * d,
                    4,
                )
            },
        );
        let contract = cast(
            4.0 * d * d + d,
            LayerCost {
                ..layer(
                    4.0 * d * d + d,
                    [3.0 * tokens * d, tokens * d, 0.0],
                    8.0 * tokens * d * d,
                    3,
                )
            },
        );
        let head = cast(
            d * v,
            LayerCost {
                kept_grad_bytes: ((tokens * d + tokens * v) * a) as usize,
                output_bytes: (tokens * v * a) as usize,
                ..layer(
                    2.0 * d + d * v,
                    [tokens * d + tokens * v, tokens * d + tokens * v, 2.0 * tokens],
                    2.0 * tokens * d * v,
                    2,
                )
            },
        );
        std::iter::once(embed)
            .chain(std::iter::repeat_n([project, attend, expand, contract], self.blocks).flatten())
            .chain(std::iter::once(head))
            .collect()
    }
}

impl LayerCost {
    /// The cost for a micro-batch of `rows` rows, from this one's (`self.rows`): flops and
    /// bytes in proportion, parameters and launches the same.
    pub fn with_rows(&self, rows: usize) -> LayerCost {
        LayerCost { rows, ..self.part(rows as f64 / self.rows.max(1) as f64) }
    }

    /// The cost of `share` of the micro-batch's rows (a member of a stage's group): the
    /// same parameters and launches, the flops and bytes in proportion.
    /// (`rows` stays the micro-batch's.)
    pub fn part(&self, share: f64) -> LayerCost {
        let scale = |bytes: usize| (bytes as f64 * share) as usize;
        LayerCost {
            param_bytes: self.param_bytes,
            copy_bytes: self.copy_bytes,
            cast_bytes: self.cast_bytes,
            activation_bytes: scale(self.activation_bytes),
            transient_bytes: scale(self.transient_bytes),
            output_bytes: scale(self.output_bytes),
            joined_bytes: scale(self.joined_bytes),
            handed_bytes: scale(self.handed_bytes),
            matmul_flops: self.matmul_flops * share,
            recomputed_flops: self.recomputed_flops * share,
            weight_flops: self.weight_flops * share,
            kept_grad_bytes: scale(self.kept_grad_bytes),
            written_bytes: scale(self.written_bytes),
            ops: self.ops,
            dtype: self.dtype,
            rows: self.rows,
        }
    }

    /// Predicted seconds of its forward pass on a device of `profile`: launches, then the
    /// larger of its matmul time and its memory time, as the planner prices one op.
    pub fn forward_secs(&self, profile: &DeviceProfile) -> f64 {
        let rate = profile.matmul_rate(self.dtype, self.matmul_flops);
        let compute = match (self.matmul_flops, rate) {
            (flops, _) if flops <= 0.0 => 0.0,
            (flops, rate) if rate > 0.0 => flops / rate,
            // A device with no measured matmul rate cannot be priced.
            _ => f64::INFINITY,
        };
        // Each written byte was read about once too.
        let memory = 2.0 * self.written_bytes as f64 / profile.bytes_per_s;
        self.ops as f64 * profile.latency_s + compute.max(memory)
    }

    /// Predicted seconds of its backward pass: twice the forward's matmul flops (a gradient
    /// for each operand) and about twice its ops and bytes, plus what it recomputes.
    pub fn backward_secs(&self, profile: &DeviceProfile) -> f64 {
        let again = match self.recomputed_flops {
            0.0 => 0.0,
            flops => flops / profile.matmul_rate(self.dtype, flops),
        };
        2.0 * self.forward_secs(profile) + again
    }

    /// Predicted seconds of the weights' part of its backward pass, split as a zero-bubble
    /// schedule runs it: their gradients' matmuls (the rest of
    /// [`backward_secs`](Self::backward_secs) is the input's part).
    pub fn weight_secs(&self, profile: &DeviceProfile) -> f64 {
        match self.weight_flops {
            0.0 => 0.0,
            flops => flops / profile.matmul_rate(self.dtype, flops),
        }
    }
}

/// Runs `input` (one micro-batch, of the size the pipeline will train with: activations
/// scale with it) through every layer of `model` where its parameters are, each layer's
/// graph on its own, and counts what each layer cost. The forward passes are recorded (that
/// is what is measured), each with the first part of a split backward pass (what it keeps
/// for the second is measured: [`LayerCost::kept_grad_bytes`]), and then dropped.
pub fn profile_layers(model: &dyn Layered, input: &Var, ctx: &Ctx) -> Result<Vec<LayerCost>> {
    let mut x = input.clone();
    let mut costs = Vec::with_capacity(model.depth());
    // A parameter two layers share (tied embeddings) counts at its first use.
    let mut counted = std::collections::HashSet::new();
    for layer in 0..model.depth() {
        let y = model.forward_layer(layer, &x, ctx)?;
        // A join made for handing on (one op writing the output) is neither made nor kept
        // where the next layer runs in the same stage: its parts are.
        let joined = model.joins_output(layer);
        let census = y.census(x.id(), joined);
        // What a split backward pass keeps between its parts, measured.
        let seed = crate::Tensor::ones(
            y.tensor().shape().clone(),
            y.tensor().dtype(),
            y.tensor().device(),
        )?;
        let kept_grad_bytes = y.backward_split(seed, &x)?.1.kept_bytes();
        let out = y.tensor();
        let output_bytes = out.numel() * out.dtype().size_in_bytes();
        let joined_bytes = if joined { output_bytes } else { 0 };
        let param_bytes: usize = (model.layer_params(layer).iter())
            .filter(|p| counted.insert(p.id()))
            .map(|p| p.bytes())
            .sum();
        costs.push(LayerCost {
            param_bytes,
            copy_bytes: census.shared_bytes,
            // A tied weight's master counts where its parameters do, at its first use.
            cast_bytes: census.cast_bytes.min(param_bytes),
            activation_bytes: census.retained_bytes,
            transient_bytes: census.transient_bytes,
            output_bytes,
            joined_bytes,
            handed_bytes: census.handed_bytes,
            matmul_flops: census.matmul_flops,
            recomputed_flops: census.recomputed_flops,
            weight_flops: census.weight_flops,
            kept_grad_bytes,
            written_bytes: census.written_bytes.saturating_sub(joined_bytes),
            ops: census.ops - usize::from(joined && census.ops > 0),
            dtype: if out.dtype().is_float() { out.dtype() } else { DType::F32 },
            rows: input.dims().first().copied().unwrap_or(1),
        });
        // The next layer sees this output as its own input leaf, as a stage would.
        x = Var::leaf(no_grad(|| out.clone()));
    }
    Ok(costs)
}
