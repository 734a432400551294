//! `MANYCHIPS_DEVICES`: choosing devices the way `CUDA_VISIBLE_DEVICES` users know.

use std::fmt;

use crate::{DeviceInfo, Error, Result};

/// The environment variable [`Fleet::discover`](super::Fleet::discover) reads.
pub const DEVICES_VAR: &str = "MANYCHIPS_DEVICES";

/// A parsed device selection such as `cpu,vulkan:0`, `cuda:*` or `-wgpu,-vulkan:1`.
///
/// Terms apply in order. A term `backend`, `backend:*` or `backend:N` adds the matching
/// devices; the same prefixed with `-` removes them. A selection that starts with an
/// inclusion starts from no device, one that starts with an exclusion from all of them.
/// Backend names are not checked against the backends compiled in (a third party's backend
/// may be selected by its name) and match ASCII-case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// The text parsed, for messages.
    source: String,
    terms: Vec<Term>,
}

/// One term of a [`Selector`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub exclude: bool,
    pub backend: String,
    /// `None` for every device of the backend (`wgpu`, `wgpu:*`).
    pub ordinal: Option<usize>,
}

impl Term {
    pub fn matches(&self, backend: &str, ordinal: usize) -> bool {
        self.backend.eq_ignore_ascii_case(backend) && self.ordinal.is_none_or(|o| o == ordinal)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.exclude { "-" } else { "" };
        match self.ordinal {
            Some(o) => write!(f, "{sign}{}:{o}", self.backend),
            None => write!(f, "{sign}{}:*", self.backend),
        }
    }
}

impl Selector {
    /// Parses a selection; a malformed one is `Err(InvalidArgument)` naming the bad term and
    /// the whole value.
    pub fn parse(value: &str) -> Result<Selector> {
        let terms = value
            .split(',')
            .enumerate()
            .map(|(n, raw)| {
                parse_term(raw.trim()).map_err(|why| {
                    invalid(format!(
                        "term {} {:?} of {DEVICES_VAR}={value:?}: {why} (expected a comma \
                         list of backend, backend:N or backend:*, each optionally prefixed \
                         by - to exclude, e.g. cpu,vulkan:0 or -wgpu)",
                        n + 1,
                        raw.trim()
                    ))
                })
            })
            .collect::<Result<Vec<Term>>>()?;
        Ok(Selector { source: value.to_string(), terms })
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// Whether the device `backend:ordinal` is selected.
    pub fn selects(&self, backend: &str, ordinal: usize) -> bool {
        let start = self.terms.first().is_some_and(|t| t.exclude);
        self.terms.iter().fold(start, |selected, term| {
            if term.matches(backend, ordinal) { !term.exclude } else { selected }
        })
    }

    /// Whether some device of `backend` could be selected (without knowing its devices):
    /// false only when no term can leave one of its devices in, so discovery may skip the
    /// backend altogether.
    pub fn may_select(&self, backend: &str) -> bool {
        let mut some = self.terms.first().is_some_and(|t| t.exclude);
        for term in self.terms.iter().filter(|t| t.backend.eq_ignore_ascii_case(backend)) {
            match (term.exclude, term.ordinal) {
                (false, _) => some = true,
                (true, None) => some = false,
                // One ordinal out: others may remain.
                (true, Some(_)) => {}
            }
        }
        some
    }

    /// Indices of the selected devices among `infos`, in their order. Selecting none is an
    /// `Err(InvalidArgument)` that lists what there was to select from.
    pub fn apply(&self, infos: &[&DeviceInfo]) -> Result<Vec<usize>> {
        for term in self.terms.iter().filter(|t| !t.exclude) {
            if !infos.iter().any(|i| term.matches(&i.backend, i.ordinal)) {
                tracing::warn!(term = %term, "{DEVICES_VAR}: a term matches no device");
            }
        }
        let chosen: Vec<usize> = (0..infos.len())
            .filter(|&i| self.selects(&infos[i].backend, infos[i].ordinal))
            .collect();
        if chosen.is_empty() {
            let all: Vec<String> = infos.iter().map(|i| i.label()).collect();
            let all = if all.is_empty() { "(no device)".to_string() } else { all.join(", ") };
            return Err(invalid(format!("{DEVICES_VAR}={self} selects none of: {all}")));
        }
        Ok(chosen)
    }
}

impl fmt::Display for Selector {
    /// The text as given, quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

fn invalid(detail: String) -> Error {
    Error::InvalidArgument { op: "select devices".into(), device: "fleet".into(), detail }
}

/// One trimmed term, or why it is malformed.
fn parse_term(term: &str) -> std::result::Result<Term, String> {
    if term.is_empty() {
        return Err("empty term".into());
    }
    let (exclude, rest) = match term.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, term),
    };
    let mut parts = rest.split(':');
    let backend = parts.next().unwrap_or_default();
    let ordinal = parts.next();
    if parts.next().is_some() {
        return Err("more than one `:`".into());
    }
    check_backend(backend)?;
    let ordinal = match ordinal {
        None | Some("*") => None,
        Some(o) if !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()) => {
            Some(o.parse::<usize>().map_err(|_| format!("device index `{o}` is too large"))?)
        }
        Some(o) => return Err(format!("device index `{o}` is not a number or `*`")),
    };
    Ok(Term { exclude, backend: backend.to_string(), ordinal })
}

