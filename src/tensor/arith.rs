//! `std::ops` for tensors. Like candle, the operators return `Result<Tensor>`, because a
//! shape, dtype or device mismatch is an error, not a panic: `let y = ((&a + &b)? * 2.0)?;`.

use std::ops::{Add, Div, Mul, Neg, Sub};

use super::Tensor;
use crate::Result;

macro_rules! tensor_binary_op {
    ($trait:ident, $method:ident, $scalar:expr) => {
        impl $trait<&Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                Tensor::$method(self, rhs)
            }
        }
        impl $trait<Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: Tensor) -> Result<Tensor> {
                Tensor::$method(&self, &rhs)
            }
        }
        impl $trait<&Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                Tensor::$method(&self, rhs)
            }
        }
        impl $trait<f64> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: f64) -> Result<Tensor> {
                let (mul, add) = $scalar(rhs);
                self.affine(mul, add)
            }
        }
        impl $trait<f64> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: f64) -> Result<Tensor> {
                let (mul, add) = $scalar(rhs);
                self.affine(mul, add)
            }
        }
    };
}

// Scalar forms become one affine op: (mul, add).
tensor_binary_op!(Add, add, |s: f64| (1.0, s));
tensor_binary_op!(Sub, sub, |s: f64| (1.0, -s));
tensor_binary_op!(Mul, mul, |s: f64| (s, 0.0));
tensor_binary_op!(Div, div, |s: f64| (1.0 / s, 0.0));

impl Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(self)
    }
}

impl Neg for Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(&self)
    }
}
