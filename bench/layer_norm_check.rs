//! ftl's LayerNorm kernels on CUDA against burn's composition on the CPU.
//!
//! On CUDA (fused, or the `unfused` build), f32 LayerNorms run as ftl's own kernels
//! (`src/runtime/model/layer_norm_cuda.rs`); on the CPU they run as tensor
//! operations. For each case the same input, γ, β and loss weights go
//! through both, and the output and the gradients of x, γ and β must agree.
//! The cases cover the models' shapes (MiniLM's 384 and MPNet's 768
//! features over 32 × 64 tokens), a width that is not a multiple of a
//! warp, fewer rows than a cube holds, a row longer than many warps, rows
//! not a multiple of the per-feature sums' chunk, frozen γ and β (LoRA),
//! and an input that needs no gradient. The residual cases run
//! `LayerNorm(dropout(x) + r)` (`forward_residual`): on CUDA its kernels
//! draw the dropout from a seed themselves; the CPU composes it with the
//! mask the host hash gives for the same seed, so any difference in the
//! draws shows as a difference in y, ∂x and ∂r. The biased cases run
//! `LayerNorm(dropout(x + b) + r)` with a frozen bias
//! (`forward_residual_biased`, LoRA's frozen output projections): CUDA
//! adds the bias in the kernel and writes ∂x in bf16, so their ∂x may
//! differ by one bf16 rounding (below 8e-3 of the largest value). On CUDA
//! every residual case also asks for the output's bf16 copy
//! (`forward_residual_copied`), which must equal y rounded to bf16 in
//! every value. Prints the largest
//! difference of each tensor relative to its largest value, and exits
//! non-zero when one is above 1e-5 for y, ∂x and ∂r (each value from one
//! row) or above 1e-4 for
//! ∂γ and ∂β (each a sum over every row, which the two devices add up in
//! different orders: 2,048 rows for the models' shapes).
//!
//! `cargo run --release --features cuda --example layer_norm_check`

#[cfg(feature = "cuda")]
#[path = "values.rs"]
mod values;

