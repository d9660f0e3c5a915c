//! A linear layer with a LoRA adapter: `y = x·W + b + (α/r)·dropout(x)·A·B`.
//!
//! The base `W`, `b` are frozen (no gradients); only `A` (`[d_in, r]`) and
//! `B` (`[r, d_out]`) train. The product `A·B` is never formed: the update is
//! applied as two thin matmuls, so neither a dense `d_in × d_out` delta nor
//! its weight-sized gradient exists. `A` starts Kaiming-uniform and `B` at
//! zero, so a fresh adapter leaves the layer's output unchanged, as in the
//! LoRA paper and PEFT (`LoraLayer.reset_lora_parameters`,
//! <https://github.com/huggingface/peft/blob/v0.13.2/src/peft/tuners/lora/layer.py>).
//! burn stores `A` transposed relative to PEFT's `lora_A.weight` (`[r, d_in]`).

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::Distribution;

/// Configuration of [`LoraLinear`].
#[derive(Config, Debug)]
pub struct LoraConfig {
    /// Adapter rank r.
    pub rank: usize,
    /// Scale numerator α: updates are scaled by α / r.
    pub alpha: f64,
    /// Dropout on the adapter's input.
    #[config(default = 0.0)]
    pub dropout: f64,
}

/// A frozen linear layer plus a trainable low-rank update.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The frozen base layer.
    pub base: Linear<B>,
    /// Down projection, `[d_in, r]`.
    pub a: Param<Tensor<B, 2>>,
    /// Up projection, `[r, d_out]`.
    pub b: Param<Tensor<B, 2>>,
    dropout: Dropout,
    scale: f64,
}

impl LoraConfig {
    /// Wraps `base`, freezing it. `A` is drawn uniformly from ±1/√d_in
    /// (PEFT's `kaiming_uniform_(a = √5)`), `B` is zero.
    pub fn init<B: Backend>(&self, base: Linear<B>, device: &B::Device) -> LoraLinear<B> {
        let [d_in, d_out] = base.weight.dims();
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Tensor::random(
            [d_in, self.rank],
            Distribution::Uniform(-bound, bound),
            device,
        );
        let b = Tensor::zeros([self.rank, d_out], device);
        LoraLinear {
            base: base.no_grad(),
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            dropout: DropoutConfig::new(self.dropout).init(),
            scale: self.alpha / self.rank as f64,
        }
    }
}

impl<B: Backend> LoraLinear<B> {
    /// input: `[batch, seq, d_in]` → `[batch, seq, d_out]`.
    pub fn forward(&self, input: Tensor<B, 3>) -> Tensor<B, 3> {
        let update = self
            .dropout
            .forward(input.clone())
            .matmul(self.a.val().unsqueeze())
            .matmul(self.b.val().unsqueeze());
        self.base.forward(input) + update.mul_scalar(self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::{Cpu, cpu_device};
    use burn::backend::Autodiff;
    use burn::nn::LinearConfig;

    type Train = Autodiff<Cpu>;

    #[test]
    fn a_fresh_adapter_changes_nothing() {
        let device = cpu_device();
        let base = LinearConfig::new(16, 8).init::<Cpu>(&device);
        let x = Tensor::<Cpu, 3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let expected = base.forward(x.clone());
        let lora = LoraConfig::new(4, 8.0).init(base, &device);
        let got = lora.forward(x);
        got.into_data().assert_approx_eq::<f32>(
            &expected.into_data(),
            burn::tensor::Tolerance::absolute(1e-6),
        );
    }

    #[test]
    fn only_the_adapter_receives_gradients() {
        let device = cpu_device();
        let base = LinearConfig::new(16, 8).init::<Train>(&device);
        let lora = LoraConfig::new(4, 8.0).init(base, &device);
        let x = Tensor::<Train, 3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let loss = lora.forward(x).powf_scalar(2.0).mean();
        let grads = loss.backward();
        assert!(
            lora.base.weight.grad(&grads).is_none(),
            "the base weight is frozen"
        );
        assert!(
            lora.base
                .bias
                .as_ref()
                .is_none_or(|b| b.grad(&grads).is_none()),
            "the base bias is frozen"
        );
        let gb = lora.b.grad(&grads).expect("B trains");
        assert!(
            gb.abs().sum().into_scalar() > 0.0,
            "B gets a gradient even while zero"
        );
        let ga = lora.a.grad(&grads).expect("A trains");
        assert_eq!(
            ga.abs().sum().into_scalar(),
            0.0,
            "A's gradient is zero while B is zero"
        );
    }

    #[test]
    fn the_update_is_scaled_by_alpha_over_rank() {
        let device = cpu_device();
        let base = LinearConfig::new(6, 3)
            .with_bias(false)
            .init::<Cpu>(&device);
        let mut lora = LoraConfig::new(2, 4.0).init(base, &device);
        lora.b = Param::from_tensor(Tensor::ones([2, 3], &device));
        let x = Tensor::<Cpu, 3>::ones([1, 1, 6], &device);
        let delta = lora.forward(x.clone()) - lora.base.forward(x);
        // Each output is (α/r) · Σ_i Σ_k A[i][k] with B = 1.
        let expected = lora.a.val().sum().into_scalar() * 2.0;
        let got: Vec<f32> = delta.into_data().to_vec().expect("f32");
        for v in got {
            assert!((v - expected).abs() < 1e-5, "{v} vs {expected}");
        }
    }
}
