//! One entry per physical chip: the same card seen through CUDA, Vulkan and wgpu is kept once.

use crate::DeviceInfo;

/// Why two devices were judged to be views of one chip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SameChip {
    /// Equal `Identity::uuid` (CUDA's and Vulkan's `deviceUUID` agree).
    Uuid,
    /// Equal `Identity::pci_bus_id`.
    PciBusId,
    /// Fallback where one side has no UUID and the two do not both know a PCI bus id: same
    /// vendor and same name, through two different GPU backends. wgpu reports no UUID, and
    /// no PCI bus id for devices that have none (lavapipe), so without this a software
    /// Vulkan driver would be counted twice.
    NameAndVendor,
}

impl std::fmt::Display for SameChip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SameChip::Uuid => "same UUID",
            SameChip::PciBusId => "same PCI bus id",
            SameChip::NameAndVendor => "same name and vendor",
        })
    }
}

/// A device left out because another device is the same chip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// Index (into the list given to [`dedup`]) of the device left out.
    pub dropped: usize,
    /// Index of the device kept in its place.
    pub kept: usize,
    pub by: SameChip,
}

/// What [`dedup`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dedup {
    /// Indices of the devices kept, ascending.
    pub kept: Vec<usize>,
    pub dropped: Vec<Duplicate>,
}

/// Keeps one device per physical chip, preferring the CUDA view, then Vulkan, then wgpu (the
/// order of how much of the chip each backend can use); other backends come last.
///
/// Two devices are one chip when their UUIDs are equal, else (lacking a UUID on either side)
/// when their PCI bus ids are equal, else (lacking both on either side) when two GPU backends
/// report the same vendor and name. Devices of one backend are never merged: a backend lists
/// each chip once, and two identical cards must stay two. For the name fallback each kept
/// device absorbs at most one device per other backend, so two identical cards without any
/// id pair up in discovery order. A device without identity that matches nothing is kept.
pub fn dedup(infos: &[&DeviceInfo]) -> Dedup {
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by_key(|&i| (rank(&infos[i].backend), i));
    // (index kept, backends absorbed into it)
    let mut kept: Vec<(usize, Vec<&str>)> = Vec::new();
    let mut dropped = Vec::new();
    'next: for i in order {
        let candidate = infos[i];
        for (k, absorbed) in &mut kept {
            let other = infos[*k];
            if other.backend == candidate.backend {
                continue;
            }
            if let Some(by) = same_chip(candidate, other) {
                if by == SameChip::NameAndVendor && absorbed.contains(&candidate.backend.as_str()) {
                    continue;
                }
                absorbed.push(candidate.backend.as_str());
                dropped.push(Duplicate { dropped: i, kept: *k, by });
                continue 'next;
            }
        }
        kept.push((i, Vec::new()));
    }
    let mut kept: Vec<usize> = kept.into_iter().map(|(k, _)| k).collect();
    kept.sort_unstable();
    dropped.sort_by_key(|d| d.dropped);
    Dedup { kept, dropped }
}

/// Preference among the views of one chip: lower is better.
fn rank(backend: &str) -> u8 {
    match backend {
        "cuda" => 0,
        "vulkan" => 1,
        "wgpu" => 2,
        _ => 3,
    }
}

