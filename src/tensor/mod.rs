//! `Tensor`: a typed, strided view of a buffer that lives on one device.
//!
//! Tensors are immutable values: every op allocates its output on the operands' device and
//! enqueues one [`Op`](crate::Op) there. Views (transpose, narrow, broadcast, reshape of a
//! contiguous tensor) share the buffer and move no data. The buffer is freed when the last
//! tensor using it drops.

mod arith;
mod attention;
mod axis;
pub use axis::{Axes, Axis, NewShape, broadcast_shapes};
pub use ops::Ties;
mod fused;
pub(crate) use fused::programs;
mod ops;
mod scan;
mod sort;
mod views;

use std::fmt;
use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{BufferId, DType, DeviceRef, Element, Error, Layout, Op, Result, Shape, View};

/// A buffer owned by one device, freed when the last tensor using it drops.
struct Storage {
    device: DeviceRef,
    buffer: BufferId,
    /// The smallest and largest value of an index-typed buffer whose contents came from the
    /// host (`from_slice`), so index ops can check their indices without reading them back:
    /// a read waits for everything queued on the device, which would stall the step at every
    /// gather. The dtype is the one they were written as: a [`Tensor::bitcast`] view of the
    /// buffer as another dtype must not use them.
    host_index_range: Option<(DType, i64, i64)>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Err(err) = self.device.free(self.buffer) {
            tracing::warn!(%err, "freeing a tensor buffer failed");
        }
    }
}

/// An n-dimensional array on one device. Cloning is cheap (it shares the buffer).
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
    dtype: DType,
}

impl Tensor {
    // ----- creation -------------------------------------------------------------------

