//! One stage's part of a pipeline step: its list of work played on one thread, the forward
//! and backward passes of its layers (a backward pass in two parts where the list says so), and the messages it trades with its neighbours
//! through an [`Inbox`] and an [`Outbox`] (channels within a process, MPI between ranks).
//! Stages that share a device (an interleaved plan's chunks) take turns through a
//! [`Turn`], in the device's order.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::mpsc::{Receiver, Sender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::Layered;
use super::schedule::Work;
use crate::plan::{Stopwatch, proportional};
use crate::train::nn::Ctx;
use crate::train::parallel::{panic_message, ranges};
use crate::train::{Grads, Param, Var, VarId, WeightGrads, no_grad};
use crate::{DeviceRef, Error, Result, Tensor};

/// `total` rows in `parts` shares differing by at most one, the larger ones first.
pub(super) fn even_shares(total: usize, parts: usize) -> Vec<usize> {
    (0..parts).map(|i| total / parts + usize::from(i < total % parts)).collect()
}

/// `work` on every item at once: the first on this thread, each other on a thread of its
/// own. The results in order, or the first error in order; `what(i)` names item `i` in the
/// error of a panic.
pub(super) fn at_once<I: Send, T: Send>(
    items: Vec<I>,
    what: impl Fn(usize) -> String,
    work: impl Fn(I) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let mut items = items.into_iter();
    let Some(first) = items.next() else { return Ok(Vec::new()) };
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.map(|item| scope.spawn(move || work(item))).collect();
        let mut done = vec![work(first)];
        for (i, handle) in handles.into_iter().enumerate() {
            done.push(handle.join().unwrap_or_else(|panic| {
                Err(Error::Panicked { op: what(i + 1), detail: panic_message(panic.as_ref()) })
            }));
        }
        done.into_iter().collect()
    })
}

/// A micro-batch's activation (forward) or its gradient (back), on the sender's device.
pub(super) type Message = (usize, Tensor);

/// Where a stage sends micro-batch `m`'s activation (to the next stage) or gradient (to the
/// one before): a channel to a thread of this process, or another MPI rank.
pub(super) trait Outbox {
    fn send(&self, m: usize, tensor: &Tensor) -> std::result::Result<(), Stop>;
}

/// Where a stage receives them from, onto its own device.
pub(super) trait Inbox {
    /// Micro-batch `m`'s message (messages come in micro-batch order), on `device`.
    fn receive(&self, m: usize, device: &DeviceRef) -> std::result::Result<Tensor, Stop>;

    /// Whether a thread may wait in `receive` ahead of the stage: only where a stopped
    /// neighbour ends the wait (a channel closes), never where it could wait forever (an
    /// MPI receive from a rank that stopped).
    fn read_ahead(&self) -> bool {
        true
    }
}

impl Outbox for Sender<Message> {
    fn send(&self, m: usize, tensor: &Tensor) -> std::result::Result<(), Stop> {
        Sender::send(self, (m, tensor.clone())).map_err(|_| Stop::Neighbour)
    }
}

impl Inbox for Receiver<Message> {
    fn receive(&self, m: usize, device: &DeviceRef) -> std::result::Result<Tensor, Stop> {
        let (got, tensor) = self.recv().map_err(|_| Stop::Neighbour)?;
        if got != m {
            return Err(Stop::Failed(Error::InvalidArgument {
                op: "Pipeline::step".into(),
                device: device.info().label(),
                detail: format!("micro-batch {got} arrived where {m} was due"),
            }));
        }
        Ok(tensor.to_device(device)?)
    }
}

/// Makes rows' input on the first stage's device.
pub(super) type InputFn<'a> = &'a (dyn Fn(Range<usize>, &DeviceRef) -> Result<Var> + Sync);

/// Makes rows' per-row losses from the last layer's output, on the last stage's device.
pub(super) type LossFn<'a> = &'a (dyn Fn(&Var, Range<usize>, &DeviceRef) -> Result<Var> + Sync);

/// What every stage thread reads.
pub(super) struct Shared<'a, M> {
    pub model: &'a M,
    /// Copies of the model for the stages' helpers: helper `k` of a group runs `copies[k]`.
    pub copies: &'a [M],
    pub input: InputFn<'a>,
    pub loss: LossFn<'a>,
    pub rows: &'a [Range<usize>],
    pub batch: usize,
    pub step: u64,
}

