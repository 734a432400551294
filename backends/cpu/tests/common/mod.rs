//! Helpers shared by the CPU backend's tests: uploads, downloads, views, random data.
#![allow(dead_code)]

use manychips_api::{BufferId, DType, Device, Element, Layout, View};
use manychips_cpu::CpuDevice;

pub fn device() -> CpuDevice {
    CpuDevice::with_threads(4).expect("cpu device")
}

pub fn upload<T: Element>(dev: &CpuDevice, data: &[T]) -> BufferId {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let buf = dev.alloc(bytes.len()).expect("alloc");
    dev.write(buf, 0, bytes).expect("write");
    buf
}

pub fn download<T: Element>(dev: &CpuDevice, buf: BufferId, n: usize) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); n];
    dev.read(buf, 0, bytemuck::cast_slice_mut(&mut out)).expect("read");
    out
}

pub fn zeros<T: Element>(dev: &CpuDevice, n: usize) -> BufferId {
    upload(dev, &vec![T::from_f64(0.0); n])
}

pub fn contiguous(buf: BufferId, dims: &[usize], dtype: DType) -> View {
    View::new(buf, Layout::contiguous(dims), dtype)
}

pub fn strided(
    buf: BufferId,
    dims: &[usize],
    strides: &[usize],
    offset: usize,
    dtype: DType,
) -> View {
    View::new(buf, Layout { shape: dims.into(), strides: strides.to_vec(), offset }, dtype)
}

/// Deterministic values in [-1, 1).
pub fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

pub fn convert<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

pub fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Tolerance for results rounded to `dtype` after an f32 computation.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2e-5,
        DType::F16 => 4e-3,
        DType::BF16 => 3e-2,
        _ => 0.0,
    }
}

pub fn assert_close(got: &[f64], want: &[f64], rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= rtol * (1.0 + w.abs());
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// Element `idx` of a row-major array of shape `dims`.
pub fn flat(dims: &[usize], idx: &[usize]) -> usize {
    idx.iter().zip(dims).fold(0, |acc, (&i, &d)| acc * d + i)
}
