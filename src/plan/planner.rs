//! [`Planner`]: prices an op on every member, cuts it into equal-finish shares (or gives it
//! whole to the best device), runs the shares concurrently, and learns from the run.

use std::time::{Duration, Instant};

use manychips_api::{DType, Device, Error, ErrorKind, Op, OpClass, Result};

use super::cut::{cut, cut_axes};
use super::execute;
use super::learn::Corrections;
use super::packed;
use super::planned::{Phases, Plan, Share};
use super::price::secs;
use super::profile::DeviceProfile;
use super::split::{Linear, equal_finish, fluid_makespan, makespan};
use super::trace::Trace;
use crate::fleet::{FaultPolicy, FleetEvent, Follower, Membership, Verdict, answers};
use crate::{DeviceRef, Fleet};

/// A split must be predicted to beat the best single device by this fraction: below it,
/// the model's own error could turn the gain into a loss.
pub const MIN_GAIN: f64 = 0.10;

/// Rounds of re-pricing with the rates of the shares just chosen: a matmul's rate depends
/// on its size, and a share is smaller than the whole op.
const REFINE_ROUNDS: usize = 3;

/// One device the planner can give work to: its label, its figures, and (unless the
/// planner only models a fleet) the device itself.
#[derive(Clone, Debug)]
struct Member {
    label: String,
    profile: DeviceProfile,
    device: Option<DeviceRef>,
}

/// Plans and runs ops over a set of calibrated devices. See the [module docs](super).
#[derive(Debug)]
pub struct Planner {
    members: Vec<Member>,
    /// Members that failed while running a plan, and why; they get no shares.
    evicted: Vec<(Member, String)>,
    /// Retries, the watchdog's deadline: the same rules as a data-parallel step's.
    policy: FaultPolicy,
    /// The fleet's record of who is in, when the planner was built for a fleet: evictions
    /// go there, and members another scheduler evicted get no shares.
    membership: Option<Follower>,
    corrections: Corrections,
    min_gain: f64,
    learning: bool,
    last: Option<Plan>,
    trace: Option<Trace>,
    origin: Instant,
}

/// The work of one op as a function of the units (entries of the cut axis) a device gets:
/// every quantity is `fixed + per_unit · units`.
#[derive(Clone, Copy, Debug)]
struct Amounts {
    flops: Linear,
    memory: Linear,
    input_bytes: Linear,
    output_bytes: Linear,
    /// Operands moved per share: each transfer pays a latency.
    inputs: usize,
}

/// Shares of one op cut along `axis` (`units` entries), and their predicted makespan.
struct Candidate {
    axis: usize,
    units: usize,
    shares: Vec<usize>,
    stages: Vec<Stages>,
    span: f64,
}

/// The modelled stage times of one device, each linear in its units.
#[derive(Clone, Copy, Debug)]
struct Stages {
    upload: Linear,
    compute: Linear,
    download: Linear,
    factors: (f64, f64),
}

impl Stages {
    fn total(&self) -> Linear {
        Linear {
            fixed: self.upload.fixed + self.compute.fixed + self.download.fixed,
            per_unit: self.upload.per_unit + self.compute.per_unit + self.download.per_unit,
        }
    }

    fn phases(&self, units: usize) -> Phases {
        Phases::from_secs(self.upload.at(units), self.compute.at(units), self.download.at(units))
    }
}

impl Planner {
    /// A planner over `devices` with their calibrated profiles (see
    /// [`Calibration`](super::Calibration)). Labels must be unique.
    pub fn new(devices: Vec<(DeviceRef, DeviceProfile)>) -> Result<Planner> {
        let members = devices
            .into_iter()
            .map(|(device, profile)| Member {
                label: device.info().label(),
                profile,
                device: Some(device),
            })
            .collect();
        Planner::with_members(members)
    }

