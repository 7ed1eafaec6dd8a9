//! Shader checks that need no GPU.
//!
//! For every shader specialisation the host can build
//! (`luna_wgpu::kernels::all_variants()`), naga parses the WGSL, validates it
//! as core WebGPU (no optional features but `shader-f16` for the variants that
//! declare `enable f16`), checks that its bindings match the
//! host's bind group layout, applies the variant's override constants, checks
//! that its workgroup memory fits WebGPU's default 16 KiB, and translates the
//! result to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12). A shader change
//! that would break on a backend this machine does not have fails here,
//! naming the kernel and the specialisation.
//!
//! A second test makes sure every `shaders/*.wgsl` file is reached by some
//! variant, so a new shader cannot slip past the first test.

use luna_wgpu::gpu::pipelines::{Access, KernelSpec};
use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ShaderStage, StorageAccess};

const SHADER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");

/// Lowest Metal Shading Language version to translate for (macOS 10.13 / iOS 11).
const MSL_VERSION: (u8, u8) = (2, 0);

/// "gemm.main [ACT=1, HAS_RES=0]": the kernel and its specialisation.
fn label(spec: &KernelSpec) -> String {
    let constants: Vec<String> = spec
        .constants
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    format!("{}.{} [{}]", spec.name, spec.entry, constants.join(", "))
}

/// Runs every check on one variant; the error says which step failed and why.
fn check_variant(spec: &KernelSpec) -> Result<(), String> {
    let path = format!("shaders/{}.wgsl", spec.name);
    let module = naga::front::wgsl::parse_str(spec.source).map_err(|e| {
        format!(
            "WGSL parse failed:\n{}",
            e.emit_to_string_with_path(spec.source, &path)
        )
    })?;
    // No capabilities: the shader must be core WebGPU, needing no optional
    // feature; except the float16-weight variants (`enable f16;`), which the
    // host builds only on a device with `shader-f16` (`Engine::set_precision`).
    let caps = if spec.source.contains("enable f16;") { Capabilities::SHADER_FLOAT16 } else { Capabilities::empty() };
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| {
            format!(
                "naga validation failed:\n{}",
                e.emit_to_string_with_path(spec.source, &path)
            )
        })?;

    let entry = module
        .entry_points
        .iter()
        .find(|ep| ep.name == spec.entry)
        .ok_or_else(|| format!("no entry point named `{}` in the shader", spec.entry))?;
    if entry.stage != ShaderStage::Compute {
        return Err(format!(
            "entry point `{}` is {:?}, not a compute shader",
            spec.entry, entry.stage
        ));
    }

    check_bindings(spec, &module)?;

    // Replace the overrides by the variant's values, as wgpu does before
    // handing the module to a backend. This fails if a name is unknown, a
    // value does not fit its type, or an override without a default is left
    // unset.
    let constants: naga::back::PipelineConstants = spec
        .constants
        .iter()
        .map(|(name, value)| (name.to_string(), *value))
        .collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((ShaderStage::Compute, spec.entry)),
        &constants,
    )
    .map_err(|e| format!("applying override constants failed: {e}"))?;

    check_workgroup_memory(&module)?;
    to_spirv(spec, &module, &info).map_err(|e| format!("SPIR-V translation failed: {e}"))?;
    to_msl(spec, &module, &info).map_err(|e| format!("MSL translation failed: {e}"))?;
    to_hlsl(spec, &module, &info).map_err(|e| format!("HLSL translation failed: {e}"))?;
    Ok(())
}

/// WebGPU's default `maxComputeWorkgroupStorageSize`: a kernel that needs more
/// would fail on adapters that grant only the default (lavapipe grants more,
/// so the GPU tests here would not notice).
const MAX_WORKGROUP_BYTES: u32 = 16384;

fn check_workgroup_memory(module: &Module) -> Result<(), String> {
    let bytes: u32 = module
        .global_variables
        .iter()
        .filter(|(_, var)| var.space == AddressSpace::WorkGroup)
        .map(|(_, var)| module.types[var.ty].inner.size(module.to_ctx()))
        .sum();
    if bytes > MAX_WORKGROUP_BYTES {
        return Err(format!("{bytes} bytes of workgroup memory, over WebGPU's default {MAX_WORKGROUP_BYTES}"));
    }
    Ok(())
}

