//! The templating step that specialises a WGSL source: named sections (`//# name` starts a
//! section that runs to the next marker) and `{{KEY}}` placeholders. Every placeholder must be
//! given a value and every value must be used, so a typo is an error, not a broken shader.

use manychips_api::{Error, Result};

fn err(detail: String) -> Error {
    Error::InvalidArgument { op: "template".into(), device: "wgsl".into(), detail }
}

/// The text of section `name` of `source` (without its marker line).
pub(crate) fn section<'a>(source: &'a str, name: &str) -> Result<&'a str> {
    let marker = format!("//# {name}\n");
    let start = source
        .find(&marker)
        .ok_or_else(|| err(format!("no section `{name}` in the kernel source")))?
        + marker.len();
    let rest = &source[start..];
    let end = rest.find("\n//# ").map_or(rest.len(), |e| e + 1);
    Ok(&rest[..end])
}

/// `text` with every `{{KEY}}` replaced by its value.
pub(crate) fn fill(text: &str, subs: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(text.len() + 256);
    let mut rest = text;
    let mut used = vec![false; subs.len()];
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| err("an unclosed `{{` placeholder".into()))?;
        let key = &after[..close];
        let (i, (_, value)) = subs
            .iter()
            .enumerate()
            .find(|(_, (k, _))| *k == key)
            .ok_or_else(|| err(format!("no value for placeholder `{{{{{key}}}}}`")))?;
        used[i] = true;
        out.push_str(value);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(err(format!("placeholder `{}` does not occur in the template", subs[i].0)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_placeholder() {
        let got = fill("a {{X}} b {{Y}} {{X}}", &[("X", "1"), ("Y", "two")]);
        assert_eq!(got.ok().as_deref(), Some("a 1 b two 1"));
    }

    #[test]
    fn refuses_missing_and_unused_values() {
        assert!(fill("{{X}}", &[]).is_err());
        assert!(fill("x", &[("X", "1")]).is_err());
        assert!(fill("{{X", &[("X", "1")]).is_err());
    }

    #[test]
    fn finds_sections() {
        let src = "head\n//# a\nfirst\nline\n//# b\nsecond\n";
        assert_eq!(section(src, "a").ok(), Some("first\nline\n"));
        assert_eq!(section(src, "b").ok(), Some("second\n"));
        assert!(section(src, "c").is_err());
    }
}
