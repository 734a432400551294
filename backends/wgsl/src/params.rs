//! The uniform parameter block every kernel reads (see kernels/wgsl/common.wgsl): 64 words,
//! a strided iteration space of at most [`MAX_RANK`] dims over up to four operands.

use manychips_api::{Error, Op, Result};
pub(crate) use manychips_api::{Strided, coalesce};

/// Dims a kernel iterates over after [`coalesce`] merged what it could.
pub const MAX_RANK: usize = 8;
/// Words in the parameter block (16 `vec4<u32>`).
pub const WORDS: usize = 64;
const DIMS: usize = 8;
const OPERANDS: usize = 16;
const OPERAND_WORDS: usize = 9;

/// The parameter block under construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    words: Vec<u32>,
}

pub(crate) fn word(op: &Op, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument {
        op: op.name(),
        device: "wgsl".into(),
        detail: format!(
            "{what} = {v} does not fit the kernels' 32-bit indexing; {}",
            op.describe()
        ),
    })
}

impl Params {
    /// Word 0 is `count` (the number of work items); the iteration space is `dims` over
    /// `ops` (coalesced here).
    pub fn strided(op: &Op, count: usize, dims: &[usize], ops: &[Strided]) -> Result<Params> {
        let mut p = Params { words: vec![0; WORDS] };
        p.set(0, word(op, "element count", count)?)?;
        let (dims, ops) = coalesce(dims, ops);
        if dims.len() > MAX_RANK || ops.len() > 4 {
            return Err(Error::InvalidArgument {
                op: op.name(),
                device: "wgsl".into(),
                detail: format!(
                    "{} strided dims remain after merging (the kernels take {MAX_RANK}); {}",
                    dims.len(),
                    op.describe()
                ),
            });
        }
        p.set(1, dims.len() as u32)?;
        for (d, &n) in dims.iter().enumerate() {
            p.set(DIMS + d, word(op, "dim", n)?)?;
        }
        for (k, s) in ops.iter().enumerate() {
            let at = OPERANDS + k * OPERAND_WORDS;
            p.set(at, word(op, "offset", s.offset)?)?;
            for (d, &st) in s.strides.iter().enumerate() {
                p.set(at + 1 + d, word(op, "stride", st)?)?;
            }
        }
        Ok(p)
    }

    /// Sets word `i`. A slot past the block is a bug in a lowering (its kernel would read
    /// a parameter that was never written): an `Err`, never a silently dropped value.
    pub fn set(&mut self, i: usize, v: u32) -> Result<()> {
        let Some(w) = self.words.get_mut(i) else {
            return Err(Error::InvalidArgument {
                op: "wgsl parameters".into(),
                device: "wgsl".into(),
                detail: format!("slot {i} is past the {WORDS}-word parameter block"),
            });
        };
        *w = v;
        Ok(())
    }

    pub fn into_words(self) -> Vec<u32> {
        self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_contiguous_and_drops_unit_dims() {
        let a = Strided::new(0, vec![12, 4, 1]);
        let b = Strided::new(3, vec![0, 0, 1]);
        let (dims, ops) = coalesce(&[2, 3, 4], std::slice::from_ref(&a));
        assert_eq!((dims, ops[0].strides.clone()), (vec![24], vec![1]));
        let (dims, ops) = coalesce(&[2, 3, 4], &[a, b]);
        assert_eq!(dims, vec![6, 4]);
        assert_eq!(ops[1], Strided::new(3, vec![0, 1]));
        let t = Strided::new(0, vec![1, 5, 0]);
        let (dims, ops) = coalesce(&[5, 1, 7], &[t]);
        assert_eq!((dims, ops[0].strides.clone()), (vec![5, 7], vec![1, 0]));
        let (dims, _) = coalesce(&[1, 1], &[Strided::new(0, vec![1, 1])]);
        assert!(dims.is_empty());
    }

    #[test]
    fn a_slot_past_the_block_is_an_error() {
        let mut p = Params { words: vec![0; WORDS] };
        p.set(WORDS - 1, 7).unwrap();
        assert_eq!(p.clone().into_words()[WORDS - 1], 7);
        let e = p.set(WORDS, 1).unwrap_err();
        assert!(e.to_string().contains("past the 64-word"), "{e}");
    }
}
