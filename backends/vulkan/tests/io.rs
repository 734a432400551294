// Byte-level write/read/copy and the contract checks on every Vulkan device found; these need
// no kernels. Skips (and says so) where there is no Vulkan device.

use manychips_api::{Device, ErrorKind};
use manychips_vulkan::{VulkanDevice, discover};

fn devices() -> Vec<VulkanDevice> {
    match discover() {
        Ok(d) => d,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
            assert!(std::env::var_os("CI").is_none(), "CI is set but no Vulkan device: {e}");
            println!("skipped: {e}");
            Vec::new()
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn write_read_round_trips_at_odd_offsets() {
    for dev in devices() {
        for &(size, offset, len) in
            &[(0, 0, 0), (1, 0, 1), (7, 3, 3), (1001, 13, 977), (1 << 20, 5, 99_999)]
        {
            let buf = dev.alloc(size).unwrap();
            let data = pattern(len, 7);
            dev.write(buf, offset, &data).unwrap();
            let mut back = vec![0u8; len];
            dev.read(buf, offset, &mut back).unwrap();
            assert_eq!(back, data, "size {size} offset {offset} len {len}");
            dev.free(buf).unwrap();
        }
    }
}

#[test]
fn copies_are_ordered_and_exact() {
    for dev in devices() {
        let a = dev.alloc(1000).unwrap();
        let b = dev.alloc(1000).unwrap();
        let data = pattern(1000, 1);
        dev.write(a, 0, &data).unwrap();
        dev.write(b, 0, &[0u8; 1000]).unwrap();
        dev.copy(a, 3, b, 11, 501).unwrap();
        // A write after the copy must not affect it; one before must.
        dev.write(a, 3, &[9u8; 10]).unwrap();
        let mut back = vec![0u8; 1000];
        dev.read(b, 0, &mut back).unwrap();
        let mut want = vec![0u8; 1000];
        want[11..512].copy_from_slice(&data[3..504]);
        assert_eq!(back, want);
        // Overlapping copy inside one buffer.
        dev.copy(b, 11, b, 13, 400).unwrap();
        want.copy_within(11..411, 13);
        dev.read(b, 0, &mut back).unwrap();
        assert_eq!(back, want);
        dev.free(a).unwrap();
        dev.free(b).unwrap();
        // Many small queued writes, then one read.
        let c = dev.alloc(4096).unwrap();
        for i in 0..1000 {
            dev.write(c, i * 3, &[(i % 251) as u8, 1, 2]).unwrap();
            if i == 500 {
                dev.copy(c, 0, c, 3000, 30).unwrap();
            }
        }
        dev.read(c, 0, &mut back).unwrap();
        assert_eq!(back[3], 1);
        assert_eq!(back[999], (333 % 251) as u8);
        dev.synchronize().unwrap();
        dev.free(c).unwrap();
    }
}

#[test]
fn misuse_is_an_error() {
    let devs = devices();
    for dev in &devs {
        let buf = dev.alloc(16).unwrap();
        assert_eq!(dev.write(buf, 10, &[0; 8]).unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(dev.read(buf, 12, &mut [0; 8]).unwrap_err().kind(), ErrorKind::InvalidArgument);
        dev.free(buf).unwrap();
        assert_eq!(dev.free(buf).unwrap_err().kind(), ErrorKind::InvalidArgument);
        let huge = dev.alloc(usize::MAX / 2).unwrap_err();
        assert_eq!(huge.kind(), ErrorKind::OutOfMemory);
    }
    if devs.len() < 2 {
        // A buffer of another device instance: discover a second time.
        if let (Some(a), Ok(others)) = (devs.first(), discover()) {
            let b = &others[0];
            let foreign = b.alloc(4).unwrap();
            assert_eq!(
                a.read(foreign, 0, &mut [0; 4]).unwrap_err().kind(),
                ErrorKind::DeviceMismatch
            );
        }
    }
}

#[test]
fn threads_share_a_device() {
    use manychips_api::{DType, Layout, Op, View};
    for dev in devices() {
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let dev = &dev;
                s.spawn(move || {
                    for round in 0..20usize {
                        let n = 1000 + round * 7 + t as usize;
                        let buf = dev.alloc(n * 4 + 3).unwrap();
                        dev.write(buf, 1, &pattern(n, t)).unwrap();
                        let out = View::new(buf, Layout::contiguous(vec![n]), DType::F32);
                        dev.run(&Op::Fill { out, value: f64::from(t) }).unwrap();
                        dev.write(buf, n * 4, &[t, t, t]).unwrap();
                        let mut back = vec![0u8; n * 4 + 3];
                        dev.read(buf, 0, &mut back).unwrap();
                        let first = f32::from_le_bytes([back[0], back[1], back[2], back[3]]);
                        assert_eq!(first, f32::from(t));
                        assert_eq!(&back[n * 4..], &[t, t, t]);
                        dev.free(buf).unwrap();
                    }
                });
            }
        });
        dev.synchronize().unwrap();
    }
}

#[test]
fn out_of_range_indices_are_reported_at_synchronize_then_cleared() {
    use manychips_api::{DType, Layout, Op, View};
    for dev in devices() {
        let input = dev.alloc(13 * 4).unwrap();
        let indices = dev.alloc(3 * 4).unwrap();
        let out = dev.alloc(3 * 4).unwrap();
        dev.write(input, 0, &[0u8; 13 * 4]).unwrap();
        let words: Vec<u8> = [0u32, 100, 2].iter().flat_map(|w| w.to_le_bytes()).collect();
        dev.write(indices, 0, &words).unwrap();
        let op = Op::IndexSelect {
            input: View::new(input, Layout::contiguous(vec![13]), DType::F32),
            indices: View::new(indices, Layout::contiguous(vec![3]), DType::U32),
            out: View::new(out, Layout::contiguous(vec![3]), DType::F32),
            axis: 0,
        };
        dev.run(&op).unwrap();
        let e = dev.synchronize().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::IndexOutOfRange, "{e}");
        assert!(e.to_string().contains("100"), "{e}");
        dev.synchronize().unwrap();
        // Reported once, at a read too.
        dev.run(&op).unwrap();
        let e = dev.read(out, 0, &mut [0u8; 12]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::IndexOutOfRange, "{e}");
        dev.read(out, 0, &mut [0u8; 12]).unwrap();
        for b in [input, indices, out] {
            dev.free(b).unwrap();
        }
    }
}
