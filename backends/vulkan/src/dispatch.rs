//! Running a lowered op: checking its dispatches against the device limits, binding buffers
//! (descriptor sets from the frame's pools, parameters in its uniform memory), and recording
//! the dispatches in order, each after a barrier.

use std::collections::HashMap;

use ash::vk;
use manychips_api::{Error, Op, Result};
use manychips_wgsl::{Lowered, Slot};

use crate::VulkanDevice;
use crate::device::State;
use crate::memory::{Buffer, GRANULE, Kind, padded};
use crate::pipeline::Cache;
use crate::queue::{Ctx, Queue};

impl VulkanDevice {
    /// Checks every dispatch of `lowered` against the device limits; returns, per buffer the
    /// op binds, the byte range to bind.
    fn check_lowered(
        &self,
        state: &State,
        op: &Op,
        lowered: &Lowered,
    ) -> Result<HashMap<u64, u64>> {
        let name = op.name();
        let arg = |detail: String| Error::InvalidArgument {
            op: name.clone(),
            device: self.label.clone(),
            detail: format!("{detail}; {}", op.describe()),
        };
        let max = self.features().max_storage_binding;
        let mut ranges = HashMap::new();
        for d in &lowered.dispatches {
            for (axis, (&groups, &limit)) in
                d.workgroups.iter().zip(&self.limits.max_compute_work_group_count).enumerate()
            {
                if groups > limit {
                    return Err(arg(format!(
                        "kernel {} needs {groups} workgroups along axis {axis}, the device allows \
                         {limit}",
                        d.key
                    )));
                }
            }
            let storage_limit = self.limits.max_per_stage_descriptor_storage_buffers;
            if d.bindings.len() as u64 > u64::from(storage_limit) {
                return Err(arg(format!(
                    "kernel {} binds {} storage buffers, the device allows {storage_limit}",
                    d.key,
                    d.bindings.len()
                )));
            }
            let uniform_limit = u64::from(self.limits.max_uniform_buffer_range);
            if d.params.len() as u64 * 4 > uniform_limit {
                return Err(arg(format!(
                    "kernel {} has {} bytes of parameters, the device allows {uniform_limit}",
                    d.key,
                    d.params.len() * 4
                )));
            }
            for b in &d.bindings {
                match b.slot {
                    Slot::Temporary(i) => {
                        let Some(&bytes) = lowered.temporaries.get(i) else {
                            return Err(arg(format!(
                                "kernel {} binds missing temporary {i}",
                                d.key
                            )));
                        };
                        if padded(bytes) > max {
                            return Err(arg(format!(
                                "a temporary of {bytes} bytes exceeds the largest storage binding \
                                 ({max} bytes)"
                            )));
                        }
                    }
                    Slot::Status => {}
                    Slot::Buffer(id) => {
                        let buffer = self.buffer(state, &name, id)?;
                        if buffer.size <= max {
                            ranges.insert(id.index, buffer.size);
                            continue;
                        }
                        // A large buffer is bound only as far as the op's views reach.
                        let needed = op
                            .inputs()
                            .into_iter()
                            .chain(std::iter::once(op.output()))
                            .filter(|v| v.buffer == id)
                            .filter_map(|v| v.byte_end())
                            .max()
                            .unwrap_or(0) as u64;
                        if padded(needed) > max {
                            return Err(arg(format!(
                                "buffer {} is bound up to byte {needed}, past the largest storage \
                                 binding of this device ({max} bytes)",
                                id.index
                            )));
                        }
                        ranges.insert(id.index, max / GRANULE * GRANULE);
                    }
                }
            }
        }
        Ok(ranges)
    }

