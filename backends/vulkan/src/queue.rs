//! Command recording, batching and completion: one compute queue per device.
//!
//! Work is recorded into the current [`Frame`] (a command buffer with the descriptor pools,
//! uniform memory and transient buffers it uses). A frame is submitted with its own fence at
//! once when the device is idle, when it grows large, or when the host must wait (`read`,
//! `synchronize`); while the device is busy, work accumulates into one batch. Frames
//! complete in submission order: a fence signal covers every earlier submission on the
//! queue, so retiring the oldest frames first is exact. Buffers that work may still use
//! (temporaries, staging, freed user buffers) travel with the frame and are destroyed when
//! it retires.

use std::collections::VecDeque;

use ash::vk;
use gpu_allocator::vulkan::Allocator;
use manychips_api::{Error, Result};

use crate::error::vk_error;
use crate::memory::{Buffer, Kind};

/// Submit the current frame once it holds this many commands.
const MAX_COMMANDS: usize = 256;
/// ... or once it has staged this many bytes through temporary host buffers.
const MAX_STAGED: u64 = 256 << 20;
/// At most this many frames in flight; the oldest is waited for before another is submitted.
const MAX_IN_FLIGHT: usize = 3;
/// Uniform memory is handed out from blocks of this size.
const UNIFORM_BLOCK: u64 = 64 << 10;
/// Descriptor sets per pool.
const SETS_PER_POOL: u32 = 256;
/// How long a wait for the device may take before it is reported as hung.
const WAIT_TIMEOUT_NS: u64 = 300_000_000_000;

/// The borrowed context every queue call needs.
pub(crate) struct Ctx<'a> {
    pub(crate) device: &'a ash::Device,
    pub(crate) allocator: &'a mut Allocator,
    pub(crate) label: &'a str,
    pub(crate) op: &'a str,
}

impl Ctx<'_> {
    fn vk(&self, what: &str, e: vk::Result) -> Error {
        vk_error(self.op, self.label, what, e)
    }
}

/// One command buffer and everything its work uses.
#[derive(Debug)]
pub(crate) struct Frame {
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    descriptor_pools: Vec<vk::DescriptorPool>,
    descriptor_cursor: usize,
    uniforms: Vec<Buffer>,
    /// (block, byte offset) of the next free uniform memory.
    uniform_cursor: (usize, u64),
    /// Destroyed when the frame's work is done.
    garbage: Vec<Buffer>,
    commands: usize,
    staged: u64,
    /// Whether the command buffer is in the recording state.
    recording: bool,
}

impl Frame {
    fn new(ctx: &Ctx<'_>, family: u32) -> Result<Frame> {
        let info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(family)
            .flags(vk::CommandPoolCreateFlags::TRANSIENT);
        // SAFETY: valid create info on a live device.
        let pool = unsafe { ctx.device.create_command_pool(&info, None) }
            .map_err(|e| ctx.vk("vkCreateCommandPool", e))?;
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: `pool` is live.
        let cmd = match unsafe { ctx.device.allocate_command_buffers(&alloc) } {
            Ok(b) if !b.is_empty() => b[0],
            other => {
                // SAFETY: the pool is used by nothing.
                unsafe { ctx.device.destroy_command_pool(pool, None) };
                let e = other.err().unwrap_or(vk::Result::ERROR_UNKNOWN);
                return Err(ctx.vk("vkAllocateCommandBuffers", e));
            }
        };
        // SAFETY: valid create info on a live device.
        let fence = match unsafe { ctx.device.create_fence(&vk::FenceCreateInfo::default(), None) }
        {
            Ok(f) => f,
            Err(e) => {
                // SAFETY: the pool is used by nothing.
                unsafe { ctx.device.destroy_command_pool(pool, None) };
                return Err(ctx.vk("vkCreateFence", e));
            }
        };
        Ok(Frame {
            pool,
            cmd,
            fence,
            descriptor_pools: Vec::new(),
            descriptor_cursor: 0,
            uniforms: Vec::new(),
            uniform_cursor: (0, 0),
            garbage: Vec::new(),
            commands: 0,
            staged: 0,
            recording: false,
        })
    }