/// Where a stage sits and what it computes: its place in the pipeline, its layers, and the
/// devices that run them (its own and its helpers', each with a copy of the layers).
pub(super) struct Place {
    pub index: usize,
    pub count: usize,
    pub device: DeviceRef,
    /// The rest of the stage's data-parallel group.
    pub helpers: Vec<DeviceRef>,
    /// Each member's share of a micro-batch's rows, the stage's own device first (`[1]`
    /// alone).
    pub shares: Vec<f64>,
    pub layers: Range<usize>,
    /// The layers (ascending) whose activations are not kept but computed again in the
    /// backward pass.
    pub recompute: Vec<usize>,
    /// Its list of work, in order ([`one_f_one_b`](super::schedule::one_f_one_b),
    /// [`zero_bubble`](super::schedule::zero_bubble), or its chunk's part of
    /// [`interleaved`](super::schedule::interleaved)).
    pub work: Vec<Work>,
    /// Where it shares its device with other stages: their common order.
    pub turn: Option<Arc<Turn>>,
}

/// The order in which the stages on one device run their work (an interleaved plan's
/// device order): each stage waits for its turn, and hands it on when its work is done.
/// A stage that fails stops the turn, so that the others on its device stop too rather
/// than wait for ever.
pub(super) struct Turn {
    /// The stage of each unit of the device's work, in order.
    order: Vec<usize>,
    /// How many units are done, and whether a stage stopped.
    at: Mutex<(usize, bool)>,
    moved: Condvar,
}

impl Turn {
    pub fn new(order: Vec<usize>) -> Turn {
        Turn { order, at: Mutex::new((0, false)), moved: Condvar::new() }
    }

    /// Blocks until the device's next unit of work is `stage`'s.
    fn wait(&self, stage: usize) -> std::result::Result<(), Stop> {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *at {
                (_, true) => return Err(Stop::Neighbour),
                (i, false) if self.order.get(i) == Some(&stage) => return Ok(()),
                _ => at = self.moved.wait(at).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// The unit whose turn it was is done.
    fn pass(&self) {
        self.at.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
        self.moved.notify_all();
    }

    fn stop(&self) {
        self.at.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.moved.notify_all();
    }
}

/// Stops a turn unless disarmed: a stage that returns early or panics releases the
/// stages waiting behind it.
struct StopUnlessDone<'a>(Option<&'a Turn>);

impl Drop for StopUnlessDone<'_> {
    fn drop(&mut self) {
        if let Some(turn) = self.0 {
            turn.stop();
        }
    }
}

/// One stage's part of a step: its place and its links.
pub(super) struct StageJob<'a> {
    pub place: Place,
    pub send_forward: Option<Box<dyn Outbox + Send + 'a>>,
    pub receive_forward: Option<Box<dyn Inbox + Send + 'a>>,
    pub send_back: Option<Box<dyn Outbox + Send + 'a>>,
    pub receive_back: Option<Box<dyn Inbox + Send + 'a>>,
}

/// Why a stage stopped early: its own error, or a neighbour's (whose channel closed).
pub(super) enum Stop {
    Failed(Error),
    Neighbour,
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Failed(e)
    }
}

/// A stretch of a member's work: wall-clock for the trace, and on the device's own clock
/// (a simulated chip's virtual one) for learning the stage's speed.
pub(super) struct Busy {
    /// The group member that did it (0: the stage's own device).
    pub member: usize,
    pub kind: &'static str,
    pub name: String,
    pub start: Instant,
    pub duration: Duration,
    pub secs: f64,
}

impl Busy {
    fn since(
        member: usize,
        kind: &'static str,
        name: String,
        (start, watch): (Instant, Stopwatch),
        device: &DeviceRef,
    ) -> Busy {
        let (duration, secs) = (start.elapsed(), watch.secs(&**device));
        Busy { member, kind, name, start, duration, secs }
    }
}

pub(super) struct StageOutcome {
    /// Each member's gradients, the stage's own device's first, under its copy's ids (once
    /// the pipeline has gathered them: one, under the lead's ids, where its optimizer
    /// wants them).
    pub grads: Vec<Grads>,
    /// The last stage's micro-batch losses (scalars, one per member that had rows).
    pub losses: Vec<Tensor>,
    pub busy: Vec<Busy>,
}

