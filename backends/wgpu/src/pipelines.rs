//! Compute pipelines, compiled once per `Dispatch::key` with a layout derived from the
//! dispatch's bindings (explicit, so a binding a kernel does not use is still accepted).

use std::collections::HashMap;
use std::sync::Arc;

use manychips_api::{Error, Result};
use manychips_wgsl::Dispatch;

use crate::errors::convert;

pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(crate) struct Pipelines {
    cache: HashMap<Arc<str>, Arc<Pipeline>>,
}

impl Pipelines {
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        label: &str,
        op: &str,
        d: &Dispatch,
    ) -> Result<Arc<Pipeline>> {
        if let Some(p) = self.cache.get(&d.key) {
            return Ok(p.clone());
        }
        let p = Arc::new(compile(device, label, op, d)?);
        self.cache.insert(d.key.clone(), p.clone());
        Ok(p)
    }
}

fn compile(device: &wgpu::Device, label: &str, op: &str, d: &Dispatch) -> Result<Pipeline> {
    tracing::debug!(device = label, key = %d.key, "compiling pipeline");
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut entries: Vec<wgpu::BindGroupLayoutEntry> = d
        .bindings
        .iter()
        .enumerate()
        .map(|(i, b)| entry(i, wgpu::BufferBindingType::Storage { read_only: !b.writable }))
        .collect();
    if !d.params.is_empty() {
        entries.push(entry(d.bindings.len(), wgpu::BufferBindingType::Uniform));
    }
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&d.key),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&d.key),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&d.key),
        source: wgpu::ShaderSource::Wgsl(d.source.as_ref().into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&d.key),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(d.entry),
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        let err = convert(label, op, e);
        return Err(match err {
            Error::Fault { op, device, detail } => Error::Fault {
                op,
                device,
                detail: format!("kernel {} does not compile: {detail}", d.key),
            },
            other => other,
        });
    }
    Ok(Pipeline { pipeline, layout })
}

fn entry(binding: usize, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding: binding as u32,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    }
}