    fn begin(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let info = vk::CommandBufferBeginInfo::default()
            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: the frame is not in flight (fresh or retired), so its buffer may be reset
        // and re-recorded.
        unsafe {
            ctx.device
                .reset_command_pool(self.pool, vk::CommandPoolResetFlags::empty())
                .map_err(|e| ctx.vk("vkResetCommandPool", e))?;
            ctx.device
                .begin_command_buffer(self.cmd, &info)
                .map_err(|e| ctx.vk("vkBeginCommandBuffer", e))?;
        }
        self.recording = true;
        Ok(())
    }

    /// Makes every earlier transfer or shader write (in this or an earlier submission)
    /// visible to every later transfer or shader access.
    fn barrier(&mut self, device: &ash::Device) {
        let stages = vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER;
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(
                vk::AccessFlags::SHADER_READ
                    | vk::AccessFlags::SHADER_WRITE
                    | vk::AccessFlags::TRANSFER_READ
                    | vk::AccessFlags::TRANSFER_WRITE
                    | vk::AccessFlags::UNIFORM_READ,
            )];
        // SAFETY: the command buffer is recording (callers go through `Queue::frame`).
        unsafe {
            device.cmd_pipeline_barrier(
                self.cmd,
                stages,
                stages,
                vk::DependencyFlags::empty(),
                &barrier,
                &[],
                &[],
            )
        };
    }

    /// Records a buffer-to-buffer copy after a barrier.
    pub(crate) fn copy(
        &mut self,
        device: &ash::Device,
        src: vk::Buffer,
        src_offset: u64,
        dst: vk::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        self.barrier(device);
        let region = [vk::BufferCopy { src_offset, dst_offset, size: bytes }];
        // SAFETY: recording; both buffers are live until this frame retires (callers keep
        // them in the device table or in this frame's garbage) and the ranges were checked.
        unsafe { device.cmd_copy_buffer(self.cmd, src, dst, &region) };
        self.commands += 1;
    }

    /// Records zeroing `bytes` (a multiple of 4) from the start of `buffer`, after a barrier.
    pub(crate) fn zero(&mut self, device: &ash::Device, buffer: vk::Buffer, bytes: u64) {
        self.barrier(device);
        // SAFETY: recording; the buffer is live until this frame retires and `bytes` is a
        // multiple of 4 within it.
        unsafe { device.cmd_fill_buffer(self.cmd, buffer, 0, bytes, 0) };
        self.commands += 1;
    }

    /// Records a dispatch after a barrier.
    pub(crate) fn dispatch(
        &mut self,
        device: &ash::Device,
        pipeline: vk::Pipeline,
        layout: vk::PipelineLayout,
        set: vk::DescriptorSet,
        groups: [u32; 3],
    ) {
        self.barrier(device);
        // SAFETY: recording; the pipeline, layout and set are live until this frame retires.
        unsafe {
            device.cmd_bind_pipeline(self.cmd, vk::PipelineBindPoint::COMPUTE, pipeline);
            device.cmd_bind_descriptor_sets(
                self.cmd,
                vk::PipelineBindPoint::COMPUTE,
                layout,
                0,
                &[set],
                &[],
            );
            device.cmd_dispatch(self.cmd, groups[0], groups[1], groups[2]);
        }
        self.commands += 1;
    }

    /// A descriptor set of `layout` from this frame's pools (a new pool when they are full).
    pub(crate) fn descriptor_set(
        &mut self,
        ctx: &Ctx<'_>,
        layout: vk::DescriptorSetLayout,
    ) -> Result<vk::DescriptorSet> {
        let layouts = [layout];
        loop {
            let fresh = self.descriptor_cursor == self.descriptor_pools.len();
            if fresh {
                let sizes = [
                    vk::DescriptorPoolSize {
                        ty: vk::DescriptorType::STORAGE_BUFFER,
                        descriptor_count: SETS_PER_POOL * 8,
                    },
                    vk::DescriptorPoolSize {
                        ty: vk::DescriptorType::UNIFORM_BUFFER,
                        descriptor_count: SETS_PER_POOL,
                    },
                ];
                let info = vk::DescriptorPoolCreateInfo::default()
                    .max_sets(SETS_PER_POOL)
                    .pool_sizes(&sizes);
                // SAFETY: valid create info on a live device.
                let pool = unsafe { ctx.device.create_descriptor_pool(&info, None) }
                    .map_err(|e| ctx.vk("vkCreateDescriptorPool", e))?;
                self.descriptor_pools.push(pool);
            }
            let pool = self.descriptor_pools[self.descriptor_cursor];
            let info = vk::DescriptorSetAllocateInfo::default()
                .descriptor_pool(pool)
                .set_layouts(&layouts);
            // SAFETY: the pool and layout are live; the set is freed by resetting the pool.
            match unsafe { ctx.device.allocate_descriptor_sets(&info) } {
                Ok(sets) if !sets.is_empty() => return Ok(sets[0]),
                Ok(_)
                | Err(vk::Result::ERROR_OUT_OF_POOL_MEMORY | vk::Result::ERROR_FRAGMENTED_POOL) => {
                    // This pool is full: move on to the next (or a new) one. A new pool that
                    // cannot hold one set never will.
                    if fresh {
                        let e = vk::Result::ERROR_OUT_OF_POOL_MEMORY;
                        return Err(ctx.vk("vkAllocateDescriptorSets", e));
                    }
                    self.descriptor_cursor += 1;
                }
                Err(e) => return Err(ctx.vk("vkAllocateDescriptorSets", e)),
            }
        }
    }

    /// Copies `words` into this frame's uniform memory: (buffer, offset, range).
    pub(crate) fn uniforms(
        &mut self,
        ctx: &mut Ctx<'_>,
        words: &[u32],
        align: u64,
    ) -> Result<(vk::Buffer, u64, u64)> {
        let bytes: &[u8] = bytemuck::cast_slice(words);
        // Uniform blocks are read in 16-byte units: pad the range.
        let range = (bytes.len() as u64).div_ceil(16) * 16;
        let align = align.max(16);
        if range > UNIFORM_BLOCK {
            return Err(Error::InvalidArgument {
                op: ctx.op.into(),
                device: ctx.label.into(),
                detail: format!(
                    "{} bytes of kernel parameters exceed {UNIFORM_BLOCK}",
                    bytes.len()
                ),
            });
        }
        let (mut block, mut offset) = self.uniform_cursor;
        offset = offset.div_ceil(align) * align;
        if block < self.uniforms.len() && offset + range > UNIFORM_BLOCK {
            block += 1;
            offset = 0;
        }
        if block >= self.uniforms.len() {
            let buf = Buffer::new(
                ctx.device,
                ctx.allocator,
                ctx.label,
                ctx.op,
                UNIFORM_BLOCK,
                Kind::Uniform,
            )?;
            self.uniforms.push(buf);
            block = self.uniforms.len() - 1;
        }
        let buf = &mut self.uniforms[block];
        let raw = buf.raw;
        let Some(mapped) = buf.mapped_mut() else {
            return Err(Error::Fault {
                op: ctx.op.into(),
                device: ctx.label.into(),
                detail: "uniform memory is not host-visible".into(),
            });
        };
        let start = offset as usize;
        mapped[start..start + bytes.len()].copy_from_slice(bytes);
        mapped[start + bytes.len()..start + range as usize].fill(0);
        self.uniform_cursor = (block, offset + range);
        Ok((raw, offset, range))
    }

    /// Keeps `buffer` alive until this frame's work is done, then destroys it.
    pub(crate) fn keep(&mut self, buffer: Buffer) {
        self.garbage.push(buffer);
    }

    /// Counts bytes staged through host buffers, for the submit threshold.
    pub(crate) fn staged(&mut self, bytes: u64) {
        self.staged += bytes;
    }

    /// Releases what the finished work used, so the frame can be recorded again.
    fn recycle(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        for buf in self.garbage.drain(..) {
            buf.destroy(ctx.device, ctx.allocator);
        }
        for &pool in &self.descriptor_pools {
            // SAFETY: the frame's work is complete, so no set of the pool is in use.
            unsafe {
                ctx.device.reset_descriptor_pool(pool, vk::DescriptorPoolResetFlags::empty())
            }
            .map_err(|e| ctx.vk("vkResetDescriptorPool", e))?;
        }
        // SAFETY: the fence is signalled and not waited on by anyone else.
        unsafe { ctx.device.reset_fences(&[self.fence]) }
            .map_err(|e| ctx.vk("vkResetFences", e))?;
        self.descriptor_cursor = 0;
        self.uniform_cursor = (0, 0);
        self.commands = 0;
        self.staged = 0;
        Ok(())
    }

    /// Destroys the frame; its work must be complete (or never submitted).
    fn destroy(mut self, device: &ash::Device, allocator: &mut Allocator) {
        for buf in self.garbage.drain(..).chain(self.uniforms.drain(..)) {
            buf.destroy(device, allocator);
        }
        // SAFETY: nothing of this frame is in use any more; each object is destroyed once.
        unsafe {
            for &pool in &self.descriptor_pools {
                device.destroy_descriptor_pool(pool, None);
            }
            device.destroy_fence(self.fence, None);
            device.destroy_command_pool(self.pool, None);
        }
    }
}