/// A member's part of one micro-batch in flight: its rows, its input (a leaf, except on the
/// first stage) and, per run of the stage's layers, what its backward pass needs.
struct Part {
    rows: Range<usize>,
    x: Var,
    runs: Vec<Run>,
}

/// A run of the stage's layers that are all kept or all recomputed: its input (the part's
/// input for the first run, else a leaf holding the run before's output) and its output
/// with its graph (the loss, for the last run of the last stage), unless recomputed.
struct Run {
    layers: Range<usize>,
    input: Var,
    output: Option<Var>,
}

/// What a member's backward pass of a micro-batch gives the stage.
struct Back {
    input_grad: Option<Tensor>,
    loss: Option<Tensor>,
    busy: Option<Busy>,
    /// Split, the weights' part to run later.
    later: Option<Later>,
}

/// The weights' part of a member's split backward pass of one micro-batch: per run of
/// layers, the last first (as the whole pass goes), what is left to compute.
struct Later {
    runs: Vec<WeightGrads>,
    /// Parameters two runs use, whose terms are summed before they join the running sum.
    tied: HashSet<VarId>,
}

impl Later {
    /// Adds the weights' gradients to `grads`, in the order the whole pass would.
    fn finish(self, grads: &mut Grads) -> Result<()> {
        let mut tied_grads = Grads::default();
        for run in self.runs {
            run.finish(|id, g| match self.tied.contains(&id) {
                true => tied_grads.add(id, g),
                false => grads.add(id, g),
            })?;
        }
        grads.accumulate(tied_grads)
    }
}

/// Each member's part (where it has one) with its running gradients.
fn with_grads<P>(parts: Vec<Option<P>>, grads: &mut [Grads]) -> Vec<Option<(P, &mut Grads)>> {
    parts.into_iter().zip(grads.iter_mut()).map(|(part, grads)| part.map(|p| (p, grads))).collect()
}

fn clock(device: &DeviceRef) -> (Instant, Stopwatch) {
    (Instant::now(), Stopwatch::start(&**device))
}

/// Where a stage's messages come from while it plays its list: an inbox read ahead on a
/// thread of its own (the next micro-batch's message received and copied onto the
/// stage's device while the stage computes the current one), or read when due.
enum Incoming<'a> {
    Ahead(Prefetched),
    WhenDue(Box<dyn Inbox + Send + 'a>, &'static str),
}

impl<'a> Incoming<'a> {
    /// `inbox`, read ahead on a thread of `scope` where it allows.
    fn open<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        inbox: Box<dyn Inbox + Send + 'a>,
        device: &DeviceRef,
        what: &'static str,
        count: usize,
    ) -> Incoming<'a>
    where
        'a: 'scope,
    {
        match inbox.read_ahead() {
            true => Incoming::Ahead(Prefetched::start(scope, inbox, device.clone(), what, count)),
            false => Incoming::WhenDue(inbox, what),
        }
    }

    /// Micro-batch `m`'s message (they come in order), on `device`.
    fn take(
        &self,
        m: usize,
        device: &DeviceRef,
        busy: &mut Vec<Busy>,
    ) -> std::result::Result<Tensor, Stop> {
        match self {
            Incoming::Ahead(prefetched) => prefetched.take(busy),
            Incoming::WhenDue(inbox, what) => {
                let started = clock(device);
                let moved = inbox.receive(m, device)?;
                busy.push(Busy::since(0, "transfer", format!("{what} {m} in"), started, device));
                Ok(moved)
            }
        }
    }
}

struct Prefetched {
    ready: Receiver<std::result::Result<(Tensor, Busy), Stop>>,
}

impl Prefetched {
    /// Reads `inbox`'s messages for micro-batches `0..count` in order, one ahead of the
    /// stage (the next waits until the stage takes the one before).
    fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        inbox: Box<dyn Inbox + Send + 'scope>,
        device: DeviceRef,
        what: &'static str,
        count: usize,
    ) -> Prefetched {
        let (tx, ready) = sync_channel(0);
        scope.spawn(move || {
            for m in 0..count {
                let started = Instant::now();
                let got = inbox.receive(m, &device).map(|t| {
                    // Overlapped with the stage's work: drawn, not counted in its time.
                    let duration = started.elapsed();
                    let name = format!("{what} {m} in");
                    (
                        t,
                        Busy {
                            member: 0,
                            kind: "transfer",
                            name,
                            start: started,
                            duration,
                            secs: 0.0,
                        },
                    )
                });
                let failed = got.is_err();
                // The stage stopped (its end of the channel dropped), or this one failed.
                if tx.send(got).is_err() || failed {
                    return;
                }
            }
        });
        Prefetched { ready }
    }

    /// Micro-batch `m`'s message (they come in order), on the stage's device.
    fn take(&self, busy: &mut Vec<Busy>) -> std::result::Result<Tensor, Stop> {
        let (tensor, span) = self.ready.recv().map_err(|_| Stop::Neighbour)??;
        busy.push(span);
        Ok(tensor)
    }
}

