//! The burn backends ftl runs on.
//!
//! [`Cpu`] (burn's Flex) is always built. With the `cuda` feature, [`Gpu`] is
//! burn's CUDA backend; the CUDA driver is loaded at run time, so a binary built
//! with it still runs on a machine without a GPU as long as it uses [`Cpu`].

/// The portable CPU backend, f32 weights, i32 indices.
pub type Cpu = burn::backend::Flex;

/// The CPU device.
pub fn cpu_device() -> burn::prelude::Device<Cpu> {
    Default::default()
}

/// The CUDA backend, f32 weights, i32 indices.
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda;

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
