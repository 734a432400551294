//! Moving an operand to another device without moving what it only repeats: a broadcast
//! (stride-0) dim travels as one entry and is stretched again on arrival.

use manychips_api::{Layout, Shape, View};

/// The entries `view` really reads: its layout with every broadcast dim cut to length 1.
pub fn source(view: &View) -> Layout {
    let dims: Vec<usize> = view
        .layout
        .dims()
        .iter()
        .zip(&view.layout.strides)
        .map(|(&d, &s)| if s == 0 { d.min(1) } else { d })
        .collect();
    Layout { shape: Shape::new(dims), ..view.layout.clone() }
}

/// Elements of [`source`]: what a transfer of `view` carries.
pub fn len(view: &View) -> usize {
    source(view).numel()
}

/// Bytes a transfer of `view` carries.
pub fn bytes(view: &View) -> usize {
    len(view) * view.dtype.size_in_bytes()
}

/// How the packed entries, stored row-major from element 0, are seen as `view` again: the
/// packed shape's contiguous strides, with the broadcast dims back at stride 0.
pub fn arrived(view: &View) -> Layout {
    let packed = source(view).shape;
    let mut strides = packed.contiguous_strides();
    for (s, &orig) in strides.iter_mut().zip(&view.layout.strides) {
        if orig == 0 {
            *s = 0;
        }
    }
    Layout { shape: view.layout.shape.clone(), strides, offset: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manychips_api::{BufferId, DType, DeviceId};

    #[test]
    fn broadcast_dims_travel_once() {
        let bias = Layout::contiguous([5]).broadcast_to(&Shape::from([4, 5])).unwrap();
        let view = View::new(BufferId { device: DeviceId::fresh(), index: 0 }, bias, DType::F16);
        assert_eq!(source(&view).dims(), &[1, 5]);
        assert_eq!((len(&view), bytes(&view)), (5, 10));
        let there = arrived(&view);
        assert_eq!((there.dims(), &there.strides[..]), (&[4, 5][..], &[0, 1][..]));
    }
}