impl StageJob<'_> {
    pub fn run<M: Layered>(
        self,
        shared: &Shared<'_, M>,
    ) -> std::result::Result<StageOutcome, Stop> {
        let StageJob { place, send_forward, receive_forward, send_back, receive_back } = self;
        let micro_batches = shared.rows.len();
        let device = &place.device;
        std::thread::scope(|scope| {
            // Dropped before the scope joins the read-ahead threads, which may wait on
            // stages that wait for this device's turn.
            let mut stopper = StopUnlessDone(place.turn.as_deref());
            let open = |inbox, what| Incoming::open(scope, inbox, device, what, micro_batches);
            let links = Links {
                receive_forward: receive_forward.map(|inbox| open(inbox, "activation")),
                receive_back: receive_back.map(|inbox| open(inbox, "gradient")),
                send_forward,
                send_back,
            };
            // Lodged parameters' new values, as the forward passes read them, while the stages
            // before this one fill the pipeline and the first input is already coming in.
            let lead = shared.model.params_of(place.layers.clone());
            let outcome = (lead.iter().try_for_each(Param::renew_copy))
                .map_err(Stop::from)
                .and_then(|()| place.play(shared, &links));
            if outcome.is_ok() {
                stopper.0 = None;
            }
            outcome
        })
    }
}

/// A stage's links while it plays its list: inboxes read ahead, outboxes as given.
struct Links<'a> {
    receive_forward: Option<Incoming<'a>>,
    receive_back: Option<Incoming<'a>>,
    send_forward: Option<Box<dyn Outbox + Send + 'a>>,
    send_back: Option<Box<dyn Outbox + Send + 'a>>,
}

