//! Buffer memory: 8-byte aligned storage, a pool of freed storages, and kernel scratch.
//!
//! Storage is a boxed `[u64]`, so a typed view of any dtype (at most 8 bytes wide) is a plain,
//! aligned `bytemuck` cast. Freed storages are kept per exact size and handed out again:
//! a fresh allocation is zero pages that fault in on first touch, which costs several times
//! the op itself on a streaming kernel.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

/// The memory of one buffer.
#[derive(Debug)]
pub(crate) struct Storage {
    pub words: Box<[u64]>,
    /// The size the caller asked for; `words` may be up to 7 bytes longer.
    pub bytes: usize,
}

impl Storage {
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.bytes]
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.bytes]
    }
}

/// Allocates `words` zeroed words, or `None` when the allocator refuses.
pub(crate) fn try_alloc_words(words: usize) -> Option<Box<[u64]>> {
    if words == 0 {
        return Some(Box::default());
    }
    let layout = std::alloc::Layout::array::<u64>(words).ok()?;
    // Zeroed memory straight from the allocator: large blocks come from fresh zero pages, so
    // nothing is touched (or faulted in) here, unlike `vec.resize(n, 0)`.
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<u64>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `[u64; words]` (the
    // layout `Box<[u64]>` frees with) and all-zero bytes are valid `u64`s.
    Some(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, words)) })
}

/// Cached storages of one size, each with the clock value of its free, oldest first.
type SizeClass = VecDeque<(u64, Box<[u64]>)>;

/// Freed storages by exact word count, least recently freed evicted first once the cached
/// total passes `cap` bytes.
#[derive(Debug)]
pub(crate) struct BufferPool {
    lists: FxHashMap<usize, SizeClass>,
    cached_bytes: usize,
    cap: usize,
    clock: u64,
}

impl BufferPool {
    pub fn new(cap: usize) -> Self {
        BufferPool { lists: FxHashMap::default(), cached_bytes: 0, cap, clock: 0 }
    }

    /// A cached storage of exactly `words` words (most recently freed, so likely warm).
    pub fn take(&mut self, words: usize) -> Option<Box<[u64]>> {
        let list = self.lists.get_mut(&words)?;
        let (_, storage) = list.pop_back()?;
        if list.is_empty() {
            self.lists.remove(&words);
        }
        self.cached_bytes -= words * 8;
        Some(storage)
    }

    pub fn give(&mut self, storage: Box<[u64]>) {
        let bytes = storage.len() * 8;
        if bytes == 0 || bytes > self.cap {
            return;
        }
        while self.cached_bytes + bytes > self.cap && self.evict_oldest() {}
        self.clock += 1;
        self.lists.entry(storage.len()).or_default().push_back((self.clock, storage));
        self.cached_bytes += bytes;
    }

    /// Drops everything cached (before retrying an allocation that failed).
    pub fn clear(&mut self) {
        self.lists.clear();
        self.cached_bytes = 0;
    }

    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    fn evict_oldest(&mut self) -> bool {
        // Each list is in free order, so the oldest entry overall is the oldest front.
        let oldest = self
            .lists
            .iter()
            .filter_map(|(&words, list)| list.front().map(|(stamp, _)| (*stamp, words)))
            .min();
        let Some((_, words)) = oldest else { return false };
        if let Some(list) = self.lists.get_mut(&words) {
            list.pop_front();
            if list.is_empty() {
                self.lists.remove(&words);
            }
            self.cached_bytes -= words * 8;
        }
        true
    }
}

/// Scratch space that kernels reuse from op to op (f16/bf16 staging, made-contiguous
/// inputs), owned by the worker so steady-state ops allocate nothing.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    f32s: Vec<f32>,
}

/// Scratch beyond this is released after the op that needed it, not kept for the next.
const SCRATCH_KEEP_BYTES: usize = 256 << 20;

impl Scratch {
    /// `len` f32s of unspecified contents, or `None` when memory runs out.
    pub fn f32s(&mut self, len: usize) -> Option<&mut [f32]> {
        if self.f32s.len() < len {
            self.f32s.try_reserve_exact(len - self.f32s.len()).ok()?;
            self.f32s.resize(len, 0.0);
        }
        Some(&mut self.f32s[..len])
    }

    /// Releases oversized scratch once an unusually large op is done.
    pub fn trim(&mut self) {
        if self.f32s.capacity() * 4 > SCRATCH_KEEP_BYTES {
            self.f32s = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_exact_sizes_and_evicts_oldest() {
        let mut pool = BufferPool::new(64);
        pool.give(vec![1u64; 4].into_boxed_slice()); // 32 bytes
        pool.give(vec![2u64; 2].into_boxed_slice()); // 16 bytes
        assert!(pool.take(3).is_none());
        let got = pool.take(4).map(|b| b[0]);
        assert_eq!(got, Some(1));
        pool.give(vec![3u64; 4].into_boxed_slice());
        pool.give(vec![4u64; 4].into_boxed_slice()); // 16 + 32 + 32 > 64: the 2-word one goes
        assert_eq!(pool.cached_bytes(), 64);
        assert!(pool.take(2).is_none());
        assert_eq!(pool.take(4).map(|b| b[0]), Some(4));
        pool.give(vec![0u64; 100].into_boxed_slice()); // larger than the cap: not kept
        assert_eq!(pool.cached_bytes(), 32);
    }
}