    pub(crate) fn run_locked(&self, state: &mut State, op: &Op, lowered: &Lowered) -> Result<()> {
        let name = op.name();
        let ranges = self.check_lowered(state, op, lowered)?;
        let State { allocator, buffers, pipelines, queue, status, status_users, .. } = state;
        let allocator = allocator.as_mut().ok_or_else(|| self.internal(&name))?;
        let status = status.as_ref();
        let mut ctx = Ctx { device: &self.device, allocator, label: &self.label, op: &name };
        // Compile first, so that a kernel that does not build leaves nothing half-recorded.
        for d in &lowered.dispatches {
            pipelines.get(
                &self.device,
                &self.label,
                &name,
                self.features().shader_f16,
                self.robust,
                d,
            )?;
        }
        let mut temps: Vec<Buffer> = Vec::with_capacity(lowered.temporaries.len());
        for &bytes in &lowered.temporaries {
            match Buffer::new(&self.device, ctx.allocator, &self.label, &name, bytes, Kind::Storage)
            {
                Ok(b) => temps.push(b),
                Err(e) => {
                    for t in temps {
                        t.destroy(&self.device, ctx.allocator);
                    }
                    return Err(e);
                }
            }
        }
        let bound = Bound { buffers, status, temps: &temps, ranges: &ranges };
        let recorded = self.record(&mut ctx, &bound, pipelines, queue, lowered);
        let flags =
            lowered.dispatches.iter().flat_map(|d| &d.bindings).any(|b| b.slot == Slot::Status);
        if flags && !status_users.contains(&name) {
            status_users.push(name.clone());
        }
        match queue.frame(&ctx) {
            Ok(frame) => {
                for t in temps {
                    frame.keep(t);
                }
            }
            Err(e) => {
                // Nothing can have been recorded without a frame.
                for t in temps {
                    t.destroy(&self.device, ctx.allocator);
                }
                return Err(e);
            }
        }
        recorded?;
        queue.maybe_submit(&mut ctx)
    }

    /// Records the dispatches of `lowered` with the buffers of `bound`.
    fn record(
        &self,
        ctx: &mut Ctx<'_>,
        bound: &Bound<'_>,
        pipelines: &mut Cache,
        queue: &mut Queue,
        lowered: &Lowered,
    ) -> Result<()> {
        let Bound { buffers, status, temps, ranges } = *bound;
        let align = self.limits.min_uniform_buffer_offset_alignment;
        for d in &lowered.dispatches {
            let pipeline = pipelines.get(
                &self.device,
                &self.label,
                ctx.op,
                self.features().shader_f16,
                self.robust,
                d,
            )?;
            if pipeline.storage != d.bindings.len() || pipeline.uniform == d.params.is_empty() {
                return Err(Error::Fault {
                    op: ctx.op.into(),
                    device: self.label.clone(),
                    detail: format!(
                        "kernel {} was compiled with {} storage bindings{}, the dispatch binds {}",
                        d.key,
                        pipeline.storage,
                        if pipeline.uniform { " and parameters" } else { "" },
                        d.bindings.len()
                    ),
                });
            }
            let frame = queue.frame(ctx)?;
            let set = frame.descriptor_set(ctx, pipeline.set_layout)?;
            let mut infos = Vec::with_capacity(d.bindings.len() + 1);
            for b in &d.bindings {
                let (raw, range) = match b.slot {
                    Slot::Buffer(id) => {
                        let buf = buffers.get(&id.index).ok_or_else(|| self.internal(ctx.op))?;
                        (buf.raw, ranges.get(&id.index).copied().unwrap_or(buf.size))
                    }
                    Slot::Temporary(i) => {
                        let buf = temps.get(i).ok_or_else(|| self.internal(ctx.op))?;
                        (buf.raw, buf.size)
                    }
                    Slot::Status => {
                        let buf = status.ok_or_else(|| self.internal(ctx.op))?;
                        (buf.raw, buf.size)
                    }
                };
                infos.push([vk::DescriptorBufferInfo { buffer: raw, offset: 0, range }]);
            }
            if pipeline.uniform {
                let (raw, offset, range) = frame.uniforms(ctx, &d.params, align)?;
                infos.push([vk::DescriptorBufferInfo { buffer: raw, offset, range }]);
            }
            let writes: Vec<vk::WriteDescriptorSet> = infos
                .iter()
                .enumerate()
                .map(|(i, info)| {
                    let ty = if pipeline.uniform && i == pipeline.storage {
                        vk::DescriptorType::UNIFORM_BUFFER
                    } else {
                        vk::DescriptorType::STORAGE_BUFFER
                    };
                    vk::WriteDescriptorSet::default()
                        .dst_set(set)
                        .dst_binding(i as u32)
                        .descriptor_type(ty)
                        .buffer_info(info)
                })
                .collect();
            // SAFETY: the set was just allocated and is not in use; every buffer is live.
            unsafe { self.device.update_descriptor_sets(&writes, &[]) };
            frame.dispatch(&self.device, pipeline.raw, pipeline.layout, set, d.workgroups);
        }
        Ok(())
    }
}

/// The buffers a lowered op's dispatches may bind.
struct Bound<'a> {
    buffers: &'a HashMap<u64, Buffer>,
    status: Option<&'a Buffer>,
    temps: &'a [Buffer],
    ranges: &'a HashMap<u64, u64>,
}