    /// A planner over every member of `fleet`, calibrated through `calibration` (its cache,
    /// or fresh measurements for devices missing from it).
    pub fn for_fleet(fleet: &Fleet, calibration: &super::Calibration) -> Result<Planner> {
        let fleet_devices = fleet.devices();
        let devices: Vec<&dyn Device> = fleet_devices.iter().map(|d| &**d).collect();
        let profiles = calibration.load_or_measure_all(&devices, false)?;
        let members = fleet.devices().into_iter().zip(profiles).collect();
        Ok(Planner::new(members)?.with_membership(fleet.membership().clone()))
    }

    /// Shares `membership` (a fleet's, [`Fleet::membership`]): the planner's evictions are
    /// recorded there, and before each run it drops the members that are out (another
    /// scheduler evicted them) and takes back those that are in again.
    pub fn with_membership(mut self, membership: Membership) -> Planner {
        self.membership = Some(Follower::new(membership));
        self
    }

    /// Follows the shared membership, if any, when it changed since the last look; the
    /// events say which members left.
    fn follow_membership(&mut self) -> Vec<FleetEvent> {
        let Some(membership) = self.membership.as_mut().and_then(Follower::changed) else {
            return Vec::new();
        };
        let members = std::mem::take(&mut self.members);
        let mut events = Vec::new();
        for member in members {
            match membership.why_out(&member.label) {
                Some(why) => {
                    let reason = format!("out of the fleet: {why}");
                    events.push(FleetEvent::Evicted { device: member.label.clone(), reason });
                    self.evicted.push((member, why));
                }
                None => self.members.push(member),
            }
        }
        let (back, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.evicted)
            .into_iter()
            .partition(|(m, _)| membership.get(&m.label).is_some());
        self.evicted = still;
        for (member, _) in back {
            events.push(FleetEvent::Readmitted { device: member.label.clone() });
            self.members.push(member);
        }
        events
    }

    /// Records `event` as an instant on its device's track of the trace, if one is on.
    fn trace_event(&mut self, event: &FleetEvent) {
        if let Some(trace) = &mut self.trace {
            trace.push_fleet_event(event, self.origin.elapsed());
        }
    }

    /// A planner that only models devices (`label`, profile): it plans but cannot run. For
    /// simulations of fleets no machine has.
    pub fn modelled(profiles: Vec<(String, DeviceProfile)>) -> Result<Planner> {
        let members = profiles
            .into_iter()
            .map(|(label, profile)| Member { label, profile, device: None })
            .collect();
        Planner::with_members(members)
    }