/// The host's layout (see `PipelineCache::get`) is binding 0 = uniform
/// `Params`, bindings 1..=storage.len() = storage buffers, all in group 0.
/// The shader must declare exactly those, with the same read/write access.
fn check_bindings(spec: &KernelSpec, module: &Module) -> Result<(), String> {
    let mut bindings: Vec<(u32, &str, AddressSpace)> = Vec::new();
    for (_, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else {
            continue;
        };
        let name = var.name.as_deref().unwrap_or("?");
        if binding.group != 0 {
            return Err(format!(
                "`{name}` is in @group({}), but the host only builds group 0",
                binding.group
            ));
        }
        bindings.push((binding.binding, name, var.space));
    }
    bindings.sort_by_key(|b| b.0);

    let expected = spec.storage.len() + 1;
    if bindings.len() != expected {
        return Err(format!(
            "the shader declares {} bindings in group 0, but the host's layout has {expected} \
             (1 uniform + {} storage buffers)",
            bindings.len(),
            spec.storage.len()
        ));
    }
    for (i, (binding, name, space)) in bindings.iter().enumerate() {
        if *binding != i as u32 {
            return Err(format!(
                "group 0 bindings must be numbered 0..{expected} without gaps; found @binding({binding}) (`{name}`) at position {i}"
            ));
        }
        let ok = match (i, space) {
            (0, AddressSpace::Uniform) => true,
            (0, _) => false,
            (_, AddressSpace::Storage { access }) => match spec.storage[i - 1] {
                Access::Read => *access == StorageAccess::LOAD,
                Access::Write => access.contains(StorageAccess::STORE),
            },
            _ => false,
        };
        if !ok {
            let host = if i == 0 {
                "uniform".to_string()
            } else {
                format!("storage Access::{:?}", spec.storage[i - 1])
            };
            return Err(format!(
                "@binding({binding}) `{name}` is {} in the shader, but {host} on the host",
                describe(space)
            ));
        }
    }
    Ok(())
}

/// How a binding's address space reads in WGSL.
fn describe(space: &AddressSpace) -> String {
    match space {
        AddressSpace::Uniform => "var<uniform>".into(),
        AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => {
            "var<storage, read_write>".into()
        }
        AddressSpace::Storage { .. } => "var<storage, read>".into(),
        other => format!("{other:?}"),
    }
}

fn to_spirv(spec: &KernelSpec, module: &Module, info: &ModuleInfo) -> Result<(), String> {
    let options = spv::Options::default();
    let pipeline = spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: spec.entry.to_string(),
    };
    let words =
        spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| e.to_string())?;
    if words.first() != Some(&0x0723_0203) {
        return Err("output does not start with the SPIR-V magic number".into());
    }
    Ok(())
}

fn to_msl(spec: &KernelSpec, module: &Module, info: &ModuleInfo) -> Result<(), String> {
    // Map every binding to a Metal buffer slot, as wgpu-hal's Metal backend
    // does, rather than letting naga invent missing ones.
    let mut resources = msl::EntryPointResources::default();
    let mut slot: u8 = 0;
    for (_, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else {
            continue;
        };
        let mutable = matches!(var.space, AddressSpace::Storage { access } if access.contains(StorageAccess::STORE));
        resources.resources.insert(
            *binding,
            msl::BindTarget {
                buffer: Some(slot),
                mutable,
                ..Default::default()
            },
        );
        slot += 1;
    }
    resources.sizes_buffer = Some(slot);

    let options = msl::Options {
        lang_version: MSL_VERSION,
        per_entry_point_map: [(spec.entry.to_string(), resources)].into(),
        fake_missing_bindings: false,
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, spec.entry.to_string())),
        ..Default::default()
    };
    let (_source, translation) =
        msl::write_string(module, info, &options, &pipeline).map_err(|e| e.to_string())?;
    for name in translation.entry_point_names {
        name.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn to_hlsl(spec: &KernelSpec, module: &Module, info: &ModuleInfo) -> Result<(), String> {
    // Shader model 5.1 is the lowest wgpu's DX12 backend accepts.
    let options = hlsl::Options::default();
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, spec.entry.to_string())),
    };
    let mut source = String::new();
    let reflection = hlsl::Writer::new(&mut source, &options, &pipeline)
        .write(module, info, None)
        .map_err(|e| e.to_string())?;
    for name in reflection.entry_point_names {
        name.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn every_variant_validates_and_translates_to_spirv_msl_hlsl() {
    let variants = luna_wgpu::kernels::all_variants();
    assert!(!variants.is_empty(), "kernels::all_variants() is empty");

    let failures: Vec<String> = variants
        .iter()
        .filter_map(|spec| {
            check_variant(spec)
                .err()
                .map(|e| format!("{}: {}", label(spec), e.trim_end()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} shader variants failed:\n\n{}",
        failures.len(),
        variants.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_shader_file_is_covered_by_a_variant() {
    let variants = luna_wgpu::kernels::all_variants();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(SHADER_DIR).expect("cannot list shaders/") {
        let path = entry.expect("cannot read shaders/").path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            files.push(path);
        }
    }
    assert!(!files.is_empty(), "no .wgsl files found in {SHADER_DIR}");

    // A shader file is checked when some variant carries its text: its own
    // variants (named after the file, their source ending with it) or, for a
    // shared piece such as gemm_epilogue.wgsl, the variants it is prepended to.
    let mut problems = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("cannot read shader file");
        if !variants.iter().any(|v| v.source.contains(text.as_str())) {
            problems.push(format!(
                "{}: no variant in kernels::all_variants() carries this file, so the shader is never checked",
                path.display()
            ));
        }
    }
    for v in &variants {
        let own = files.iter().find(|p| p.file_stem().is_some_and(|s| s == v.name));
        match own {
            None => problems.push(format!("variant \"{}\" has no shaders/{}.wgsl", v.name, v.name)),
            Some(path) => {
                let text = std::fs::read_to_string(path).expect("cannot read shader file");
                if !v.source.ends_with(text.as_str()) {
                    problems.push(format!("{}: the variant named \"{}\" carries a different source", path.display(), v.name));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "shader files and variants out of step:\n{}",
        problems.join("\n")
    );
}
