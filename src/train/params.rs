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
    /// The value cast to a compute dtype (or copied to where it is used), for the
    /// `version` it was made from ([`Param::var_as`]).
    cast: Mutex<Option<(u64, Var)>>,
    /// Where its graphs use it, when that is not where its value lives, and the dtype they
    /// last read it in ([`Param::keep_master_on`]).
    used_on: Mutex<Option<(DeviceRef, Option<DType>)>>,
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
            used_on: Mutex::new(None),
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

    /// The current value, tracked: its gradient is under [`Param::id`]. A leaf of the
    /// value itself, or, where the value lives on another device than the one its graphs
    /// use it on ([`keep_master_on`](Self::keep_master_on)), its copy there, made as
    /// [`var_as`](Self::var_as) makes a cast.
    pub fn var(&self) -> Result<Var> {
        match self.used_on() {
            None => Ok(Var::leaf_with_id(self.value(), self.0.id)),
            Some(_) => self.var_as(self.value().dtype()),
        }
    }

    /// Where its graphs use it, when its value lives elsewhere.
    fn used_on(&self) -> Option<DeviceRef> {
        let used_on = self.0.used_on.lock().unwrap_or_else(PoisonError::into_inner);
        used_on.as_ref().map(|(device, _)| device.clone())
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
    ///
    /// Where the value (the master copy) lives on another device than its graphs use it on
    /// ([`keep_master_on`](Self::keep_master_on)), the copy, cast there, is sent to that
    /// device, in `dtype`, even where that is the master's own: only the copy lives there.
    pub fn var_as(&self, dtype: DType) -> Result<Var> {
        let mut cast = self.0.cast.lock().unwrap_or_else(PoisonError::into_inner);
        // The version before the value: a value set in between is cast again next time.
        let version = self.version();
        let leaf = Var::leaf_with_id(self.value(), self.0.id);
        let used_on = {
            let mut used_on = self.0.used_on.lock().unwrap_or_else(PoisonError::into_inner);
            used_on.as_mut().map(|(device, read_in)| {
                *read_in = Some(dtype);
                device.clone()
            })
        };
        if used_on.is_none() && leaf.tensor().dtype() == dtype {
            return Ok(leaf);
        }
        let current = cast.as_ref().filter(|(made, var)| {
            *made == version && var.tensor().dtype() == dtype && var.requires_grad()
        });
        match (current, super::is_grad_enabled()) {
            (Some((_, var)), true) => Ok(var.clone()),
            (Some((_, var)), false) => Ok(Var::constant(var.tensor().clone())),
            (None, false) => {
                let copy = leaf.tensor().cast(dtype)?;
                Ok(Var::constant(match &used_on {
                    Some(device) => copy.to_device(device)?,
                    None => copy,
                }))
            }
            (None, true) => {
                // The old copy goes before the new one is made.
                *cast = None;
                let var = leaf.cast_shared(dtype, used_on.as_ref())?;
                *cast = Some((version, var.clone()));
                Ok(var)
            }
        }
    }

    /// Drops the compute-dtype copy of a value that is being replaced.
    fn forget_cast(&self) {
        *self.0.cast.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Moves the value, the master copy, to `host`, while its graphs go on using it where
    /// it is now: they read a copy there in the dtype they ask for ([`var_as`](Self::var_as)),
    /// made from the master once a value and sent over, and their gradients for it stay
    /// there, in the master's dtype: an optimizer over the parameter, whose state is made
    /// where the master is, wants them moved there first. A pipeline stage whose optimizer
    /// state lodges on another device keeps its master copies there too: a bf16 model's
    /// stage then keeps 2 bytes a weight of the 4 of its f32 master. Kept on the device it
    /// is used on, or [`move_to`](Self::move_to), or a restore, puts the value back where
    /// it is used.
    pub fn keep_master_on(&self, host: &DeviceRef) -> Result<()> {
        let used_on = self.used_on().unwrap_or_else(|| self.value().device().clone());
        if used_on.info().id == host.info().id {
            return self.move_to(host);
        }
        if self.value().device().info().id == host.info().id {
            return Ok(());
        }
        // Where it is used first, then the move, whose new version drops the old copy: no
        // copy is made for the wrong device in between.
        *self.0.used_on.lock().unwrap_or_else(PoisonError::into_inner) = Some((used_on, None));
        self.move_value(host)
    }

    /// Where the value lives on another device than its graphs use it on, the copy they
    /// will read, made now from the current value (a pipeline stage makes its copies as
    /// its step starts, while it waits for its first input, not in the forward pass). A
    /// no-op elsewhere, before any graph read it, or while the copy is current.
    pub(crate) fn renew_copy(&self) -> Result<()> {
        let read_in = {
            let used_on = self.0.used_on.lock().unwrap_or_else(PoisonError::into_inner);
            used_on.as_ref().and_then(|(_, read_in)| *read_in)
        };
        match read_in {
            Some(dtype) if super::is_grad_enabled() => self.var_as(dtype).map(drop),
            _ => Ok(()),
        }
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
    /// (the model, an optimizer) sees it there from now on, and its graphs use it there
    /// (undoing [`keep_master_on`](Self::keep_master_on)). An optimizer's state made
    /// before the move stays where it was, so move parameters before their optimizer
    /// is built.
    pub fn move_to(&self, device: &DeviceRef) -> Result<()> {
        *self.0.used_on.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.move_value(device)
    }

    fn move_value(&self, device: &DeviceRef) -> Result<()> {
        let mut slot = self.0.value.write().unwrap_or_else(PoisonError::into_inner);
        *slot = slot.to_device(device)?;
        self.0.version.fetch_add(1, Ordering::Relaxed);
        // After the value's lock is let go: `var_as` takes the two the other way round.
        drop(slot);
        self.forget_cast();
        Ok(())
    }

    /// Replaces the value by one of the same shape and dtype on any device: a restore onto
    /// a new plan's device, where the old value may sit on a device that is gone. Its
    /// graphs use it there from now on, as after [`move_to`](Self::move_to).
    pub(crate) fn put(&self, value: Tensor) -> Result<()> {
        let mut slot = self.0.value.write().unwrap_or_else(PoisonError::into_inner);
        if slot.dims() != value.dims() || slot.dtype() != value.dtype() {
            return Err(Error::Shape {
                op: "Param::put".into(),
                device: value.device().info().label(),
                detail: format!("{}: {:?} cannot replace {:?}", self.0.name, value, *slot),
            });
        }
        // Used where it is from now on, before the new version can be copied elsewhere.
        *self.0.used_on.lock().unwrap_or_else(PoisonError::into_inner) = None;
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