/// Whether `a` and `b` (of different backends) are the same chip, and by which evidence. A
/// stronger id that both know and that differs settles it: different chips.
fn same_chip(a: &DeviceInfo, b: &DeviceInfo) -> Option<SameChip> {
    let (ia, ib) = (&a.identity, &b.identity);
    if let (Some(ua), Some(ub)) = (&ia.uuid, &ib.uuid) {
        return (ua == ub).then_some(SameChip::Uuid);
    }
    if let (Some(pa), Some(pb)) = (&ia.pci_bus_id, &ib.pci_bus_id) {
        return (pa.eq_ignore_ascii_case(pb)).then_some(SameChip::PciBusId);
    }
    let gpu_backends = rank(&a.backend) < 3 && rank(&b.backend) < 3;
    let same_name = !a.name.is_empty() && a.name == b.name && a.vendor == b.vendor;
    (gpu_backends && same_name).then_some(SameChip::NameAndVendor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, DeviceId, Identity};

    fn info(backend: &str, ordinal: usize, name: &str, identity: Identity) -> DeviceInfo {
        DeviceInfo {
            id: DeviceId::fresh(),
            backend: backend.into(),
            ordinal,
            name: name.into(),
            vendor: "V".into(),
            driver_version: String::new(),
            identity,
            memory_total: 0,
            dtypes: vec![DType::F32],
            peer_copy: false,
        }
    }

    fn uuid(b: u8) -> Identity {
        Identity { uuid: Some([b; 16]), ..Identity::default() }
    }

    fn pci(p: &str) -> Identity {
        Identity { pci_bus_id: Some(p.into()), ..Identity::default() }
    }

    fn kept(infos: &[DeviceInfo]) -> Vec<usize> {
        let refs: Vec<&DeviceInfo> = infos.iter().collect();
        dedup(&refs).kept
    }

    #[test]
    fn same_uuid_via_vulkan_and_wgpu_keeps_vulkan() {
        let infos = [info("wgpu", 0, "a", uuid(1)), info("vulkan", 0, "b", uuid(1))];
        let refs: Vec<&DeviceInfo> = infos.iter().collect();
        let d = dedup(&refs);
        assert_eq!(d.kept, [1]);
        assert_eq!(d.dropped, [Duplicate { dropped: 0, kept: 1, by: SameChip::Uuid }]);
    }

    #[test]
    fn same_pci_via_cuda_and_vulkan_keeps_cuda() {
        let infos = [
            info("vulkan", 0, "x", pci("0000:01:00.0")),
            info("cuda", 0, "y", pci("0000:01:00.0")),
        ];
        assert_eq!(kept(&infos), [1]);
    }

    #[test]
    fn different_uuids_are_different_chips_even_with_one_name() {
        let infos = [info("cuda", 0, "A100", uuid(1)), info("vulkan", 0, "A100", uuid(2))];
        assert_eq!(kept(&infos), [0, 1]);
    }

    #[test]
    fn different_pci_ids_are_different_chips_even_with_one_name() {
        let infos = [
            info("vulkan", 0, "g", pci("0000:01:00.0")),
            info("wgpu", 0, "g", pci("0000:02:00.0")),
        ];
        assert_eq!(kept(&infos), [0, 1]);
    }

    #[test]
    fn devices_without_identity_are_kept() {
        let infos = [
            info("cpu", 0, "cpu", Identity::default()),
            info("vulkan", 0, "gpu", Identity::default()),
            info("thirdparty", 0, "gpu", Identity::default()),
        ];
        assert_eq!(kept(&infos), [0, 1, 2]);
    }

    #[test]
    fn one_cuda_card_through_three_backends_is_kept_once_as_cuda() {
        let full =
            Identity { uuid: Some([7; 16]), pci_bus_id: Some("0000:65:00.0".into()), other: None };
        let infos = [
            info("vulkan", 0, "RTX", full.clone()),
            info("wgpu", 0, "RTX", pci("0000:65:00.0")),
            info("cuda", 0, "RTX", full),
        ];
        assert_eq!(kept(&infos), [2]);
    }

    #[test]
    fn lavapipe_via_vulkan_and_wgpu_is_kept_once_by_name() {
        let infos = [
            info(
                "cpu",
                0,
                "llvmpipe",
                Identity { other: Some("cpu:x".into()), ..Identity::default() },
            ),
            info("vulkan", 0, "llvmpipe", uuid(9)),
            info(
                "wgpu",
                0,
                "llvmpipe",
                Identity { other: Some("10005:0000".into()), ..Identity::default() },
            ),
        ];
        let refs: Vec<&DeviceInfo> = infos.iter().collect();
        let d = dedup(&refs);
        assert_eq!(d.kept, [0, 1]);
        assert_eq!(d.dropped, [Duplicate { dropped: 2, kept: 1, by: SameChip::NameAndVendor }]);
    }

    #[test]
    fn identical_cards_without_ids_pair_up_in_order() {
        let infos = [
            info("vulkan", 0, "card", uuid(1)),
            info("vulkan", 1, "card", uuid(2)),
            info("wgpu", 0, "card", Identity::default()),
            info("wgpu", 1, "card", Identity::default()),
        ];
        let refs: Vec<&DeviceInfo> = infos.iter().collect();
        let d = dedup(&refs);
        assert_eq!(d.kept, [0, 1]);
        let pairs: Vec<(usize, usize)> = d.dropped.iter().map(|x| (x.dropped, x.kept)).collect();
        assert_eq!(pairs, [(2, 0), (3, 1)]);
    }

    #[test]
    fn devices_of_one_backend_are_never_merged() {
        let infos = [info("vulkan", 0, "card", uuid(1)), info("vulkan", 1, "card", uuid(1))];
        assert_eq!(kept(&infos), [0, 1]);
    }

    #[test]
    fn a_vendor_mismatch_is_not_the_same_chip() {
        let mut w = info("wgpu", 0, "card", Identity::default());
        w.vendor = "Other".into();
        assert_eq!(kept(&[info("vulkan", 0, "card", uuid(1)), w]), [0, 1]);
    }
}
