//! Buffers: a `VkBuffer` bound to memory from gpu-allocator, and the host's view of it.

use ash::vk;
use gpu_allocator::MemoryLocation;
use gpu_allocator::vulkan::{Allocation, AllocationCreateDesc, AllocationScheme, Allocator};
use manychips_api::Result;

use crate::error::{alloc_error, vk_error};

/// What a buffer is for; decides its usage flags and where its memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A user buffer or a temporary: storage, copy source and destination, device-local.
    Storage,
    /// Host → device staging.
    Upload,
    /// Device → host staging.
    Download,
    /// Uniform parameters written by the host.
    Uniform,
}

impl Kind {
    fn usage(self) -> vk::BufferUsageFlags {
        match self {
            Kind::Storage => {
                vk::BufferUsageFlags::STORAGE_BUFFER
                    | vk::BufferUsageFlags::TRANSFER_SRC
                    | vk::BufferUsageFlags::TRANSFER_DST
            }
            Kind::Upload => vk::BufferUsageFlags::TRANSFER_SRC,
            Kind::Download => vk::BufferUsageFlags::TRANSFER_DST,
            Kind::Uniform => vk::BufferUsageFlags::UNIFORM_BUFFER,
        }
    }

    fn location(self) -> MemoryLocation {
        match self {
            Kind::Storage => MemoryLocation::GpuOnly,
            Kind::Upload | Kind::Uniform => MemoryLocation::CpuToGpu,
            Kind::Download => MemoryLocation::GpuToCpu,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Storage => "manychips storage",
            Kind::Upload => "manychips upload",
            Kind::Download => "manychips download",
            Kind::Uniform => "manychips uniforms",
        }
    }
}

/// One buffer with its memory. Destroyed only through [`Buffer::destroy`].
#[derive(Debug)]
pub(crate) struct Buffer {
    pub(crate) raw: vk::Buffer,
    allocation: Option<Allocation>,
    /// The size of the `VkBuffer`: the requested size rounded up to [`GRANULE`] bytes.
    pub(crate) size: u64,
    /// The size that was asked for.
    pub(crate) requested: usize,
}

/// Buffers are sized in multiples of this many bytes, at least one: the kernels read and
/// write whole `u32` words, some whole `vec4<u32>`s (the kernel library's convention).
pub(crate) const GRANULE: u64 = 16;

/// `bytes` rounded up to a whole number of [`GRANULE`]s, at least one.
pub(crate) fn padded(bytes: u64) -> u64 {
    bytes.div_ceil(GRANULE).max(1) * GRANULE
}

impl Buffer {
    /// A buffer of at least `bytes` bytes (rounded up to [`GRANULE`], so `0` works).
    pub(crate) fn new(
        device: &ash::Device,
        allocator: &mut Allocator,
        label: &str,
        op: &str,
        bytes: u64,
        kind: Kind,
    ) -> Result<Buffer> {
        let size = padded(bytes);
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(kind.usage())
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: a valid create info on a live device; the buffer is destroyed by `destroy`.
        let raw = unsafe { device.create_buffer(&info, None) }
            .map_err(|e| vk_error(op, label, "vkCreateBuffer", e))?;
        // SAFETY: `raw` was just created on `device`.
        let requirements = unsafe { device.get_buffer_memory_requirements(raw) };
        let desc = AllocationCreateDesc {
            name: kind.name(),
            requirements,
            location: kind.location(),
            linear: true,
            allocation_scheme: AllocationScheme::GpuAllocatorManaged,
        };
        let allocation = match allocator.allocate(&desc) {
            Ok(a) => a,
            Err(e) => {
                // SAFETY: `raw` is unused and bound to nothing.
                unsafe { device.destroy_buffer(raw, None) };
                return Err(alloc_error(op, label, size, e));
            }
        };
        // SAFETY: the allocation satisfies the buffer's requirements (it was made from
        // them) and is not bound to anything else.
        let bound =
            unsafe { device.bind_buffer_memory(raw, allocation.memory(), allocation.offset()) };
        if let Err(e) = bound {
            let _ = allocator.free(allocation);
            // SAFETY: `raw` is unused.
            unsafe { device.destroy_buffer(raw, None) };
            return Err(vk_error(op, label, "vkBindBufferMemory", e));
        }
        Ok(Buffer { raw, allocation: Some(allocation), size, requested: bytes as usize })
    }

    /// Destroys the buffer and returns its memory. The caller guarantees the device no
    /// longer uses it.
    pub(crate) fn destroy(mut self, device: &ash::Device, allocator: &mut Allocator) {
        // SAFETY: the caller guarantees no pending work uses the buffer.
        unsafe { device.destroy_buffer(self.raw, None) };
        if let Some(allocation) = self.allocation.take()
            && let Err(e) = allocator.free(allocation)
        {
            tracing::warn!(error = %e, "gpu-allocator could not free a buffer");
        }
    }

    fn host_coherent(&self) -> bool {
        self.allocation.as_ref().is_some_and(|a| {
            a.mapped_ptr().is_some()
                && a.memory_properties().contains(vk::MemoryPropertyFlags::HOST_COHERENT)
        })
    }

    /// The buffer's bytes when its memory is host-visible, coherent and mapped (always for
    /// staging and uniform buffers; for storage buffers on unified-memory devices).
    /// Only valid to read while the device does not write the buffer.
    pub(crate) fn mapped(&self) -> Option<&[u8]> {
        if !self.host_coherent() {
            return None;
        }
        let slice = self.allocation.as_ref()?.mapped_slice()?;
        slice.get(..self.size as usize)
    }

    /// Like [`Buffer::mapped`], writable; only while the device does not use the buffer.
    pub(crate) fn mapped_mut(&mut self) -> Option<&mut [u8]> {
        if !self.host_coherent() {
            return None;
        }
        let size = self.size as usize;
        let slice = self.allocation.as_mut()?.mapped_slice_mut()?;
        slice.get_mut(..size)
    }

    /// True when the host can read and write this buffer directly.
    pub(crate) fn is_mapped(&self) -> bool {
        self.host_coherent()
    }
}