/// The device's queue and its frames.
#[derive(Debug)]
pub(crate) struct Queue {
    raw: vk::Queue,
    family: u32,
    recording: Option<Frame>,
    in_flight: VecDeque<Frame>,
    spare: Vec<Frame>,
}

impl Queue {
    pub(crate) fn new(raw: vk::Queue, family: u32) -> Queue {
        Queue { raw, family, recording: None, in_flight: VecDeque::new(), spare: Vec::new() }
    }

    /// The frame being recorded, started if there is none.
    pub(crate) fn frame(&mut self, ctx: &Ctx<'_>) -> Result<&mut Frame> {
        if self.recording.is_none() {
            let mut frame = match self.spare.pop() {
                Some(f) => f,
                None => Frame::new(ctx, self.family)?,
            };
            if let Err(e) = frame.begin(ctx) {
                self.spare.push(frame);
                return Err(e);
            }
            self.recording = Some(frame);
        }
        self.recording.as_mut().ok_or_else(|| Error::Fault {
            op: ctx.op.into(),
            device: ctx.label.into(),
            detail: "no command buffer to record into".into(),
        })
    }

    /// True when no work is recorded or in flight (after retiring what is done), so the host
    /// may touch mapped device memory directly.
    pub(crate) fn idle(&mut self, ctx: &mut Ctx<'_>) -> Result<bool> {
        self.retire(ctx, false)?;
        let nothing_recorded = self.recording.as_ref().is_none_or(|f| f.commands == 0);
        Ok(nothing_recorded && self.in_flight.is_empty())
    }

