//! The burn backends ftl runs on.
//!
//! [`Cpu`] (burn's Flex) is always built. With the `cuda` feature, [`Gpu`] is
//! burn's CUDA backend; the CUDA driver is loaded at run time, so a binary built
//! with it still runs on a machine without a GPU as long as it uses [`Cpu`].

use crate::runtime::error::{RuntimeError, RuntimeResult};
#[cfg(feature = "cuda")]
use crate::runtime::tuning;

/// The portable CPU backend, f32 weights, i32 indices.
pub type Cpu = burn::backend::Flex;

/// The CPU device.
pub fn cpu_device() -> burn::prelude::Device<Cpu> {
    Default::default()
}

/// The CUDA backend, f32 weights, i32 indices.
#[cfg(all(feature = "cuda", not(feature = "unfused")))]
pub type Gpu = burn::backend::Cuda;
/// The CUDA backend without burn's operation fusion (the `unfused` build
/// feature, for measuring what fusion costs and saves; see BENCHMARKS.md).
/// ftl's own kernels run on it too, launched at once instead of queued.
#[cfg(feature = "unfused")]
pub type Gpu = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// `t` as `U`, which the caller has checked is `T`'s own type (by
/// `TypeId`): how a generic forward pass hands its tensors to an operation
/// written for one concrete autodiff backend.
pub fn same_type<T: 'static, U: 'static>(t: T) -> U {
    *(Box::new(t) as Box<dyn std::any::Any>)
        .downcast::<U>()
        .expect("checked to be the same type")
}

/// Whether the CUDA driver library can be loaded, so that the CUDA backend can
/// start. Check this before making a CUDA device: on a machine without a driver,
/// burn panics (on its device thread) instead of returning an error.
#[cfg(feature = "cuda")]
pub fn cuda_available() -> bool {
    // SAFETY: only loads the driver library (once) and reports whether it loaded.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Without the `cuda` feature there is no CUDA backend.
#[cfg(not(feature = "cuda"))]
pub fn cuda_available() -> bool {
    false
}

/// The first library call on the GPU that failed in this process (a cuBLAS
/// product: its shape and status), if one did. Training reads it with each
/// step's metrics: the results after such a failure are not to be trusted.
#[cfg(feature = "cuda")]
pub fn device_failure() -> Option<String> {
    super::cublas::failure()
}

/// Without the `cuda` feature nothing runs on a GPU.
#[cfg(not(feature = "cuda"))]
pub fn device_failure() -> Option<String> {
    None
}

/// Where a run computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The CPU backend.
    Cpu,
    /// The CUDA backend on this GPU ordinal.
    Cuda(u32),
}

/// Number of CUDA devices, or why there are none usable.
pub fn cuda_devices() -> Result<u32, String> {
    if !cuda_available() {
        return Err(if cfg!(feature = "cuda") {
            "no CUDA driver was found on this machine".into()
        } else {
            "this ftl was built without CUDA (the `cuda` feature)".into()
        });
    }
    #[cfg(feature = "cuda")]
    {
        cudarc::driver::CudaContext::device_count()
            .map(|n| n.max(0) as u32)
            .map_err(|e| format!("the CUDA driver reports an error: {e:?}"))
    }
    #[cfg(not(feature = "cuda"))]
    Err("this ftl was built without CUDA".into())
}