impl Place {
    /// The stage's list played through: forwards, backwards and weights' parts of its
    /// micro-batches, their messages received from `links` and sent on.
    fn play<M: Layered>(
        &self,
        shared: &Shared<'_, M>,
        links: &Links<'_>,
    ) -> std::result::Result<StageOutcome, Stop> {
        let place = self;
        let Links { receive_forward, receive_back, send_forward, send_back } = links;
        let micro_batches = shared.rows.len();
        let mut grads: Vec<Grads> = place.shares.iter().map(|_| Grads::default()).collect();
        let mut losses = Vec::new();
        let mut busy = Vec::with_capacity(3 * micro_batches);
        let mut held: HashMap<usize, Vec<Option<Part>>> = HashMap::new();
        // A backward pass whose weights' part comes later in the list runs in two parts.
        let split = place.work.iter().any(|w| matches!(w, Work::Weights(_)));
        let mut later: HashMap<usize, Vec<Option<Later>>> = HashMap::new();
        for &work in &place.work {
            if let Some(turn) = &place.turn {
                turn.wait(place.index)?;
            }
            match work {
                Work::Forward(m) => {
                    let rows = shared.rows[m].clone();
                    let received = match receive_forward {
                        None => None,
                        Some(inbox) => Some(inbox.take(m, &place.device, &mut busy)?),
                    };
                    let started = clock(&place.device);
                    let items = place.split(rows.clone()).into_iter();
                    let done = place.together(
                        items.map(|r| (!r.is_empty()).then_some(r)).collect(),
                        |k, member_rows| {
                            let (device, started) = (place.member(k), clock(place.member(k)));
                            let x = match &received {
                                None => (shared.input)(member_rows.clone(), device)?,
                                Some(x) => {
                                    Var::leaf(place.slice(x, &rows, &member_rows, device)?)
                                }
                            };
                            let (runs, output) = place.forward_runs(shared, k, &x, &member_rows)?;
                            let timed = place.helper_busy(k, "forward", m, started)?;
                            Ok((Part { rows: member_rows, x, runs }, output, timed))
                        },
                    )?;
                    let mut parts: Vec<Option<Part>> = place.shares.iter().map(|_| None).collect();
                    let mut outputs = Vec::with_capacity(done.len());
                    for (k, (part, output, timed)) in done {
                        parts[k] = Some(part);
                        outputs.push(output);
                        busy.extend(timed);
                    }
                    if let Some(outbox) = &send_forward {
                        outbox.send(m, &place.gather(outputs)?)?;
                    }
                    held.insert(m, parts);
                    busy.push(place.own_busy("forward", m, started)?);
                }
                Work::Backward(m) => {
                    let parts = held.remove(&m).ok_or_else(|| place.out_of_order(m))?;
                    let seed = match receive_back {
                        None => None,
                        Some(inbox) => Some(inbox.take(m, &place.device, &mut busy)?),
                    };
                    let rows = shared.rows[m].clone();
                    let started = clock(&place.device);
                    let items = with_grads(parts, &mut grads);
                    let sends_back = send_back.is_some();
                    let backs = place.together(items, |k, (part, grads)| {
                        let (device, started) = (place.member(k), clock(place.member(k)));
                        let seed = match &seed {
                            Some(seed) => Some(place.slice(seed, &rows, &part.rows, device)?),
                            None => None,
                        };
                        let (input_grad, loss, later) = place
                            .backward_runs(shared, k, part.runs, &part.rows, seed, grads, split)?;
                        let input_grad = match input_grad {
                            _ if !sends_back => None,
                            Some(g) => Some(g),
                            // The loss does not depend on this stage's input.
                            None => Some(Tensor::zeros(
                                part.x.tensor().shape().clone(),
                                part.x.tensor().dtype(),
                                device,
                            )?),
                        };
                        let busy = place.helper_busy(k, "backward", m, started)?;
                        Ok(Back { input_grad, loss, busy, later })
                    })?;
                    let mut input_grads = Vec::with_capacity(backs.len());
                    let mut parts_later: Vec<Option<Later>> =
                        place.shares.iter().map(|_| None).collect();
                    for (k, back) in backs {
                        input_grads.extend(back.input_grad);
                        losses.extend(back.loss);
                        busy.extend(back.busy);
                        parts_later[k] = back.later;
                    }
                    if split {
                        later.insert(m, parts_later);
                    }
                    if let Some(outbox) = &send_back {
                        outbox.send(m, &place.gather(input_grads)?)?;
                    }
                    busy.push(place.own_busy("backward", m, started)?);
                }
                Work::Weights(m) => {
                    let parts = later.remove(&m).ok_or_else(|| place.out_of_order(m))?;
                    let started = clock(&place.device);
                    let items = with_grads(parts, &mut grads);
                    let done = place.together(items, |k, (part, grads)| {
                        let started = clock(place.member(k));
                        part.finish(grads)?;
                        place.helper_busy(k, "weights", m, started)
                    })?;
                    busy.extend(done.into_iter().filter_map(|(_, b)| b));
                    busy.push(place.own_busy("weights", m, started)?);
                }
            }
            if let Some(turn) = &place.turn {
                turn.pass();
            }
        }
        Ok(StageOutcome { grads, losses, busy })
    }
}

impl Place {
    /// Member `k`'s device (0: the stage's own).
    fn member(&self, k: usize) -> &DeviceRef {
        if k == 0 { &self.device } else { &self.helpers[k - 1] }
    }

    /// A micro-batch's rows cut among the members by their shares.
    fn split(&self, rows: Range<usize>) -> Vec<Range<usize>> {
        if self.helpers.is_empty() {
            return vec![rows];
        }
        let counts = proportional(&self.shares, rows.len())
            .unwrap_or_else(|| even_shares(rows.len(), self.shares.len()));
        ranges(&counts, rows.start)
    }

    /// Rows `part` of `whole`'s tensor `t` (on the stage's device), on `device`.
    fn slice(
        &self,
        t: &Tensor,
        whole: &Range<usize>,
        part: &Range<usize>,
        device: &DeviceRef,
    ) -> Result<Tensor> {
        if part == whole {
            // A helper may take every row: the whole tensor, on its device.
            return t.to_device(device);
        }
        t.narrow(0, part.start - whole.start, part.len())?.to_device(device)
    }

