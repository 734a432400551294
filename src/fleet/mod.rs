//! The fleet: every chip this process can use, once each, as the user selected them.
//!
//! [`Fleet::discover`] asks every compiled-in backend for its devices ([`discover`]), applies
//! the user's `MANYCHIPS_DEVICES` selection ([`Selector`]), then keeps one device per
//! physical chip ([`dedup`]). Membership changes afterwards through [`Fleet::evict`] and
//! [`Fleet::join`], or through a scheduler built for the fleet (a planner, data-parallel
//! training) that evicts a failing device or re-admits a healed one: all of them share one
//! [`Membership`], so what one sees, all see. Each change bumps [`Fleet::epoch`], so that
//! whatever was planned for one membership (a planner's shares, calibrated figures keyed by
//! [`DeviceInfo::id`](crate::DeviceInfo) or label) can tell that it is stale.

mod dedup;
mod discover;
mod events;
mod learned;
mod membership;
mod policy;
mod probe;
mod select;
mod table;

use std::collections::HashSet;
use std::time::Duration;

use crate::{DeviceInfo, DeviceRef, Error, Result};

pub use dedup::{Dedup, Duplicate, SameChip, dedup};
pub use discover::{Discovery, devices, discover};
pub use events::FleetEvent;
pub use learned::{LEARNING_RATE, MAX_STEP, follow};
pub(crate) use membership::Follower;
pub use membership::Membership;
pub use policy::{FaultPolicy, Verdict};
pub use probe::answers;
pub use select::{DEVICES_VAR, Selector, Term};

/// The devices a program computes on, plus the host CPU device.
///
/// Labels (`cpu:0`, `vulkan:1`, ...) are unique within a fleet and name devices in every
/// call. Clones share one [`Membership`]: evicting through one is seen by all. The host CPU device ([`Fleet::cpu`]) is always there, even when the selection leaves
/// it out of the compute devices or it was evicted: results are assembled and checked on it.
#[derive(Clone, Debug)]
pub struct Fleet {
    members: Membership,
    host: DeviceRef,
    duplicates: Vec<(String, String, SameChip)>,
    unavailable: Vec<Error>,
}

