//! LayerNorm with a backward pass of its own on the autodiff backends ftl
//! trains with.
//!
//! burn 0.21's autodiff has no LayerNorm operation: it differentiates the
//! backend's decomposition (mean, subtract, square, mean, square root,
//! divide, scale, shift), which keeps two f32 tensors of the input's size for
//! the backward pass, the centred input and the normalised one. The
//! operation here computes the same forward values, operation for operation,
//! keeps only the normalised input and the per-row deviation, and gives the
//! gradients in closed form:
//!
//! ```text
//! x̂ = (x − mean x) / σ          y = γ·x̂ + β
//! ∂β = Σ g      ∂γ = Σ g·x̂      ∂x = (γg − mean(γg) − x̂·mean(γg·x̂)) / σ
//! ```
//!
//! Measured on the H200 (BENCHMARKS.md), this lowers full fine-tuning's
//! peak by about one tensor per LayerNorm. With γ and β frozen (LoRA,
//! QLoRA) the peak did not move: burn's decomposition keeps less when γ
//! needs no gradient.
//!
//! On CUDA with f32 tensors, the forward and backward passes run as ftl's
//! own kernels instead, one operation each ([`super::layer_norm_cuda`]);
//! the state kept between them is the same.
//!
//! Other backends (inference, the inner backend of evaluation) use burn's
//! LayerNorm as it is.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata, TensorPrimitive};

use crate::runtime::backend::{Cpu, same_type};
use crate::runtime::model::dropout::Dropout;
#[cfg(feature = "cuda")]
use crate::runtime::model::dropout::Seeded;

