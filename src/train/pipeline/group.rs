//! A stage's data-parallel group: besides the stage's own device (its lead), helpers that
//! each hold a copy of the stage's layers and take a share of every micro-batch's rows.
//! The lead keeps the optimizer state: once a step the helpers' gradients are added to its
//! own, and before the next the helpers take its updated values.

use std::ops::Range;

use super::Layered;
use super::plan::HelperPlan;
use crate::train::{Grads, Param};
use crate::{DeviceRef, Error, Result};

/// A helper of a stage: its device and its copy of the stage's parameters, in the lead's
/// order.
pub(super) struct Helper {
    pub device: DeviceRef,
    pub label: String,
    pub params: Vec<Param>,
}

/// The helpers `plan` names for the stage of `layers`: helper `k` runs `copies[k]`, whose
/// parameters of those layers take the lead's values (`lead`) on the helper's device.
pub(super) fn helpers<M: Layered>(
    copies: &[M],
    layers: &Range<usize>,
    plan: &[HelperPlan],
    lead: &[Param],
) -> Result<Vec<Helper>> {
    if plan.len() > copies.len() {
        return Err(Error::InvalidArgument {
            op: "Pipeline".into(),
            device: plan[copies.len()].label.clone(),
            detail: format!(
                "the stage of layers {layers:?} has {} helpers and the pipeline {} copies of \
                 the model: pass one copy per helper of the largest group",
                plan.len(),
                copies.len()
            ),
        });
    }
    let mut helpers = Vec::with_capacity(plan.len());
    for (k, (helper, copy)) in plan.iter().zip(copies).enumerate() {
        let params = copy.params_of(layers.clone());
        // Same names in the same order; `take_values` checks shapes and dtypes.
        let same = params.len() == lead.len()
            && params.iter().zip(lead).all(|(p, l)| p.name() == l.name());
        if params.iter().zip(lead).any(|(p, l)| p.id() == l.id()) {
            return Err(Error::InvalidArgument {
                op: "Pipeline".into(),
                device: helper.label.clone(),
                detail: format!(
                    "copy {k} of the model shares parameters with the model (a clone?): build \
                     each copy anew"
                ),
            });
        }
        if !same {
            return Err(Error::InvalidArgument {
                op: "Pipeline".into(),
                device: helper.label.clone(),
                detail: format!(
                    "copy {k} of the model has other parameters in layers {layers:?} than the \
                     model"
                ),
            });
        }
        let helper = Helper { device: helper.device.clone(), label: helper.label.clone(), params };
        take_values(&helper, lead)?;
        helpers.push(helper);
    }
    Ok(helpers)
}

/// The helper's parameters take the lead's values, on its own device.
pub(super) fn take_values(helper: &Helper, lead: &[Param]) -> Result<()> {
    for (mine, theirs) in helper.params.iter().zip(lead) {
        mine.put(theirs.value().to_device(&helper.device)?)?;
    }
    Ok(())
}

/// Adds each helper's gradients (`parts[k]` for helper `k`, under its copy's ids) to
/// `into`, under the lead's ids and on the lead's device (`device`), helper by helper.
pub(super) fn add_gradients(
    helpers: &[Helper],
    lead: &[Param],
    parts: impl IntoIterator<Item = Grads>,
    into: &mut Grads,
    device: &DeviceRef,
) -> Result<()> {
    for (helper, part) in helpers.iter().zip(parts) {
        for (mine, theirs) in helper.params.iter().zip(lead) {
            if let Some(g) = part.get(mine.id()) {
                into.add(theirs.id(), g.to_device(device)?)?;
            }
        }
    }
    Ok(())
}
