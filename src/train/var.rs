//! `Var`: a tensor that remembers how it was made, so that gradients can flow back to the
//! leaves it came from.
//!
//! The graph lives in the values themselves (each `Var` holds its inputs), as in candle and
//! micrograd: there is no tape object to pass around and no global graph to reset. A graph
//! is freed when its last `Var` drops. [`Var::backward`] walks it once and returns the
//! gradients of the tracked leaves as a [`Grads`] value; nothing is stored in the leaves, so
//! two backward passes never interfere and accumulation is an explicit `Grads::accumulate`.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::backward::Backward;
use crate::{Error, Result, Tensor};

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

struct Node {
    id: VarId,
    value: Tensor,
    /// A leaf whose gradient [`Var::backward`] reports.
    leaf: bool,
    /// How to send the output's gradient to `inputs`; `None` for leaves and constants.
    backward: Option<Backward>,
    inputs: Vec<Var>,
}

/// A tensor in a differentiable computation. Cloning is cheap.
#[derive(Clone)]
pub struct Var(Arc<Node>);

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
        Var(Arc::new(Node {
            id: VarId::fresh(),
            value,
            leaf: false,
            backward: None,
            inputs: Vec::new(),
        }))
    }

    /// A fresh leaf whose gradient [`backward`](Var::backward) reports.
    pub fn leaf(value: Tensor) -> Var {
        Var::leaf_with_id(value, VarId::fresh())
    }

    /// A leaf with a given id: every use of one parameter shares its id.
    pub(crate) fn leaf_with_id(value: Tensor, id: VarId) -> Var {
        Var(Arc::new(Node { id, value, leaf: true, backward: None, inputs: Vec::new() }))
    }

    /// The result of an op: records `backward` when an input needs a gradient and recording
    /// is on; a plain constant otherwise.
    pub(crate) fn from_op(value: Tensor, backward: Backward, inputs: &[&Var]) -> Var {
        if !is_grad_enabled() || !inputs.iter().any(|v| v.requires_grad()) {
            return Var::constant(value);
        }
        Var(Arc::new(Node {
            id: VarId::fresh(),
            value,
            leaf: false,
            backward: Some(backward),
            inputs: inputs.iter().map(|v| (*v).clone()).collect(),
        }))
    }

    pub fn id(&self) -> VarId {
        self.0.id
    }

    /// The value. Ops on it directly are not recorded.
    pub fn tensor(&self) -> &Tensor {
        &self.0.value
    }

    /// True for tracked leaves and for anything computed from one.
    pub fn requires_grad(&self) -> bool {
        self.0.leaf || self.0.backward.is_some()
    }

    /// The same value, cut off from the graph.
    pub fn detach(&self) -> Var {
        Var::constant(self.0.value.clone())
    }

    pub fn dims(&self) -> &[usize] {
        self.0.value.dims()
    }

    pub fn rank(&self) -> usize {
        self.0.value.rank()
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
        if seed.dims() != self.dims() || seed.dtype() != self.tensor().dtype() {
            return Err(Error::Shape {
                op: "backward".into(),
                device: self.device().info().label(),
                detail: format!("seed {:?} does not match the value {:?}", seed, self.tensor()),
            });
        }
        let order = self.topological_order();
        let at: HashMap<VarId, usize> =
            order.iter().enumerate().map(|(i, v)| (v.id(), i)).collect();
        // Per node: its uses not yet done with the backward pass, and its height (the
        // longest path down to a leaf; leaves are 0).
        let mut uses = vec![0usize; order.len()];
        let mut height = vec![0usize; order.len()];
        for (i, var) in order.iter().enumerate() {
            for input in var.0.inputs.iter().filter(|v| v.requires_grad()) {
                let j = at[&input.id()];
                uses[j] += 1;
                height[i] = height[i].max(height[j] + 1);
            }
        }
        // A node is ready once every use of it has sent its gradient back. Of the ready
        // ones, the lowest goes first: a short branch down to a parameter (a transpose of a
        // weight) finishes, and reports, before the pass descends the long chain below.
        // A value no leaf flows into has no gradients to report.
        let Some(&root) = at.get(&self.id()) else { return Ok(()) };
        let mut ready = BinaryHeap::from([(Reverse(height[root]), root)]);
        let mut pending: HashMap<usize, Tensor> = HashMap::from([(root, seed)]);
        while let Some((_, i)) = ready.pop() {
            let var = &order[i];
            let grad = pending.remove(&i);
            let Some(backward) = &var.0.backward else {
                if let Some(grad) = grad.filter(|_| var.0.leaf) {
                    report(var.id(), grad)?;
                }
                continue;
            };
            let input_grads = match &grad {
                Some(grad) => {
                    let inputs: Vec<&Tensor> = var.0.inputs.iter().map(|v| v.tensor()).collect();
                    let needs: Vec<bool> = var.0.inputs.iter().map(|v| v.requires_grad()).collect();
                    backward.apply(grad, var.tensor(), &inputs, &needs)?
                }
                // Nothing flows through this op, but its uses of its inputs are over.
                None => vec![None; var.0.inputs.len()],
            };
            for (input, input_grad) in var.0.inputs.iter().zip(input_grads) {
                if !input.requires_grad() {
                    continue;
                }
                let j = at[&input.id()];
                if let Some(input_grad) = input_grad {
                    let sum = match pending.remove(&j) {
                        Some(prev) => prev.add(&input_grad)?,
                        None => input_grad,
                    };
                    pending.insert(j, sum);
                }
                uses[j] -= 1;
                if uses[j] == 0 {
                    ready.push((Reverse(height[j]), j));
                }
            }
        }
        Ok(())
    }

    /// How many recorded ops and leaves the graph behind this value has.
    pub fn graph_len(&self) -> usize {
        self.topological_order().len()
    }

    /// What the graph behind this value costs, counted from its recorded ops: see
    /// [`GraphCensus`]. Leaves (parameters, a stage's input) are not counted: they are
    /// accounted for by whoever owns them.
    pub(crate) fn census(&self) -> GraphCensus {
        let mut census = GraphCensus::default();
        let order = self.topological_order();
        // Views of a leaf (a weight's transpose, its rows for one output) share the leaf's
        // buffer, which its owner accounts for.
        let owned: HashSet<usize> =
            order.iter().filter(|v| v.0.leaf).map(|v| v.0.value.storage_key()).collect();
        let mut buffers: HashMap<usize, usize> = HashMap::new();
        let mut keep = |t: &Tensor| {
            if owned.contains(&t.storage_key()) {
                return;
            }
            let bytes = t.numel() * t.dtype().size_in_bytes();
            let entry = buffers.entry(t.storage_key()).or_default();
            *entry = (*entry).max(bytes);
        };
        for var in order {
            let Some(backward) = &var.0.backward else { continue };
            let value = &var.0.value;
            // A view (a transpose, a narrow, a reshape that needs no copy) shares its
            // input's buffer: it launches nothing and writes nothing.
            let view = var.0.inputs.iter().any(|i| i.0.value.storage_key() == value.storage_key());
            if !view {
                census.ops += 1;
                census.written_bytes += value.numel() * value.dtype().size_in_bytes();
            }
            keep(value);
            for input in var.0.inputs.iter().filter(|v| !v.requires_grad()) {
                keep(&input.0.value);
            }
            backward.saved().into_iter().for_each(&mut keep);
            match (backward, var.0.inputs.as_slice()) {
                (Backward::Matmul, [a, _]) => {
                    let inner = a.dims().last().copied().unwrap_or(0);
                    census.matmul_flops += 2.0 * value.numel() as f64 * inner as f64;
                }
                // `q · kᵀ` and `weights · v`, each 2·numel(q)·time flops; the backward pass
                // computes `q · kᵀ` again. Where the device has no attention kernel, the
                // scores, masked scores and weights are written (and dropped) too, and its
                // backward pass holds the weights, their gradient, the scores' gradient and a
                // row statistic's worth at once; a kernel holds f32 copies of the operands
                // and the gradients instead (seven of `q`'s size).
                (Backward::Attention { .. }, [q, ..]) => {
                    let (time, head_dim) = (q.dims()[q.rank() - 2], q.dims()[q.rank() - 1].max(1));
                    let product = 2.0 * q.tensor().numel() as f64 * time as f64;
                    census.matmul_flops += 2.0 * product;
                    census.recomputed_flops += product;
                    let held = match q.tensor().device().has_attention_kernel() {
                        true => 7 * q.tensor().numel() * 4,
                        false => {
                            let weights = q.tensor().numel() / head_dim * time;
                            census.written_bytes += 3 * weights * value.dtype().size_in_bytes();
                            4 * weights * value.dtype().size_in_bytes()
                        }
                    };
                    census.transient_bytes = census.transient_bytes.max(held);
                }
                _ => {}
            }
        }
        census.retained_bytes = buffers.values().sum();

        census
    }

    /// Every var that needs a gradient, each after all of its inputs.
    fn topological_order(&self) -> Vec<Var> {
        // Iterative DFS: a deep graph (hundreds of layers) must not overflow the stack.
        let mut order = Vec::new();
        let mut seen: HashSet<VarId> = HashSet::new();
        let mut stack: Vec<(Var, bool)> = vec![(self.clone(), false)];
        while let Some((var, expanded)) = stack.pop() {
            if expanded {
                order.push(var);
                continue;
            }
            if !var.requires_grad() || !seen.insert(var.id()) {
                continue;
            }
            stack.push((var.clone(), true));
            for input in &var.0.inputs {
                if input.requires_grad() && !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
        order
    }

    pub(crate) fn device(&self) -> &crate::DeviceRef {
        self.0.value.device()
    }
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (&self.0.backward, self.0.leaf) {
            (Some(b), _) => b.name(),
            (None, true) => "leaf",
            (None, false) => "constant",
        };
        write!(f, "Var({kind}, {:?})", self.0.value)
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
    /// Bytes the ops' outputs write.
    pub written_bytes: usize,
    /// Bytes of the distinct buffers the graph holds for the backward pass: op outputs,
    /// constant operands and what the backward rules saved.
    pub retained_bytes: usize,
    /// The most bytes one op needs briefly beyond them (attention's weights, made again
    /// in its backward pass).
    pub transient_bytes: usize,
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
    use crate::{CpuDevice, DeviceRef};

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
        let census = y.census();
        assert_eq!(census.ops, 2);
        assert_eq!(census.written_bytes, (24 + 18) * 4);
        assert_eq!(census.matmul_flops, 2.0 * 18.0 * 2.0);
        Ok(())
    }
}