/// `γ · (x − mean x) / √(var x + ε) + β` over the last dimension. Its
/// parameters keep burn's names (`gamma`, `beta`), so checkpoints and
/// weights files address them as before.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift.
    pub beta: Param<Tensor<B, 1>>,
    epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// γ = 1, β = 0.
    pub fn new(size: usize, epsilon: f64, device: &B::Device) -> Self {
        LayerNorm {
            gamma: Param::from_tensor(Tensor::ones([size], device)),
            beta: Param::from_tensor(Tensor::zeros([size], device)),
            epsilon,
        }
    }

    /// Normalises `x` over its last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = match self.on_autodiff::<Cpu, D>(x) {
            Ok(y) => return y,
            Err(x) => x,
        };
        #[cfg(feature = "cuda")]
        let x = match self.on_autodiff::<crate::runtime::backend::Gpu, D>(x) {
            Ok(y) => return y,
            Err(x) => x,
        };
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            x.into_primitive().tensor(),
            self.gamma.val().into_primitive().tensor(),
            Some(self.beta.val().into_primitive().tensor()),
            self.epsilon,
        )))
    }

    /// `LayerNorm(dropout(a) + residual)`: how a residual block ends. On
    /// CUDA, training with f32 tensors, it is one
    /// operation of its own each way ([`super::layer_norm_cuda`]): the
    /// dropout's mask is drawn where the kernel reads `a` and drawn again in
    /// the backward pass, the sum is made there, and neither is kept. The
    /// composition registers eight more operations going forward (the draw,
    /// the comparison, the fill, the scale, the sum) and back, and keeps a
    /// one-byte mask. Elsewhere it is that composition.
    pub fn forward_residual<const D: usize>(
        &self,
        a: Tensor<B, D>,
        residual: Tensor<B, D>,
        dropout: &Dropout,
    ) -> Tensor<B, D> {
        self.forward_residual_copied(a, residual, dropout, false).0
    }

    /// [`LayerNorm::forward_residual`], and with `copy`, on ftl's kernels,
    /// the output in bf16 as well, for the next block's bf16 product to
    /// read: the kernel writes both, where a cast after it is a launch of
    /// its own. The copy is a constant (no gradient flows through it: the
    /// product that reads it gives its input's gradient to the f32
    /// output). `None` elsewhere, or without `copy`.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub fn forward_residual_copied<const D: usize>(
        &self,
        a: Tensor<B, D>,
        residual: Tensor<B, D>,
        dropout: &Dropout,
        copy: bool,
    ) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
        #[cfg(feature = "cuda")]
        let (a, residual) = match self.residual_on_kernels(a, residual, None, dropout, copy) {
            Ok(y) => return y,
            Err(inputs) => inputs,
        };
        (self.forward(dropout.forward(a) + residual), None)
    }

    /// `LayerNorm(dropout(a + bias) + residual)` for a frozen `bias`
    /// (`[width]`, added to every row) and an `a` that is the f32 result of
    /// a product of bf16 operands whose backward pass reads its gradient in
    /// bf16 (`Projection::frozen_product`: LoRA's frozen output
    /// projections). On ftl's kernels this is one operation: the bias is
    /// added where the kernel reads `a`, and a's gradient is written in
    /// bf16 for the product, where the sum and the cast were two more
    /// launches each way. Elsewhere, [`LayerNorm::forward_residual`] of
    /// `a + bias`; the values are the same either way.
    pub fn forward_residual_biased<const D: usize>(
        &self,
        a: Tensor<B, D>,
        bias: Tensor<B, 1>,
        residual: Tensor<B, D>,
        dropout: &Dropout,
    ) -> Tensor<B, D> {
        self.forward_residual_biased_copied(a, bias, residual, dropout, false)
            .0
    }

    /// [`LayerNorm::forward_residual_biased`] with the bf16 copy of
    /// [`LayerNorm::forward_residual_copied`].
    pub fn forward_residual_biased_copied<const D: usize>(
        &self,
        a: Tensor<B, D>,
        bias: Tensor<B, 1>,
        residual: Tensor<B, D>,
        dropout: &Dropout,
        copy: bool,
    ) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
        #[cfg(feature = "cuda")]
        let (a, residual) = match self.residual_on_kernels(a, residual, Some(&bias), dropout, copy)
        {
            Ok(y) => return y,
            Err(inputs) => inputs,
        };
        self.forward_residual_copied(a + bias.unsqueeze(), residual, dropout, copy)
    }

    /// [`LayerNorm::forward_residual_copied`] as ftl's kernels, where they
    /// apply; the inputs back otherwise. With a `bias`, the operation of
    /// [`LayerNorm::forward_residual_biased`]: it applies only to a frozen
    /// f32 bias.
    #[cfg(feature = "cuda")]
    #[allow(clippy::type_complexity)]
    fn residual_on_kernels<const D: usize>(
        &self,
        a: Tensor<B, D>,
        residual: Tensor<B, D>,
        bias: Option<&Tensor<B, 1>>,
        dropout: &Dropout,
        copy: bool,
    ) -> Result<(Tensor<B, D>, Option<Tensor<B, D>>), (Tensor<B, D>, Tensor<B, D>)> {
        use crate::runtime::backend::Gpu;
        use burn::tensor::DType;
        if TypeId::of::<B>() != TypeId::of::<Autodiff<Gpu>>()
            || [
                a.dtype(),
                residual.dtype(),
                self.gamma.val().dtype(),
                self.beta.val().dtype(),
            ]
            .iter()
            .chain(bias.map(|b| b.dtype()).as_ref())
            .any(|d| *d != DType::F32)
            || bias.is_some_and(|b| b.is_require_grad())
        {
            return Err((a, residual));
        }
        let draw = dropout.seeded();
        let a: Tensor<Autodiff<Gpu>, D> = same_type(a);
        let residual: Tensor<Autodiff<Gpu>, D> = same_type(residual);
        let gamma: Tensor<Autodiff<Gpu>, 1> = same_type(self.gamma.val());
        let beta: Tensor<Autodiff<Gpu>, 1> = same_type(self.beta.val());
        // A frozen bias has no node: its values are all the operation needs.
        let bias = bias.map(|b| {
            same_type::<_, Tensor<Autodiff<Gpu>, 1>>(b.clone())
                .into_primitive()
                .tensor()
                .primitive
        });
        let (y, copy) = residual_layer_norm(
            a.into_primitive().tensor(),
            residual.into_primitive().tensor(),
            bias,
            gamma.into_primitive().tensor(),
            beta.into_primitive().tensor(),
            self.epsilon,
            draw,
            copy,
        );
        let y = Tensor::<Autodiff<Gpu>, D>::from_primitive(TensorPrimitive::Float(y));
        let copy = copy.map(|c| {
            Tensor::<Autodiff<Gpu>, D>::from_inner(Tensor::from_primitive(TensorPrimitive::Float(
                c,
            )))
        });
        Ok((same_type(y), copy.map(same_type)))
    }

    /// The operation with its own backward pass, when `B` is `Autodiff<I>`;
    /// `x` back otherwise.
    fn on_autodiff<I: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if TypeId::of::<B>() != TypeId::of::<Autodiff<I>>() {
            return Err(x);
        }
        let x: Tensor<Autodiff<I>, D> = same_type(x);
        let gamma: Tensor<Autodiff<I>, 1> = same_type(self.gamma.val());
        let beta: Tensor<Autodiff<I>, 1> = same_type(self.beta.val());
        let y = layer_norm::<I>(
            x.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            beta.into_primitive().tensor(),
            self.epsilon,
        );
        Ok(same_type(Tensor::<Autodiff<I>, D>::from_primitive(
            TensorPrimitive::Float(y),
        )))
    }
}