    fn with_members(members: Vec<Member>) -> Result<Planner> {
        if members.is_empty() {
            return Err(invalid("a planner needs at least one device".into()));
        }
        let mut labels: Vec<&str> = members.iter().map(|m| m.label.as_str()).collect();
        labels.sort_unstable();
        if let Some(pair) = labels.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(format!("two members are labelled {}", pair[0])));
        }
        Ok(Planner {
            members,
            evicted: Vec::new(),
            policy: FaultPolicy::default(),
            membership: None,
            corrections: Corrections::default(),
            min_gain: MIN_GAIN,
            learning: true,
            last: None,
            trace: None,
            origin: Instant::now(),
        })
    }

    /// Sets the fraction by which a split must beat the best single device (default
    /// [`MIN_GAIN`]); a negative value splits whenever more than one device takes part.
    pub fn with_min_gain(mut self, min_gain: f64) -> Planner {
        self.min_gain = min_gain;
        self
    }

    /// Turns learning from measurements on (the default) or off.
    pub fn set_learning(&mut self, on: bool) {
        self.learning = on;
    }

    /// The members' labels, in planning order.
    pub fn labels(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.label.as_str()).collect()
    }

    pub fn profile(&self, label: &str) -> Option<&DeviceProfile> {
        self.members.iter().find(|m| m.label == label).map(|m| &m.profile)
    }

    /// What the planner has learned so far.
    pub fn corrections(&self) -> &Corrections {
        &self.corrections
    }

    pub fn corrections_mut(&mut self) -> &mut Corrections {
        &mut self.corrections
    }

    /// The plan of the last op run, with its measurements.
    pub fn last_plan(&self) -> Option<&Plan> {
        self.last.as_ref()
    }

    /// Starts recording every run into a fresh [`Trace`].
    pub fn start_trace(&mut self) {
        self.trace = Some(Trace::default());
    }

    /// Stops recording and returns what was recorded.
    pub fn take_trace(&mut self) -> Option<Trace> {
        self.trace.take()
    }

    // ----- planning -------------------------------------------------------------------

    /// The plan for `op` whose inputs live on the member labelled `src` and whose output goes
    /// to the member labelled `dst` (`None`: host memory outside the fleet, reached over
    /// every member's link). Pure: nothing runs.
    pub fn plan(&self, op: &Op, src: Option<&str>, dst: Option<&str>) -> Result<Plan> {
        op.validate("planner")?;
        let find = |label: Option<&str>| -> Result<Option<usize>> {
            match label {
                None => Ok(None),
                Some(l) => self
                    .members
                    .iter()
                    .position(|m| m.label == l)
                    .map(Some)
                    .ok_or_else(|| invalid(format!("{l} is not a member of this planner"))),
            }
        };
        Ok(self.plan_between(op, find(src)?, find(dst)?))
    }

    fn plan_between(&self, op: &Op, src: Option<usize>, dst: Option<usize>) -> Plan {
        let started = Instant::now();
        let name = plan_name(op);
        let whole = amounts(op, None);
        let single: Vec<Stages> = (0..self.members.len())
            .map(|d| self.stages(d, op, &whole, 1.0, false, src, dst))
            .collect();
        let (best, best_time) = single
            .iter()
            .enumerate()
            .map(|(d, s)| (d, s.total().at(1)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f64::INFINITY));

        let mut split: Option<Candidate> = None;
        if self.members.len() > 1 {
            for axis in cut_axes(op) {
                let candidate = self.split_along(op, axis, src, dst);
                let used = candidate.shares.iter().filter(|&&u| u > 0).count();
                if used > 1 && split.as_ref().is_none_or(|best| candidate.span < best.span) {
                    split = Some(candidate);
                }
            }
        }

        let best_single = (self.members[best].label.clone(), secs(best_time));
        let pays = |span: f64| span < best_time * (1.0 - self.min_gain);
        let mut plan = match split {
            Some(Candidate { axis, units, shares, stages, span }) if pays(span) => {
                let mut start = 0;
                let mut parts = Vec::new();
                for (d, (&len, stage)) in shares.iter().zip(&stages).enumerate() {
                    if len > 0 {
                        parts.push(self.share(d, start, len, stage.phases(len), stage.factors));
                    }
                    start += len;
                }
                Plan {
                    op: name,
                    class: op.class(),
                    axis: Some(axis),
                    units,
                    shares: parts,
                    predicted: secs(span),
                    best_single,
                    measured: None,
                    planning: Duration::ZERO,
                    events: Vec::new(),
                }
            }
            _ => Plan {
                op: name,
                class: op.class(),
                axis: None,
                units: 1,
                shares: vec![self.share(best, 0, 1, single[best].phases(1), single[best].factors)],
                predicted: secs(best_time),
                best_single,
                measured: None,
                planning: Duration::ZERO,
                events: Vec::new(),
            },
        };
        plan.planning = started.elapsed();
        plan
    }

    /// A plan for `op` (inputs from and result to host memory) with the shares fixed by the
    /// caller: member `i` gets `lens[i]` entries of `axis`, in member order. Predictions come
    /// from the model as usual. For comparing the planner's choice with another (an even
    /// split), and for forcing a split.
    pub fn plan_fixed(&self, op: &Op, axis: usize, lens: &[usize]) -> Result<Plan> {
        op.validate("planner")?;
        if !cut_axes(op).contains(&axis) {
            return Err(invalid(format!("{} cannot be cut along axis {axis}", op.describe())));
        }
        let units = op.output().dims()[axis];
        if lens.len() != self.members.len() || lens.iter().sum::<usize>() != units {
            return Err(invalid(format!(
                "{} shares summing to {} for {} members and {units} entries of axis {axis}",
                lens.len(),
                lens.iter().sum::<usize>(),
                self.members.len()
            )));
        }
        let started = Instant::now();
        let work = amounts(op, Some(axis));
        let mut start = 0;
        let mut shares = Vec::new();
        let mut span = 0.0f64;
        for (d, &len) in lens.iter().enumerate() {
            if len > 0 {
                let stage = self.stages(d, op, &work, len as f64, true, None, None);
                span = span.max(stage.total().at(len));
                shares.push(self.share(d, start, len, stage.phases(len), stage.factors));
            }
            start += len;
        }
        let best_single = self.plan_between(op, None, None).best_single;
        Ok(Plan {
            op: plan_name(op),
            class: op.class(),
            axis: Some(axis),
            units,
            shares,
            predicted: secs(span),
            best_single,
            measured: None,
            planning: started.elapsed(),
            events: Vec::new(),
        })
    }

    /// A lower bound on the makespan of any plan for `op` (inputs from and result to host
    /// memory) under this planner's model: the continuous optimum (fractional shares, no
    /// rounding) along the best axis, or the best single device. What simulations measure
    /// achieved makespans against.
    pub fn fluid_bound(&self, op: &Op) -> Result<Duration> {
        op.validate("planner")?;
        let whole = amounts(op, None);
        let mut best = (0..self.members.len())
            .map(|d| self.stages(d, op, &whole, 1.0, false, None, None).total().at(1))
            .fold(f64::INFINITY, f64::min);
        for axis in cut_axes(op) {
            let candidate = self.split_along(op, axis, None, None);
            let totals: Vec<Linear> = candidate.stages.iter().map(Stages::total).collect();
            if let Some(t) = fluid_makespan(&totals, candidate.units) {
                best = best.min(t);
            }
        }
        Ok(secs(best))
    }

    /// Equal-finish shares of `op` cut along `axis`, re-priced at the chosen share sizes.
    fn split_along(
        &self,
        op: &Op,
        axis: usize,
        src: Option<usize>,
        dst: Option<usize>,
    ) -> Candidate {
        let n = self.members.len();
        let units = op.output().dims()[axis];
        let work = amounts(op, Some(axis));
        let mut guess = vec![units as f64 / n as f64; n];
        let mut candidate =
            Candidate { axis, units, shares: Vec::new(), stages: Vec::new(), span: f64::INFINITY };
        for _ in 0..REFINE_ROUNDS {
            let stages: Vec<Stages> =
                (0..n).map(|d| self.stages(d, op, &work, guess[d], true, src, dst)).collect();
            let totals: Vec<Linear> = stages.iter().map(Stages::total).collect();
            let shares = equal_finish(&totals, units);
            let span = makespan(&totals, &shares);
            // Rates that do not depend on size (or shares that settled) end the refinement.
            let settled = shares == candidate.shares;
            guess = shares.iter().map(|&u| (u as f64).max(1.0)).collect();
            candidate = Candidate { axis, units, shares, stages, span };
            if settled {
                break;
            }
        }
        candidate
    }

    fn share(
        &self,
        member: usize,
        start: usize,
        len: usize,
        predicted: Phases,
        factors: (f64, f64),
    ) -> Share {
        Share {
            device: self.members[member].label.clone(),
            member,
            start,
            len,
            predicted,
            measured: None,
            factors,
        }
    }

    /// The modelled stages of member `d` doing `work`, priced at `units` units (a matmul's
    /// rate depends on its size). `together`: other devices run at the same time, so a
    /// device that shares hardware with them gets its concurrent rate.
    #[allow(clippy::too_many_arguments)]
    fn stages(
        &self,
        d: usize,
        op: &Op,
        work: &Amounts,
        units: f64,
        together: bool,
        src: Option<usize>,
        dst: Option<usize>,
    ) -> Stages {
        let member = &self.members[d];
        let p = &member.profile;
        let class = op.class();
        let dtype = op.output().dtype;
        let flops_at = work.flops.fixed + work.flops.per_unit * units;
        let mut rate = p.rate(class, dtype, flops_at);
        if together && class == OpClass::Matmul {
            rate *= concurrency(p);
        }
        let by_flops = scale(work.flops, 1.0 / rate);
        let by_memory = scale(work.memory, 1.0 / p.bytes_per_s);
        let bound =
            if by_flops.at_f(units) >= by_memory.at_f(units) { by_flops } else { by_memory };
        let compute_factor = self.corrections.compute(&member.label, class);
        let compute = scale(
            Linear { fixed: bound.fixed + p.latency_s, per_unit: bound.per_unit },
            compute_factor,
        );

        let link_factor = self.corrections.link(&member.label);
        let other = |i: Option<usize>| i.map(|i| &self.members[i].profile);
        let upload = if src == Some(d) {
            ZERO
        } else {
            let from = other(src);
            let per_byte = 1.0 / p.host_to_device_bytes_per_s
                + from.map_or(0.0, |f| 1.0 / f.device_to_host_bytes_per_s);
            let latency = work.inputs as f64 * (p.latency_s + from.map_or(0.0, |f| f.latency_s));
            scale(
                Linear {
                    fixed: latency + work.input_bytes.fixed * per_byte,
                    per_unit: work.input_bytes.per_unit * per_byte,
                },
                link_factor,
            )
        };
        let download = if dst == Some(d) {
            ZERO
        } else {
            let to = other(dst);
            let per_byte = 1.0 / p.device_to_host_bytes_per_s
                + to.map_or(0.0, |t| 1.0 / t.host_to_device_bytes_per_s);
            let latency = p.latency_s + to.map_or(0.0, |t| t.latency_s);
            scale(
                Linear {
                    fixed: latency + work.output_bytes.fixed * per_byte,
                    per_unit: work.output_bytes.per_unit * per_byte,
                },
                link_factor,
            )
        };
        Stages { upload, compute, download, factors: (compute_factor, link_factor) }
    }

    // ----- running --------------------------------------------------------------------

    /// Plans `op` (inputs on `src`, output on `dst`; both may be members or not), runs the
    /// shares concurrently, learns from the measured times and returns the plan with them.
    /// The output is complete when this returns.
    ///
    /// A device that faults while running its share is retried (the [`FaultPolicy`]'s
    /// `max_retries` times for faults other than `DeviceLost`), then evicted from the
    /// planner, and the op is planned again over the others and re-run, so the result is the
    /// one a healthy fleet computes. A share that does not end within the policy's deadline
    /// (`watchdog_factor` × the plan's predicted time, at least `watchdog_min`) evicts its
    /// device at once: a hung chip cannot hang the op.
    /// The op fails only when the device holding its inputs or taking its result fails
    /// (the data there is lost: the error says so; running out of memory there is returned
    /// as it is) or when no device is left. [`FaultPolicy::verdict`] decides each case, as
    /// it does for every scheduler.
    pub fn run(&mut self, op: &Op, src: &DeviceRef, dst: &DeviceRef) -> Result<Plan> {
        let mut failures: Vec<(String, u32)> = Vec::new();
        let mut events = self.follow_membership();
        for event in &events {
            self.trace_event(event);
        }
        if self.members.is_empty() {
            return Err(Error::DeviceLost {
                device: src.info().label(),
                detail: format!("every member is out of the fleet; none can run {}", op.describe()),
            });
        }
        loop {
            let err = match self.run_once(op, src, dst) {
                Ok(mut plan) => {
                    if let Some(last) = &mut self.last {
                        last.events = events.clone();
                    }
                    plan.events = events;
                    return Ok(plan);
                }
                Err(e) if e.is_device_fault() => e,
                Err(e) => return Err(e),
            };
            let Some(label) = err.device().map(str::to_string) else { return Err(err) };
            let member = self.members.iter().position(|m| m.label == label);
            let holds_data = [src, dst].iter().any(|d| d.info().label() == label);
            if member.is_none() && !holds_data {
                return Err(err);
            }
            let count = match failures.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    failures.push((label.clone(), 1));
                    1
                }
            };
            match self.policy.verdict(&err, count, holds_data) {
                // A transient fault is retried, on the devices holding the data too.
                Verdict::Retry => {
                    tracing::warn!(device = %label, attempt = count, %err, "planner: share failed; retrying");
                    let error = err.to_string();
                    let event = FleetEvent::Retried { device: label, attempt: count, error };
                    self.trace_event(&event);
                    events.push(event);
                    continue;
                }
                Verdict::Fail if err.kind() == ErrorKind::OutOfMemory => return Err(err),
                Verdict::Fail => {
                    return Err(Error::DeviceLost {
                        device: label,
                        detail: format!(
                            "{} failed on the device that holds its operands or its result, \
                             so they are lost: {err}",
                            op.describe()
                        ),
                    });
                }
                Verdict::NotAFault => return Err(err),
                Verdict::Evict => {}
            }
            let Some(i) = member else { return Err(err) };
            tracing::warn!(device = %label, %err, "planner: evicting a failed device and re-planning");
            let member = self.members.remove(i);
            if let Some(membership) = &mut self.membership {
                membership.evict(&member.label, &err.to_string());
            }
            let event =
                FleetEvent::Evicted { device: member.label.clone(), reason: err.to_string() };
            self.trace_event(&event);
            events.push(event);
            self.evicted.push((member, err.to_string()));
            if self.members.is_empty() {
                return Err(err);
            }
        }
    }

    /// Probes every member the planner evicted with a small op (each on a thread of its
    /// own, so a device that hangs again is left behind) and takes back those that answer
    /// right within the policy's `watchdog_min`; a shared membership takes them back too.
    pub fn readmit(&mut self) -> Vec<FleetEvent> {
        let within = self.policy.watchdog_min;
        let (back, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.evicted)
            .into_iter()
            .partition(|(m, _)| m.device.as_ref().is_some_and(|d| answers(d, within)));
        self.evicted = still;
        let mut events = Vec::new();
        for (member, _) in back {
            if let Some(membership) = &mut self.membership {
                membership.readmit(&member.label);
            }
            tracing::info!(device = %member.label, "planner: re-admitting a device");
            let event = FleetEvent::Readmitted { device: member.label.clone() };
            self.trace_event(&event);
            events.push(event);
            self.members.push(member);
        }
        events
    }

    pub fn fault_policy(&self) -> &FaultPolicy {
        &self.policy
    }

    /// The rules for failing devices (retries, the watchdog's deadline) from now on.
    pub fn set_fault_policy(&mut self, policy: FaultPolicy) {
        self.policy = policy;
    }

    /// Devices evicted after failing a share, with the error that evicted each.
    pub fn evicted(&self) -> Vec<(String, String)> {
        self.evicted.iter().map(|(m, why)| (m.label.clone(), why.clone())).collect()
    }

    fn run_once(&mut self, op: &Op, src: &DeviceRef, dst: &DeviceRef) -> Result<Plan> {
        op.validate(&src.info().label())?;
        let position = |dev: &DeviceRef| {
            self.members
                .iter()
                .position(|m| m.device.as_ref().is_some_and(|d| d.info().id == dev.info().id))
        };
        let mut plan = self.plan_between(op, position(src), position(dst));
        let devices: Vec<DeviceRef> = plan
            .shares
            .iter()
            .map(|s| {
                self.members[s.member].device.clone().ok_or_else(|| {
                    invalid(format!("{} is only modelled; it cannot run {}", s.device, plan.op))
                })
            })
            .collect::<Result<_>>()?;
        let started = Instant::now();
        let limit = self.policy.deadline(plan.predicted.as_secs_f64());
        let timings = execute::run(&plan, op, &devices, src, dst, limit)?;
        plan.measured = Some(started.elapsed());
        let offset = started.duration_since(self.origin);
        for (share, timing) in plan.shares.iter_mut().zip(&timings) {
            share.measured = Some(timing.phases());
            if let Some(trace) = &mut self.trace {
                trace.record_share(&plan.op, share, timing, offset);
            }
        }
        if self.learning {
            self.learn(&plan);
        }
        tracing::debug!(op = %plan.op, shares = plan.shares.len(), measured_ms = plan.measured.map(|m| m.as_secs_f64() * 1e3), "planner: ran");
        self.last = Some(plan.clone());
        Ok(plan)
    }

    /// Feeds a run's measured times back into the corrections.
    pub fn learn(&mut self, plan: &Plan) {
        for share in &plan.shares {
            let Some(measured) = share.measured else { continue };
            let (compute_factor, link_factor) = share.factors;
            self.corrections.observe_compute(
                &share.device,
                plan.class,
                share.predicted.compute.as_secs_f64() / compute_factor,
                measured.compute.as_secs_f64(),
            );
            let moved = |p: &Phases| p.upload.as_secs_f64() + p.download.as_secs_f64();
            self.corrections.observe_link(
                &share.device,
                moved(&share.predicted) / link_factor,
                moved(&measured),
            );
        }
    }
}