    /// Submits the current frame when the device has nothing else to do (so it starts at
    /// once, while the host goes on), or when the frame has grown past the batching
    /// thresholds. While the device is busy, work accumulates into one batch.
    pub(crate) fn maybe_submit(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        let Some(frame) = &self.recording else { return Ok(()) };
        if frame.commands == 0 {
            return Ok(());
        }
        let big = frame.commands >= MAX_COMMANDS || frame.staged >= MAX_STAGED;
        if big {
            return self.submit(ctx);
        }
        self.retire(ctx, false)?;
        if self.in_flight.is_empty() { self.submit(ctx) } else { Ok(()) }
    }

    /// Submits the current frame (if any) with its fence.
    pub(crate) fn submit(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        let Some(mut frame) = self.recording.take() else { return Ok(()) };
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            if let Err(e) = self.retire_one(ctx, true) {
                self.recording = Some(frame);
                return Err(e);
            }
        }
        frame.recording = false;
        // SAFETY: the buffer is recording; it is ended once.
        if let Err(e) = unsafe { ctx.device.end_command_buffer(frame.cmd) } {
            // The buffer is unusable; drop its work but keep the buffers alive until the
            // queue is idle.
            self.spare.push(frame);
            return Err(ctx.vk("vkEndCommandBuffer", e));
        }
        let cmds = [frame.cmd];
        let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
        // SAFETY: the command buffer is executable and the fence unsignalled; the frame and
        // everything it references stay alive until the fence is seen signalled.
        if let Err(e) = unsafe { ctx.device.queue_submit(self.raw, &submit, frame.fence) } {
            self.spare.push(frame);
            return Err(ctx.vk("vkQueueSubmit", e));
        }
        self.in_flight.push_back(frame);
        Ok(())
    }

    /// Retires the oldest in-flight frame if it is done (or waits for it when `wait`);
    /// returns whether one was retired.
    fn retire_one(&mut self, ctx: &mut Ctx<'_>, wait: bool) -> Result<bool> {
        let Some(front) = self.in_flight.front() else { return Ok(false) };
        let fence = front.fence;
        let done = if wait {
            // SAFETY: the fence belongs to a submitted frame.
            match unsafe { ctx.device.wait_for_fences(&[fence], true, WAIT_TIMEOUT_NS) } {
                Ok(()) => true,
                Err(vk::Result::TIMEOUT) => {
                    return Err(Error::Timeout {
                        op: ctx.op.into(),
                        device: ctx.label.into(),
                        detail: format!(
                            "queued work did not finish within {} s",
                            WAIT_TIMEOUT_NS / 1_000_000_000
                        ),
                    });
                }
                Err(e) => return Err(ctx.vk("vkWaitForFences", e)),
            }
        } else {
            // SAFETY: as above.
            unsafe { ctx.device.get_fence_status(fence) }
                .map_err(|e| ctx.vk("vkGetFenceStatus", e))?
        };
        if !done {
            return Ok(false);
        }
        if let Some(mut frame) = self.in_flight.pop_front() {
            let recycled = frame.recycle(ctx);
            self.spare.push(frame);
            recycled?;
        }
        Ok(true)
    }

    /// Retires every finished frame; with `wait`, waits for all of them.
    pub(crate) fn retire(&mut self, ctx: &mut Ctx<'_>, wait: bool) -> Result<()> {
        while self.retire_one(ctx, wait)? {}
        Ok(())
    }

    /// Submits what is recorded and waits until the queue has done everything.
    pub(crate) fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        self.submit(ctx)?;
        self.retire(ctx, true)
    }

    /// Destroys every frame; the device must be idle.
    pub(crate) fn destroy(&mut self, device: &ash::Device, allocator: &mut Allocator) {
        let frames = self.recording.take().into_iter().chain(self.in_flight.drain(..));
        for frame in frames.chain(self.spare.drain(..)) {
            frame.destroy(device, allocator);
        }
    }
}

/// Destroys a buffer that queued work may still use, after a failure: with the current
/// frame when there is one, else once the device is idle.
pub(crate) fn discard(ctx: &mut Ctx<'_>, queue: &mut Queue, buffer: Buffer) {
    match queue.frame(ctx) {
        Ok(frame) => frame.keep(buffer),
        Err(_) => {
            // SAFETY: a live device; once idle, nothing uses the buffer.
            let _ = unsafe { ctx.device.device_wait_idle() };
            buffer.destroy(ctx.device, ctx.allocator);
        }
    }
}
