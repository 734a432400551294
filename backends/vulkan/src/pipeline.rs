//! WGSL → SPIR-V by naga, and compute pipelines cached per [`Dispatch::key`].

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::Arc;

use ash::vk;
use manychips_api::{Error, Result};
use manychips_wgsl::Dispatch;

use crate::error::vk_error;

/// A compiled kernel and the layouts it is bound with.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) raw: vk::Pipeline,
    pub(crate) layout: vk::PipelineLayout,
    pub(crate) set_layout: vk::DescriptorSetLayout,
    /// Storage buffers at bindings `0..storage`.
    pub(crate) storage: usize,
    /// A uniform buffer at binding `storage`.
    pub(crate) uniform: bool,
}

/// Translates a WGSL kernel to SPIR-V words.
///
/// With `robust` (robustBufferAccess enabled) buffer accesses are left unchecked, as the
/// device makes out-of-bounds accesses harmless; otherwise naga clamps indices.
pub(crate) fn compile(
    source: &str,
    entry: &str,
    shader_f16: bool,
    robust: bool,
) -> Result<Vec<u32>, String> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("WGSL parse error: {}", e.emit_to_string(source)))?;
    let mut caps = naga::valid::Capabilities::default();
    if shader_f16 {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| format!("WGSL validation error: {}", e.emit_to_string(source)))?;
    let policies = naga::proc::BoundsCheckPolicies {
        index: naga::proc::BoundsCheckPolicy::Restrict,
        buffer: if robust {
            naga::proc::BoundsCheckPolicy::Unchecked
        } else {
            naga::proc::BoundsCheckPolicy::Restrict
        },
        ..Default::default()
    };
    let options = naga::back::spv::Options {
        lang_version: (1, 3),
        bounds_check_policies: policies,
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.to_string(),
    };
    naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
        .map_err(|e| format!("SPIR-V generation error: {e}"))
}

/// Pipelines by kernel key. Owns every pipeline object it created.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    pipelines: HashMap<Arc<str>, Pipeline>,
}

impl Cache {
    /// The pipeline of `dispatch`, compiled on first use.
    pub(crate) fn get(
        &mut self,
        device: &ash::Device,
        label: &str,
        op: &str,
        shader_f16: bool,
        robust: bool,
        dispatch: &Dispatch,
    ) -> Result<&Pipeline> {
        if !self.pipelines.contains_key(&dispatch.key) {
            let pipeline = create(device, label, op, shader_f16, robust, dispatch)?;
            self.pipelines.insert(dispatch.key.clone(), pipeline);
        }
        self.pipelines.get(&dispatch.key).ok_or_else(|| Error::Fault {
            op: op.into(),
            device: label.into(),
            detail: format!("kernel {} vanished from the pipeline cache", dispatch.key),
        })
    }

    /// Destroys every pipeline; the device must be idle.
    pub(crate) fn destroy(&mut self, device: &ash::Device) {
        for (_, p) in self.pipelines.drain() {
            // SAFETY: the caller guarantees the device is idle; each object is destroyed once.
            unsafe {
                device.destroy_pipeline(p.raw, None);
                device.destroy_pipeline_layout(p.layout, None);
                device.destroy_descriptor_set_layout(p.set_layout, None);
            }
        }
    }
}

