//! Strided iteration spaces, as kernels walk them: what the GPU backends' parameter blocks
//! are built from.

/// One operand's place in an iteration space: element offset and one stride per dim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Strided {
    pub offset: usize,
    pub strides: Vec<usize>,
}

impl Strided {
    pub fn new(offset: usize, strides: Vec<usize>) -> Self {
        Strided { offset, strides }
    }
}

/// Merges neighbouring dims that every operand walks as one and drops dims of extent 1, so
/// that fewer divisions run per element and any rank reduces to the dims that matter.
/// `ops[k].strides` has one entry per entry of `dims`.
pub fn coalesce(dims: &[usize], ops: &[Strided]) -> (Vec<usize>, Vec<Strided>) {
    let mut out_dims: Vec<usize> = Vec::new();
    let mut out_ops: Vec<Strided> =
        ops.iter().map(|s| Strided::new(s.offset, Vec::new())).collect();
    for (d, &n) in dims.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let merge = !out_dims.is_empty()
            && ops.iter().zip(&out_ops).all(|(s, o)| {
                s.strides[d].checked_mul(n).is_some_and(|span| o.strides.last() == Some(&span))
            });
        if merge {
            if let Some(last) = out_dims.last_mut() {
                *last *= n;
            }
            for (s, o) in ops.iter().zip(out_ops.iter_mut()) {
                if let Some(last) = o.strides.last_mut() {
                    *last = s.strides[d];
                }
            }
        } else {
            out_dims.push(n);
            for (s, o) in ops.iter().zip(out_ops.iter_mut()) {
                o.strides.push(s.strides[d]);
            }
        }
    }
    (out_dims, out_ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_dims_merge_and_ones_vanish() {
        let ops = [Strided::new(0, vec![12, 4, 1]), Strided::new(5, vec![0, 0, 1])];
        let (dims, out) = coalesce(&[2, 3, 4], &ops);
        // The second operand broadcasts over the first two dims: they merge, the last not.
        assert_eq!(dims, vec![6, 4]);
        assert_eq!(out[0].strides, vec![4, 1]);
        assert_eq!(out[1].strides, vec![0, 1]);
        let (dims, out) = coalesce(&[1, 5, 1], &[Strided::new(3, vec![9, 2, 7])]);
        assert_eq!((dims, out[0].strides.clone(), out[0].offset), (vec![5], vec![2], 3));
    }
}
