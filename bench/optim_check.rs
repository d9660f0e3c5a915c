//! ftl's AdamW step on CUDA against the same step on the CPU.
//!
//! On CUDA the step reads each gradient where autodiff left it and updates
//! the flat buffers with ftl's own kernels; on the CPU it gathers the
//! gradients into the flat layout and updates with tensor operations. Both
//! must give the same parameters. The model is a set of raw parameters of
//! many shapes (matrices whose sizes leave gaps in the layout, more than
//! one launch's worth of them, one larger than a launch's threads, a tiny
//! vector, one whose gradient is a transposed view), and the loss is
//! element-wise, so the gradients are the same on both devices to the last
//! bit and any difference comes from the optimizer. Runs 6 steps with
//! gradient clipping (the gradients' norm is far above 1) and 6 without,
//! and prints the largest difference of any parameter, relative to the
//! parameter's largest value, after each step. Exits non-zero when one is
//! above 1e-5.
//!
//! Some matrices are kept in bf16 (`AdamW::keep_in_half`): on CUDA the
//! model sees them as bf16 copies that the step writes, and their
//! gradients come back in bf16. Their loss term is linear, with factors
//! that bf16 holds exactly, so their gradients are the same values on both
//! devices. Their masters (`AdamW::masters`) are compared as the others
//! are, and after every step each bf16 copy must be its master rounded to
//! the nearest bf16, to the bit.
//!
//! `cargo run --release --features cuda --example optim_check`