fn create(
    device: &ash::Device,
    label: &str,
    op: &str,
    shader_f16: bool,
    robust: bool,
    dispatch: &Dispatch,
) -> Result<Pipeline> {
    let span = tracing::debug_span!("compile kernel", key = %dispatch.key);
    let _guard = span.enter();
    let fault = |detail: String| Error::Fault {
        op: op.into(),
        device: label.into(),
        detail: format!("kernel {}: {detail}", dispatch.key),
    };
    let words = compile(&dispatch.source, dispatch.entry, shader_f16, robust).map_err(fault)?;
    let entry = CString::new(dispatch.entry).map_err(|e| fault(format!("entry name: {e}")))?;

    let storage = dispatch.bindings.len();
    let uniform = !dispatch.params.is_empty();
    let mut bindings: Vec<vk::DescriptorSetLayoutBinding> = (0..storage)
        .map(|i| {
            vk::DescriptorSetLayoutBinding::default()
                .binding(i as u32)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
        })
        .collect();
    if uniform {
        bindings.push(
            vk::DescriptorSetLayoutBinding::default()
                .binding(storage as u32)
                .descriptor_type(vk::DescriptorType::UNIFORM_BUFFER)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE),
        );
    }
    let vk_err = |what: &str, e: vk::Result| vk_error(op, label, what, e);

    let info = vk::ShaderModuleCreateInfo::default().code(&words);
    // SAFETY: `words` is SPIR-V produced and validated by naga.
    let module = unsafe { device.create_shader_module(&info, None) }
        .map_err(|e| vk_err("vkCreateShaderModule", e))?;
    let set_info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
    // SAFETY: a valid create info on a live device.
    let set_layout = match unsafe { device.create_descriptor_set_layout(&set_info, None) } {
        Ok(l) => l,
        Err(e) => {
            // SAFETY: the module is used by nothing yet.
            unsafe { device.destroy_shader_module(module, None) };
            return Err(vk_err("vkCreateDescriptorSetLayout", e));
        }
    };
    let set_layouts = [set_layout];
    let layout_info = vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts);
    // SAFETY: a valid create info on a live device.
    let layout = match unsafe { device.create_pipeline_layout(&layout_info, None) } {
        Ok(l) => l,
        Err(e) => {
            // SAFETY: these objects are used by nothing yet.
            unsafe {
                device.destroy_descriptor_set_layout(set_layout, None);
                device.destroy_shader_module(module, None);
            }
            return Err(vk_err("vkCreatePipelineLayout", e));
        }
    };
    let stage = vk::PipelineShaderStageCreateInfo::default()
        .stage(vk::ShaderStageFlags::COMPUTE)
        .module(module)
        .name(&entry);
    let create = [vk::ComputePipelineCreateInfo::default().stage(stage).layout(layout)];
    // SAFETY: the module, layout and entry name outlive the call.
    let created =
        unsafe { device.create_compute_pipelines(vk::PipelineCache::null(), &create, None) };
    // SAFETY: a shader module may be destroyed once the pipelines are created.
    unsafe { device.destroy_shader_module(module, None) };
    let first = match created {
        Ok(pipelines) => pipelines.first().copied().ok_or(vk::Result::ERROR_UNKNOWN),
        Err((_, e)) => Err(e),
    };
    match first {
        Ok(raw) => Ok(Pipeline { raw, layout, set_layout, storage, uniform }),
        Err(e) => {
            // SAFETY: these objects are used by nothing.
            unsafe {
                device.destroy_pipeline_layout(layout, None);
                device.destroy_descriptor_set_layout(set_layout, None);
            }
            Err(vk_err("vkCreateComputePipelines", e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compile;

    const KERNEL: &str = "
        @group(0) @binding(0) var<storage, read_write> data: array<atomic<u32>>;
        @compute @workgroup_size(64)
        fn main(@builtin(global_invocation_id) id: vec3<u32>) {
            atomicOr(&data[id.x], 1u);
        }
    ";

    #[test]
    fn wgsl_compiles_to_spirv_with_either_bounds_policy() {
        for robust in [false, true] {
            let words = compile(KERNEL, "main", false, robust).unwrap();
            assert_eq!(words[0], 0x0723_0203, "SPIR-V magic number");
        }
    }

    /// Every integer op (and the new float ones, scatter and argsort on every dtype) for every integer
    /// dtype the kernels take: the lowered WGSL validates and becomes SPIR-V (the kit runs
    /// them; this names the kernel that does not build).
    #[test]
    fn integer_kernels_compile() {
        use manychips_api::{
            BinaryOp, BufferId, CompareOp, DType, DeviceId, Instr, Layout, Op, ReduceOp, ScatterOp,
            UnaryOp, View,
        };
        let device = DeviceId::fresh();
        let view = |index, dims: &[usize], dtype| {
            View::new(BufferId { device, index }, Layout::contiguous(dims), dtype)
        };
        let features = manychips_wgsl::Features {
            shader_f16: false,
            max_storage_binding: 128 << 20,
            max_workgroups_per_dim: 65535,
            matmul: manychips_wgsl::MatmulKernel::RegisterBlocked,
            cpu_backed: true,
        };
        let mut ops = Vec::new();
        for d in [DType::U8, DType::U32, DType::I32] {
            let (a, b, o) = (view(0, &[4, 9], d), view(1, &[4, 9], d), view(2, &[4, 9], d));
            for op in BinaryOp::ALL.into_iter().filter(|&op| op != BinaryOp::Pow) {
                ops.push(Op::Binary { op, lhs: a.clone(), rhs: b.clone(), out: o.clone() });
            }
            let mask = view(2, &[4, 9], DType::U8);
            ops.push(Op::Compare { op: CompareOp::Lt, lhs: a.clone(), rhs: b.clone(), out: mask });
            for op in ReduceOp::ALL.into_iter().filter(|&op| op != ReduceOp::Mean) {
                let out = view(2, &[4, 1], if op.is_arg() { DType::U32 } else { d });
                ops.push(Op::Reduce { op, input: a.clone(), out, axis: 1 });
            }
            for other in manychips_wgsl::DTYPES {
                ops.push(Op::Cast { input: a.clone(), out: view(2, &[4, 9], other) });
                ops.push(Op::Cast { input: view(0, &[4, 9], other), out: o.clone() });
            }
            let idx = view(3, &[5], d);
            if d != DType::U8 {
                let (src, out) = (view(0, &[5, 9], DType::F32), view(2, &[4, 9], DType::F32));
                ops.push(Op::IndexAdd { src, indices: idx.clone(), out, axis: 0 });
                let out = view(2, &[5, 9], d);
                ops.push(Op::IndexSelect { input: a.clone(), indices: idx, out, axis: 0 });
            }
            ops.push(Op::Fill { out: o.clone(), value: -3.0 });
        }
        // Scatter: every combination on every dtype (integer and float paths, packed and
        // 32-bit outputs), with unsigned and signed indices.
        for d in manychips_wgsl::DTYPES {
            for (op, ix) in
                ScatterOp::ALL.into_iter().flat_map(|op| [(op, DType::U32), (op, DType::I32)])
            {
                let (src, indices) = (view(0, &[4, 7], d), view(1, &[4, 7], ix));
                ops.push(Op::Scatter { op, src, indices, out: view(2, &[4, 9], d), axis: 1 });
            }
        }
        // ArgSort: the key kernel of every dtype, the stages and the write.
        for d in manychips_wgsl::DTYPES {
            for descending in [false, true] {
                let (input, out) = (view(0, &[4, 9], d), view(1, &[4, 9], DType::U32));
                ops.push(Op::ArgSort { input, out, axis: 1, descending });
            }
        }
        let i = view(0, &[4, 9], DType::I32);
        for op in [UnaryOp::Neg, UnaryOp::Abs] {
            ops.push(Op::Unary { op, input: i.clone(), out: view(2, &[4, 9], DType::I32) });
        }
        let f = |k| view(k, &[4, 9], DType::F16);
        ops.push(Op::Binary { op: BinaryOp::Rem, lhs: f(0), rhs: f(1), out: f(2) });
        let out = view(2, &[4, 1], DType::U32);
        ops.push(Op::Reduce { op: ReduceOp::ArgMin, input: f(0), out, axis: 1 });
        let program = vec![Instr::Input(0), Instr::Input(1), Instr::Binary(BinaryOp::Rem, 0, 1)];
        ops.push(Op::Fused { inputs: vec![f(0), f(1)], program: program.clone(), out: f(2) });
        let (inputs, out) = (vec![f(0), f(1)], view(2, &[4, 1], DType::F16));
        ops.push(Op::FusedReduce { inputs, program, op: ReduceOp::Sum, axis: 1, out });
        // ArgSort's workgroup-memory tiles, which GPUs (not CPU-backed drivers) get.
        let gpu = manychips_wgsl::Features { cpu_backed: false, ..features.clone() };
        let (input, out) = (view(0, &[2, 1500], DType::F32), view(1, &[2, 1500], DType::U32));
        let tiled = Op::ArgSort { input, out, axis: 1, descending: false };
        for (op, features) in ops.iter().map(|op| (op, &features)).chain([(&tiled, &gpu)]) {
            assert!(op.validate("test").is_ok(), "{}", op.describe());
            let lowered = manychips_wgsl::lower(op, features);
            let lowered = lowered.unwrap_or_else(|e| panic!("{}: {e}", op.describe()));
            for d in &lowered.dispatches {
                if let Err(e) = compile(&d.source, d.entry, false, false) {
                    panic!("{} ({}): {e}", op.describe(), d.entry);
                }
            }
        }
    }

    #[test]
    fn bad_kernels_are_errors_naming_the_problem() {
        let e = compile("fn main( {", "main", false, false).unwrap_err();
        assert!(e.contains("parse"), "{e}");
        let e = compile(KERNEL, "missing", false, false).unwrap_err();
        assert!(e.contains("SPIR-V"), "{e}");
    }
}
