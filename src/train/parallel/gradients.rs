//! The first half of a step: the shares of some rows of a batch run on the replicas' threads,
//! their gradients stream to the master as their backward passes finish them, and faults
//! are retried, evicted and re-planned until every row is in.

use std::collections::HashMap;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use super::collect::Collector;
use super::shares::{learn, ranges};
use super::worker::{Message, ShareDone, Work, panic_message};
use super::{DataParallel, DeviceStep, FleetEvent, Gradients, invalid};
use crate::fleet::Verdict;
use crate::plan::{Linear, Stopwatch};
use crate::train::nn::Ctx;
use crate::train::{Grads, Param, Var, VarId};
use crate::{DeviceRef, Result, Tensor};

/// A share on its way: where it runs, and which parameters' gradients it has sent.
struct Running {
    replica: usize,
    rows: Range<usize>,
    predicted: f64,
    sent: Instant,
    deadline: Instant,
    /// Parameters an earlier, failed attempt at these rows already sent.
    skip: Arc<Vec<bool>>,
    delivered: Vec<bool>,
}

impl Running {
    /// What a re-run of these rows must not send again.
    fn skip_next(&self) -> Arc<Vec<bool>> {
        Arc::new(self.skip.iter().zip(&self.delivered).map(|(a, b)| *a || *b).collect())
    }
}

/// One `gradients` call's rows still to run and what has come back so far.
#[derive(Default)]
struct Todo {
    /// Rows for any device, each with the parameters an earlier attempt already sent.
    open: Vec<(Range<usize>, Arc<Vec<bool>>)>,
    /// Rows to retry on one device.
    pinned: Vec<(String, Range<usize>, Arc<Vec<bool>>)>,
    /// Finished shares: device, rows, predicted seconds, what it reported.
    done: Vec<(String, Range<usize>, f64, ShareDone)>,
    attempts: HashMap<String, u32>,
    events: Vec<FleetEvent>,
}

