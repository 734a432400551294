//! Named parameters: what a model learns, found by name for checkpoints and by id for
//! gradients.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::var::{Var, VarId};
use crate::{DType, DeviceRef, Error, Result, Shape, Tensor};

struct ParamInner {
    name: String,
    id: VarId,
    value: RwLock<Tensor>,
    /// Counts the replacements of `value`: a copy elsewhere knows whether it is current.
    version: AtomicU64,
    /// The value cast to a compute dtype, for the `version` it was cast from
    /// ([`Param::var_as`]).
    cast: Mutex<Option<(u64, Var)>>,
}

/// A learnable tensor with a stable name and id. Cloning shares it: a model and its
/// optimizer hold the same parameter, and `set` is seen by both.
#[derive(Clone)]
pub struct Param(Arc<ParamInner>);

impl Param {
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        Param(Arc::new(ParamInner {
            name: name.into(),
            id: VarId::fresh(),
            value: RwLock::new(value),
            version: AtomicU64::new(0),
            cast: Mutex::new(None),
        }))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn id(&self) -> VarId {
        self.0.id
    }

    /// The current value.
    pub fn value(&self) -> Tensor {
        self.0.value.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A tracked leaf of the current value; its gradient is under [`Param::id`].
    pub fn var(&self) -> Var {
        Var::leaf_with_id(self.value(), self.0.id)
    }

    /// The value in `dtype` (a bf16 model's f32 master weight, as its matmuls read it),
    /// tracked: cast once per value and shared by every forward pass until the value
    /// changes, so the micro-batches of a step neither cast it again nor each keep a copy
    /// for their backward passes (one copy, 2 bytes a parameter in bf16, lives beside the
    /// master). Its gradient reaches the master in the master's dtype. The value itself
    /// where it already is in `dtype`.
    ///
    /// Under [`no_grad`](super::no_grad) (a recomputed run's first pass, evaluation) it
    /// hands out the current copy untracked, or a cast of its own where there is none yet.
    pub fn var_as(&self, dtype: DType) -> Result<Var> {
        let mut cast = self.0.cast.lock().unwrap_or_else(PoisonError::into_inner);
        // The version before the value: a value set in between is cast again next time.
        let version = self.version();
        let leaf = self.var();
        if leaf.tensor().dtype() == dtype {
            return Ok(leaf);
        }
        let current = cast.as_ref().filter(|(made, var)| {
            *made == version && var.tensor().dtype() == dtype && var.requires_grad()
        });
        match (current, super::is_grad_enabled()) {
            (Some((_, var)), true) => Ok(var.clone()),
            (Some((_, var)), false) => Ok(Var::constant(var.tensor().clone())),
            (None, false) => Ok(Var::constant(leaf.tensor().cast(dtype)?)),
            (None, true) => {
                // The old copy goes before the new one is made.
                *cast = None;
                let var = leaf.cast_shared(dtype)?;
                *cast = Some((version, var.clone()));
                Ok(var)
            }
        }
    }

    /// Drops the compute-dtype copy of a value that is being replaced.
    fn forget_cast(&self) {
        *self.0.cast.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Replaces the value by one of the same shape, dtype and device (an optimizer step, a
    /// checkpoint load, a broadcast from the master copy).
    pub fn set(&self, value: Tensor) -> Result<()> {
        let mut slot = self.0.value.write().unwrap_or_else(PoisonError::into_inner);
        let same_device = slot.device().info().id == value.device().info().id;
        if slot.dims() != value.dims() || slot.dtype() != value.dtype() || !same_device {
            return Err(Error::Shape {
                op: "Param::set".into(),
                device: value.device().info().label(),
                detail: format!("{}: {:?} cannot replace {:?}", self.0.name, value, *slot),
            });
        }
        *slot = value;
        self.0.version.fetch_add(1, Ordering::Relaxed);
        // After the value's lock is let go: `var_as` takes the two the other way round.
        drop(slot);
        self.forget_cast();
        Ok(())
    }

    /// How many times the value was replaced (set, moved, put): equal numbers, equal
    /// values.
    pub(crate) fn version(&self) -> u64 {
        self.0.version.load(Ordering::Relaxed)
    }

    /// Moves the value to `device` (a pipeline stage's): every holder of this parameter
    /// (the model, an optimizer) sees it there from now on. An optimizer's state made
    /// before the move stays where it was, so move parameters before their optimizer
    /// is built.
    pub fn move_to(&self, device: &DeviceRef) -> Result<()> {
        let mut slot = self.0.value.write().unwrap_or_else(PoisonError::into_inner);
        *slot = slot.to_device(device)?;
        self.0.version.fetch_add(1, Ordering::Relaxed);
        // After the value's lock is let go: `var_as` takes the two the other way round.
        drop(slot);
        self.forget_cast();
        Ok(())
    }

    /// Replaces the value by one of the same shape and dtype on any device: a restore onto
    /// a new plan's device, where the old value may sit on a device that is gone.
    pub(crate) fn put(&self, value: Tensor) -> Result<()> {
        let mut slot = self.0.value.write().unwrap_or_else(PoisonError::into_inner);
        if slot.dims() != value.dims() || slot.dtype() != value.dtype() {
            return Err(Error::Shape {
                op: "Param::put".into(),
                device: value.device().info().label(),
                detail: format!("{}: {:?} cannot replace {:?}", self.0.name, value, *slot),
            });
        }
        *slot = value;
        self.0.version.fetch_add(1, Ordering::Relaxed);
        // After the value's lock is let go: `var_as` takes the two the other way round.
        drop(slot);
        self.forget_cast();
        Ok(())
    }

    /// The value's size in bytes.
    pub fn bytes(&self) -> usize {
        let value = self.value();
        value.numel() * value.dtype().size_in_bytes()
    }
}

impl fmt::Debug for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Param({}, {:?})", self.0.name, self.value())
    }
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Uniform in `[-bound, bound]`.
    Uniform {
        bound: f64,
    },
    Normal {
        std: f64,
    },
}

/// Creates a model's parameters on one device, each named by its path (`blocks.0.attn.qkv.
/// weight`). Initial values depend only on the seed and the name, so the same model built on
/// two devices starts from the same numbers.
#[derive(Clone)]
pub struct ParamStore {
    device: DeviceRef,
    dtype: DType,
    seed: u64,
    prefix: String,
    params: Arc<Mutex<Vec<Param>>>,
}

impl ParamStore {
    /// f32 parameters on `device`.
    pub fn new(device: &DeviceRef, seed: u64) -> ParamStore {
        ParamStore {
            device: device.clone(),
            dtype: DType::F32,
            seed,
            prefix: String::new(),
            params: Arc::default(),
        }
    }

