//! Loading libvulkan, the instance, and what each physical device offers.

use std::ffi::{CStr, CString};
use std::sync::Arc;

use ash::vk;
use manychips_api::{Error, Result};

use crate::VulkanDevice;

/// The loaded library and one instance, shared by every device found through it; destroyed
/// when the last device is dropped.
pub(crate) struct Instance {
    /// Keeps libvulkan loaded for as long as the instance lives.
    _entry: ash::Entry,
    pub(crate) raw: ash::Instance,
    /// The Vulkan version the instance was created for.
    pub(crate) api_version: u32,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: every object created from this instance (devices) holds an `Arc` to it, so
        // this runs after all of them were destroyed.
        unsafe { self.raw.destroy_instance(None) };
    }
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: "vulkan".into(), reason: reason.into() }
}

impl Instance {
    fn new() -> Result<Instance> {
        // SAFETY: loading libvulkan runs its initialisers; the Vulkan loader is designed to
        // be loaded into any process, and the entry is kept alive as long as the instance.
        let entry = unsafe { ash::Entry::load() }
            .map_err(|e| unavailable(format!("cannot load the Vulkan library: {e}")))?;
        // SAFETY: a plain query on a valid entry.
        let loader = match unsafe { entry.try_enumerate_instance_version() } {
            Ok(Some(v)) => v,
            Ok(None) => vk::API_VERSION_1_0,
            Err(e) => return Err(unavailable(format!("vkEnumerateInstanceVersion: {e:?}"))),
        };
        if loader < vk::API_VERSION_1_1 {
            return Err(unavailable(format!(
                "the Vulkan loader offers version {}.{}, 1.1 is needed",
                vk::api_version_major(loader),
                vk::api_version_minor(loader)
            )));
        }
        let api_version = loader.min(vk::API_VERSION_1_3);
        // SAFETY: a plain query on a valid entry.
        let available = unsafe { entry.enumerate_instance_extension_properties(None) }
            .map_err(|e| unavailable(format!("vkEnumerateInstanceExtensionProperties: {e:?}")))?;
        let portability = ash::khr::portability_enumeration::NAME;
        let has_portability = available
            .iter()
            .any(|p| p.extension_name_as_c_str().is_ok_and(|name| name == portability));
        let mut extensions = Vec::new();
        let mut flags = vk::InstanceCreateFlags::empty();
        if has_portability {
            extensions.push(portability.as_ptr());
            flags |= vk::InstanceCreateFlags::ENUMERATE_PORTABILITY_KHR;
        }
        let app_name = c"manychips";
        let app = vk::ApplicationInfo::default()
            .application_name(app_name)
            .engine_name(app_name)
            .api_version(api_version);
        let create = vk::InstanceCreateInfo::default()
            .application_info(&app)
            .enabled_extension_names(&extensions)
            .flags(flags);
        // SAFETY: the create info and everything it points to outlive the call.
        let raw = unsafe { entry.create_instance(&create, None) }.map_err(|e| match e {
            vk::Result::ERROR_INCOMPATIBLE_DRIVER => unavailable(
                "the Vulkan loader found no driver (vkCreateInstance: ERROR_INCOMPATIBLE_DRIVER)",
            ),
            e => unavailable(format!("vkCreateInstance: {e:?}")),
        })?;
        Ok(Instance { _entry: entry, raw, api_version })
    }
}

/// Everything the backend needs to know about one physical device.
#[derive(Clone, Debug)]
pub(crate) struct Adapter {
    pub(crate) physical: vk::PhysicalDevice,
    pub(crate) name: String,
    pub(crate) vendor: String,
    pub(crate) driver_version: String,
    pub(crate) uuid: [u8; 16],
    pub(crate) pci_bus_id: Option<String>,
    pub(crate) memory_total: u64,
    pub(crate) is_cpu: bool,
    /// Device memory is host memory (a CPU driver or an integrated GPU): host-visible device
    /// buffers may be read and written in place.
    pub(crate) unified: bool,
    /// robustBufferAccess is offered (and will be enabled): out-of-bounds buffer accesses
    /// are harmless, so kernels need no bounds checks of their own.
    pub(crate) robust: bool,
    pub(crate) queue_family: u32,
    pub(crate) limits: vk::PhysicalDeviceLimits,
    /// Device extensions to enable.
    pub(crate) extensions: Vec<CString>,
    /// shaderFloat16 and storageBuffer16BitAccess are both offered (and will be enabled).
    pub(crate) shader_f16: bool,
}

fn vendor_name(id: u32) -> String {
    match id {
        0x1002 => "AMD".into(),
        0x1010 => "ImgTec".into(),
        0x10de => "NVIDIA".into(),
        0x13b5 => "ARM".into(),
        0x5143 => "Qualcomm".into(),
        0x8086 => "Intel".into(),
        0x106b => "Apple".into(),
        0x10005 => "Mesa".into(),
        other => format!("0x{other:04x}"),
    }
}