fn check_backend(backend: &str) -> std::result::Result<(), String> {
    let mut chars = backend.chars();
    match chars.next() {
        None => Err("no backend name".into()),
        Some(c) if !c.is_ascii_alphabetic() => {
            Err(format!("backend name `{backend}` does not start with a letter"))
        }
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => Err(format!(
            "backend name `{backend}` has characters other than letters, digits, `_` and `-`"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, DeviceId, ErrorKind, Identity};
    use proptest::prelude::*;

    fn info(label: &str) -> DeviceInfo {
        let (backend, ordinal) = label.split_once(':').unwrap();
        DeviceInfo {
            id: DeviceId::fresh(),
            backend: backend.into(),
            ordinal: ordinal.parse().unwrap(),
            name: label.into(),
            vendor: String::new(),
            driver_version: String::new(),
            identity: Identity::default(),
            memory_total: 0,
            dtypes: vec![DType::F32],
            peer_copy: false,
        }
    }

    const FLEET: [&str; 6] = ["cpu:0", "vulkan:0", "vulkan:1", "wgpu:0", "cuda:0", "cuda:1"];

    fn pick(value: &str) -> Result<Vec<String>> {
        let infos: Vec<DeviceInfo> = FLEET.iter().map(|l| info(l)).collect();
        let refs: Vec<&DeviceInfo> = infos.iter().collect();
        let chosen = Selector::parse(value)?.apply(&refs)?;
        Ok(chosen.into_iter().map(|i| FLEET[i].to_string()).collect())
    }

    #[test]
    fn inclusions_start_from_nothing() {
        assert_eq!(pick("cpu,vulkan:0").unwrap(), ["cpu:0", "vulkan:0"]);
        assert_eq!(pick("cuda:*").unwrap(), ["cuda:0", "cuda:1"]);
        assert_eq!(pick("wgpu").unwrap(), ["wgpu:0"]);
        assert_eq!(pick(" cuda:1 , CPU ").unwrap(), ["cpu:0", "cuda:1"]);
    }

    #[test]
    fn exclusions_start_from_everything() {
        assert_eq!(pick("-wgpu").unwrap(), ["cpu:0", "vulkan:0", "vulkan:1", "cuda:0", "cuda:1"]);
        assert_eq!(pick("-vulkan:1,-cuda").unwrap(), ["cpu:0", "vulkan:0", "wgpu:0"]);
    }

    #[test]
    fn terms_apply_in_order() {
        assert_eq!(pick("vulkan,-vulkan:0").unwrap(), ["vulkan:1"]);
        assert_eq!(
            pick("-vulkan,vulkan:1").unwrap(),
            ["cpu:0", "vulkan:1", "wgpu:0", "cuda:0", "cuda:1"]
        );
        assert_eq!(pick("cuda:0,-cuda,cuda:1").unwrap(), ["cuda:1"]);
    }

    #[test]
    fn backends_no_term_can_select_are_skipped_and_never_one_that_can() {
        let values = [
            "cpu",
            "-wgpu",
            "cuda:0,-cuda",
            "vulkan,-vulkan:0",
            "-vulkan,vulkan:1",
            "cpu,vulkan:0",
            "-vulkan:1,-cuda",
            "cuda:0,-cuda,cuda:1",
            "CPU,WGPU",
        ];
        for value in values {
            let selector = Selector::parse(value).unwrap();
            let picked = pick(value).unwrap_or_default();
            for backend in ["cpu", "vulkan", "wgpu", "cuda"] {
                let any = picked.iter().any(|l| l.starts_with(backend));
                assert!(!any || selector.may_select(backend), "{value}: {backend} skipped");
            }
        }
        let skips =
            |value: &str, backend: &str| !Selector::parse(value).unwrap().may_select(backend);
        assert!(skips("cpu", "vulkan") && skips("cpu", "wgpu") && skips("cpu", "cuda"));
        assert!(skips("-wgpu", "wgpu") && !skips("-wgpu", "vulkan"));
        assert!(skips("cuda:0,-cuda", "cuda"));
        assert!(!skips("-vulkan:1", "vulkan"));
    }

    #[test]
    fn unknown_backends_are_allowed() {
        assert_eq!(pick("cpu,npu:0,my_chip-2").unwrap(), ["cpu:0"]);
    }

    #[test]
    fn malformed_terms_name_the_bad_part_and_the_value() {
        for (value, bad, why) in [
            ("cpu,vulkan:x", "vulkan:x", "`x` is not a number"),
            (":0", ":0", "no backend name"),
            ("cpu,,wgpu", "", "empty term"),
            ("cpu,", "", "empty term"),
            ("cuda:-1", "cuda:-1", "`-1` is not a number"),
            ("cpu:0:1", "cpu:0:1", "more than one `:`"),
            ("vulkan:", "vulkan:", "`` is not a number"),
            ("--wgpu", "--wgpu", "does not start with a letter"),
            ("cu da", "cu da", "characters other than"),
            ("cuda:99999999999999999999999", "cuda:99999999999999999999999", "too large"),
        ] {
            let err = Selector::parse(value).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{value}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{value}: {msg}");
            assert!(msg.contains(&format!("MANYCHIPS_DEVICES={value:?}")), "{value}: {msg}");
            assert!(msg.contains(why), "{value}: {msg}");
        }
    }

    #[test]
    fn selecting_nothing_lists_what_there_was() {
        let err = pick("npu").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let msg = err.to_string();
        assert!(
            msg.contains("MANYCHIPS_DEVICES=\"npu\" selects none of: cpu:0, vulkan:0"),
            "{msg}"
        );
        assert!(pick("cpu,-cpu").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(value in ".{0,40}") {
            let _ = Selector::parse(&value);
        }

        #[test]
        fn a_printed_selector_parses_back(
            terms in proptest::collection::vec(
                (any::<bool>(), "[a-z][a-z0-9_]{0,6}", proptest::option::of(0usize..64)), 1..6)
        ) {
            let value: Vec<String> = terms.iter().map(|(ex, b, o)| {
                let t = Term { exclude: *ex, backend: b.clone(), ordinal: *o };
                t.to_string()
            }).collect();
            let parsed = Selector::parse(&value.join(",")).unwrap();
            prop_assert_eq!(parsed.terms().len(), terms.len());
            for (t, (ex, b, o)) in parsed.terms().iter().zip(&terms) {
                prop_assert_eq!(t, &Term { exclude: *ex, backend: b.clone(), ordinal: *o });
            }
        }

        #[test]
        fn the_last_matching_term_decides(
            terms in proptest::collection::vec((any::<bool>(), 0usize..3), 1..6), ordinal in 0usize..3
        ) {
            let value: Vec<String> = terms.iter()
                .map(|(ex, o)| format!("{}gpu:{o}", if *ex { "-" } else { "" }))
                .collect();
            let sel = Selector::parse(&value.join(",")).unwrap();
            let want = terms.iter().rev().find(|(_, o)| *o == ordinal)
                .map(|(ex, _)| !ex)
                .unwrap_or(terms[0].0);
            prop_assert_eq!(sel.selects("gpu", ordinal), want);
        }
    }
}
