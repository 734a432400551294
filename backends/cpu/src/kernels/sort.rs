//! `ArgSort`: the positions that sort each lane. Every element becomes an integer key whose
//! order is the wanted one (`Elem::sort_key`), and the (key, position) pairs of a lane are
//! sorted: exact and stable for every dtype. Lanes run in parallel.

use manychips_api::Layout;
use rayon::prelude::*;

use super::plan::Plan;
use crate::element::Elem;

/// `out[.., r, ..]` = the position along `axis` of each lane's r-th element in order.
pub(crate) fn argsort<T: Elem>(
    (a, al): (&[T], &Layout),
    (out, ol): (&mut [u32], &Layout),
    axis: usize,
    descending: bool,
) {
    let len = al.dims()[axis];
    let (a_step, o_step) = (al.strides[axis], ol.strides[axis]);
    let lanes = |l: &Layout| {
        let mut dims = l.dims().to_vec();
        dims[axis] = 1;
        Layout { shape: dims.into(), strides: l.strides.clone(), offset: l.offset }
    };
    let (ab, ob) = (lanes(al), lanes(ol));
    let plan = Plan::new(ab.dims(), [&ab, &ob]);
    let [sa, so] = plan.inner_strides();
    let mut starts = Vec::with_capacity(plan.numel());
    plan.walk(0..plan.numel(), |[oa, oo], n| {
        starts.extend((0..n).map(|k| (oa + k * sa, oo + k * so)));
    });
    let mut order = vec![0u32; starts.len() * len];
    order.par_chunks_mut(len.max(1)).zip(&starts).for_each(|(lane, &(start, _))| {
        let mut pairs: Vec<(u64, u32)> = (0..len)
            .map(|i| {
                let key = a[start + i * a_step].sort_key();
                (if descending { u64::MAX - key } else { key }, i as u32)
            })
            .collect();
        // Positions are distinct, so the pairs are too: an unstable sort is stable here.
        pairs.sort_unstable();
        for (slot, (_, at)) in lane.iter_mut().zip(pairs) {
            *slot = at;
        }
    });
    for (lane, &(_, start)) in order.chunks(len.max(1)).zip(&starts) {
        for (r, &at) in lane.iter().enumerate() {
            out[start + r * o_step] = at;
        }
    }
}
