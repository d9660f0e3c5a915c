//! Device memory of an optimizer-style update on CUDA, with burn's fusion:
//! which formulations write their outputs into their inputs' buffers and
//! which allocate new ones. Each variant starts from flat f32 buffers of N
//! values (p, m, v and a gradient g), runs its update three times, and
//! prints the CUDA pool's reserved and in-use bytes in units of one buffer.
//! ftl sets cubecl's persistent memory to `enforced`, so every buffer is
//! allocated at its exact size and reserved until a cleanup: what a variant
//! reserves above the four inputs is what it could not do in place.
//!
//! `cargo run --release --features cuda --example update_memory [N]`

#[cfg(feature = "cuda")]
fn main() {
    use burn::prelude::*;
    use ftl::runtime::backend::{Gpu, configure_cubecl, cuda_available};
    if !cuda_available() {
        println!("no CUDA device: nothing to measure");
        return;
    }
    configure_cubecl(0);
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(25_000_000);
    let device = burn::backend::cuda::CudaDevice::new(0);
    let unit = (n * 4) as f64;
    let usage = || {
        use cubecl::Runtime;
        let client = cubecl::cuda::CudaRuntime::client(&device);
        let m = client.memory_usage().expect("usage");
        (m.bytes_reserved as f64 / unit, m.bytes_in_use as f64 / unit)
    };
    type T = Tensor<Gpu, 1>;
    type Update = Box<dyn Fn(T, T, T, T) -> (T, T, T)>;
    let (b1, b2, lr, wd, eps, c1, c2) = (0.9, 0.999, 1e-3, 0.01, 1e-8, 0.1, 0.001f64);
    // AdamW's update as ftl's optimizer writes it in tensor operations.
    let adamw = move |p: T, m: T, v: T, g: T| {
        let m = m.sub(g.clone()).mul_scalar(b1).add(g.clone());
        let v = v.mul_scalar(b2) + g.powi_scalar(2).mul_scalar(1.0 - b2);
        let p = p.mul_scalar(1.0 - lr * wd);
        let denom = v.clone().sqrt().div_scalar(c2.sqrt()).add_scalar(eps);
        let p = p - denom.recip().mul(m.clone()).mul_scalar(lr / c1);
        (p, m, v)
    };
    let variants: Vec<(&str, Update)> = vec![
        (
            "p - g·lr (one output)",
            Box::new(move |p, m, v, g| (p - g.mul_scalar(lr), m, v)),
        ),
        (
            "m = m·b1 + g·(1−b1) (one output)",
            Box::new(move |p, m, v, g| (p, m.mul_scalar(b1) + g.mul_scalar(1.0 - b1), v)),
        ),
        (
            "m and v (two outputs)",
            Box::new(move |p, m, v, g| {
                let m = m.sub(g.clone()).mul_scalar(b1).add(g.clone());
                let v = v.mul_scalar(b2) + g.powi_scalar(2).mul_scalar(1.0 - b2);
                (p, m, v)
            }),
        ),
        (
            "m·b1 and v·b2 (two outputs, no shared input)",
            Box::new(move |p, m, v, _g| (p, m.mul_scalar(b1), v.mul_scalar(b2))),
        ),
        (
            "m and v, each its own gradient (two outputs)",
            Box::new(move |p, m, v, g| {
                let g2 = g.clone().mul_scalar(1.0);
                let m = m.mul_scalar(b1) + g.mul_scalar(1.0 - b1);
                let v = v.mul_scalar(b2) + g2.mul_scalar(1.0 - b2);
                (p, m, v)
            }),
        ),
        (
            "m and v, a reduction of a one-value tensor between",
            Box::new(move |p, m, v, g| {
                let m = m.sub(g.clone()).mul_scalar(b1).add(g.clone());
                let barrier = T::ones([1], &m.device()).sum();
                let v = v.mul_scalar(b2) + g.powi_scalar(2).mul_scalar(1.0 - b2);
                drop(barrier);
                (p, m, v)
            }),
        ),
        ("AdamW, no clipping (three outputs)", Box::new(adamw)),
        (
            "AdamW, no clipping, reductions between the three",
            Box::new(move |p, m, v, g| {
                let device = m.device();
                let m = m.sub(g.clone()).mul_scalar(b1).add(g.clone());
                let b = T::ones([1], &device).sum();
                let v = v.mul_scalar(b2) + g.powi_scalar(2).mul_scalar(1.0 - b2);
                let b2_ = T::ones([1], &device).sum();
                let p = p.mul_scalar(1.0 - lr * wd);
                let denom = v.clone().sqrt().div_scalar(c2.sqrt()).add_scalar(eps);
                let p = p - denom.recip().mul(m.clone()).mul_scalar(lr / c1);
                drop((b, b2_));
                (p, m, v)
            }),
        ),
        (
            "AdamW with the norm and clipping, as ftl's step",
            Box::new(move |p, m, v, g| {
                let norm = g.clone().powi_scalar(2).sum().sqrt();
                let f = norm.add_scalar(1e-6).recip().mul_scalar(1.0).clamp_max(1.0);
                adamw(p, m, v, g * f)
            }),
        ),
    ];
    println!("N = {n} values, one buffer = {:.1} MiB", unit / 1048576.0);
    println!(
        "| variant | reserved after the first update (buffers) | after a cleanup and 2 more | in use |"
    );
    println!("| --- | --- | --- | --- |");
    let sync = |t: &T| {
        let _ = t.clone().slice(0..1).into_data();
    };
    for (name, update) in &variants {
        // The previous variant's buffers are dropped; once the device has
        // caught up, the cleanup gives every free buffer back.
        sync(&T::zeros([1], &device));
        Gpu::memory_cleanup(&device);
        let mut p = T::ones([n], &device);
        let mut m = T::zeros([n], &device);
        let mut v = T::zeros([n], &device);
        sync(&v);
        let mut first = 0.0;
        for i in 0..3 {
            let g = T::ones([n], &device).mul_scalar(0.5);
            let (p2, m2, v2) = update(p, m, v, g);
            p = p2;
            m = m2;
            v = v2;
            sync(&p);
            sync(&m);
            sync(&v);
            if i == 0 {
                first = usage().0;
                Gpu::memory_cleanup(&device);
            }
        }
        let (reserved, in_use) = usage();
        println!("| {name} | {first:.2} | {reserved:.2} | {in_use:.2} |");
        drop((p, m, v));
    }
}

#[cfg(not(feature = "cuda"))]
fn main() {
    println!("built without CUDA: nothing to measure");
}