/// burn's decomposition on the inner backend: the normalised input, the
/// deviation `√(var + ε)` (one per row), γ shaped to broadcast, and the
/// output.
fn forward<I: Backend>(
    x: FloatTensor<I>,
    gamma: FloatTensor<I>,
    beta: FloatTensor<I>,
    epsilon: f64,
) -> [FloatTensor<I>; 4] {
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let broadcast = Shape::from(
        (0..shape.num_dims())
            .map(|i| if i == last { shape[last] } else { 1 })
            .collect::<Vec<_>>(),
    );
    let mean = I::float_mean_dim(x.clone(), last);
    let centered = I::float_sub(x, mean);
    let var = I::float_mean_dim(I::float_mul(centered.clone(), centered.clone()), last);
    let deviation = I::float_sqrt(I::float_add_scalar(var, epsilon.into()));
    let normalized = I::float_div(centered, deviation.clone());
    let gamma = I::float_reshape(gamma, broadcast.clone());
    let scaled = I::float_mul(normalized.clone(), gamma.clone());
    let y = I::float_add(scaled, I::float_reshape(beta, broadcast));
    [normalized, deviation, gamma, y]
}

/// ftl's CUDA kernels where they apply (see [`super::layer_norm_cuda`]),
/// [`forward`] otherwise. The kernels keep γ as it is, not shaped to
/// broadcast: their backward pass takes either.
fn forward_on_kernels_or_composition<I: Backend>(
    x: FloatTensor<I>,
    gamma: FloatTensor<I>,
    beta: FloatTensor<I>,
    epsilon: f64,
) -> [FloatTensor<I>; 4] {
    #[cfg(feature = "cuda")]
    if super::layer_norm_cuda::applies::<I>(&[&x, &gamma, &beta]) {
        let [normalized, deviation, y] =
            super::layer_norm_cuda::forward::<I>(x, gamma.clone(), beta, epsilon);
        return [normalized, deviation, gamma, y];
    }
    forward::<I>(x, gamma, beta, epsilon)
}

/// The gradients of x, γ and β from the output's.
#[derive(Debug)]
struct LayerNormBackward;

impl<I: Backend> Backward<I, 3> for LayerNormBackward {
    /// The normalised input, the deviation and γ shaped to broadcast.
    type State = (FloatTensor<I>, FloatTensor<I>, FloatTensor<I>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (normalized, deviation, gamma) = ops.state;
        let [x_node, gamma_node, beta_node] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        #[cfg(feature = "cuda")]
        if super::layer_norm_cuda::applies::<I>(&[&grad, &normalized, &deviation, &gamma]) {
            let [dx, _, dgamma, dbeta] = super::layer_norm_cuda::backward::<I>(
                grad,
                normalized,
                deviation,
                gamma,
                x_node.is_some(),
                gamma_node.is_some() || beta_node.is_some(),
                None,
                false,
            );
            for (node, g) in [(x_node, dx), (gamma_node, dgamma), (beta_node, dbeta)] {
                if let (Some(node), Some(g)) = (node, g) {
                    grads.register::<I>(node.id, g);
                }
            }
            return;
        }
        let shape = grad.shape();
        let last = shape.num_dims() - 1;
        let width = shape[last];
        let rows = shape.num_elements() / width;
        // Σ over every row, for the per-feature parameters.
        let column_sum = |t: FloatTensor<I>| {
            let t = I::float_reshape(t, Shape::from([rows, width]));
            I::float_reshape(I::float_sum_dim(t, 0), Shape::from([width]))
        };
        if let Some(node) = beta_node {
            grads.register::<I>(node.id, column_sum(grad.clone()));
        }
        if let Some(node) = gamma_node {
            let g = I::float_mul(grad.clone(), normalized.clone());
            grads.register::<I>(node.id, column_sum(g));
        }
        if let Some(node) = x_node {
            let g = I::float_mul(grad, gamma);
            let mean = I::float_mean_dim(g.clone(), last);
            let mean_x = I::float_mean_dim(I::float_mul(g.clone(), normalized.clone()), last);
            let centred = I::float_sub(g, mean);
            let dx = I::float_sub(centred, I::float_mul(normalized, mean_x));
            grads.register::<I>(node.id, I::float_div(dx, deviation));
        }
    }
}

