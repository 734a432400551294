//! Helpers shared by the integration tests.

use manychips::{BufferId, Device, DeviceInfo, DeviceRef, MemoryInfo, Op, Result};

/// A device that forwards every call to `inner` but describes itself with `info`: a chip with
/// fewer dtypes, or one that claims another backend's identity. It counts the reads it
/// forwards (each one waits for everything queued before it).
#[derive(Debug)]
pub struct Posing {
    pub info: DeviceInfo,
    pub inner: DeviceRef,
    pub reads: std::sync::atomic::AtomicUsize,
}

impl Posing {
    pub fn new(info: DeviceInfo, inner: DeviceRef) -> Posing {
        Posing { info, inner, reads: Default::default() }
    }
}

impl Device for Posing {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn memory(&self) -> Result<MemoryInfo> {
        self.inner.memory()
    }
    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        self.inner.alloc(bytes)
    }
    fn free(&self, buffer: BufferId) -> Result<()> {
        self.inner.free(buffer)
    }
    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()> {
        self.inner.write(dst, offset, src)
    }
    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read(src, offset, dst)
    }
    fn copy(&self, src: BufferId, so: usize, dst: BufferId, d: usize, bytes: usize) -> Result<()> {
        self.inner.copy(src, so, dst, d, bytes)
    }
    fn run(&self, op: &Op) -> Result<()> {
        self.inner.run(op)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
}
