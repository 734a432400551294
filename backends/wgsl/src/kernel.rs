//! Assembles one specialised kernel: the common prelude, one access block per operand (by
//! dtype and writability), the family's source with its placeholders filled, and the
//! bindings and grid that go with it.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use manychips_api::{DType, Error, Op, Result};

use crate::params::Params;
use crate::template::{fill, section};
use crate::{Binding, Dispatch, Features, Slot};

pub(crate) const COMMON: &str = include_str!("../../../kernels/wgsl/common.wgsl");
const ACCESS: &str = include_str!("../../../kernels/wgsl/access.wgsl");

/// Workgroup size of the 1-D kernels (a multiple of every vendor's SIMD width).
pub(crate) const WG: usize = 256;

/// A storage operand of a kernel; its binding index is its position.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand {
    pub slot: Slot,
    pub dtype: DType,
    pub writable: bool,
    /// Read-only f32 bound as `array<vec4<u32>>`, for aligned vector loads.
    pub vector: bool,
    /// A writable packed output bound as plain words (each written whole by one invocation).
    pub words: bool,
    /// A 32-bit operand bound as `array<vec4<u32>>`, one aligned `vec4` per invocation (the
    /// elementwise `flat4` kernel): an input's words are loaded once into a private `vec4`.
    pub quad: bool,
}

impl Operand {
    pub fn input(view: &manychips_api::View) -> Self {
        Operand {
            slot: Slot::Buffer(view.buffer),
            dtype: view.dtype,
            writable: false,
            vector: false,
            words: false,
            quad: false,
        }
    }
    pub fn output(view: &manychips_api::View) -> Self {
        Operand {
            slot: Slot::Buffer(view.buffer),
            dtype: view.dtype,
            writable: true,
            vector: false,
            words: false,
            quad: false,
        }
    }
}

/// A WGSL function turning an element's bits into f32, and back.
pub(crate) fn conversions(dtype: DType) -> Result<(&'static str, &'static str)> {
    Ok(match dtype {
        DType::F32 => ("bitcast<f32>", "bitcast<u32>"),
        DType::F16 => ("f16_to_f32", "f32_to_f16"),
        DType::BF16 => ("bf16_to_f32", "f32_to_bf16"),
        DType::U32 => ("u32_to_f32", "f32_to_u32_sat"),
        DType::I32 => ("i32_to_f32", "f32_to_i32_sat"),
        DType::U8 => ("f32", "f32_to_u8_sat"),
        DType::I64 => return Err(no_64_bit()),
    })
}

/// `lower` refuses ops with `I64` views first (with the op's description); this is the
/// error of a kernel asked for one all the same.
pub(crate) fn no_64_bit() -> Error {
    Error::UnsupportedDType {
        op: "wgsl kernel".into(),
        device: "wgsl".into(),
        dtype: DType::I64,
        detail: " (WGSL has no 64-bit integers)".into(),
    }
}

/// The access block of operand `k`.
fn access(k: usize, op: &Operand) -> Result<String> {
    let store = match op.dtype {
        DType::F32 | DType::U32 | DType::I32 => "w32",
        DType::F16 | DType::BF16 => "h16",
        DType::U8 => "b8",
        DType::I64 => return Err(no_64_bit()),
    };
    let quad = op.quad && store == "w32";
    let mode = match (op.writable, op.vector && op.dtype == DType::F32) {
        (true, _) if quad => "v4_rw",
        (false, _) if quad => "v4c_ro",
        (true, _) => "rw",
        (false, true) => "v4_ro",
        (false, false) => "ro",
    };
    let key = k.to_string();
    if op.words && op.writable {
        return fill(section(ACCESS, "words_rw")?, &[("K", &key)]);
    }
    let (to, from) = conversions(op.dtype)?;
    let mut text = fill(section(ACCESS, &format!("{store}_{mode}"))?, &[("K", &key)])?;
    text.push_str(&fill(section(ACCESS, "load_f32")?, &[("K", &key), ("TO_F32", to)])?);
    if op.writable {
        text.push_str(&fill(section(ACCESS, "store_f32")?, &[("K", &key), ("FROM_F32", from)])?);
    }
    Ok(text)
}

/// A specialisation's pipeline key and WGSL module.
type Specialised = (Arc<str>, Arc<str>);

/// One kernel to specialise.
pub(crate) struct Kernel<'a> {
    /// Family name, for keys and messages.
    pub family: &'static str,
    /// The template, in static parts joined in order (sections of a kernel file): a key
    /// names them by address, so a dispatch never copies or hashes their text.
    pub source: &'a [&'static str],
    pub entry: &'static str,
    pub operands: Vec<Operand>,
    /// Whether the kernel may flag out-of-range indices in the status buffer.
    pub status: bool,
    pub subs: &'a [(&'a str, &'a str)],
}