#[cfg(feature = "cuda")]
fn main() {
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::prelude::*;
    use ftl::runtime::backend::{Cpu, Gpu, configure_cubecl, cuda_available};
    use ftl::runtime::model::dropout::{Draws, Dropout, draw, threshold};
    use ftl::runtime::model::layer_norm::LayerNorm;

    use values::values;

    struct Case {
        name: &'static str,
        shape: [usize; 3],
        input_grad: bool,
        parameters_grad: bool,
        /// `LayerNorm(dropout(x) + r)` with this dropout probability
        /// (`forward_residual`), instead of `LayerNorm(x)`.
        residual: Option<f64>,
        /// With `residual`: a frozen bias added to x before the dropout
        /// (`forward_residual_biased`).
        biased: bool,
    }

    /// The seed ftl's draws start from in every residual case.
    const SEED: u64 = 2024;

    /// y, ∂x, ∂γ, ∂β, ∂r (the gradients empty where not asked for). On
    /// CUDA a residual case runs `forward_residual`, whose kernels draw the
    /// dropout themselves; on the CPU, the composition with the mask the
    /// host computes from the same seed with the same hash.
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        case: &Case,
        device: &B::Device,
        on_kernels: bool,
    ) -> [Vec<f32>; 5] {
        let n: usize = case.shape.iter().product();
        let width = *case.shape.last().expect("a shape");
        let tensor =
            |v: Vec<f32>| Tensor::<B, 1>::from_floats(v.as_slice(), device).reshape(case.shape);
        let mut norm = LayerNorm::<B>::new(width, 1e-12, device);
        let param = |v: Vec<f32>| {
            let p = Param::from_tensor(Tensor::<B, 1>::from_floats(v.as_slice(), device));
            if case.parameters_grad {
                p
            } else {
                p.set_require_grad(false)
            }
        };
        norm.gamma = param(values(width, 2, 1.0, 0.3));
        norm.beta = param(values(width, 3, 0.0, 0.3));
        let mut x: Tensor<B, 3> = tensor(values(n, 1, 0.5, 2.0));
        if case.input_grad {
            x = x.require_grad();
        }
        let w: Tensor<B, 3> = tensor(values(n, 4, 0.0, 1.0));
        let mut r: Tensor<B, 3> = tensor(values(n, 5, -0.2, 1.5));
        if case.input_grad {
            r = r.require_grad();
        }
        let bias = Tensor::<B, 1>::from_floats(values(width, 6, 0.0, 0.5).as_slice(), device);
        let y = match case.residual {
            None => norm.forward(x.clone()),
            Some(p) if on_kernels => {
                // With the bf16 copy, which must be y rounded to bf16,
                // value for value.
                Draws::seed(SEED);
                let (y, copy) = if case.biased {
                    norm.forward_residual_biased_copied(
                        x.clone(),
                        bias,
                        r.clone(),
                        &Dropout::new(p),
                        true,
                    )
                } else {
                    norm.forward_residual_copied(x.clone(), r.clone(), &Dropout::new(p), true)
                };
                let Some(copy) = copy else {
                    println!("FAIL: {}: the kernels gave no bf16 copy", case.name);
                    std::process::exit(1);
                };
                let rounded = y.clone().inner().cast(burn::tensor::FloatDType::BF16);
                let [copy, rounded] = [copy.inner(), rounded].map(|t| {
                    t.cast(burn::tensor::FloatDType::F32)
                        .into_data()
                        .to_vec::<f32>()
                        .expect("f32")
                });
                let unlike = copy.iter().zip(&rounded).filter(|(a, b)| a != b).count();
                if unlike > 0 || copy.len() != rounded.len() {
                    println!(
                        "FAIL: {}: the bf16 copy differs from y rounded to bf16 in {unlike} of {} values",
                        case.name,
                        rounded.len()
                    );
                    std::process::exit(1);
                }
                y
            }
            Some(p) => {
                let a = if case.biased {
                    x.clone() + bias.unsqueeze()
                } else {
                    x.clone()
                };
                let dropped = if p > 0.0 {
                    Draws::seed(SEED);
                    let seed = Draws::next();
                    let keep = threshold(1.0 - p);
                    let mask: Vec<bool> = (0..n as u32).map(|i| draw(seed, i) >= keep).collect();
                    let share = mask.iter().filter(|d| **d).count() as f64 / n as f64;
                    println!(
                        "  ({}: {:.4} of the values dropped, p = {p})",
                        case.name, share
                    );
                    let mask = Tensor::<B, 1, Bool>::from_data(
                        burn::tensor::TensorData::new(mask, [n]),
                        device,
                    )
                    .reshape(case.shape);
                    a.mask_fill(mask, 0.0).mul_scalar(1.0 / (1.0 - p))
                } else {
                    a
                };
                norm.forward(dropped + r.clone())
            }
        };
        let grads = (y.clone() * w).sum().backward();
        // ∂x comes in bf16 from the biased kernels.
        let flat = |t: Tensor<B::InnerBackend, 3>| {
            t.cast(burn::tensor::FloatDType::F32)
                .into_data()
                .to_vec::<f32>()
                .expect("f32")
        };
        let flat1 = |t: Tensor<B::InnerBackend, 1>| t.into_data().to_vec::<f32>().expect("f32");
        [
            flat(y.inner()),
            x.grad(&grads).map(flat).unwrap_or_default(),
            norm.gamma.val().grad(&grads).map(flat1).unwrap_or_default(),
            norm.beta.val().grad(&grads).map(flat1).unwrap_or_default(),
            match case.residual {
                Some(_) => r.grad(&grads).map(flat).unwrap_or_default(),
                None => Vec::new(),
            },
        ]
    }

    if !cuda_available() {
        println!("no CUDA device: nothing to check");
        return;
    }
    configure_cubecl(0);
    let cuda = burn::backend::cuda::CudaDevice::new(0);
    let cpu = Default::default();
    let cases = [
        Case {
            name: "MiniLM tokens",
            shape: [32, 64, 384],
            input_grad: true,
            parameters_grad: true,
            residual: None,
            biased: false,
        },
        Case {
            name: "MPNet tokens",
            shape: [32, 64, 768],
            input_grad: true,
            parameters_grad: true,
            residual: None,
            biased: false,
        },
        Case {
            name: "37 features, 3 rows",
            shape: [1, 3, 37],
            input_grad: true,
            parameters_grad: true,
            residual: None,
            biased: false,
        },
        Case {
            name: "5000 features, 2 rows",
            shape: [2, 1, 5000],
            input_grad: true,
            parameters_grad: true,
            residual: None,
            biased: false,
        },
        Case {
            name: "21 × 9 rows of 100",
            shape: [21, 9, 100],
            input_grad: true,
            parameters_grad: true,
            residual: None,
            biased: false,
        },
        Case {
            name: "frozen γ and β",
            shape: [8, 64, 384],
            input_grad: true,
            parameters_grad: false,
            residual: None,
            biased: false,
        },
        Case {
            name: "input needs no gradient",
            shape: [8, 64, 384],
            input_grad: false,
            parameters_grad: true,
            residual: None,
            biased: false,
        },
        Case {
            name: "MiniLM, residual, p 0.1",
            shape: [32, 64, 384],
            input_grad: true,
            parameters_grad: true,
            residual: Some(0.1),
            biased: false,
        },
        Case {
            name: "MPNet, residual, p 0.1",
            shape: [32, 64, 768],
            input_grad: true,
            parameters_grad: true,
            residual: Some(0.1),
            biased: false,
        },
        Case {
            name: "residual, no dropout",
            shape: [8, 64, 384],
            input_grad: true,
            parameters_grad: true,
            residual: Some(0.0),
            biased: false,
        },
        Case {
            name: "residual, p 0.5, frozen",
            shape: [21, 9, 100],
            input_grad: true,
            parameters_grad: false,
            residual: Some(0.5),
            biased: false,
        },
        Case {
            name: "MPNet, biased, p 0.1, frozen",
            shape: [32, 64, 768],
            input_grad: true,
            parameters_grad: false,
            residual: Some(0.1),
            biased: true,
        },
        Case {
            name: "biased, no dropout, frozen",
            shape: [8, 64, 384],
            input_grad: true,
            parameters_grad: false,
            residual: Some(0.0),
            biased: true,
        },
    ];
    let mut failed = false;
    let mut worst = 0f64;
    for case in &cases {
        let gpu = run::<Autodiff<Gpu>>(case, &cuda, true);
        let host = run::<Autodiff<Cpu>>(case, &cpu, false);
        let mut line = format!("{:<28}", case.name);
        for (k, name) in ["y", "∂x", "∂γ", "∂β", "∂r"].iter().enumerate() {
            if gpu[k].len() != host[k].len() {
                println!(
                    "FAIL: {}: {name} has {} values on CUDA, {} on the CPU",
                    case.name,
                    gpu[k].len(),
                    host[k].len()
                );
                std::process::exit(1);
            }
            if host[k].is_empty() {
                line.push_str(&format!("  {name} —"));
                continue;
            }
            let scale = host[k].iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6) as f64;
            let diff = gpu[k]
                .iter()
                .zip(&host[k])
                .map(|(a, b)| (*a as f64 - *b as f64).abs() / scale)
                .fold(0f64, f64::max);
            worst = worst.max(diff);
            let tolerance = match k {
                2 | 3 => 1e-4,
                1 if case.biased => 8e-3,
                _ => 1e-5,
            };
            failed |= diff > tolerance;
            line.push_str(&format!("  {name} {diff:.1e}"));
        }
        println!("{line}");
    }
    if failed {
        println!("FAIL: CUDA's LayerNorm differs from the CPU's by {worst:.2e}");
        std::process::exit(1);
    }
    println!("ok: largest difference {worst:.2e}");
}

#[cfg(not(feature = "cuda"))]
fn main() {
    println!("built without CUDA: nothing to check");
}
