//! Choosing the matmul kernel by measuring it: register blocking wins on CPU drivers
//! (lavapipe), shared-memory tiles on real GPUs, but only the device can say for sure.

use std::time::{Duration, Instant};

use manychips_api::{DType, Device, Layout, Op, Result, View};

use crate::MatmulKernel;

/// Times every [`MatmulKernel`] on an f32 `n`×`n`×`n` product on `device` (switching kernels
/// with `set`), leaves the fastest selected and returns it with each kernel's best time.
pub fn pick_matmul_kernel(
    device: &dyn Device,
    set: &dyn Fn(MatmulKernel),
    n: usize,
) -> Result<(MatmulKernel, Vec<(MatmulKernel, Duration)>)> {
    let bytes = n * n * DType::F32.size_in_bytes();
    let buffers = [device.alloc(bytes)?, device.alloc(bytes)?, device.alloc(bytes)?];
    let result = time_kernels(device, set, n, buffers);
    for buffer in buffers {
        device.free(buffer)?;
    }
    let timings = result?;
    let best = timings.iter().min_by_key(|(_, t)| *t).map_or(MatmulKernel::Naive, |(k, _)| *k);
    set(best);
    Ok((best, timings))
}

fn time_kernels(
    device: &dyn Device,
    set: &dyn Fn(MatmulKernel),
    n: usize,
    [lhs, rhs, out]: [manychips_api::BufferId; 3],
) -> Result<Vec<(MatmulKernel, Duration)>> {
    let ones: Vec<u8> = (0..n * n).flat_map(|_| 1.0f32.to_le_bytes()).collect();
    device.write(lhs, 0, &ones)?;
    device.write(rhs, 0, &ones)?;
    let view = |buffer| View::new(buffer, Layout::contiguous([n, n]), DType::F32);
    let op = Op::Matmul { lhs: view(lhs), rhs: view(rhs), out: view(out) };
    let mut timings = Vec::new();
    for kernel in [MatmulKernel::Naive, MatmulKernel::RegisterBlocked, MatmulKernel::SharedTiles] {
        set(kernel);
        device.run(&op)?; // compiles the pipeline and warms up
        device.synchronize()?;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            device.run(&op)?;
            device.synchronize()?;
            best = best.min(start.elapsed());
        }
        timings.push((kernel, best));
    }
    Ok(timings)
}