impl Kernel<'_> {
    /// The WGSL module text.
    pub fn module(&self) -> Result<String> {
        let params_binding = (self.operands.len() + usize::from(self.status)).to_string();
        let mut text = fill(COMMON, &[("PARAMS", &params_binding)])?;
        for (k, op) in self.operands.iter().enumerate() {
            text.push_str(&access(k, op)?);
        }
        if self.status {
            let k = self.operands.len().to_string();
            text.push_str(&fill(section(ACCESS, "status")?, &[("K", &k)])?);
        }
        text.push_str(&fill(&self.source.concat(), self.subs)?);
        Ok(text)
    }

    /// The key and module of this specialisation, assembled once per process: every later
    /// op of the same kind costs a hash of its description (the template's parts by
    /// address, the substitutions and operands), not a templating pass.
    fn specialised(&self) -> Result<Specialised> {
        static MODULES: OnceLock<Mutex<HashMap<u64, Specialised>>> = OnceLock::new();
        let mut h = DefaultHasher::new();
        (self.family, self.entry, self.status, self.subs).hash(&mut h);
        for part in self.source {
            (part.as_ptr() as usize, part.len()).hash(&mut h);
        }
        for o in &self.operands {
            (o.dtype, o.writable, o.vector, o.words).hash(&mut h);
        }
        let spec = h.finish();
        let modules = MODULES.get_or_init(Default::default);
        if let Some(found) = modules.lock().unwrap_or_else(PoisonError::into_inner).get(&spec) {
            return Ok(found.clone());
        }
        let source: Arc<str> = Arc::from(self.module()?);
        let key: Arc<str> = format!("{}.{}.{spec:016x}", self.family, self.entry).into();
        let mut modules = modules.lock().unwrap_or_else(PoisonError::into_inner);
        modules.insert(spec, (key.clone(), source.clone()));
        Ok((key, source))
    }

    /// The dispatch running this kernel with `params` over `workgroups`.
    pub fn dispatch(&self, params: Params, workgroups: [u32; 3]) -> Result<Dispatch> {
        let (key, source) = self.specialised()?;
        let mut bindings: Vec<Binding> =
            self.operands.iter().map(|o| Binding { slot: o.slot, writable: o.writable }).collect();
        if self.status {
            bindings.push(Binding { slot: Slot::Status, writable: true });
        }
        Ok(Dispatch {
            key,
            source,
            entry: self.entry,
            bindings,
            params: params.into_words(),
            workgroups,
        })
    }
}

/// Workgroups for `items` work items at `per_group` items per workgroup on a 1-D grid folded
/// into x and y (see `linear_id` in common.wgsl).
pub(crate) fn grid_1d(op: &Op, items: usize, per_group: usize, f: &Features) -> Result<[u32; 3]> {
    let groups = items.div_ceil(per_group).max(1);
    let max = (f.max_workgroups_per_dim.max(1)) as usize;
    if groups <= max {
        return Ok([groups as u32, 1, 1]);
    }
    let y = groups.div_ceil(max);
    if y > max {
        return Err(Error::InvalidArgument {
            op: op.name(),
            device: "wgsl".into(),
            detail: format!(
                "{items} work items need {groups} workgroups, more than {max}² per dispatch; {}",
                op.describe()
            ),
        });
    }
    Ok([max as u32, y as u32, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MatmulKernel;

    fn features() -> Features {
        Features {
            shader_f16: false,
            max_storage_binding: 1 << 27,
            max_workgroups_per_dim: 65535,
            matmul: MatmulKernel::RegisterBlocked,
            cpu_backed: false,
        }
    }

    #[test]
    fn folds_large_grids() {
        let op = Op::Fill {
            out: manychips_api::View::new(
                manychips_api::BufferId { device: manychips_api::DeviceId::fresh(), index: 0 },
                manychips_api::Layout::contiguous([1]),
                DType::F32,
            ),
            value: 0.0,
        };
        let f = features();
        assert_eq!(grid_1d(&op, 10, 256, &f).ok(), Some([1, 1, 1]));
        assert_eq!(grid_1d(&op, 0, 256, &f).ok(), Some([1, 1, 1]));
        assert_eq!(grid_1d(&op, 65535 * 256 + 1, 256, &f).ok(), Some([65535, 2, 1]));
        assert!(grid_1d(&op, usize::MAX / 2, 1, &f).is_err());
    }

    #[test]
    fn access_blocks_follow_the_dtype() {
        let slot = Slot::Temporary(0);
        let rw = access(
            2,
            &Operand {
                slot,
                dtype: DType::F16,
                writable: true,
                vector: false,
                words: false,
                quad: false,
            },
        );
        let rw = rw.unwrap_or_default();
        assert!(rw.contains("var<storage, read_write> b2: array<atomic<u32>>"));
        assert!(rw.contains("fn stf2(i: u32, v: f32)") && rw.contains("f32_to_f16(v)"));
        let ro = access(
            0,
            &Operand {
                slot,
                dtype: DType::F32,
                writable: false,
                vector: false,
                words: false,
                quad: false,
            },
        );
        let ro = ro.unwrap_or_default();
        assert!(ro.contains("var<storage, read> b0: array<u32>") && !ro.contains("fn st0"));
    }
}
