//! `Var`: a tensor that remembers how it was made, so that gradients can flow back to the
//! leaves it came from.
//!
//! The graph lives in the values themselves (each `Var` holds the node that made it, and
//! each node its inputs'), as in candle and micrograd: there is no tape object to pass
//! around and no global graph to reset. A graph is freed when its last `Var` drops. A node
//! keeps only the values its backward rule reads (PyTorch's saved tensors), and an
//! activation's output, where a matmul reads it, is made again from the activation's input:
//! a transformer block keeps 12 of the 28 activation buffers it writes. [`Var::backward`]
//! walks it once and returns the gradients of the tracked leaves as a [`Grads`] value;
//! nothing is stored in the leaves, so two backward passes never interfere and
//! accumulation is an explicit `Grads::accumulate`.

use std::cell::{Cell, OnceCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::backward::{Backward, Operand};
use crate::{DType, DeviceRef, Error, Result, Shape, Tensor};

/// A process-wide unique id of a variable; a parameter keeps one id for its whole life, so
/// its gradient can be found in [`Grads`] whichever `Var` of it the forward pass used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(u64);

impl VarId {
    pub(crate) fn fresh() -> VarId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        VarId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One value of a graph as its backward pass sees it. It keeps its value only where its
/// own rule reads it, and each input's only where the rule reads that: as PyTorch's saved
/// tensors, an intermediate no rule reads (a matmul's output before its bias is added, a
/// residual sum's operands) is freed as soon as the `Var`s holding it are dropped, not
/// kept until the backward pass.
struct Node {
    id: VarId,
    /// A leaf whose gradient [`Var::backward`] reports.
    leaf: bool,
    /// How to send the output's gradient to `inputs`; `None` for leaves and constants.
    backward: Option<Backward>,
    inputs: Vec<Edge>,
    /// The value's shape, dtype and device: what a rule reads of an operand whose value it
    /// does not keep (a broadcast's shape, a cast's dtype).
    shape: Shape,
    dtype: DType,
    device: DeviceRef,
    /// The value, where its own rule reads it.
    output: Option<Tensor>,
    /// The value's buffer ([`Tensor::storage_key`]): a leaf's is its owner's to account for.
    storage: usize,
    /// The value is a view of an input's buffer: its op launched nothing and wrote nothing.
    view: bool,
    /// The value is made once and shared by the graphs of many micro-batches (a weight's
    /// copy in the compute dtype, [`Param::var_as`]): its owner accounts for it.
    ///
    /// [`Param::var_as`]: super::Param::var_as
    shared: bool,
}

/// A long chain (thousands of ops) must not drop recursively: the nodes this one alone
/// holds are taken apart one by one.
impl Drop for Node {
    fn drop(&mut self) {
        let mut alone: Vec<Arc<Node>> = self.inputs.drain(..).map(|e| e.node).collect();
        while let Some(node) = alone.pop() {
            if let Some(mut node) = Arc::into_inner(node) {
                alone.extend(node.inputs.drain(..).map(|e| e.node));
            }
        }
    }
}

/// An input of an op: its node, and its value where the op's rule reads it, or `again`:
/// the value is not kept because its node can make it again from what that node keeps
/// ([`Node::remakes`]: an activation's output, as the next matmul's weight gradient reads
/// it, from the activation's kept input; for a GPT block's MLP, 4 of its 16 kept buffers).
struct Edge {
    node: Arc<Node>,
    value: Option<Tensor>,
    again: bool,
    /// The value is a transposed view of a contiguous buffer (recorded for a matmul's
    /// operands: the layout their gradients follow).
    transposed: bool,
}

impl Node {
    fn requires_grad(&self) -> bool {
        self.leaf || self.backward.is_some()
    }

    fn bytes(&self) -> usize {
        self.shape.numel() * self.dtype.size_in_bytes()
    }

    fn operands(&self) -> Vec<Operand<'_>> {
        (self.inputs.iter())
            .map(|e| Operand {
                shape: &e.node.shape,
                dtype: e.node.dtype,
                device: &e.node.device,
                transposed: e.transposed,
                value: e.value.as_ref(),
                again: e
                    .again
                    .then(|| Box::new(|| e.node.remake()) as Box<dyn Fn() -> Result<Tensor> + '_>),
                made: OnceCell::new(),
            })
            .collect()
    }

    /// Whether this node's value can be made again, exactly, from what the graph keeps: an
    /// elementwise activation whose rule keeps its input, or a view reshaping such a value.
    fn remakes(&self) -> bool {
        match &self.backward {
            Some(Backward::Gelu | Backward::Relu | Backward::Silu) => {
                self.inputs[0].value.is_some()
            }
            Some(Backward::Reshape) => self.view && self.inputs[0].node.remakes(),
            _ => false,
        }
    }

    /// The value [`remakes`](Self::remakes) promises, by the forward pass's own ops (so bit
    /// for bit the value the forward pass made).
    fn remake(&self) -> Result<Tensor> {
        let kept = || {
            self.inputs[0].value.clone().ok_or_else(|| Error::InvalidArgument {
                op: "backward".into(),
                device: self.device.info().label(),
                detail: "an activation to make again without its input".into(),
            })
        };
        match &self.backward {
            Some(Backward::Gelu) => kept()?.gelu(),
            Some(Backward::Relu) => kept()?.relu(),
            Some(Backward::Silu) => kept()?.silu(),
            _ => self.inputs[0].node.remake()?.reshape(self.shape.clone()),
        }
    }
}

/// A tensor in a differentiable computation: its value, and the node that records how it
/// was made. Cloning is cheap.
#[derive(Clone)]
pub struct Var {
    node: Arc<Node>,
    value: Tensor,
}

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` without recording a graph on this thread (evaluation, optimizer updates).
/// Scoped: recording resumes when `f` returns or unwinds, so no mode can leak.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
    let _restore = Restore;
    f()
}

/// False inside [`no_grad`].
pub fn is_grad_enabled() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

impl Var {
    /// A value gradients do not flow into (data, masks, targets).
    pub fn constant(value: Tensor) -> Var {
        Var::new(VarId::fresh(), value, false, None, Vec::new(), [false; 2])
    }

    /// A fresh leaf whose gradient [`backward`](Var::backward) reports.
    pub fn leaf(value: Tensor) -> Var {
        Var::leaf_with_id(value, VarId::fresh())
    }

    /// A leaf with a given id: every use of one parameter shares its id.
    pub(crate) fn leaf_with_id(value: Tensor, id: VarId) -> Var {
        Var::new(id, value, true, None, Vec::new(), [false; 2])
    }

    /// The result of an op: records `backward` when an input needs a gradient and recording
    /// is on; a plain constant otherwise.
    pub(crate) fn from_op(value: Tensor, backward: Backward, inputs: &[&Var]) -> Var {
        Var::recorded(value, backward, inputs, false)
    }

    /// This value cast to `dtype` (and copied to `on`, where given) as a node made once and
    /// shared by the graphs of many micro-batches (see [`Param::var_as`](super::Param::var_as));
    /// the cast's own graph otherwise. Its gradient reaches this value in its dtype, on the
    /// device the copy is used on (a cast's rule reads no operand).
    pub(crate) fn cast_shared(&self, dtype: DType, on: Option<&DeviceRef>) -> Result<Var> {
        let mut copy = self.value.cast(dtype)?;
        if let Some(device) = on {
            copy = copy.to_device(device)?;
        }
        Ok(Var::recorded(copy, Backward::Cast, &[self], true))
    }

    fn recorded(value: Tensor, backward: Backward, inputs: &[&Var], shared: bool) -> Var {
        if !is_grad_enabled() || !inputs.iter().any(|v| v.requires_grad()) {
            return Var::constant(value);
        }
        let key = value.storage_key();
        let view = inputs.iter().any(|v| v.value.storage_key() == key);
        let edges = inputs
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let again = backward.reads_input(i) && v.node.remakes();
                let value = (backward.reads_input(i) && !again).then(|| v.value.clone());
                let transposed = matches!(backward, Backward::Matmul)
                    && super::backward::stored_transposed(&v.value);
                Edge { node: v.node.clone(), value, again, transposed }
            })
            .collect();
        Var::new(VarId::fresh(), value, false, Some(backward), edges, [view, shared])
    }

    fn new(
        id: VarId,
        value: Tensor,
        leaf: bool,
        backward: Option<Backward>,
        inputs: Vec<Edge>,
        [view, shared]: [bool; 2],
    ) -> Var {
        let keeps = backward.as_ref().is_some_and(Backward::reads_output);
        let node = Node {
            id,
            leaf,
            inputs,
            shape: value.shape().clone(),
            dtype: value.dtype(),
            device: value.device().clone(),
            output: keeps.then(|| value.clone()),
            storage: value.storage_key(),
            view,
            shared,
            backward,
        };
        Var { node: Arc::new(node), value }
    }

    pub fn id(&self) -> VarId {
        self.node.id
    }

    /// The value. Ops on it directly are not recorded.
    pub fn tensor(&self) -> &Tensor {
        &self.value
    }

    /// True for tracked leaves and for anything computed from one.
    pub fn requires_grad(&self) -> bool {
        self.node.requires_grad()
    }

    /// The same value, cut off from the graph.
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }

    pub fn rank(&self) -> usize {
        self.value.rank()
    }

    /// Gradients of every tracked leaf this value depends on, seeded with ones (for a
    /// scalar loss: d loss / d leaf).
    pub fn backward(&self) -> Result<Grads> {
        let seed =
            Tensor::ones(self.tensor().shape().clone(), self.tensor().dtype(), self.device())?;
        self.backward_with(seed)
    }

    /// Gradients of every tracked leaf, given the gradient of this value.
    pub fn backward_with(&self, seed: Tensor) -> Result<Grads> {
        let mut grads = Grads::default();
        self.backward_streaming(seed, |id, grad| grads.add(id, grad))?;
        Ok(grads)
    }

    /// The backward pass, handing each leaf's gradient to `report` as soon as it is final:
    /// when the last op that used the leaf has sent its part back, not when the whole pass
    /// is over. The leaves used last in the forward pass (a network's last layers) come
    /// first, so their gradients can travel (an all-reduce, a copy to another device) while
    /// the rest of the pass runs. Each leaf is reported once; a leaf the value does not
    /// depend on is not reported.
    pub fn backward_streaming(
        &self,
        seed: Tensor,
        mut report: impl FnMut(VarId, Tensor) -> Result<()>,
    ) -> Result<()> {
        self.check_seed(&seed)?;
        let walk = Walk::new(self);
        walk.run(Some(seed), Part::Whole, &mut report)
    }

    /// The backward pass in two parts, as a zero-bubble pipeline runs it (Qi et al. 2024):
    /// now, only the gradient of `input` (`None` where this value does not depend on it),
    /// which the stage before is waiting for; later, [`WeightGrads::finish`], the gradients
    /// of the leaves that do not depend on `input` (a stage's parameters), which nobody
    /// waits for. Between the two, the graph and the gradients of the ops' outputs that
    /// the second part needs are kept.
    ///
    /// Both parts together compute exactly what [`backward_streaming`](Self::backward_streaming)
    /// does, in the same order, so every gradient is equal bit for bit.
    pub fn backward_split(
        &self,
        seed: Tensor,
        input: &Var,
    ) -> Result<(Option<Tensor>, WeightGrads)> {
        self.check_seed(&seed)?;
        let walk = Walk::new(self);
        let reaches = walk.reaching(input.id());
        let mut kept = HashMap::new();
        let mut input_grad = None;
        let part = Part::Input { input: input.id(), reaches: &reaches, keep: &mut kept };
        walk.run(Some(seed), part, &mut |_, grad| {
            input_grad = Some(grad);
            Ok(())
        })?;
        Ok((input_grad, WeightGrads { walk, reaches, kept }))
    }

    fn check_seed(&self, seed: &Tensor) -> Result<()> {
        if seed.dims() != self.dims() || seed.dtype() != self.tensor().dtype() {
            return Err(Error::Shape {
                op: "backward".into(),
                device: self.device().info().label(),
                detail: format!("seed {:?} does not match the value {:?}", seed, self.tensor()),
            });
        }
        Ok(())
    }

    /// How many recorded ops and leaves the graph behind this value has.
    pub fn graph_len(&self) -> usize {
        self.topological_order().len()
    }

    /// What the graph behind this value costs, counted from its recorded ops: see
    /// [`GraphCensus`]. Leaves (parameters, a stage's input) are not counted: they are
    /// accounted for by whoever owns them. The value itself is counted as kept (whoever
    /// runs the backward pass holds it); where `handed_on` says it is a join of parts made
    /// only to be handed on ([`Layered::joins_output`]), the parts are counted instead:
    /// the next layer of a stage reads those, and the join is not made.
    ///
    /// `input` is the graph's input (a layer's): the matmuls with an operand not computed
    /// from it (a weight) count towards [`GraphCensus::weight_flops`].
    ///
    /// [`Layered::joins_output`]: crate::train::pipeline::Layered::joins_output
    pub(crate) fn census(&self, input: VarId, handed_on: bool) -> GraphCensus {
        let mut census = GraphCensus::default();
        let walk = Walk::new(self);
        let reaches = walk.reaching(input);
        let order = &walk.order;
        // Views of a leaf (a weight's transpose, its rows for one output, the parts of a
        // stage's input) share the leaf's buffer, which its owner accounts for; so do a
        // shared node's.
        let owned: HashSet<usize> =
            order.iter().filter(|n| n.leaf || n.shared).map(|n| n.storage).collect();
        census.shared_bytes = order.iter().filter(|n| n.shared).map(|n| n.bytes()).sum();
        let cast_from = order.iter().filter(|n| n.shared).flat_map(|n| &n.inputs);
        census.cast_bytes = cast_from.map(|e| e.node.bytes()).sum();
        let mut buffers: HashMap<usize, usize> = HashMap::new();
        let mut keep = |t: &Tensor| {
            if owned.contains(&t.storage_key()) {
                return;
            }
            let bytes = t.numel() * t.dtype().size_in_bytes();
            let entry = buffers.entry(t.storage_key()).or_default();
            *entry = (*entry).max(bytes);
        };
        match (handed_on, &self.node.backward) {
            (true, Some(Backward::Cat { .. })) => {
                // The parts, each once (their buffers are not at hand: they count by size),
                // but those the next layer will make again and those kept anyway.
                let mut parts = HashSet::new();
                census.handed_bytes = (self.node.inputs.iter())
                    .filter(|e| !e.node.leaf && e.node.id != input && !e.node.remakes())
                    .filter(|e| e.node.output.is_none() && parts.insert(e.node.id))
                    .map(|e| e.node.bytes())
                    .sum::<usize>();
                census.retained_bytes += census.handed_bytes;
            }
            _ => keep(&self.value),
        }
        for node in order {
            let Some(backward) = &node.backward else { continue };
            // A view (a transpose, a narrow, a reshape that needs no copy) shares its
            // input's buffer: it launches nothing and writes nothing.
            // A shared node is made once a step, not once a micro-batch.
            if !node.view && !node.shared {
                census.ops += 1;
                census.written_bytes += node.bytes();
            }
            node.output.iter().for_each(&mut keep);
            node.inputs.iter().filter_map(|e| e.value.as_ref()).for_each(&mut keep);
            backward.saved().into_iter().for_each(&mut keep);
            match (backward, node.inputs.as_slice()) {
                (Backward::Matmul, [a, b]) => {
                    let inner = a.node.shape.dims().last().copied().unwrap_or(0);
                    let flops = 2.0 * node.shape.numel() as f64 * inner as f64;
                    census.matmul_flops += flops;
                    let weight = |e: &Edge| e.node.requires_grad() && !reaches[walk.at[&e.node.id]];
                    if weight(a) || weight(b) {
                        census.weight_flops += flops;
                    }
                }
                // `q · kᵀ` and `weights · v`, each 2·numel(q)·time flops; the backward pass
                // computes `q · kᵀ` again. Where the device has no attention kernel, the
                // scores, masked scores and weights are written (and dropped) too, and its
                // backward pass holds the weights, their gradient, the scores' gradient and a
                // row statistic's worth at once; a kernel holds f32 copies of the operands
                // and the gradients instead (seven of `q`'s size).
                (Backward::Attention { .. }, [q, ..]) => {
                    let dims = q.node.shape.dims();
                    let (time, head_dim) = (dims[dims.len() - 2], dims[dims.len() - 1].max(1));
                    let numel = q.node.shape.numel();
                    let product = 2.0 * numel as f64 * time as f64;
                    census.matmul_flops += 2.0 * product;
                    census.recomputed_flops += product;
                    let held = match q.node.device.has_attention_kernel() {
                        true => 7 * numel * 4,
                        false => {
                            let weights = numel / head_dim * time;
                            census.written_bytes += 3 * weights * node.dtype.size_in_bytes();
                            4 * weights * node.dtype.size_in_bytes()
                        }
                    };
                    census.transient_bytes = census.transient_bytes.max(held);
                }
                _ => {}
            }
        }
        census.retained_bytes += buffers.values().sum::<usize>();

        census
    }

    /// Every node that needs a gradient, each after all of its inputs.
    fn topological_order(&self) -> Vec<Arc<Node>> {
        // Iterative DFS: a deep graph (hundreds of layers) must not overflow the stack.
        let mut order = Vec::new();
        let mut seen: HashSet<VarId> = HashSet::new();
        let mut stack: Vec<(Arc<Node>, bool)> = vec![(self.node.clone(), false)];
        while let Some((node, expanded)) = stack.pop() {
            if expanded {
                order.push(node);
                continue;
            }
            if !node.requires_grad() || !seen.insert(node.id) {
                continue;
            }
            stack.push((node.clone(), true));
            for input in &node.inputs {
                if input.node.requires_grad() && !seen.contains(&input.node.id) {
                    stack.push((input.node.clone(), false));
                }
            }
        }
        order
    }

    pub(crate) fn device(&self) -> &crate::DeviceRef {
        self.value.device()
    }
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (&self.node.backward, self.node.leaf) {
            (Some(b), _) => b.name(),
            (None, true) => "leaf",
            (None, false) => "constant",
        };
        write!(f, "Var({kind}, {:?})", self.value)
    }
}

/// Which gradients a walk of the graph computes.
enum Part<'a> {
    /// All of them.
    Whole,
    /// Those flowing into the nodes that reach the input (`reaches`), keeping the output
    /// gradient of each such op with an operand that does not reach it, for [`Part::Weights`].
    Input { input: VarId, reaches: &'a [bool], keep: &'a mut HashMap<usize, Tensor> },
    /// Those flowing into the nodes that do not reach the input, from the kept gradients.
    Weights { reaches: &'a [bool], kept: HashMap<usize, Tensor> },
}

/// A graph laid out for its backward pass: its nodes in topological order, and per node
/// how many uses it has and its height (the longest path down to a leaf; leaves are 0).
struct Walk {
    order: Vec<Arc<Node>>,
    at: HashMap<VarId, usize>,
    uses: Vec<usize>,
    height: Vec<usize>,
    root: Option<usize>,
}

impl Walk {
    fn new(value: &Var) -> Walk {
        let order = value.topological_order();
        let at: HashMap<VarId, usize> = order.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
        let mut uses = vec![0usize; order.len()];
        let mut height = vec![0usize; order.len()];
        for (i, node) in order.iter().enumerate() {
            for input in node.inputs.iter().filter(|e| e.node.requires_grad()) {
                let j = at[&input.node.id];
                uses[j] += 1;
                // A shared node stands where its leaf would (a weight's copy): at a leaf's
                // height, so the walk orders the rest as it would with the leaf itself.
                if !node.shared {
                    height[i] = height[i].max(height[j] + 1);
                }
            }
        }
        let root = at.get(&value.id()).copied();
        Walk { order, at, uses, height, root }
    }

    /// Per node, whether it is the var `input` or computed from it.
    fn reaching(&self, input: VarId) -> Vec<bool> {
        let mut reaches = vec![false; self.order.len()];
        for (i, node) in self.order.iter().enumerate() {
            reaches[i] = node.id == input
                || node.inputs.iter().any(|e| self.at.get(&e.node.id).is_some_and(|&j| reaches[j]));
        }
        reaches
    }

    /// Walks the graph from the root down, computing `part` of the gradients and reporting
    /// the leaves'.
    ///
    /// A node is ready once every use of it has sent its gradient back. Of the ready ones,
    /// the lowest goes first: a short branch down to a parameter (a transpose of a weight)
    /// finishes, and reports, before the pass descends the long chain below. Every part
    /// visits the nodes in this same order (a gradient not computed still counts its use
    /// as done), so each gradient's terms are summed in the same order whichever part
    /// computes it.
    fn run(
        &self,
        seed: Option<Tensor>,
        mut part: Part<'_>,
        report: &mut dyn FnMut(VarId, Tensor) -> Result<()>,
    ) -> Result<()> {
        // A value no leaf flows into has no gradients to report.
        let Some(root) = self.root else { return Ok(()) };
        let mut uses = self.uses.clone();
        let mut ready = BinaryHeap::from([(Reverse(self.height[root]), root)]);
        let mut pending: HashMap<usize, Tensor> = HashMap::new();
        // The weights' part starts from the root's kept gradient where the root does not
        // reach the input (all of a first stage's pass is the weights' part).
        let seed = match &mut part {
            Part::Weights { reaches, kept } if !reaches[root] => kept.remove(&root),
            Part::Weights { .. } => None,
            _ => seed,
        };
        pending.extend(seed.map(|seed| (root, seed)));
        while let Some((_, i)) = ready.pop() {
            let node = &self.order[i];
            let grad = match &mut part {
                Part::Weights { reaches, kept } if reaches[i] => kept.remove(&i),
                _ => pending.remove(&i),
            };
            // Which inputs this part sends a gradient to.
            let needs: Vec<bool> = (node.inputs.iter())
                .map(|e| {
                    e.node.requires_grad()
                        && match &part {
                            Part::Whole => true,
                            Part::Input { reaches, .. } => reaches[self.at[&e.node.id]],
                            Part::Weights { reaches, .. } => !reaches[self.at[&e.node.id]],
                        }
                })
                .collect();
            if let (Part::Input { input, reaches, keep }, Some(grad)) = (&mut part, &grad) {
                // The input's gradient is this part's one report, leaf or not.
                if node.id == *input {
                    report(node.id, grad.clone())?;
                }
                // What the weights' part starts from: the gradients of the ops with weight
                // operands, and the seed where the root does not reach the input.
                let weights = (node.inputs.iter())
                    .any(|e| e.node.requires_grad() && !reaches[self.at[&e.node.id]]);
                if weights || !reaches[i] {
                    keep.insert(i, grad.clone());
                }
            }
            let Some(backward) = &node.backward else {
                let reported = matches!(part, Part::Input { .. });
                if let Some(grad) = grad.filter(|_| node.leaf && !reported) {
                    report(node.id, grad)?;
                }
                continue;
            };
            let input_grads = match &grad {
                Some(grad) if needs.contains(&true) => {
                    backward.apply(grad, node.output.as_ref(), &node.operands(), &needs)?
                }
                // Nothing flows through this op, but its uses of its inputs are over.
                _ => vec![None; node.inputs.len()],
            };
            for ((input, input_grad), need) in node.inputs.iter().zip(input_grads).zip(&needs) {
                if !input.node.requires_grad() {
                    continue;
                }
                let j = self.at[&input.node.id];
                if let Some(input_grad) = input_grad.filter(|_| *need) {
                    let sum = match pending.remove(&j) {
                        Some(prev) => prev.add(&input_grad)?,
                        None => input_grad,
                    };
                    pending.insert(j, sum);
                }
                uses[j] -= 1;
                if uses[j] == 0 {
                    ready.push((Reverse(self.height[j]), j));
                }
            }
        }
        Ok(())
    }
}

/// The second part of a split backward pass ([`Var::backward_split`]): the gradients of the
/// leaves that do not depend on the input. Holds the graph until it runs.
pub struct WeightGrads {
    walk: Walk,
    reaches: Vec<bool>,
    kept: HashMap<usize, Tensor>,
}

impl WeightGrads {
    /// Computes the gradients, handing each leaf's to `report` as soon as it is final.
    pub fn finish(self, mut report: impl FnMut(VarId, Tensor) -> Result<()>) -> Result<()> {
        let WeightGrads { walk, reaches, kept } = self;
        walk.run(None, Part::Weights { reaches: &reaches, kept }, &mut report)
    }

    /// Bytes of the buffers of the output gradients kept for this part: a buffer two ops
    /// share counted once, and a view (the gradient of one part of a joined output) as the
    /// buffer it keeps alive, as far as the views reach into it.
    pub fn kept_bytes(&self) -> usize {
        let mut buffers: HashMap<usize, usize> = HashMap::new();
        for t in self.kept.values() {
            let entry = buffers.entry(t.storage_key()).or_default();
            *entry = (*entry).max(t.reached_bytes());
        }
        buffers.values().sum()
    }
}

/// The cost of a recorded graph (one layer's forward pass, say), for planning: how many
/// ops, how many flops its matmuls do, and how much memory it keeps for the backward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct GraphCensus {
    /// Recorded ops that make a buffer of their own (views are not counted: they launch
    /// nothing).
    pub ops: usize,
    /// Flops of the forward matmuls (2·m·n·k each).
    pub matmul_flops: f64,
    /// Matmul flops the backward pass spends computing forward results again.
    pub recomputed_flops: f64,
    /// Flops of the forward matmuls with a weight operand (one not computed from the
    /// input): the backward pass spends as many again on the weights' gradients (twice
    /// as many where both operands are weights).
    pub weight_flops: f64,
    /// Bytes the ops' outputs write.
    pub written_bytes: usize,
    /// Bytes of the distinct buffers the graph holds for the backward pass (the values its
    /// rules read, and what they saved) and the value itself.
    pub retained_bytes: usize,
    /// The most bytes one op needs briefly beyond them (attention's weights, made again
    /// in its backward pass).
    pub transient_bytes: usize,
    /// Bytes of the values made once and shared with other micro-batches' graphs (the
    /// weights' copies in the compute dtype), not counted in `retained_bytes`.
    pub shared_bytes: usize,
    /// Bytes of what those shared values are made from (the weights they are cast from).
    pub cast_bytes: usize,
    /// Of `retained_bytes`, the parts of a join made to hand on, which the next layer of a
    /// stage keeps (where a stage ends, the join is kept instead).
    pub handed_bytes: usize,
}

/// The gradients of one backward pass (or of several, accumulated), by leaf id.
#[derive(Clone, Default)]
pub struct Grads {
    map: HashMap<VarId, Tensor>,
}

impl Grads {
    /// The gradient of the leaf with this id, if the loss depended on it.
    pub fn get(&self, id: VarId) -> Option<&Tensor> {
        self.map.get(&id)
    }

    pub fn insert(&mut self, id: VarId, grad: Tensor) {
        self.map.insert(id, grad);
    }

    pub fn remove(&mut self, id: VarId) -> Option<Tensor> {
        self.map.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = VarId> + '_ {
        self.map.keys().copied()
    }

    /// Adds `grad` to the gradient of `id` (gradient accumulation over micro-batches).
    pub fn add(&mut self, id: VarId, grad: Tensor) -> Result<()> {
        let grad = grad.contiguous()?;
        let sum = match self.map.remove(&id) {
            Some(prev) => prev.add(&grad)?,
            None => grad,
        };
        self.map.insert(id, sum);
        Ok(())
    }

    /// Adds every gradient of `other` into this set.
    pub fn accumulate(&mut self, other: Grads) -> Result<()> {
        for (id, grad) in other.map {
            self.add(id, grad)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Grads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.map.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{CpuDevice, DeviceRef, ScatterOp};

    /// A transformer block's pass split in two (the input's gradient first, the weights'
    /// later) gives every gradient bit for bit as the whole pass does; here a weight is
    /// also used twice (tied), so its two terms must be summed in the same order.
    #[test]
    fn a_split_backward_pass_gives_the_whole_passs_gradients_bit_for_bit() -> Result<()> {
        use crate::train::ParamStore;
        use crate::train::nn::TransformerBlock;
        let device: DeviceRef = Arc::new(CpuDevice::with_threads(1)?);
        let store = ParamStore::new(&device, 7);
        let block = TransformerBlock::new(&store.sub("block"), 8, 2)?;
        let values: Vec<f32> =
            (0..2 * 5 * 8).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let x = Var::leaf(Tensor::from_slice(&values, [2, 5, 8], &device)?);
        let y = block.forward(&x)?;
        // The first projection's weight used again, after the block: a tied weight.
        let w = block.fc1.weight.var()?;
        let y = y.matmul(&w.t()?)?.tanh()?.matmul(&w)?.add(&y)?;
        let seed = Tensor::from_slice(&values, [2, 5, 8], &device)?;

        let mut whole = Grads::default();
        y.backward_streaming(seed.clone(), |id, g| whole.add(id, g))?;
        let (input_grad, later) = y.backward_split(seed, &x)?;
        assert!(later.kept_bytes() > 0, "the weights' part keeps output gradients");
        let mut split = Grads::default();
        later.finish(|id, g| split.add(id, g))?;

        // A weight that is the value itself gets its gradient in the weights' part; an
        // input that is not a leaf gets its own.
        let w = block.fc2.weight.var()?;
        let seed_w = Tensor::ones(w.tensor().shape().clone(), crate::DType::F32, &device)?;
        let (none, later) = w.backward_split(seed_w, &x)?;
        let mut got = Grads::default();
        later.finish(|id, g| got.add(id, g))?;
        assert!(none.is_none() && got.get(w.id()).is_some());
        let hidden = x.tanh()?;
        let (some, _) = hidden
            .matmul(&w)?
            .backward_split(Tensor::ones([2, 5, 32], crate::DType::F32, &device)?, &hidden)?;
        assert!(some.is_some_and(|g| g.dims() == [2, 5, 8]));

        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.to_vec::<f32>()?.into_iter().map(f32::to_bits).collect())
        };
        assert_eq!(
            bits(&input_grad.expect("the input's gradient"))?,
            bits(whole.get(x.id()).unwrap())?
        );
        let params = block.params();
        assert_eq!(split.len() + 1, whole.len(), "every weight, and not the input, later");
        for p in &params {
            let (a, b) = (whole.get(p.id()).unwrap(), split.get(p.id()).unwrap());
            assert_eq!(bits(a)?, bits(b)?, "{}", p.name());
        }
        Ok(())
    }

    /// An activation's output that a matmul reads is not kept but made again from the
    /// activation's input, by the same op: the weight's gradient is bit for bit the one
    /// from the forward pass's own value, and the graph keeps the input alone.
    #[test]
    fn an_activation_made_again_gives_the_kept_ones_gradient_bit_for_bit() -> Result<()> {
        let device: DeviceRef = Arc::new(CpuDevice::with_threads(1)?);
        let values: Vec<f32> = (0..6 * 8).map(|i| ((i * 13 % 17) as f32 - 8.0) / 3.0).collect();
        let h = Var::leaf(Tensor::from_slice(&values, [6, 8], &device)?);
        let w = Var::leaf(Tensor::from_slice(&values[..8 * 4], [8, 4], &device)?);
        let a = h.gelu()?.reshape([6, 8])?;
        let y = a.matmul(&w)?;
        let seed = Tensor::from_slice(&values[..6 * 4], [6, 4], &device)?;
        let kept_a = a.tensor().clone();
        drop(a);
        let census = y.census(h.id(), false);
        let grads = y.backward_with(seed.clone())?;
        let want = kept_a.t()?.matmul(&seed)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.to_vec::<f32>()?.into_iter().map(f32::to_bits).collect())
        };
        assert_eq!(bits(grads.get(w.id()).expect("w's gradient"))?, bits(&want)?);
        // Kept: the output alone (h is the input, w a leaf); not the activation.
        assert_eq!(census.retained_bytes, 6 * 4 * 4);
        Ok(())
    }

    /// A scatter that sums or overwrites reads neither operand nor its output for its
    /// gradients: the graph keeps only its indices (and a max's keeps all three).
    #[test]
    fn a_summing_or_overwriting_scatter_keeps_only_its_indices() -> Result<()> {
        let device: DeviceRef = Arc::new(CpuDevice::with_threads(1)?);
        let a = Var::leaf(Tensor::from_slice(&[1.0f32; 12], [4, 3], &device)?);
        let b = Var::leaf(Tensor::from_slice(&[2.0f32; 6], [2, 3], &device)?);
        let indices = Tensor::from_slice(&[3u32, 0, 1, 0, 2, 2], [2, 3], &device)?;
        let (index_bytes, out_bytes) = (6 * 4, 12 * 4);
        for op in ScatterOp::ALL {
            // The operands are made by an add, whose rule reads nothing either.
            let (x, src) = (a.add(&a)?, b.add(&b)?);
            let y = x.scatter_reduce(0, &indices, &src, op)?;
            drop((x, src));
            let census = y.census(a.id(), false);
            let operands = match op {
                ScatterOp::Sum | ScatterOp::Assign => 0,
                _ => 12 * 4 + 6 * 4,
            };
            assert_eq!(census.retained_bytes, index_bytes + out_bytes + operands, "{op:?}");
            let grads = y.sum_all()?.backward()?;
            for leaf in [&a, &b] {
                assert!(grads.get(leaf.id()).is_some(), "{op:?}");
            }
        }
        Ok(())
    }

    /// Views share their input's buffer: the census counts no launch and no write for
    /// them, and keeps the buffer once.
    #[test]
    fn the_census_counts_ops_that_write_not_views() -> Result<()> {
        let device: DeviceRef = Arc::new(CpuDevice::with_threads(1)?);
        let x = Var::leaf(Tensor::from_slice(&[1.0f32; 24], [2, 3, 4], &device)?);
        // Two ops that write (an add, a matmul) and three views (a narrow, a transpose, a
        // reshape of a contiguous buffer).
        let doubled = x.add(&x)?;
        let part = doubled.narrow(2, 0, 2)?;
        let y = part.matmul(&part.transpose(1, 2)?)?.reshape([2, 9])?;
        let census = y.census(x.id(), false);
        assert_eq!(census.ops, 2);
        assert_eq!(census.written_bytes, (24 + 18) * 4);
        assert_eq!(census.matmul_flops, 2.0 * 18.0 * 2.0);
        Ok(())
    }
}
