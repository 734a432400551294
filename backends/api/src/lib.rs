//! The manychips device contract.
//!
//! Everything a backend needs and nothing more: the object-safe [`Device`] trait, the
//! closed [`Op`] enum (ops as data), [`DType`], [`Shape`] and [`Layout`], and the one
//! [`Error`] type. A new chip is supported by implementing [`Device`] in its own crate and
//! passing `manychips::conformance::check` against it.

pub mod attention;
pub mod checks;
mod device;
mod dtype;
mod error;
pub mod fused;
mod op;
mod shape;
mod strided;

pub use device::{BufferId, Device, DeviceId, DeviceInfo, Identity, MemoryInfo};
pub use dtype::{DType, Element, f32_round_to_odd};
pub use error::{Error, ErrorKind, Result};
pub use fused::Instr;
pub use half::{bf16, f16};
pub use op::{
    BinaryOp, CompareOp, Op, OpClass, ReduceOp, ScatterOp, UnaryOp, View, non_overlapping,
};
pub use shape::{Layout, Shape};
pub use strided::{Strided, coalesce};
