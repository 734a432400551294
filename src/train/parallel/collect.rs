//! The gradients of one step's rows as they arrive from the shares still running, handed
//! over bucket by bucket as soon as every row's part of a bucket is in.
//!
//! A parameter's gradient over the rows is complete when each row is *settled* for it: a
//! share covering the row sent that parameter's gradient, or the share ended without one
//! (the loss did not use it). A share that fails after it sent some gradients keeps them,
//! since they were final; the rows it had are re-run with those parameters skipped, so
//! nothing is counted twice and a bucket already handed over is never touched again.

use std::ops::Range;

use super::super::{Grads, Param};
use crate::{Error, Result, Tensor};

pub(super) struct Collector<'a> {
    params: &'a [Param],
    rows: usize,
    /// Per parameter: (first row, gradient) of each part received.
    parts: Vec<Vec<(usize, Tensor)>>,
    /// Per parameter: rows whose part is known.
    settled: Vec<usize>,
    buckets: &'a [Range<usize>],
    next: usize,
    summed: Grads,
}

/// Called with each bucket's master parameters and the summed gradients (by master id), in
/// the order of the buckets; it may replace them (an all-reduce across processes does).
pub(super) type OnBucket<'f> = dyn FnMut(&[Param], &mut Grads) -> Result<()> + 'f;

impl<'a> Collector<'a> {
    pub(super) fn new(params: &'a [Param], rows: usize, buckets: &'a [Range<usize>]) -> Self {
        Collector {
            params,
            rows,
            parts: vec![Vec::new(); params.len()],
            settled: vec![0; params.len()],
            buckets,
            next: 0,
            summed: Grads::default(),
        }
    }

    /// A share over `rows` sent parameter `param`'s gradient.
    pub(super) fn deliver(&mut self, param: usize, rows: &Range<usize>, grad: Tensor) {
        self.parts[param].push((rows.start, grad));
        self.settled[param] += rows.len();
    }

    /// A share over `rows` ended: the parameters it neither sent nor was told to skip got
    /// no gradient from those rows.
    pub(super) fn share_ended(&mut self, rows: &Range<usize>, sent_or_skipped: &[bool]) {
        for (settled, _) in self.settled.iter_mut().zip(sent_or_skipped).filter(|(_, s)| !**s) {
            *settled += rows.len();
        }
    }

    /// Hands over, in order, every bucket whose parameters are complete.
    pub(super) fn flush(&mut self, on_bucket: &mut OnBucket) -> Result<()> {
        while let Some(bucket) = self.buckets.get(self.next) {
            if !bucket.clone().all(|p| self.settled[p] >= self.rows) {
                return Ok(());
            }
            self.next += 1;
            let mut grads = Grads::default();
            for p in bucket.clone() {
                self.sum_into(p, &mut grads)?;
            }
            on_bucket(&self.params[bucket.clone()], &mut grads)?;
            for p in &self.params[bucket.clone()] {
                if let Some(g) = grads.remove(p.id()) {
                    self.summed.insert(p.id(), g);
                }
            }
        }
        Ok(())
    }

    /// Every share has ended: the remaining buckets, then the parameters in none.
    pub(super) fn finish(mut self, on_bucket: &mut OnBucket) -> Result<Grads> {
        self.flush(on_bucket)?;
        if let Some(bucket) = self.buckets.get(self.next) {
            let p = bucket.clone().find(|&p| self.settled[p] < self.rows).unwrap_or(bucket.start);
            return Err(Error::Fault {
                op: "data-parallel gradients".into(),
                device: "-".into(),
                detail: format!(
                    "every share ended but parameter {} has {} of {} rows",
                    self.params[p].name(),
                    self.settled[p],
                    self.rows
                ),
            });
        }
        let in_buckets: Vec<bool> =
            (0..self.params.len()).map(|p| self.buckets.iter().any(|b| b.contains(&p))).collect();
        let mut summed = std::mem::take(&mut self.summed);
        for (p, _) in in_buckets.iter().enumerate().filter(|(_, b)| !**b) {
            self.sum_into(p, &mut summed)?;
        }
        Ok(summed)
    }

    /// Parameter `p`'s parts added in row order, so the sum does not depend on which
    /// device computed which rows or which answered first.
    fn sum_into(&mut self, p: usize, grads: &mut Grads) -> Result<()> {
        let mut parts = std::mem::take(&mut self.parts[p]);
        parts.sort_by_key(|(start, _)| *start);
        for (_, g) in parts {
            grads.add(self.params[p].id(), g)?;
        }
        Ok(())
    }
}
