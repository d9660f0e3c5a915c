//! Position-wise feed-forward block: dense, GELU, dense, residual LayerNorm.
//!
//! Mirrors `BertIntermediate` + `BertOutput` in
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/bert/modeling_bert.py>
//! (`MPNetIntermediate` + `MPNetOutput` are the same). GELU is the exact erf form,
//! as `hidden_act: "gelu"` selects upstream.

use burn::prelude::*;
use burn::tensor::activation::gelu;

use crate::runtime::model::dropout::Dropout;
use crate::runtime::model::layer_norm::LayerNorm;
use crate::runtime::model::projection::{Projection, to_half};

/// Configuration of [`FeedForward`].
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Width of the hidden states (`d_model`).
    pub hidden_size: usize,
    /// Width of the inner layer.
    pub intermediate_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout on the output during training.
    #[config(default = 0.1)]
    pub dropout: f64,
}

/// Feed-forward block: `LayerNorm(x + W₂ · gelu(W₁ · x))`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `d_model → intermediate` projection.
    pub intermediate: Projection<B>,
    /// `intermediate → d_model` projection.
    pub output: Projection<B>,
    /// LayerNorm after the residual sum.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl FeedForwardConfig {
    /// Builds the block with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FeedForward<B> {
        FeedForward {
            intermediate: Projection::random(self.hidden_size, self.intermediate_size, device),
            output: Projection::random(self.intermediate_size, self.hidden_size, device),
            layer_norm: LayerNorm::new(self.hidden_size, self.layer_norm_eps, device),
            dropout: Dropout::new(self.dropout),
        }
    }
}

impl<B: Backend> FeedForward<B> {
    /// Replaces the dropout probability.
    pub fn set_dropout(&mut self, prob: f64) {
        self.dropout = Dropout::new(prob);
    }

    /// hidden: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    ///
    /// When the second product is in bf16, GELU runs on the first one's
    /// result in bf16 (its bias added in f32 first), as under PyTorch's
    /// autocast: the input GELU keeps for the backward pass is then half the
    /// size of an f32 one, and its bf16 output is what the product reads,
    /// with no cast between them.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_copied(hidden, None, false).0
    }

    /// [`FeedForward::forward`] given the input in bf16 where the block
    /// before wrote it (`copy`, read by the first product), and giving the
    /// output in bf16 too with `copy_out`
    /// (`LayerNorm::forward_residual_copied`).
    pub fn forward_copied(
        &self,
        hidden: Tensor<B, 3>,
        copy: Option<Tensor<B, 3>>,
        copy_out: bool,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let inner = self.intermediate.forward_copied(hidden.clone(), copy);
        let inner = if self.output.half {
            gelu(to_half(inner))
        } else {
            gelu(inner)
        };
        // LoRA's frozen output product: its bias added in the LayerNorm.
        if let Some((product, bias)) = self.output.frozen_product(inner.clone()) {
            return self.layer_norm.forward_residual_biased_copied(
                product,
                bias,
                hidden,
                &self.dropout,
                copy_out,
            );
        }
        self.layer_norm.forward_residual_copied(
            self.output.forward(inner),
            hidden,
            &self.dropout,
            copy_out,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::{Cpu, cpu_device};
    use crate::runtime::model::projection::{rows, to_full};
    use burn::backend::Autodiff;
    use burn::tensor::{DType, Distribution};

    type Train = Autodiff<Cpu>;

    /// Under bf16 products the block is `W₂ · gelu(bf16(W₁ · x + b₁))`: GELU
    /// reads and gives bf16, the block's output and the input's gradient
    /// stay f32 and close to the f32 block's.
    #[test]
    fn under_bf16_products_gelu_runs_on_the_bf16_product() {
        let device = cpu_device();
        let mut block = FeedForwardConfig::new(16, 64, 1e-12)
            .with_dropout(0.0)
            .init::<Train>(&device);
        let x = Tensor::<Train, 3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        // An uneven loss: the sum of a LayerNorm's output does not depend on its input.
        let w = Tensor::<Train, 3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let loss = |y: Tensor<Train, 3>| (y * w.clone()).sum().backward();
        let full = block.forward(x.clone());
        let grad_full = x.grad(&loss(full.clone())).unwrap();
        block.intermediate.half = true;
        block.output.half = true;
        let half = block.forward(x.clone());
        assert_eq!(half.dtype(), DType::F32);
        let grad_half = x.grad(&loss(half.clone())).unwrap();
        assert_eq!(grad_half.dtype(), DType::F32);

        // The same block written out by hand.
        let inner = block.intermediate.forward(x.clone());
        let activated = gelu(to_half(inner));
        assert_eq!(activated.dtype(), DType::BF16);
        let w2 = to_half(block.output.weight.as_ref().unwrap().val());
        let b2 = block.output.bias.as_ref().unwrap().val();
        let out = to_full(rows(activated, w2)) + b2.unsqueeze();
        let by_hand = block.layer_norm.forward(out + x.clone());
        let v = |t: Tensor<Train, 3>| t.inner().into_data().to_vec::<f32>().unwrap();
        assert_eq!(v(half.clone()), v(by_hand), "the bf16 GELU path");

        let (a, b) = (v(full), v(half));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(diff > 0.0 && diff < 5e-2, "outputs differ by {diff}");
        let g = |t: Tensor<Cpu, 3>| t.into_data().to_vec::<f32>().unwrap();
        let (a, b) = (g(grad_full), g(grad_half));
        let dot: f32 = a.iter().zip(&b).map(|(p, q)| p * q).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(&a) * norm(&b));
        assert!(cosine > 0.99, "input gradients agree: cosine {cosine}");
    }
}
