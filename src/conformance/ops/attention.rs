//! Attention and its backward pass: one row and one head, rows past a 64-row block, causal
//! and not, heads as leading dims of rank 3 and 4, and operands stored transposed, padded
//! or reversed (heads are permuted views in a transformer).

use crate::{DType, Op};

use super::super::case::{Case, Operand, Output, Place, Place::*};
use super::super::reference;
use super::super::runner::Runner;
use super::super::values::Dist;
use super::host;

struct Form {
    dims: Vec<usize>,
    causal: bool,
    /// Where q, k, v (and d_out) and the output sit.
    places: [Place; 5],
}

fn form(dims: &[usize], causal: bool, places: [Place; 5]) -> Form {
    Form { dims: dims.to_vec(), causal, places }
}

const PLAIN: [Place; 5] = [Contiguous; 5];

fn forms(full: bool) -> Vec<Form> {
    let mut v = vec![
        form(&[1, 1], true, PLAIN),
        form(&[5, 3], false, PLAIN),
        form(&[5, 3], true, [Offset, Padded, Contiguous, Offset, Padded]),
        form(&[3, 7, 4], true, [SwapLast, Contiguous, Reversed, Padded, Contiguous]),
        form(&[2, 3, 9, 8], true, [Reversed, Padded, SwapLast, Contiguous, Offset]),
        form(&[2, 3, 9, 8], false, [Padded, Reversed, Contiguous, SwapLast, Padded]),
        // Past one block of 64 query rows, causal and not.
        form(&[67, 5], true, PLAIN),
        form(&[2, 70, 4], false, [Contiguous, SwapLast, Contiguous, Contiguous, Padded]),
        // Empty: no heads, no rows, no width.
        form(&[0, 4, 3], true, PLAIN),
        form(&[0, 3], true, PLAIN),
        form(&[4, 0], false, PLAIN),
    ];
    if full {
        v.push(form(&[2, 130, 16], true, [Padded, Contiguous, Contiguous, Reversed, Contiguous]));
        v.push(form(&[129, 32], false, PLAIN));
    }
    v
}

pub(super) fn run(r: &mut Runner<'_>) {
    for dtype in DType::FLOATS {
        for backward in [false, true] {
            let name = if backward { "attention_backward" } else { "attention" };
            let Some(mut rng) = r.begin(name, dtype.name(), &[(dtype, "")]) else { continue };
            for f in forms(r.full()) {
                let dist = Dist::Uniform(-1.0, 1.0);
                let operand = |rng: &mut _, place| {
                    Operand::new(dtype, host(rng, dtype, dist, &f.dims)).at(place)
                };
                let q = operand(&mut rng, f.places[0]);
                let k = operand(&mut rng, f.places[1]);
                let v = operand(&mut rng, f.places[2]);
                let head = f.dims[f.dims.len() - 1].max(1);
                let scale = 1.0 / (head as f64).sqrt();
                let causal = f.causal;
                let case = if backward {
                    let g = operand(&mut rng, f.places[3]);
                    let logical = [&q.logical(), &k.logical(), &v.logical(), &g.logical()];
                    let expected = reference::attention_backward(logical, scale, causal);
                    let out = Output::new(dtype, &[&[3], &f.dims[..]].concat()).at(f.places[4]);
                    Case::new(vec![q, k, v, g], out, expected, move |v, out| {
                        Op::AttentionBackward {
                            q: v[0].clone(),
                            k: v[1].clone(),
                            v: v[2].clone(),
                            d_out: v[3].clone(),
                            out,
                            scale,
                            causal,
                        }
                    })
                } else {
                    let expected = reference::attention(
                        &q.logical(),
                        &k.logical(),
                        &v.logical(),
                        scale,
                        causal,
                    );
                    let out = Output::new(dtype, &f.dims).at(f.places[4]);
                    Case::new(vec![q, k, v], out, expected, move |v, out| Op::Attention {
                        q: v[0].clone(),
                        k: v[1].clone(),
                        v: v[2].clone(),
                        out,
                        scale,
                        causal,
                    })
                };
                r.run_case(name, dtype.name(), case);
            }
        }
    }
}
