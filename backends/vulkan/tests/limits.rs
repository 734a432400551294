// A buffer larger than the largest storage binding (lavapipe: 128 MiB): ops on views inside
// the bindable part run, ops on views past it are a clear `Err`, never a wrong answer.

use manychips_api::{DType, Device, ErrorKind, Layout, Op, View};
use manychips_vulkan::discover;

#[test]
fn views_past_the_largest_binding_are_refused() {
    let devices = match discover() {
        Ok(d) => d,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "CI is set but no Vulkan device: {e}");
            println!("skipped: {e}");
            return;
        }
    };
    for dev in &devices {
        let max = dev.features().max_storage_binding as usize;
        if max > 1 << 30 {
            println!(
                "skipped on {}: binding limit {max} is too large to exceed here",
                dev.info().label()
            );
            continue;
        }
        let bytes = max + (16 << 20);
        let buf = dev.alloc(bytes).unwrap();
        let view = |offset: usize, n: usize| {
            let mut layout = Layout::contiguous(vec![n]);
            layout.offset = offset;
            View::new(buf, layout, DType::F32)
        };
        // Inside the bindable part: runs.
        dev.run(&Op::Fill { out: view(1000, 300), value: 2.5 }).unwrap();
        let mut back = vec![0u8; 300 * 4];
        dev.read(buf, 4000, &mut back).unwrap();
        let values: Vec<f32> =
            back.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert!(values.iter().all(|&v| v == 2.5));
        // Past it: a clear error, at once or at the next synchronize.
        let past = view(max / 4 + 10, 100);
        let result = dev.run(&Op::Fill { out: past, value: 1.0 }).and_then(|()| dev.synchronize());
        let e = result.unwrap_err();
        println!("{}: {e}", dev.info().label());
        assert!(!e.is_device_fault(), "{e}");
        assert_ne!(e.kind(), ErrorKind::DeviceLost);
        // The device still works.
        dev.run(&Op::Fill { out: view(0, 10), value: -1.0 }).unwrap();
        dev.synchronize().unwrap();
        dev.free(buf).unwrap();
    }
}