impl<M: Send + Sync + 'static> DataParallel<M> {
    /// The first half of a step: the gradients of rows `rows` of a global batch of
    /// `global_batch` rows (each share's summed loss divided by `global_batch`), summed on
    /// the master device, with retries and evictions as in [`step`](Self::step). A caller
    /// that combines several processes' gradients (MPI ranks) adds them up, then calls
    /// [`update`](Self::update).
    pub fn gradients<F>(
        &mut self,
        rows: Range<usize>,
        global_batch: usize,
        loss: F,
    ) -> Result<Gradients>
    where
        F: Fn(&M, &DeviceRef, Range<usize>, &Ctx) -> Result<Var> + Send + Sync + 'static,
    {
        self.gradients_bucketed(rows, global_batch, loss, &[], &mut |_, _| Ok(()))
    }

    /// [`gradients`](Self::gradients), handing the summed gradients over in `buckets`
    /// (ranges of master parameter indices, in the order given) while the backward passes
    /// still run: `on_bucket` gets a bucket's parameters and their gradients as soon as
    /// every share has sent its part of them, and may replace them (an all-reduce across
    /// processes). List the last layers' parameters first: backward finishes them first.
    /// `on_bucket` runs on the calling thread, once per bucket, in order.
    pub fn gradients_bucketed<F>(
        &mut self,
        rows: Range<usize>,
        global_batch: usize,
        loss: F,
        buckets: &[Range<usize>],
        on_bucket: &mut dyn FnMut(&[Param], &mut Grads) -> Result<()>,
    ) -> Result<Gradients>
    where
        F: Fn(&M, &DeviceRef, Range<usize>, &Ctx) -> Result<Var> + Send + Sync + 'static,
    {
        let n_params = self.replicas[0].params.len();
        if let Some(bad) = buckets.iter().find(|b| b.start > b.end || b.end > n_params) {
            return Err(invalid(
                "DataParallel::gradients_bucketed",
                &self.replicas[0].label,
                format!("bucket {bad:?} is not a range of the {n_params} parameters"),
            ));
        }
        let local = rows.clone();
        let started = Instant::now();
        let loss = Arc::new(loss);
        let (reply, replies) = channel::<Message>();
        let master_params = self.replicas[0].params.clone();
        let mut collector = Collector::new(&master_params, local.len(), buckets);
        let mut todo = Todo { events: self.follow_membership()?, ..Todo::default() };
        if !local.is_empty() {
            todo.open.push((local.clone(), Arc::new(vec![false; n_params])));
        }
        // Gradients stream to the master one by one only where someone takes them early (a
        // bucket's all-reduce); otherwise they come with the share's end, one hand-off
        // instead of one per parameter.
        let stream = !buckets.is_empty();
        while !todo.open.is_empty() || !todo.pinned.is_empty() {
            let running = self.submit_round(&mut todo, global_batch, &loss, &reply, stream)?;
            let evict = self.wait_round(running, &replies, &mut todo, &mut collector, on_bucket)?;
            for (i, reason, cause) in evict {
                let event = self.evict(i, reason, cause)?;
                todo.events.push(event);
            }
        }
        // When the last share really ended: its answer may have waited while `on_bucket`
        // blocked (an all-reduce waiting for a slower process).
        let computed_s = todo
            .done
            .iter()
            .map(|(_, _, _, done)| done.ended.saturating_duration_since(started).as_secs_f64())
            .fold(0.0, f64::max);
        let grads = collector.finish(on_bucket)?;
        self.learn_from(local.len(), todo.done, grads, todo.events, computed_s, started)
    }

    /// Plans the open rows over the replicas, adds the pinned retries, and starts them all.
    fn submit_round<F>(
        &mut self,
        todo: &mut Todo,
        batch: usize,
        loss: &Arc<F>,
        reply: &Sender<Message>,
        stream: bool,
    ) -> Result<HashMap<u64, Running>>
    where
        F: Fn(&M, &DeviceRef, Range<usize>, &Ctx) -> Result<Var> + Send + Sync + 'static,
    {
        let mut assigned: Vec<(usize, Range<usize>, Arc<Vec<bool>>)> = Vec::new();
        for (rows, skip) in std::mem::take(&mut todo.open) {
            let shares = self.shares(rows.len());
            for (i, r) in ranges(&shares, rows.start).into_iter().enumerate() {
                if !r.is_empty() {
                    assigned.push((i, r, skip.clone()));
                }
            }
        }
        for (label, rows, skip) in std::mem::take(&mut todo.pinned) {
            match self.replicas.iter().position(|r| r.label == label) {
                Some(i) => assigned.push((i, rows, skip)),
                None => todo.open.push((rows, skip)),
            }
        }
        let n_params = self.replicas[0].params.len();
        let mut running = HashMap::new();
        for (i, rows, skip) in assigned {
            let predicted = self.replicas[i].cost.at(rows.len());
            self.next_tag += 1;
            let tag = self.next_tag;
            let job = self.job(i, tag, rows.clone(), batch, loss, &skip, (reply, stream));
            self.replicas[i].worker.submit(tag, job, reply.clone())?;
            let limit = self.policy.deadline(predicted);
            let sent = Instant::now();
            let delivered = vec![false; n_params];
            let deadline = sent + limit;
            running.insert(
                tag,
                Running { replica: i, rows, predicted, sent, deadline, skip, delivered },
            );
        }
        Ok(running)
    }

    /// Takes the running shares' messages until each has ended or missed its deadline:
    /// gradients go to `collector` (which hands full buckets to `on_bucket`), finished
    /// shares to `todo.done`, failed ones back to `todo` as retries or open rows. Returns
    /// the replicas to evict, with the reason (and the error, where one was the reason).
    fn wait_round(
        &mut self,
        mut running: HashMap<u64, Running>,
        replies: &Receiver<Message>,
        todo: &mut Todo,
        collector: &mut Collector,
        on_bucket: &mut dyn FnMut(&[Param], &mut Grads) -> Result<()>,
    ) -> Result<Vec<(usize, String, Option<crate::Error>)>> {
        let mut evict: Vec<(usize, String, Option<crate::Error>)> = Vec::new();
        while let Some(deadline) = running.values().map(|r| r.deadline).min() {
            let left = deadline.saturating_duration_since(Instant::now());
            match replies.recv_timeout(left) {
                Ok(Message::Grad { tag, param, grad }) => {
                    if let Some(run) = running.get_mut(&tag)
                        && !run.skip[param]
                        && !run.delivered[param]
                    {
                        run.delivered[param] = true;
                        collector.deliver(param, &run.rows, grad);
                    }
                }
                Ok(Message::Done { tag, result }) => {
                    let Some(mut run) = running.remove(&tag) else { continue };
                    match result {
                        Ok(mut done) => {
                            for (param, grad) in std::mem::take(&mut done.grads) {
                                if !run.skip[param] && !run.delivered[param] {
                                    run.delivered[param] = true;
                                    collector.deliver(param, &run.rows, grad);
                                }
                            }
                            collector.share_ended(&run.rows, &run.skip_next());
                            self.share_done(run, done, todo);
                        }
                        Err(e) => {
                            let label = self.replicas[run.replica].label.clone();
                            let attempt = todo.attempts.entry(label.clone()).or_insert(0);
                            *attempt += 1;
                            let skip = run.skip_next();
                            // The master holds the only up-to-date parameters: its `Fail`
                            // ends the step in `evict`, as its loss or its OOM.
                            match self.policy.verdict(&e, *attempt, run.replica == 0) {
                                Verdict::NotAFault => return Err(e),
                                Verdict::Retry => {
                                    tracing::warn!(device = %label, attempt, %e, "share failed; retrying");
                                    let attempt = *attempt;
                                    todo.events.push(FleetEvent::Retried {
                                        device: label.clone(),
                                        attempt,
                                        error: e.to_string(),
                                    });
                                    todo.pinned.push((label, run.rows, skip));
                                }
                                Verdict::Evict | Verdict::Fail => {
                                    evict.push((run.replica, e.to_string(), Some(e)));
                                    todo.open.push((run.rows, skip));
                                }
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let late: Vec<u64> = running
                        .iter()
                        .filter(|(_, r)| r.deadline <= now)
                        .map(|(t, _)| *t)
                        .collect();
                    for tag in late {
                        let Some(run) = running.remove(&tag) else { continue };
                        let waited = now.saturating_duration_since(run.sent);
                        evict.push((
                            run.replica,
                            format!("no answer within {waited:.2?} (watchdog)"),
                            None,
                        ));
                        todo.open.push((run.rows.clone(), run.skip_next()));
                    }
                }
                // Unreachable while the step holds a sender; a stopped thread ends by its
                // deadline.
                Err(RecvTimeoutError::Disconnected) => {}
            }
            collector.flush(on_bucket)?;
        }
        evict.sort_by_key(|e| std::cmp::Reverse(e.0));
        evict.dedup_by_key(|e| e.0);
        Ok(evict)
    }

    /// A share answered: its replica is current, and the trace gets its slice.
    fn share_done(&mut self, run: Running, done: ShareDone, todo: &mut Todo) {
        let replica = &mut self.replicas[run.replica];
        replica.stale = false;
        if let Some((origin, trace)) = &mut self.trace {
            let name = format!("step {} rows {}..{}", self.step, run.rows.start, run.rows.end);
            let start = run.sent.saturating_duration_since(*origin);
            let took = Duration::from_secs_f64(done.secs).max(Duration::from_nanos(1));
            trace.push(&replica.label, "share", name, start, took);
        }
        todo.done.push((replica.label.clone(), run.rows, run.predicted, done));
    }

    /// The work of one share on replica `i`, as a job for its thread: forward, then a
    /// backward pass that moves each parameter's gradient to the master as soon as it is
    /// final (except those in `skip`, which an earlier attempt already sent), and sends it
    /// there at once if `stream`, else with the share's end.
    #[allow(clippy::too_many_arguments)]
    fn job<F>(
        &self,
        i: usize,
        tag: u64,
        rows: Range<usize>,
        batch: usize,
        loss: &Arc<F>,
        skip: &Arc<Vec<bool>>,
        (reply, stream): (&Sender<Message>, bool),
    ) -> Work
    where
        F: Fn(&M, &DeviceRef, Range<usize>, &Ctx) -> Result<Var> + Send + Sync + 'static,
    {
        let replica = &self.replicas[i];
        let (model, device, params) =
            (replica.model.clone(), replica.device.clone(), replica.params.clone());
        let master_params = self.replicas[0].params.clone();
        let master = self.replicas[0].device.clone();
        let stale = replica.stale;
        let loss = loss.clone();
        let skip = skip.clone();
        let reply = reply.clone();
        let ctx = Ctx::train(self.step).rows_from(rows.start);
        let loss_scale = self.scaler.as_ref().map_or(1.0, |s| s.scale);
        let scale = loss_scale / batch.max(1) as f64;
        Box::new(move || {
            // Learned from: a simulated chip's virtual clock, or the wall clock.
            let clock = Stopwatch::start(&*device);
            if stale {
                for (m, p) in master_params.iter().zip(&params) {
                    p.set(m.value().to_device(&device)?)?;
                }
            }
            let n = rows.len();
            // The caller's code: a panic in it is the caller's bug, not the device's fault.
            let losses = catch_unwind(AssertUnwindSafe(|| loss(&model, &device, rows, &ctx)))
                .unwrap_or_else(|payload| {
                    Err(crate::Error::Panicked {
                        op: "the data-parallel loss function".into(),
                        detail: panic_message(payload.as_ref()),
                    })
                })?;
            let total = summed_rows(&losses, n)?;
            let nodes = total.graph_len();
            let index: HashMap<VarId, usize> =
                params.iter().enumerate().map(|(k, p)| (p.id(), k)).collect();
            // The backward pass starts from `scale` rather than from 1 through a scaling
            // node: the same gradients, two ops fewer.
            let seed = Tensor::full(
                scale,
                total.tensor().shape().clone(),
                total.tensor().dtype(),
                &device,
            )?;
            // Gradients travel to the master inside the timed part: they are part of what
            // this device's share costs.
            let mut grads = Vec::new();
            total.backward_streaming(seed, |id, grad| {
                let Some(&param) = index.get(&id).filter(|&&k| !skip[k]) else { return Ok(()) };
                let grad = grad.to_device(&master)?;
                if stream {
                    // The step may have given up on this share: then nobody listens.
                    let _ = reply.send(Message::Grad { tag, param, grad });
                } else {
                    grads.push((param, grad));
                }
                Ok(())
            })?;
            let value = total.tensor().to_f64_vec()?.iter().sum::<f64>() * scale / loss_scale;
            let (secs, ended) = (clock.secs(&*device), Instant::now());
            Ok(ShareDone { loss: value, secs, nodes, ended, grads })
        })
    }

    /// Learns from the shares' times and reports them with the summed gradients.
    fn learn_from(
        &mut self,
        batch: usize,
        mut parts: Vec<(String, Range<usize>, f64, ShareDone)>,
        summed: Grads,
        events: Vec<FleetEvent>,
        computed_s: f64,
        started: Instant,
    ) -> Result<Gradients> {
        parts.sort_by_key(|p| p.1.start);
        let mut total_loss = 0.0;
        let mut devices = Vec::with_capacity(parts.len());
        let mut slow: HashMap<String, bool> = HashMap::new();
        for (label, rows, predicted, done) in parts {
            total_loss += done.loss;
            if let Some(r) = self.replicas.iter_mut().find(|r| r.label == label) {
                let whole = rows.len() == batch;
                match (whole, &mut r.alone) {
                    (true, Some(alone)) => {
                        learn(alone, r.latency, rows.len(), done.secs, done.nodes)
                    }
                    (true, slot @ None) => {
                        let mut alone = Linear { per_unit: f64::INFINITY, ..r.cost };
                        learn(&mut alone, r.latency, rows.len(), done.secs, done.nodes);
                        *slot = Some(alone);
                    }
                    (false, _) => learn(&mut r.cost, r.latency, rows.len(), done.secs, done.nodes),
                }
            }
            // Predictions before two learned steps are calibration guesses: no strikes.
            let grossly = self.step >= 2
                && predicted > 0.0
                && done.secs > self.policy.slow_factor * predicted;
            *slow.entry(label.clone()).or_insert(false) |= grossly;
            tracing::info!(
                step = self.step,
                device = %label,
                rows = rows.len(),
                predicted_ms = predicted * 1e3,
                measured_ms = done.secs * 1e3,
                "data-parallel share"
            );
            devices.push(DeviceStep {
                device: label,
                rows,
                predicted_s: predicted,
                measured_s: done.secs,
            });
        }
        for r in &mut self.replicas {
            match slow.get(&r.label) {
                Some(true) => r.strikes += 1,
                Some(false) => r.strikes = 0,
                None => {}
            }
        }
        Ok(Gradients { grads: summed, loss: total_loss, devices, events, computed_s, started })
    }
}

/// The sum of a share's losses, which come one per row (`[rows]`, or `[rows, ...]`: per row
/// and token, say). A loss the caller already reduced over its rows (a mean) would weight
/// each row by 1/(its share's size), so the model would depend on how the batch happened
/// to be split: that is an `Err`.
fn summed_rows(losses: &Var, rows: usize) -> Result<Var> {
    if losses.dims().first() != Some(&rows) {
        return Err(crate::Error::Shape {
            op: "DataParallel loss function".into(),
            device: losses.tensor().device().info().label(),
            detail: format!(
                "returned {:?} for {rows} rows: return one loss per row, shape [{rows}] or \
                 [{rows}, ...] (nn::Reduction::None); the step sums them and divides by the \
                 global batch",
                losses.tensor()
            ),
        });
    }
    let losses = match losses.tensor().dtype() {
        crate::DType::F32 => losses.clone(),
        _ => losses.cast(crate::DType::F32)?,
    };
    losses.sum_all()
}