/// The operation on `Autodiff<I>`'s tensors.
fn layer_norm<I: Backend>(
    x: FloatTensor<Autodiff<I>>,
    gamma: FloatTensor<Autodiff<I>>,
    beta: FloatTensor<Autodiff<I>>,
    epsilon: f64,
) -> FloatTensor<Autodiff<I>> {
    let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
    let [normalized, deviation, gamma_b, y] = forward_on_kernels_or_composition::<I>(
        x.primitive,
        gamma.primitive,
        beta.primitive,
        epsilon,
    );
    match LayerNormBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((normalized, deviation, gamma_b), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// The gradients of a, the residual, γ and β from the output's, for
/// [`LayerNorm::forward_residual`] on ftl's kernels.
#[cfg(feature = "cuda")]
#[derive(Debug)]
struct ResidualBackward {
    /// The dropout's draw.
    draw: Option<Seeded>,
    /// a's gradient in bf16 (after a bias added in the kernel).
    a_half: bool,
}

#[cfg(feature = "cuda")]
impl<I: Backend> Backward<I, 4> for ResidualBackward {
    /// The normalised sum, the deviation and γ.
    type State = (FloatTensor<I>, FloatTensor<I>, FloatTensor<I>);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (normalized, deviation, gamma) = ops.state;
        let [a_node, residual_node, gamma_node, beta_node] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let [dx, da, dgamma, dbeta] = super::layer_norm_cuda::backward::<I>(
            grad,
            normalized,
            deviation,
            gamma,
            a_node.is_some() || residual_node.is_some(),
            gamma_node.is_some() || beta_node.is_some(),
            self.draw,
            self.a_half,
        );
        // Without dropout, a's gradient is the sum's, as the residual's.
        let da = da.or_else(|| dx.clone());
        for (node, g) in [
            (a_node, da),
            (residual_node, dx),
            (gamma_node, dgamma),
            (beta_node, dbeta),
        ] {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<I>(node.id, g);
            }
        }
    }
}