/// The target a plan's `device` section selects on this machine, with a
/// one-line notice when `auto` falls back to the CPU. `devices` is what
/// [`cuda_devices`] reports (passed in so the choice is testable).
pub fn select(
    device: &crate::config::Device,
    devices: Result<u32, String>,
) -> RuntimeResult<(Target, Option<String>)> {
    use crate::config::Backend;
    let ordinal = device.gpus.first().copied().unwrap_or(0);
    let usable = match devices {
        Ok(n) if ordinal < n => Ok(()),
        Ok(0) => Err("this machine has no CUDA device".to_string()),
        Ok(n) => Err(format!("this machine has {n} (numbered 0 to {})", n - 1)),
        Err(why) => Err(why),
    };
    match (device.backend, usable) {
        (Backend::Cpu, _) => Ok((Target::Cpu, None)),
        (Backend::Cuda | Backend::Auto, Ok(())) => Ok((Target::Cuda(ordinal), None)),
        (Backend::Auto, Err(why)) => Ok((Target::Cpu, Some(format!("running on the CPU: {why}")))),
        (Backend::Cuda, Err(reason)) => Err(RuntimeError::NoCudaDevice { ordinal, reason }),
    }
}

/// Bytes of device memory ftl's tensors occupy on a CUDA device now (the
/// allocator's `bytes_in_use`; burn keeps no peak, so callers sample it).
#[cfg(feature = "cuda")]
pub fn cuda_memory_in_use(device: &burn::backend::cuda::CudaDevice) -> Option<u64> {
    use cubecl::Runtime;
    let client = cubecl::cuda::CudaRuntime::client(device);
    client.memory_usage().ok().map(|m| m.bytes_in_use)
}

/// Whether `dir` (a cubecl cache root) holds compiled CUDA kernels.
pub fn holds_compiled_kernels(dir: &std::path::Path) -> bool {
    fn any_file(dir: &std::path::Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let path = e.path();
                if path.is_dir() {
                    any_file(&path)
                } else {
                    e.metadata().is_ok_and(|m| m.len() > 0)
                }
            })
        })
    }
    any_file(&dir.join("cuda"))
}

/// What a CUDA run says when ftl's kernel cache for its GPU is empty: its
/// first step compiles kernels, and without tuning shipped for the GPU
/// (`shipped`: see [`crate::runtime::tuning`]) autotunes them, which takes
/// minutes, not seconds.
pub fn cold_cache_notice(dir: &std::path::Path, shipped: bool) -> Option<String> {
    (!holds_compiled_kernels(dir)).then(|| {
        let first_step = if shipped {
            "compiles the ones it uses, with the tuning ftl ships for this GPU (under a minute"
        } else {
            "compiles and autotunes them (several minutes for a new model or method"
        };
        format!(
            "no compiled CUDA kernels in {} yet: the first step {first_step}; \
             later runs start in seconds)",
            dir.display()
        )
    })
}

/// The name of CUDA device `ordinal`, as the driver reports it
/// (`NVIDIA H200`).
#[cfg(feature = "cuda")]
pub fn cuda_device_name(ordinal: u32) -> Result<String, String> {
    use cudarc::driver::result;
    if !cuda_available() {
        return Err("no CUDA driver was found on this machine".into());
    }
    result::init()
        .and_then(|()| result::device::get(ordinal as i32))
        .and_then(result::device::get_name)
        .map_err(|e| format!("the CUDA driver reports an error: {e:?}"))
}

/// The cubecl configuration file cubecl itself would read when started in
/// `dir`: the first `cubecl.toml` or `CubeCL.toml` in `dir` or a folder
/// above it, or a `burn.toml` / `Burn.toml` there with a `[cubecl]` table.
pub fn user_cubecl_config(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    dir.ancestors().find_map(|d| {
        let whole = ["cubecl.toml", "CubeCL.toml"]
            .iter()
            .map(|f| d.join(f))
            .find(|p| p.is_file());
        whole.or_else(|| {
            ["burn.toml", "Burn.toml"]
                .iter()
                .map(|f| d.join(f))
                .find(|p| {
                    std::fs::read_to_string(p).is_ok_and(|text| {
                        text.lines().any(|l| {
                            let l = l.trim_start();
                            l.starts_with("[cubecl]") || l.starts_with("[cubecl.")
                        })
                    })
                })
        })
    })
}