    /// The members' results for a micro-batch, their rows in order, on the stage's device.
    fn gather(&self, parts: Vec<Tensor>) -> Result<Tensor> {
        if let [one] = &parts[..] {
            return Ok(one.clone());
        }
        let here: Vec<Tensor> =
            parts.iter().map(|t| t.to_device(&self.device)).collect::<Result<_>>()?;
        Tensor::cat(&here.iter().collect::<Vec<_>>(), 0)
    }

    /// `work` on each member's item at once: the first on this thread, each other on a
    /// thread of its own. Results in member order, for the members that had an item.
    fn together<I: Send, T: Send>(
        &self,
        items: Vec<Option<I>>,
        work: impl Fn(usize, I) -> Result<T> + Sync,
    ) -> Result<Vec<(usize, T)>> {
        let items: Vec<(usize, I)> =
            items.into_iter().enumerate().filter_map(|(k, i)| i.map(|i| (k, i))).collect();
        let members: Vec<usize> = items.iter().map(|(k, _)| *k).collect();
        at_once(
            items,
            |i| format!("Pipeline::step, stage {} member {}", self.index, members[i]),
            |(k, item)| Ok((k, work(k, item)?)),
        )
    }

    /// The stage's own span of `kind` work on micro-batch `m` since `started`, once its
    /// device has finished it.
    fn own_busy(
        &self,
        kind: &'static str,
        m: usize,
        started: (Instant, Stopwatch),
    ) -> Result<Busy> {
        self.device.synchronize()?;
        Ok(Busy::since(0, kind, format!("{kind} {m}"), started, &self.device))
    }

    /// A helper's span of work since `started`, once its device has finished; `None` for
    /// the stage's own device, whose span is the stage's.
    fn helper_busy(
        &self,
        k: usize,
        kind: &'static str,
        m: usize,
        started: (Instant, Stopwatch),
    ) -> Result<Option<Busy>> {
        if k == 0 {
            return Ok(None);
        }
        let device = self.member(k);
        device.synchronize()?;
        Ok(Some(Busy::since(k, kind, format!("{kind} {m}"), started, device)))
    }

    /// The stage's layers as runs of kept and of recomputed layers, in order: `true` for
    /// the recomputed.
    fn runs(&self) -> Vec<(Range<usize>, bool)> {
        let again = |l: usize| self.recompute.binary_search(&l).is_ok();
        let mut runs: Vec<(Range<usize>, bool)> = Vec::new();
        for l in self.layers.clone() {
            match runs.last_mut() {
                Some((run, recomputed)) if *recomputed == again(l) => run.end = l + 1,
                _ => runs.push((l..l + 1, again(l))),
            }
        }
        runs
    }

    /// Member `k`'s forward pass of its rows `rows` from its input `x`, run by run: a
    /// kept run records its graph, a recomputed one keeps only its input. The runs, and
    /// the stage's output (the loss, on the last stage).
    fn forward_runs<M: Layered>(
        &self,
        shared: &Shared<'_, M>,
        k: usize,
        x: &Var,
        rows: &Range<usize>,
    ) -> Result<(Vec<Run>, Tensor)> {
        let plan = self.runs();
        let mut runs = Vec::with_capacity(plan.len());
        let mut h = x.clone();
        for (i, (layers, again)) in plan.iter().enumerate() {
            let input = if i == 0 { h } else { Var::leaf(h.tensor().clone()) };
            let closes = i + 1 == plan.len();
            let output = match again {
                true => no_grad(|| self.forward(shared, k, &input, layers, rows, closes))?,
                false => self.forward(shared, k, &input, layers, rows, closes)?,
            };
            h = output.clone();
            runs.push(Run { layers: layers.clone(), input, output: (!again).then_some(output) });
        }
        Ok((runs, h.tensor().clone()))
    }