    /// Copies `data` (row-major) to `device` as a tensor of `shape`.
    pub fn from_slice<T: Element>(
        data: &[T],
        shape: impl Into<Shape>,
        device: &DeviceRef,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::Shape {
                op: "from_slice".into(),
                device: label(device),
                detail: format!(
                    "{} elements of {} do not fill shape {shape} ({} elements)",
                    data.len(),
                    T::DTYPE,
                    shape.numel()
                ),
            });
        }
        let mut out = Tensor::uninit("from_slice", shape, T::DTYPE, device)?;
        if !data.is_empty() {
            device.write(out.storage.buffer, 0, bytemuck::cast_slice(data))?;
        }
        if let Some(storage) = Arc::get_mut(&mut out.storage) {
            storage.host_index_range = index_range(data);
        }
        Ok(out)
    }

    /// Copies `data` to `device`, rounding every value to `dtype` like `Cast`.
    pub fn from_f64(
        data: &[f64],
        shape: impl Into<Shape>,
        dtype: DType,
        device: &DeviceRef,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::Shape {
                op: "from_f64".into(),
                device: label(device),
                detail: format!(
                    "{} values do not fill shape {shape} ({} elements)",
                    data.len(),
                    shape.numel()
                ),
            });
        }
        Tensor::from_bytes(&encode(data, dtype), shape, dtype, device)
    }

    /// A tensor with every element set to `value` (converted to `dtype` like `Cast`).
    pub fn full(
        value: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &DeviceRef,
    ) -> Result<Tensor> {
        let out = Tensor::uninit("full", shape.into(), dtype, device)?;
        out.enqueue(Op::Fill { out: out.view(), value })?;
        Ok(out)
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: &DeviceRef) -> Result<Tensor> {
        Tensor::full(0.0, shape, dtype, device)
    }

    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: &DeviceRef) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    /// Uniform samples in `[low, high)`, reproducible from `seed` on every device.
    pub fn rand(
        low: f64,
        high: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        seed: u64,
        device: &DeviceRef,
    ) -> Result<Tensor> {
        if !(low.is_finite() && high.is_finite() && low <= high) {
            let detail = format!("range [{low}, {high}) is not a finite interval");
            return Err(Error::InvalidArgument {
                op: "rand".into(),
                device: label(device),
                detail,
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Tensor::generated("rand", shape.into(), dtype, device, || {
            low + (high - low) * rng.random::<f64>()
        })
    }

    /// Normal samples with the given mean and standard deviation, reproducible from `seed`.
    pub fn randn(
        mean: f64,
        std: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        seed: u64,
        device: &DeviceRef,
    ) -> Result<Tensor> {
        if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
            let detail = format!("mean {mean} and std {std}: need finite values, std ≥ 0");
            return Err(Error::InvalidArgument {
                op: "randn".into(),
                device: label(device),
                detail,
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Tensor::generated("randn", shape.into(), dtype, device, || {
            let z: f64 = StandardNormal.sample(&mut rng);
            mean + std * z
        })
    }

    /// `[0, 1, .., n-1]` as a 1-D tensor.
    pub fn arange(n: usize, dtype: DType, device: &DeviceRef) -> Result<Tensor> {
        let mut next = 0.0;
        Tensor::generated("arange", Shape::from([n]), dtype, device, || {
            next += 1.0;
            next - 1.0
        })
    }

    /// A tensor whose elements, row-major, are the successive values of `next` (rounded to
    /// `dtype` like `Cast`). The device allocates first, so a size the device cannot hold is
    /// an `Err` before any host memory is used, and the host holds one chunk at a time.
    fn generated(
        op: &str,
        shape: Shape,
        dtype: DType,
        device: &DeviceRef,
        mut next: impl FnMut() -> f64,
    ) -> Result<Tensor> {
        const CHUNK: usize = 1 << 16;
        let out = Tensor::uninit(op, shape, dtype, device)?;
        let (n, size) = (out.numel(), dtype.size_in_bytes());
        let mut values = Vec::with_capacity(CHUNK.min(n));
        let mut done = 0;
        while done < n {
            let len = CHUNK.min(n - done);
            values.clear();
            values.extend((0..len).map(|_| next()));
            device.write(out.storage.buffer, done * size, &encode(&values, dtype))?;
            done += len;
        }
        Ok(out)
    }

    // ----- accessors ------------------------------------------------------------------

    pub fn shape(&self) -> &Shape {
        &self.layout.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }

    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &DeviceRef {
        &self.storage.device
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// The operand an [`Op`] sees for this tensor.
    pub fn view(&self) -> View {
        View::new(self.storage.buffer, self.layout.clone(), self.dtype)
    }

    /// True when both tensors read the same device buffer.
    pub fn shares_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    // ----- leaving the device ---------------------------------------------------------

    /// Waits for the work that produces this tensor and copies it to the host, row-major.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DType {
                op: "to_vec".into(),
                device: label(self.device()),
                detail: format!("asked for {} from a {} tensor", T::DTYPE, self.describe()),
            });
        }
        let dense = self.contiguous()?;
        let mut out = vec![T::zeroed(); dense.numel()];
        if !out.is_empty() {
            let offset = dense.layout.offset * self.dtype.size_in_bytes();
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
            dense.device().read(dense.storage.buffer, offset, bytes)?;
        }
        Ok(out)
    }

    /// The values converted to f64, whatever the dtype.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        fn widen<T: Element>(t: &Tensor) -> Result<Vec<f64>> {
            Ok(t.to_vec::<T>()?.into_iter().map(T::to_f64).collect())
        }
        match self.dtype {
            DType::F32 => widen::<f32>(self),
            DType::F16 => widen::<half::f16>(self),
            DType::BF16 => widen::<half::bf16>(self),
            DType::U32 => widen::<u32>(self),
            DType::U8 => widen::<u8>(self),
            DType::I32 => widen::<i32>(self),
            DType::I64 => widen::<i64>(self),
        }
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar<T: Element>(&self) -> Result<T> {
        let values = self.to_vec::<T>()?;
        match values.as_slice() {
            [v] => Ok(*v),
            _ => Err(Error::Shape {
                op: "to_scalar".into(),
                device: label(self.device()),
                detail: format!("{} has {} elements, not 1", self.describe(), self.numel()),
            }),
        }
    }

    /// This tensor on `device` (itself if it is already there): copied device to device
    /// where the two devices can ([`Device::reaches`](crate::Device::reaches)), through the
    /// host otherwise.
    pub fn to_device(&self, device: &DeviceRef) -> Result<Tensor> {
        if device.info().id == self.device().info().id {
            return Ok(self.clone());
        }
        if self.device().reaches(&**device) {
            let dense = self.contiguous()?;
            let out = Tensor::uninit("to_device", self.shape().clone(), self.dtype, device)?;
            let size = self.dtype.size_in_bytes();
            let bytes = self.numel() * size;
            if bytes == 0 {
                return Ok(out);
            }
            let from = dense.layout.offset * size;
            let source = dense.device();
            if source.copy_to_peer(
                dense.storage.buffer,
                from,
                &**device,
                out.storage.buffer,
                0,
                bytes,
            )? {
                return Ok(out);
            }
        }
        Tensor::from_bytes(&self.to_bytes()?, self.shape().clone(), self.dtype, device)
    }

    /// The elements' bytes, row-major, as the device stores them (waits for the work that
    /// produces them). With [`Tensor::from_bytes`], how tensors leave and enter files.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; self.numel() * self.dtype.size_in_bytes()];
        self.read_bytes_into(&mut bytes)?;
        Ok(bytes)
    }

    /// [`to_bytes`](Self::to_bytes) into a buffer of the caller's (a reused staging area),
    /// which must hold exactly the elements' bytes.
    pub fn read_bytes_into(&self, dst: &mut [u8]) -> Result<()> {
        let size = self.dtype.size_in_bytes();
        if dst.len() != self.numel() * size {
            return Err(Error::Shape {
                op: "read_bytes_into".into(),
                device: label(self.device()),
                detail: format!("{} bytes cannot hold {}", dst.len(), self.describe()),
            });
        }
        if dst.is_empty() {
            return Ok(());
        }
        let dense = self.contiguous()?;
        dense.device().read(dense.storage.buffer, dense.layout.offset * size, dst)
    }

    /// A tensor of `shape` and `dtype` on `device` from its elements' bytes, row-major.
    pub fn from_bytes(
        bytes: &[u8],
        shape: impl Into<Shape>,
        dtype: DType,
        device: &DeviceRef,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if shape.checked_numel().and_then(|n| n.checked_mul(dtype.size_in_bytes()))
            != Some(bytes.len())
        {
            return Err(Error::Shape {
                op: "from_bytes".into(),
                device: label(device),
                detail: format!("{} bytes do not fill {dtype}{shape}", bytes.len()),
            });
        }
        let out = Tensor::uninit("from_bytes", shape, dtype, device)?;
        if !bytes.is_empty() {
            device.write(out.storage.buffer, 0, bytes)?;
        }
        Ok(out)
    }

    // ----- plumbing shared by the op files --------------------------------------------

    /// A fresh contiguous tensor whose contents the next op will write.
    fn uninit(op: &str, shape: Shape, dtype: DType, device: &DeviceRef) -> Result<Tensor> {
        if !device.info().supports(dtype) {
            return Err(Error::UnsupportedDType {
                op: op.into(),
                device: label(device),
                dtype,
                detail: format!(
                    " (the device offers {:?}); shape {shape}",
                    device.info().dtypes.iter().map(|d| d.name()).collect::<Vec<_>>()
                ),
            });
        }
        let bytes = shape.checked_numel().and_then(|n| n.checked_mul(dtype.size_in_bytes()));
        let Some(bytes) = bytes else {
            return Err(Error::InvalidArgument {
                op: op.into(),
                device: label(device),
                detail: format!("{dtype}{shape} has more bytes than the address space"),
            });
        };
        let buffer = device.alloc(bytes)?;
        let storage = Arc::new(Storage { device: device.clone(), buffer, host_index_range: None });
        Ok(Tensor { storage, layout: Layout::contiguous(shape), dtype })
    }

    /// A tensor of `shape` and `dtype` on this tensor's device, for an op's output.
    fn output(&self, op: &str, shape: Shape, dtype: DType) -> Result<Tensor> {
        Tensor::uninit(op, shape, dtype, self.device())
    }

    /// This fresh tensor with its index values known to lie in `lo..=hi` (as `from_slice`
    /// records them), so index ops need not read it back to check.
    pub(crate) fn with_index_range(mut self, lo: i64, hi: i64) -> Tensor {
        if let Some(storage) = Arc::get_mut(&mut self.storage) {
            storage.host_index_range = Some((self.dtype, lo, hi));
        }
        self
    }

    /// Same buffer, another layout.
    fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor { storage: self.storage.clone(), layout, dtype: self.dtype }
    }

    /// The same bytes seen as `dtype`, which must have this dtype's element size (PyTorch's
    /// `view(dtype)`, numpy's `view`): a view, no copy. An f32's bits as `u32`, for example.
    pub fn bitcast(&self, dtype: DType) -> Result<Tensor> {
        if dtype.size_in_bytes() != self.dtype.size_in_bytes() {
            return Err(Error::DType {
                op: "bitcast".into(),
                device: label(self.device()),
                detail: format!(
                    "{} has {}-byte elements, {dtype} {}-byte ones",
                    self.describe(),
                    self.dtype.size_in_bytes(),
                    dtype.size_in_bytes()
                ),
            });
        }
        Ok(Tensor { storage: self.storage.clone(), layout: self.layout.clone(), dtype })
    }

    /// Runs `op` on this tensor's device, unless its output is empty (nothing to compute, and
    /// some devices cannot bind empty buffers).
    fn enqueue(&self, op: Op) -> Result<()> {
        if op.output().numel() == 0 {
            return Ok(());
        }
        self.device().submit(op)
    }

    /// Which buffer this tensor views: equal for two views of one buffer (a reshape, a
    /// transpose), so memory accounting counts a buffer once.
    pub(crate) fn storage_key(&self) -> usize {
        Arc::as_ptr(&self.storage) as usize
    }

    /// Bytes of its buffer this view reaches, from the buffer's start: the whole buffer
    /// for a contiguous tensor, at least the part up to its last element for a view.
    pub(crate) fn reached_bytes(&self) -> usize {
        self.layout.end().unwrap_or(usize::MAX / 16) * self.dtype.size_in_bytes()
    }

    /// `f32[2, 3] on cpu:0`, for error messages.
    pub(crate) fn describe(&self) -> String {
        format!("{}{} on {}", self.dtype, self.layout.shape, label(self.device()))
    }
}