#[cfg(feature = "cuda")]
fn main() {
    use burn::backend::{Autodiff, Cuda};
    use burn::module::{Module, Param};
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use burn::tensor::{DType, FloatDType};
    use ftl::runtime::backend::{Cpu, configure_cubecl, cuda_available};
    use ftl::runtime::train::optim::AdamW;

    #[derive(Module, Debug)]
    struct Toy<B: Backend> {
        mats: Vec<Param<Tensor<B, 2>>>,
        vecs: Vec<Param<Tensor<B, 1>>>,
        /// Used transposed: its gradient comes back as a transposed view.
        turned: Param<Tensor<B, 2>>,
        /// Kept in bf16 on CUDA.
        halves: Vec<Param<Tensor<B, 2>>>,
    }

    const HALVES: [[usize; 2]; 6] = [[384, 1536], [37, 11], [64, 64], [3, 1], [300, 7], [16, 16]];

    /// `x` rounded to the nearest bf16 (ties to even), as a cast rounds it.
    fn bf16_round(x: f32) -> f32 {
        let b = x.to_bits();
        f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
    }

    const MATS: [[usize; 2]; 11] = [
        [384, 1536],
        [37, 11],
        [1000, 64],
        [5, 5],
        [128, 3],
        [64, 64],
        [3, 1],
        [300, 7],
        [16, 16],
        [2, 129],
        [50, 50],
    ];
    const VECS: [usize; 4] = [1536, 3, 384, 130];

    /// Values that differ from one element to the next, the same on every device.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = ((i * 7919 + seed * 104_729) % 10_007) as f32 / 10_007.0;
                x * 2.0 - 1.0
            })
            .collect()
    }

    fn toy<B: Backend>(device: &B::Device) -> Toy<B> {
        let mat = |dims: [usize; 2], seed: usize| {
            let t = Tensor::<B, 1>::from_floats(values(dims[0] * dims[1], seed).as_slice(), device);
            Param::from_tensor(t.reshape(dims))
        };
        Toy {
            mats: MATS.iter().enumerate().map(|(i, d)| mat(*d, i)).collect(),
            vecs: VECS
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Param::from_tensor(Tensor::from_floats(values(*n, 50 + i).as_slice(), device))
                })
                .collect(),
            turned: mat([96, 40], 99),
            halves: HALVES
                .iter()
                .enumerate()
                .map(|(i, d)| mat(*d, 200 + i))
                .collect(),
        }
    }

    /// loss = Σ (p ⊙ c)² + Σ p ⊙ d over every parameter, c and d fixed
    /// per parameter and step: element-wise only.
    fn loss<B: AutodiffBackend>(model: &Toy<B>, step: usize) -> Tensor<B, 1> {
        let term = |p: Tensor<B, 1>, seed: usize| {
            let n = p.dims()[0];
            let device = p.device();
            let c = Tensor::<B, 1>::from_floats(values(n, seed * 31 + step).as_slice(), &device);
            let d =
                Tensor::<B, 1>::from_floats(values(n, seed * 17 + step + 3).as_slice(), &device);
            (p.clone() * c).powi_scalar(2).sum() + (p * d).sum()
        };
        let mut total = term(model.turned.val().transpose().reshape([40 * 96]), 999);
        for (i, m) in model.mats.iter().enumerate() {
            let n = m.val().dims().iter().product::<usize>();
            total = total + term(m.val().reshape([n]), i);
        }
        for (i, v) in model.vecs.iter().enumerate() {
            total = total + term(v.val(), 100 + i);
        }
        for (i, h) in model.halves.iter().enumerate() {
            let p = h.val();
            let n = p.dims().iter().product::<usize>();
            let d: Vec<f32> = values(n, i * 13 + step + 7)
                .into_iter()
                .map(bf16_round)
                .collect();
            let d = Tensor::<B, 1>::from_floats(d.as_slice(), &p.device());
            let d = if p.dtype() == DType::BF16 {
                d.cast(FloatDType::BF16)
            } else {
                d
            };
            total = total + (p.reshape([n]) * d).sum().cast(FloatDType::F32);
        }
        total
    }
    use burn::tensor::backend::AutodiffBackend;

    fn run<B: AutodiffBackend>(
        device: &B::Device,
        clip: Option<f64>,
        steps: usize,
    ) -> Vec<(Vec<Vec<f32>>, f64)> {
        let mut model = toy::<B>(device);
        let mut optimizer = AdamW::<B::InnerBackend>::new(ftl::config::AdamW {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
        });
        optimizer.keep_in_half(model.halves.iter().map(|p| p.id));
        model = optimizer.prepare(model);
        let mut out = Vec::new();
        let flat = |t: Tensor<B, 1>| t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
        for step in 0..steps {
            let grads = GradientsParams::from_grads(loss(&model, step).backward(), &model);
            let (next, norm) = optimizer.step(model, grads, 1e-2, clip);
            model = next;
            let norm = norm.expect("gradients").into_scalar().elem::<f64>();
            let masters = optimizer.masters(model.clone());
            let mut params: Vec<Vec<f32>> = Vec::new();
            for m in &masters.mats {
                let n = m.val().dims().iter().product::<usize>();
                params.push(flat(m.val().reshape([n])));
            }
            for v in &masters.vecs {
                params.push(flat(v.val()));
            }
            params.push(flat(masters.turned.val().reshape([96 * 40])));
            for (seen, master) in model.halves.iter().zip(&masters.halves) {
                let n = master.val().dims().iter().product::<usize>();
                let master = flat(master.val().reshape([n]));
                let seen_dtype = seen.val().dtype();
                let seen = flat(seen.val().reshape([n]));
                if seen_dtype == DType::BF16 {
                    let wrong = master
                        .iter()
                        .zip(&seen)
                        .filter(|(m, s)| bf16_round(**m).to_bits() != s.to_bits())
                        .count();
                    if wrong > 0 {
                        println!("FAIL: {wrong} of {n} bf16 copies are not their master rounded");
                        std::process::exit(1);
                    }
                }
                params.push(master);
            }
            out.push((params, norm));
        }
        out
    }

    if !cuda_available() {
        println!("no CUDA device: nothing to check");
        return;
    }
    configure_cubecl(0);
    let cuda = burn::backend::cuda::CudaDevice::new(0);
    let cpu = Default::default();
    // The check means something only if CUDA's model did see bf16 copies.
    {
        let mut model = toy::<Autodiff<Cuda>>(&cuda);
        let mut optimizer = AdamW::<Cuda>::new(ftl::config::AdamW {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
        });
        optimizer.keep_in_half(model.halves.iter().map(|p| p.id));
        model = optimizer.prepare(model);
        if model.halves.iter().any(|h| h.val().dtype() != DType::BF16) {
            println!("FAIL: the weights kept in bf16 are not bf16 views on CUDA");
            std::process::exit(1);
        }
    }
    let mut worst = 0f64;
    for clip in [Some(1.0), None] {
        let on_cuda = run::<Autodiff<Cuda>>(&cuda, clip, 6);
        let on_cpu = run::<Autodiff<Cpu>>(&cpu, clip, 6);
        for (step, ((gpu, gpu_norm), (host, host_norm))) in on_cuda.iter().zip(&on_cpu).enumerate()
        {
            let mut diff = 0f64;
            for (a, b) in gpu.iter().zip(host) {
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6) as f64;
                for (x, y) in a.iter().zip(b) {
                    diff = diff.max((*x as f64 - *y as f64).abs() / scale);
                }
            }
            worst = worst.max(diff);
            println!(
                "clip {clip:?} step {}: norm CUDA {gpu_norm:.6} CPU {host_norm:.6}, largest relative parameter difference {diff:.2e}",
                step + 1
            );
        }
    }
    if worst > 1e-5 {
        println!("FAIL: the CUDA step differs from the CPU step by {worst:.2e}");
        std::process::exit(1);
    }
    println!("ok: largest difference {worst:.2e}");
}

#[cfg(not(feature = "cuda"))]
fn main() {
    println!("built without CUDA: nothing to check");
}