fn c_string(s: std::result::Result<&CStr, impl std::fmt::Debug>) -> String {
    s.map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Describes `physical`, or `None` when it has no compute queue.
fn describe(instance: &Instance, physical: vk::PhysicalDevice) -> Result<Option<Adapter>> {
    let raw = &instance.raw;
    // SAFETY: `physical` was enumerated from this live instance.
    let families = unsafe { raw.get_physical_device_queue_family_properties(physical) };
    // Prefer a compute queue without graphics (an async compute queue), else any.
    let compute = |f: &vk::QueueFamilyProperties| {
        f.queue_count > 0 && f.queue_flags.contains(vk::QueueFlags::COMPUTE)
    };
    let family = families
        .iter()
        .position(|f| compute(f) && !f.queue_flags.contains(vk::QueueFlags::GRAPHICS))
        .or_else(|| families.iter().position(compute));
    let Some(family) = family else { return Ok(None) };
    // SAFETY: as above.
    let available = unsafe { raw.enumerate_device_extension_properties(physical) }
        .map_err(|e| unavailable(format!("vkEnumerateDeviceExtensionProperties: {e:?}")))?;
    let has = |name: &CStr| {
        available.iter().any(|p| p.extension_name_as_c_str().is_ok_and(|n| n == name))
    };
    // SAFETY: as above.
    let basic = unsafe { raw.get_physical_device_properties(physical) };
    let api_version = basic.api_version.min(instance.api_version);
    if api_version < vk::API_VERSION_1_1 {
        return Ok(None);
    }
    let has_driver_props =
        api_version >= vk::API_VERSION_1_2 || has(ash::khr::driver_properties::NAME);
    let has_pci = has(ash::ext::pci_bus_info::NAME);
    let has_f16_ext =
        api_version >= vk::API_VERSION_1_2 || has(ash::khr::shader_float16_int8::NAME);

    let mut id_props = vk::PhysicalDeviceIDProperties::default();
    let mut driver = vk::PhysicalDeviceDriverProperties::default();
    let mut pci = vk::PhysicalDevicePCIBusInfoPropertiesEXT::default();
    let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut id_props);
    if has_driver_props {
        props2 = props2.push_next(&mut driver);
    }
    if has_pci {
        props2 = props2.push_next(&mut pci);
    }
    // SAFETY: the chained structs are valid for this Vulkan version (checked above) and
    // live until the call returns.
    unsafe { raw.get_physical_device_properties2(physical, &mut props2) };
    let props = props2.properties;

    let mut f16 = vk::PhysicalDeviceShaderFloat16Int8Features::default();
    let mut storage16 = vk::PhysicalDevice16BitStorageFeatures::default();
    let mut features2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut storage16);
    if has_f16_ext {
        features2 = features2.push_next(&mut f16);
    }
    // SAFETY: as above.
    unsafe { raw.get_physical_device_features2(physical, &mut features2) };
    let robust = features2.features.robust_buffer_access == vk::TRUE;
    let shader_f16 = has_f16_ext
        && f16.shader_float16 == vk::TRUE
        && storage16.storage_buffer16_bit_access == vk::TRUE;

    let mut extensions = Vec::new();
    if shader_f16 && api_version < vk::API_VERSION_1_2 {
        extensions.push(ash::khr::shader_float16_int8::NAME.to_owned());
    }
    let portability_subset = c"VK_KHR_portability_subset";
    if has(portability_subset) {
        extensions.push(portability_subset.to_owned());
    }

    // SAFETY: as above.
    let memory = unsafe { raw.get_physical_device_memory_properties(physical) };
    let heaps = memory.memory_heaps_as_slice();
    let local: u64 = heaps
        .iter()
        .filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
        .map(|h| h.size)
        .sum();
    let memory_total = if local > 0 { local } else { heaps.iter().map(|h| h.size).sum() };

    let driver_version = if has_driver_props {
        let name = c_string(driver.driver_name_as_c_str());
        let info = c_string(driver.driver_info_as_c_str());
        format!("{name} {info}").trim().to_string()
    } else {
        String::new()
    };
    let driver_version = if driver_version.is_empty() {
        format!("0x{:08x}", props.driver_version)
    } else {
        driver_version
    };
    let pci_bus_id = has_pci.then(|| {
        format!(
            "{:04x}:{:02x}:{:02x}.{:x}",
            pci.pci_domain, pci.pci_bus, pci.pci_device, pci.pci_function
        )
    });
    Ok(Some(Adapter {
        physical,
        name: c_string(props.device_name_as_c_str()),
        vendor: vendor_name(props.vendor_id),
        driver_version,
        uuid: id_props.device_uuid,
        pci_bus_id,
        memory_total,
        is_cpu: props.device_type == vk::PhysicalDeviceType::CPU,
        unified: matches!(
            props.device_type,
            vk::PhysicalDeviceType::CPU | vk::PhysicalDeviceType::INTEGRATED_GPU
        ),
        robust,
        queue_family: family as u32,
        limits: props.limits,
        extensions,
        shader_f16,
    }))
}

/// Every Vulkan device with a compute queue, in the driver's order (`vulkan:0`, ...).
///
/// No library, no instance or no device is `Err(Unavailable)` with the reason, never a panic.
pub fn discover() -> Result<Vec<VulkanDevice>> {
    let instance = Arc::new(Instance::new()?);
    // SAFETY: a plain query on a live instance.
    let physicals = unsafe { instance.raw.enumerate_physical_devices() }
        .map_err(|e| unavailable(format!("vkEnumeratePhysicalDevices: {e:?}")))?;
    let mut devices = Vec::new();
    let mut skipped = Vec::new();
    for physical in physicals {
        match describe(&instance, physical) {
            Ok(Some(adapter)) => {
                let name = adapter.name.clone();
                match VulkanDevice::new(instance.clone(), adapter, devices.len()) {
                    Ok(device) => devices.push(device),
                    Err(e) => {
                        tracing::warn!(%name, error = %e, "vulkan device skipped");
                        skipped.push(format!("{name}: {e}"));
                    }
                }
            }
            Ok(None) => skipped.push("a device without a Vulkan 1.1 compute queue".into()),
            Err(e) => skipped.push(e.to_string()),
        }
    }
    if devices.is_empty() {
        let reason = if skipped.is_empty() {
            "the Vulkan loader found no physical device".to_string()
        } else {
            format!("no usable Vulkan device ({})", skipped.join("; "))
        };
        return Err(unavailable(reason));
    }
    Ok(devices)
}