/// The smallest and largest value of index-typed `data` (`None` for other types, or empty).
fn index_range<T: Element>(data: &[T]) -> Option<(DType, i64, i64)> {
    fn range<I: Element + Into<i64>>(values: &[I]) -> Option<(DType, i64, i64)> {
        let mut it = values.iter().map(|&v| v.into());
        let first = it.next()?;
        let (lo, hi) = it.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v)));
        Some((I::DTYPE, lo, hi))
    }
    let bytes: &[u8] = bytemuck::cast_slice(data);
    match T::DTYPE {
        DType::U32 => range::<u32>(bytemuck::cast_slice(bytes)),
        DType::I32 => range::<i32>(bytemuck::cast_slice(bytes)),
        DType::I64 => range::<i64>(bytemuck::cast_slice(bytes)),
        _ => None,
    }
}

/// `data` rounded to `dtype` like `Cast`, as the device stores it.
fn encode(data: &[f64], dtype: DType) -> Vec<u8> {
    fn bytes<T: Element>(data: &[f64]) -> Vec<u8> {
        let values: Vec<T> = data.iter().map(|&v| T::from_f64(v)).collect();
        bytemuck::cast_slice(&values).to_vec()
    }
    match dtype {
        DType::F32 => bytes::<f32>(data),
        DType::F16 => bytes::<half::f16>(data),
        DType::BF16 => bytes::<half::bf16>(data),
        DType::U32 => bytes::<u32>(data),
        DType::U8 => bytes::<u8>(data),
        DType::I32 => bytes::<i32>(data),
        DType::I64 => bytes::<i64>(data),
    }
}

/// `cpu:0`, for error messages.
pub(crate) fn label(device: &DeviceRef) -> String {
    device.info().label()
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({}{} on {})", self.dtype, self.layout, label(self.device()))
    }
}
