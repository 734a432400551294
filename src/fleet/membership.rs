//! Who is in the fleet: one record, shared by a [`Fleet`](super::Fleet), its clones and every
//! scheduler built for it (the planner, data-parallel training), so that a device one of them
//! evicts is out for all of them, and the epoch tells each that what it planned is stale.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::DeviceRef;

/// A shared handle on the fleet's roster; clones see the same one.
#[derive(Clone, Debug, Default)]
pub struct Membership(Arc<Mutex<Roster>>);

#[derive(Debug, Default)]
struct Roster {
    /// Every device admitted, in admission order; an evicted one stays, listed in `out`.
    devices: Vec<DeviceRef>,
    /// Labels out of the fleet, and why.
    out: Vec<(String, String)>,
    epoch: u64,
}

impl Roster {
    fn is_out(&self, label: &str) -> bool {
        self.out.iter().any(|(l, _)| l == label)
    }
}

impl Membership {
    /// A roster of `devices`, all in.
    pub fn new(devices: Vec<DeviceRef>) -> Membership {
        Membership(Arc::new(Mutex::new(Roster { devices, out: Vec::new(), epoch: 0 })))
    }

    fn lock(&self) -> MutexGuard<'_, Roster> {
        // Every update below leaves the roster whole, so a panic elsewhere cannot leave it
        // half-changed.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The members in, in admission order.
    pub fn devices(&self) -> Vec<DeviceRef> {
        let roster = self.lock();
        roster.devices.iter().filter(|d| !roster.is_out(&d.info().label())).cloned().collect()
    }

    /// The member in labelled `label`.
    pub fn get(&self, label: &str) -> Option<DeviceRef> {
        let roster = self.lock();
        if roster.is_out(label) {
            return None;
        }
        roster.devices.iter().find(|d| d.info().label() == label).cloned()
    }

    /// Bumped by every eviction, re-admission and join.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Why `label` is out of the fleet; `None` while it is in (or was never admitted).
    pub fn why_out(&self, label: &str) -> Option<String> {
        self.lock().out.iter().find(|(l, _)| l == label).map(|(_, why)| why.clone())
    }

    /// Every label out of the fleet, with why, in eviction order.
    pub fn evicted(&self) -> Vec<(String, String)> {
        self.lock().out.clone()
    }

    /// The devices out of the fleet, in eviction order.
    pub fn evicted_devices(&self) -> Vec<DeviceRef> {
        let roster = self.lock();
        let device = |label: &String| roster.devices.iter().find(|d| d.info().label() == *label);
        roster.out.iter().filter_map(|(label, _)| device(label).cloned()).collect()
    }

    /// Takes member `label` out for `reason` and returns it; `None` when no member in has
    /// that label.
    pub fn evict(&self, label: &str, reason: &str) -> Option<DeviceRef> {
        let mut roster = self.lock();
        if roster.is_out(label) {
            return None;
        }
        let device = roster.devices.iter().find(|d| d.info().label() == label).cloned()?;
        roster.out.push((label.to_string(), reason.to_string()));
        roster.epoch += 1;
        tracing::warn!(device = %label, %reason, epoch = roster.epoch, "device evicted from the fleet");
        Some(device)
    }

    /// Brings the evicted `label` back in (it answered a probe); false when it was not out.
    pub fn readmit(&self, label: &str) -> bool {
        let mut roster = self.lock();
        let before = roster.out.len();
        roster.out.retain(|(l, _)| l != label);
        if roster.out.len() == before {
            return false;
        }
        roster.epoch += 1;
        tracing::info!(device = %label, epoch = roster.epoch, "device re-admitted to the fleet");
        true
    }

    /// Adds `device` at the end, replacing an evicted one of its label; `check` sees the
    /// members in first and may refuse (a taken label, a second view of a member's chip).
    pub(crate) fn admit(
        &self,
        device: DeviceRef,
        check: impl FnOnce(&[DeviceRef]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        let mut roster = self.lock();
        let label = device.info().label();
        let members: Vec<DeviceRef> =
            roster.devices.iter().filter(|d| !roster.is_out(&d.info().label())).cloned().collect();
        check(&members)?;
        roster.devices.retain(|d| d.info().label() != label);
        roster.out.retain(|(l, _)| *l != label);
        roster.devices.push(device);
        roster.epoch += 1;
        tracing::info!(device = %label, members = members.len() + 1, epoch = roster.epoch, "device joined the fleet");
        Ok(())
    }
}

/// A scheduler's hold on a shared [`Membership`]: what the scheduler does goes there, and
/// [`changed`](Follower::changed) tells it when someone else changed the roster since it
/// last looked.
#[derive(Clone, Debug)]
pub(crate) struct Follower {
    membership: Membership,
    /// The epoch last looked at; none yet at first.
    seen: Option<u64>,
}

impl Follower {
    pub fn new(membership: Membership) -> Follower {
        Follower { membership, seen: None }
    }

    /// The roster, when it changed since the last look (each change is seen once).
    pub fn changed(&mut self) -> Option<Membership> {
        let epoch = self.membership.epoch();
        (self.seen != Some(epoch)).then(|| {
            self.seen = Some(epoch);
            self.membership.clone()
        })
    }

    /// Records the scheduler's own eviction of `label`; a change it has seen already.
    pub fn evict(&mut self, label: &str, reason: &str) {
        self.own(|m| {
            m.evict(label, reason);
        });
    }

    /// Records the scheduler's own re-admission of `label`; a change it has seen already.
    pub fn readmit(&mut self, label: &str) {
        self.own(|m| {
            m.readmit(label);
        });
    }

    /// Applies `change`; when the scheduler was up to date before, it is after.
    fn own(&mut self, change: impl FnOnce(&Membership)) {
        let before = self.membership.epoch();
        change(&self.membership);
        if self.seen == Some(before) {
            self.seen = Some(self.membership.epoch());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::CpuDevice;

    #[test]
    fn clones_share_evictions_readmissions_and_the_epoch() {
        let cpu: DeviceRef = Arc::new(CpuDevice::with_threads(1).unwrap());
        let roster = Membership::new(vec![cpu]);
        let other = roster.clone();
        assert!(other.evict("cpu:0", "lost").is_some());
        assert!(roster.evict("cpu:0", "again").is_none(), "already out");
        assert_eq!(roster.why_out("cpu:0").as_deref(), Some("lost"));
        assert!(roster.devices().is_empty() && roster.get("cpu:0").is_none());
        assert_eq!(roster.epoch(), 1);
        assert!(roster.readmit("cpu:0"));
        assert!(!other.readmit("cpu:0"), "not out any more");
        assert_eq!((other.epoch(), other.devices().len()), (2, 1));
        assert!(other.evict("vulkan:0", "never a member").is_none());
        assert_eq!(other.epoch(), 2);
    }

    #[test]
    fn a_follower_sees_each_change_of_others_once_and_not_its_own() {
        let cpu: DeviceRef = Arc::new(CpuDevice::with_threads(1).unwrap());
        let roster = Membership::new(vec![cpu]);
        let mut follower = Follower::new(roster.clone());
        assert!(follower.changed().is_some(), "the first look sees the roster");
        assert!(follower.changed().is_none());
        follower.evict("cpu:0", "its own");
        assert!(follower.changed().is_none(), "its own eviction is no news");
        roster.readmit("cpu:0");
        assert!(follower.changed().is_some_and(|m| m.why_out("cpu:0").is_none()));
        assert!(follower.changed().is_none());
    }
}