impl Fleet {
    /// Every device of every backend compiled in, selected by `MANYCHIPS_DEVICES` (unset or
    /// empty: all), one per physical chip.
    ///
    /// `Err` when not even the CPU device starts, when `MANYCHIPS_DEVICES` is malformed or not
    /// Unicode, or when it selects no device.
    pub fn discover() -> Result<Fleet> {
        let selector = match std::env::var(DEVICES_VAR) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(raw)) => {
                return Err(Error::InvalidArgument {
                    op: "select devices".into(),
                    device: "fleet".into(),
                    detail: format!("{DEVICES_VAR}={raw:?} is not valid Unicode"),
                });
            }
        };
        Fleet::discover_selected(selector.as_deref())
    }

    /// [`discover`](Self::discover) with `selector` (the `MANYCHIPS_DEVICES` syntax; `None`
    /// or blank for all) instead of the variable. Backends the selector cannot pick are not
    /// even opened: `cpu` alone never loads a GPU driver.
    pub fn discover_selected(selector: Option<&str>) -> Result<Fleet> {
        // Parsed before discovery, which opens devices: a typo should fail at once.
        let parsed = match selector.map(str::trim).filter(|s| !s.is_empty()) {
            Some(value) => Some(Selector::parse(value)?),
            None => None,
        };
        let found = discover::discover_where(|backend| {
            parsed.as_ref().is_none_or(|s| backend == "cpu" || s.may_select(backend))
        });
        if !found.devices.iter().any(|d| d.info().backend == "cpu") {
            let cpu_err = found.unavailable.iter().find(|e| match e {
                Error::Unavailable { backend, .. } => backend == "cpu",
                _ => false,
            });
            return Err(cpu_err.or(found.unavailable.first()).cloned().unwrap_or_else(no_cpu));
        }
        let mut fleet = Fleet::from_devices(found.devices, selector)?;
        fleet.unavailable = found.unavailable;
        Ok(fleet)
    }

    /// A fleet of the given devices: `selector` (the `MANYCHIPS_DEVICES` syntax; `None` or
    /// blank for all) picks among them, then one device per physical chip is kept.
    ///
    /// `devices` must include a CPU device (the host) and have unique labels.
    pub fn from_devices(devices: Vec<DeviceRef>, selector: Option<&str>) -> Result<Fleet> {
        let mut seen = HashSet::new();
        if let Some(dup) =
            devices.iter().map(|d| d.info().label()).find(|l| !seen.insert(l.clone()))
        {
            return Err(invalid(format!("two devices are labelled {dup}; labels must be unique")));
        }
        let Some(host) = devices.iter().find(|d| d.info().backend == "cpu").cloned() else {
            let given: Vec<String> = devices.iter().map(|d| d.info().label()).collect();
            return Err(invalid(format!(
                "a fleet needs a CPU device (its host); given: {}",
                if given.is_empty() { "none".to_string() } else { given.join(", ") }
            )));
        };
        let infos: Vec<&DeviceInfo> = devices.iter().map(|d| d.info()).collect();
        let chosen = match selector.map(str::trim).filter(|s| !s.is_empty()) {
            Some(value) => Selector::parse(value)?.apply(&infos)?,
            None => (0..devices.len()).collect(),
        };
        let chosen_infos: Vec<&DeviceInfo> = chosen.iter().map(|&i| infos[i]).collect();
        let plan = dedup(&chosen_infos);
        let duplicates: Vec<(String, String, SameChip)> = plan
            .dropped
            .iter()
            .map(|d| (chosen_infos[d.dropped].label(), chosen_infos[d.kept].label(), d.by))
            .collect();
        for (dropped, kept, by) in &duplicates {
            tracing::info!(%dropped, %kept, %by, "same chip seen twice; keeping one view");
        }
        let members: Vec<DeviceRef> =
            plan.kept.iter().map(|&k| devices[chosen[k]].clone()).collect();
        tracing::info!(
            devices = %members.iter().map(|d| d.info().label()).collect::<Vec<_>>().join(","),
            "fleet up"
        );
        Ok(Fleet { members: Membership::new(members), host, duplicates, unavailable: Vec::new() })
    }

    /// The compute devices in, in admission order (discovery order, then joins).
    pub fn devices(&self) -> Vec<DeviceRef> {
        self.members.devices()
    }

    /// The member labelled `label` (`vulkan:0`), while it is in.
    pub fn get(&self, label: &str) -> Option<DeviceRef> {
        self.members.get(label)
    }

    pub fn len(&self) -> usize {
        self.devices().len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices().is_empty()
    }

    /// The record of who is in, shared with every scheduler built for this fleet
    /// ([`Planner::for_fleet`](crate::plan::Planner::for_fleet),
    /// [`DataParallel::for_fleet`](crate::train::DataParallel::for_fleet)).
    pub fn membership(&self) -> &Membership {
        &self.members
    }

    /// The host CPU device, whether or not it is a compute member.
    pub fn cpu(&self) -> &DeviceRef {
        &self.host
    }

    /// Devices left out as other views of a member's chip: (left out, kept, evidence).
    pub fn duplicates(&self) -> &[(String, String, SameChip)] {
        &self.duplicates
    }

    /// Why each backend that contributed no device did not (from [`Fleet::discover`]).
    pub fn unavailable(&self) -> &[Error] {
        &self.unavailable
    }

    /// Bumped by every membership change, so plans made for an older membership are known
    /// to be stale.
    pub fn epoch(&self) -> u64 {
        self.members.epoch()
    }

    /// Takes the member labelled `label` out (a failed or hopelessly slow chip) and returns
    /// it; `None` if no member in has that label.
    pub fn evict(&mut self, label: &str) -> Option<DeviceRef> {
        self.members.evict(label, "evicted by the program")
    }

    /// Probes every evicted member with a small op (each on a thread of its own) and brings
    /// back those that answer right within `within`: for every scheduler sharing the
    /// membership (the planner takes a device back at its next op; a data-parallel job
    /// rebuilds its replica in [`DataParallel::readmit`](crate::train::DataParallel::readmit)).
    pub fn readmit(&self, within: Duration) -> Vec<FleetEvent> {
        let mut events = Vec::new();
        for device in self.members.evicted_devices() {
            let label = device.info().label();
            if answers(&device, within) && self.members.readmit(&label) {
                events.push(FleetEvent::Readmitted { device: label });
            }
        }
        events
    }

    /// Adds `device` as a member (or brings back an evicted one of its label). Refused
    /// (`InvalidArgument`) when its label is taken or it is another view of a member's chip.
    pub fn join(&mut self, device: DeviceRef) -> Result<()> {
        let label = device.info().label();
        self.members.admit(device.clone(), |members| {
            if members.iter().any(|d| d.info().label() == label) {
                return Err(invalid(format!("{label} is already a member")));
            }
            let mut infos: Vec<&DeviceInfo> = members.iter().map(|d| d.info()).collect();
            infos.push(device.info());
            let plan = dedup(&infos);
            if let Some(dup) = plan.dropped.first() {
                let (a, b) = (infos[dup.dropped].label(), infos[dup.kept].label());
                return Err(invalid(format!(
                    "{label} would be a second view of one chip ({a} and {b}: {})",
                    dup.by
                )));
            }
            Ok(())
        })
    }
}

fn invalid(detail: String) -> Error {
    Error::InvalidArgument { op: "fleet".into(), device: "fleet".into(), detail }
}

fn no_cpu() -> Error {
    Error::Unavailable { backend: "cpu".into(), reason: "a fleet needs a CPU device".into() }
}