/// [`LayerNorm::forward_residual`] on `Autodiff<Gpu>`'s tensors, on ftl's
/// kernels; with a (frozen) `bias`, [`LayerNorm::forward_residual_biased`];
/// with `copy`, also the output in bf16, untracked.
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn residual_layer_norm(
    a: FloatTensor<Autodiff<crate::runtime::backend::Gpu>>,
    residual: FloatTensor<Autodiff<crate::runtime::backend::Gpu>>,
    bias: Option<FloatTensor<crate::runtime::backend::Gpu>>,
    gamma: FloatTensor<Autodiff<crate::runtime::backend::Gpu>>,
    beta: FloatTensor<Autodiff<crate::runtime::backend::Gpu>>,
    epsilon: f64,
    draw: Option<Seeded>,
    copy: bool,
) -> (
    FloatTensor<Autodiff<crate::runtime::backend::Gpu>>,
    Option<FloatTensor<crate::runtime::backend::Gpu>>,
) {
    use crate::runtime::backend::Gpu;
    let nodes = [
        a.node.clone(),
        residual.node.clone(),
        gamma.node.clone(),
        beta.node.clone(),
    ];
    let a_half = bias.is_some();
    let ([normalized, deviation, y], copy) = super::layer_norm_cuda::forward_sum::<Gpu>(
        a.primitive,
        Some(residual.primitive),
        bias,
        gamma.primitive.clone(),
        beta.primitive,
        epsilon,
        draw,
        copy,
    );
    let op = ResidualBackward { draw, a_half };
    let y = match op
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((normalized, deviation, gamma.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (y, copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::cpu_device;
    use burn::nn::LayerNormConfig;
    use burn::tensor::Distribution;

    type Train = Autodiff<Cpu>;

    /// Values, and the gradients of x, γ and β under an uneven loss, for
    /// ftl's LayerNorm and burn's, from the same input and parameters.
    #[allow(clippy::type_complexity)]
    fn both() -> ([Vec<f32>; 4], [Vec<f32>; 4]) {
        let device = cpu_device();
        let x = Tensor::<Cpu, 3>::random([2, 5, 8], Distribution::Normal(0.5, 2.0), &device);
        let gamma = Tensor::<Cpu, 1>::random([8], Distribution::Normal(1.0, 0.3), &device);
        let beta = Tensor::<Cpu, 1>::random([8], Distribution::Normal(0.0, 0.3), &device);
        let weights = Tensor::<Cpu, 3>::random([2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let mut ours = LayerNorm::<Train>::new(8, 1e-5, &device);
        ours.gamma = Param::from_tensor(Tensor::from_inner(gamma.clone()));
        ours.beta = Param::from_tensor(Tensor::from_inner(beta.clone()));
        let mut burns = LayerNormConfig::new(8)
            .with_epsilon(1e-5)
            .init::<Train>(&device);
        burns.gamma = Param::from_tensor(Tensor::from_inner(gamma));
        burns.beta = Some(Param::from_tensor(Tensor::from_inner(beta)));
        let run = |forward: &dyn Fn(Tensor<Train, 3>) -> Tensor<Train, 3>,
                   gamma: &Param<Tensor<Train, 1>>,
                   beta: &Param<Tensor<Train, 1>>| {
            let x = Tensor::<Train, 3>::from_inner(x.clone()).require_grad();
            let y = forward(x.clone());
            let loss = (y.clone() * Tensor::from_inner(weights.clone())).sum();
            let grads = loss.backward();
            let v = |t: Tensor<Cpu, 3>| t.into_data().to_vec::<f32>().unwrap();
            let w = |t: Tensor<Cpu, 1>| t.into_data().to_vec::<f32>().unwrap();
            [
                v(y.inner()),
                v(x.grad(&grads).expect("x")),
                w(gamma.val().grad(&grads).expect("γ")),
                w(beta.val().grad(&grads).expect("β")),
            ]
        };
        let a = run(&|x| ours.forward(x), &ours.gamma, &ours.beta);
        let b = run(
            &|x| burns.forward(x),
            &burns.gamma,
            burns.beta.as_ref().expect("β"),
        );
        (a, b)
    }

    #[test]
    fn same_values_as_burns_layer_norm_and_the_same_gradients() {
        let (ours, burns) = both();
        assert_eq!(ours[0], burns[0], "the forward pass is burn's, bitwise");
        for (k, name) in [(1, "x"), (2, "gamma"), (3, "beta")] {
            for (a, b) in ours[k].iter().zip(&burns[k]) {
                assert!(
                    (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "∂{name}: {a} vs {b}"
                );
            }
            assert!(
                ours[k].iter().any(|v| v.abs() > 1e-3),
                "∂{name} is not zero"
            );
        }
    }

    #[test]
    fn inference_backends_use_burns_layer_norm() {
        let device = cpu_device();
        let x = Tensor::<Cpu, 2>::random([3, 8], Distribution::Normal(0.0, 1.0), &device);
        let ours = LayerNorm::<Cpu>::new(8, 1e-12, &device).forward(x.clone());
        let burns = LayerNormConfig::new(8)
            .with_epsilon(1e-12)
            .init::<Cpu>(&device)
            .forward(x);
        assert_eq!(
            ours.into_data().to_vec::<f32>().unwrap(),
            burns.into_data().to_vec::<f32>().unwrap()
        );
    }
}
