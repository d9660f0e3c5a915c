//! Inputs for the GPU checks (`adapter_check`, `layer_norm_check`): the same
//! values on every device, so the CUDA and host runs read identical data.

/// Values that differ from one element to the next, in
/// [offset − scale, offset + scale).
pub fn values(n: usize, seed: usize, offset: f32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = ((i * 7919 + seed * 104_729) % 10_007) as f32 / 10_007.0;
            offset + (x * 2.0 - 1.0) * scale
        })
        .collect()
}
