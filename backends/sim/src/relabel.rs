//! Errors of the inner device, re-addressed to the simulated one.

use manychips_api::Error;

/// `err` as if the simulated device `label` had raised it: users and the fleet see the
/// device they called, never the one computing behind it.
pub(crate) fn relabel(err: Error, label: &str) -> Error {
    err.on_device(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_simulated_device() {
        let err = Error::Fault { op: "run".into(), device: "cpu:0".into(), detail: "x".into() };
        assert_eq!(relabel(err, "sim:2").to_string(), "run on sim:2: device fault: x");
    }
}