    /// The same store, naming what is created through it `prefix.<name>`.
    pub fn sub(&self, name: impl fmt::Display) -> ParamStore {
        let mut sub = self.clone();
        sub.prefix = self.path(&name.to_string());
        sub
    }

    pub fn device(&self) -> &DeviceRef {
        &self.device
    }

    /// Creates the parameter `name` under this store's prefix.
    pub fn param(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Param> {
        let path = self.path(name);
        let shape = shape.into();
        let mut params = self.params.lock().unwrap_or_else(PoisonError::into_inner);
        if params.iter().any(|p| p.name() == path) {
            return Err(Error::InvalidArgument {
                op: "ParamStore::param".into(),
                device: self.device.info().label(),
                detail: format!("a parameter named {path} already exists"),
            });
        }
        let seed = self.seed ^ name_hash(&path);
        let value = match init {
            Init::Zeros => Tensor::zeros(shape, self.dtype, &self.device)?,
            Init::Ones => Tensor::ones(shape, self.dtype, &self.device)?,
            Init::Uniform { bound } => {
                Tensor::rand(-bound, bound, shape, self.dtype, seed, &self.device)?
            }
            Init::Normal { std } => Tensor::randn(0.0, std, shape, self.dtype, seed, &self.device)?,
        };
        let param = Param::new(path, value);
        params.push(param.clone());
        Ok(param)
    }

    /// Every parameter created through this store or any of its `sub` stores, in creation
    /// order.
    pub fn params(&self) -> Vec<Param> {
        self.params.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }
}

/// FNV-1a of the name: the same in every process, build and Rust version (std's hashers
/// promise none of that), so a checkpoint's initial values are reproducible.
fn name_hash(name: &str) -> u64 {
    name.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