/// What [`configure_cubecl`] set up.
#[derive(Debug)]
pub struct KernelCache {
    /// The folder of cubecl's autotune results and compiled kernels:
    /// `FTL_HOME/cubecl/GPU` (GPU as [`tuning::gpu_slug`] names it).
    pub root: std::path::PathBuf,
    /// Whether ftl ships tuning for this GPU model and used it.
    pub shipped: bool,
    /// Why the shipped tuning could not be written, if it could not.
    pub seed_error: Option<String>,
}

/// Keeps cubecl's autotune results and compiled kernels in ftl's cache, one
/// folder per GPU model (`FTL_HOME/cubecl/nvidia-h200`), so that a second run
/// on the same kind of GPU starts warm wherever it is launched from;
/// fills the autotune cache from the tuning ftl ships for that GPU model,
/// where it has some ([`tuning`]); and gives every device buffer its own
/// allocation of its exact size (see below). Call before the first CUDA
/// device is made, with the device's ordinal; a configuration set earlier
/// or a user's file (see [`user_cubecl_config`]) is left alone, and
/// cubecl's environment variables apply on top.
///
/// One folder per GPU model because cubecl's caches do not say which GPU
/// they were made on: compiled kernels are keyed by the kernel alone (a
/// kernel built for one architecture fails to load on another) and
/// autotune results by shape alone (another GPU's winners run, but slower).
///
/// Memory: cubecl 0.10's CUDA runtime always builds its default pools
/// (`RuntimeOptions::default()` in `DeviceService::init`; nothing outside
/// the crate can change them). Their page sizes follow from the device's
/// memory, a quarter of it divided by 4 again and again: on an H200
/// (143,771 MiB), pages of about 9 MB, 37 MB, 147 MB, 589 MB, 2.4 GB and
/// 9.4 GB, each pool taking buffers up to 1/64, 1/32, … 1/2 of its page.
/// One 87 MiB buffer (MiniLM's flat parameters) reserves a 2.4 GB page; a
/// 6 MB activation a 147 MB one.
/// Persistent memory, enforced, instead allocates each buffer at its exact
/// size and reuses a freed one of the same size. A training step allocates
/// the same sizes every time, so after the first step the device holds
/// what the largest step needs and nothing grows. Measured on the H200
/// (BENCHMARKS.md): 0.5 to 2.6 GB less for the whole process, the same
/// speed within ±10%, except QLoRA, 8 to 18% slower for reasons not found
/// (its kernels take the same time).
#[cfg(feature = "cuda")]
pub fn configure_cubecl(ordinal: u32) -> Option<&'static KernelCache> {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::memory::PersistentMemory;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    static CACHE: std::sync::OnceLock<Option<KernelCache>> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            if CubeClRuntimeConfig::storage().lock().is_some()
                || std::env::current_dir()
                    .ok()
                    .and_then(|dir| user_cubecl_config(&dir))
                    .is_some()
            {
                return None;
            }
            let gpu = cuda_device_name(ordinal)
                .map(|name| tuning::gpu_slug(&name))
                .unwrap_or_else(|_| tuning::gpu_slug(""));
            let root = crate::data::ftl_home().join("cubecl").join(&gpu);
            let table = tuning::shipped(&gpu).filter(|_| !tuning::turned_off());
            let seeded = table.map(|t| tuning::seed(t, &root, ordinal));
            let mut config = CubeClRuntimeConfig::default();
            config.autotune.cache = CacheConfig::File(root.clone());
            config.compilation.cache = Some(CacheConfig::File(root.clone()));
            config.memory.persistent_memory = PersistentMemory::Enforced;
            // One stream for every thread: ftl's cuBLAS products run on it
            // (`runtime::cublas`), and cubecl does not say which stream a
            // thread's kernels run on otherwise.
            config.streaming.max_streams = 1;
            // cubecl's own environment variables (CUBECL_AUTOTUNE_LEVEL,
            // CUBECL_DEBUG_LOG, ...) still apply.
            CubeClRuntimeConfig::set(config.override_from_env());
            Some(KernelCache {
                root,
                shipped: matches!(seeded, Some(Ok(_))),
                seed_error: seeded.and_then(|r| r.err()).map(|e| e.to_string()),
            })
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Device};

    fn device(backend: Backend, gpu: u32) -> Device {
        Device {
            backend,
            gpus: vec![gpu],
        }
    }

    #[test]
    fn auto_uses_the_gpu_when_there_is_one_and_says_so_when_it_falls_back() {
        assert_eq!(
            select(&device(Backend::Auto, 0), Ok(1)).expect("ok"),
            (Target::Cuda(0), None)
        );
        let (target, notice) = select(
            &device(Backend::Auto, 0),
            Err("no CUDA driver was found on this machine".into()),
        )
        .expect("ok");
        assert_eq!(target, Target::Cpu);
        assert_eq!(
            notice.as_deref(),
            Some("running on the CPU: no CUDA driver was found on this machine")
        );
    }

    #[test]
    fn forced_choices_are_kept_or_refused() {
        assert_eq!(
            select(&device(Backend::Cpu, 0), Ok(8)).expect("ok"),
            (Target::Cpu, None)
        );
        assert_eq!(
            select(&device(Backend::Cuda, 1), Ok(2)).expect("ok"),
            (Target::Cuda(1), None)
        );
        let err = select(&device(Backend::Cuda, 2), Ok(2)).expect_err("no GPU 2");
        assert_eq!(
            err.to_string(),
            "the plan asks for CUDA device 2, but this machine has 2 (numbered 0 to 1)"
        );
        assert!(err.hint().contains("device.backend = auto"));
    }

    #[test]
    fn an_empty_kernel_cache_is_announced_and_a_filled_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cubecl");
        let said = cold_cache_notice(&root, false).expect("no folder yet");
        assert!(said.contains("compiles and autotunes"), "{said}");
        let said = cold_cache_notice(&root, true).expect("no folder yet");
        assert!(said.contains("compiles the ones it uses"), "{said}");
        // Autotune results alone do not make compiled kernels.
        std::fs::create_dir_all(root.join("autotune")).unwrap();
        std::fs::write(root.join("autotune/keys.json.log"), "{}").unwrap();
        assert!(cold_cache_notice(&root, false).is_some());
        let ptx = root.join("cuda/0.10.0/ptx");
        std::fs::create_dir_all(&ptx).unwrap();
        std::fs::write(ptx.join("toc.json.log"), "").unwrap();
        assert!(
            cold_cache_notice(&root, false).is_some(),
            "an empty file holds nothing"
        );
        std::fs::write(ptx.join("toc.json.log"), "{\"kernel\": 1}").unwrap();
        assert_eq!(cold_cache_notice(&root, false), None);
    }

    #[test]
    fn a_users_cubecl_configuration_is_found_where_cubecl_looks() {
        let root = tempfile::tempdir().unwrap();
        let project = root.path().join("project/sub");
        std::fs::create_dir_all(&project).unwrap();
        assert_eq!(user_cubecl_config(&project), None);
        // A burn.toml without a cubecl table is not cubecl's.
        std::fs::write(root.path().join("project/burn.toml"), "[other]\nx = 1\n").unwrap();
        assert_eq!(user_cubecl_config(&project), None);
        std::fs::write(
            root.path().join("project/burn.toml"),
            "[cubecl.autotune]\nlevel = \"minimal\"\n",
        )
        .unwrap();
        assert_eq!(
            user_cubecl_config(&project),
            Some(root.path().join("project/burn.toml"))
        );
        // A cubecl.toml nearer the working folder comes first.
        std::fs::write(project.join("cubecl.toml"), "").unwrap();
        assert_eq!(
            user_cubecl_config(&project),
            Some(project.join("cubecl.toml"))
        );
    }

    #[test]
    fn this_machine_answers_without_panicking() {
        // On a machine without a driver this must be an error, never a panic.
        let _ = cuda_devices();
    }
}