    /// Member `k`'s backward pass of `runs`, the last first, each recomputed run's forward
    /// pass recorded again just before: `seed` is the output's gradient (none on the last
    /// stage: the loss's own, one). Parameters' gradients go to `grads`, or, `split`, are
    /// left for the [`Later`] part. The gradient of the stage's input (`None` where the
    /// output does not depend on it), on the last stage the loss, and the later part.
    #[allow(clippy::too_many_arguments)]
    fn backward_runs<M: Layered>(
        &self,
        shared: &Shared<'_, M>,
        k: usize,
        runs: Vec<Run>,
        rows: &Range<usize>,
        mut seed: Option<Tensor>,
        grads: &mut Grads,
        split: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Later>)> {
        let device = self.member(k);
        let count = runs.len();
        // A parameter two runs use (a tied weight) gets this micro-batch's gradients summed
        // over the runs before they join the running sum, as one graph would give them.
        let tied = match count {
            1 => HashSet::new(),
            _ => {
                let model = if k == 0 { shared.model } else { &shared.copies[k - 1] };
                let mut seen = HashSet::new();
                let mut tied = HashSet::new();
                for run in &runs {
                    let ids: HashSet<_> =
                        model.params_of(run.layers.clone()).iter().map(|p| p.id()).collect();
                    tied.extend(ids.iter().filter(|id| seen.contains(*id)).copied());
                    seen.extend(ids);
                }
                tied
            }
        };
        let mut shared_grads = Grads::default();
        let mut loss = None;
        let mut parts = Vec::new();
        for (i, run) in runs.into_iter().enumerate().rev() {
            let closes = i + 1 == count;
            let y = match run.output {
                Some(y) => y,
                None => self.forward(shared, k, &run.input, &run.layers, rows, closes)?,
            };
            if closes && self.index + 1 == self.count {
                loss = Some(y.tensor().clone());
            }
            let seed_here = match seed.take() {
                Some(seed) => seed,
                None => Tensor::ones(y.tensor().shape().clone(), y.tensor().dtype(), device)?,
            };
            let mut input_grad = None;
            if split {
                let (grad, part) = y.backward_split(seed_here, &run.input)?;
                input_grad = grad;
                parts.push(part);
            } else {
                y.backward_streaming(seed_here, |id, g| {
                    if id == run.input.id() {
                        input_grad = Some(g);
                        Ok(())
                    } else if tied.contains(&id) {
                        shared_grads.add(id, g)
                    } else {
                        grads.add(id, g)
                    }
                })?;
            }
            seed = match input_grad {
                Some(g) => Some(g),
                // A run whose output does not depend on its input: nothing flows on.
                None if i > 0 => Some(Tensor::zeros(
                    run.input.tensor().shape().clone(),
                    run.input.tensor().dtype(),
                    device,
                )?),
                None => None,
            };
        }
        if split {
            return Ok((seed, loss, Some(Later { runs: parts, tied })));
        }
        grads.accumulate(shared_grads)?;
        Ok((seed, loss, None))
    }

    /// Layers `layers` on member `k`'s copy of them, for its rows; where `closes` on the
    /// last stage, the rows' share of the batch's loss.
    fn forward<M: Layered>(
        &self,
        shared: &Shared<'_, M>,
        k: usize,
        x: &Var,
        layers: &Range<usize>,
        rows: &Range<usize>,
        closes: bool,
    ) -> Result<Var> {
        let model = if k == 0 { shared.model } else { &shared.copies[k - 1] };
        let ctx = Ctx::train(shared.step).rows_from(rows.start);
        let y = model.forward_layers(layers.clone(), x, &ctx)?;
        if closes && self.index + 1 == self.count {
            self.batch_loss(shared, &y, rows.clone(), self.member(k))
        } else {
            Ok(y)
        }
    }

    /// The summed per-row losses of `rows` over the batch, on `device`: this part of the
    /// batch's mean loss.
    fn batch_loss<M>(
        &self,
        shared: &Shared<'_, M>,
        y: &Var,
        rows: Range<usize>,
        device: &DeviceRef,
    ) -> Result<Var> {
        let per_row = (shared.loss)(y, rows.clone(), device)?;
        if per_row.dims().first() != Some(&rows.len()) {
            return Err(Error::Shape {
                op: "Pipeline::step".into(),
                device: device.info().label(),
                detail: format!(
                    "the loss of rows {rows:?} is {:?}: its first dim must be the {} rows",
                    per_row.tensor(),
                    rows.len()
                ),
            });
        }
        per_row.sum_all()?.affine(1.0 / shared.batch as f64, 0.0)
    }

    fn out_of_order(&self, m: usize) -> Error {
        Error::InvalidArgument {
            op: "Pipeline::step".into(),
            device: self.device.info().label(),
            detail: format!("stage {} got micro-batch work out of order at {m}", self.index),
        }
    }
}