const ZERO: Linear = Linear { fixed: 0.0, per_unit: 0.0 };

fn scale(l: Linear, k: f64) -> Linear {
    Linear { fixed: l.fixed * k, per_unit: l.per_unit * k }
}

trait AtF {
    fn at_f(&self, units: f64) -> f64;
}

impl AtF for Linear {
    fn at_f(&self, units: f64) -> f64 {
        self.fixed + self.per_unit * units
    }
}

/// The fraction of its solo matmul rate a device keeps while all others run too (1 where
/// that was not measured).
fn concurrency(p: &DeviceProfile) -> f64 {
    let together = p.matmul_rate_concurrent.unwrap_or(0.0);
    let alone = p.matmul_rate(DType::F32, 2.0 * 512f64.powi(3));
    if together > 0.0 && alone > 0.0 { (together / alone).min(1.0) } else { 1.0 }
}

/// The work of `op` per unit of `axis` (or of the whole op as one unit), fitted exactly from
/// a one-entry part and the whole: every quantity is affine in the entries a part covers.
fn amounts(op: &Op, axis: Option<usize>) -> Amounts {
    let measure = |op: &Op| {
        let input: usize = op.inputs().iter().map(|v| packed::bytes(v)).sum();
        let out = op.output();
        [op.flops(), op.bytes(), input as f64, (out.numel() * out.dtype.size_in_bytes()) as f64]
    };
    let all = measure(op);
    let fit: [Linear; 4] = match axis {
        None => all.map(|q| Linear { fixed: 0.0, per_unit: q }),
        Some(axis) => {
            let units = op.output().dims()[axis] as f64;
            let one = measure(&cut(op, axis, 0, 1));
            std::array::from_fn(|i| {
                let per_unit = (all[i] - one[i]) / (units - 1.0).max(1.0);
                Linear { fixed: one[i] - per_unit, per_unit }
            })
        }
    };
    Amounts {
        flops: fit[0],
        memory: fit[1],
        input_bytes: fit[2],
        output_bytes: fit[3],
        inputs: op.inputs().len(),
    }
}

/// `matmul -> f32[1024, 1024]`.
fn plan_name(op: &Op) -> String {
    format!("{} -> {}{}", op.name(), op.output().dtype, op.output().layout.shape)
}

fn invalid(detail: String) -> Error {
    Error::InvalidArgument { op: "plan".into(), device: "planner".into(), detail }
}
