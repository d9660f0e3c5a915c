//! AdamW with decoupled weight decay (Loshchilov & Hutter; PyTorch's
//! `torch.optim.AdamW`), the global gradient norm and its clipping, and the
//! learning-rate schedules.
//!
//! The optimizer state is kept per parameter, flattened, on the device, and
//! can be read out and restored by module path for checkpoints. Weight decay
//! applies to matrices only (weights, embeddings), not to biases and
//! LayerNorm parameters, as Hugging Face's trainer does.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::config::{self, Schedule, Warmup};

/// First and second moments of one parameter, flattened.
#[derive(Clone, Debug)]
pub struct Moments<B: Backend> {
    /// Running mean of gradients.
    pub m: Tensor<B, 1>,
    /// Running mean of squared gradients.
    pub v: Tensor<B, 1>,
}

/// AdamW's state.
#[derive(Debug)]
pub struct AdamW<B: Backend> {
    settings: config::AdamW,
    /// Moments by parameter.
    pub state: HashMap<ParamId, Moments<B>>,
    /// Steps taken (bias correction uses it).
    pub steps: u64,
}

impl<B: Backend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(settings: config::AdamW) -> Self {
        AdamW {
            settings,
            state: HashMap::new(),
            steps: 0,
        }
    }

    /// One update of every parameter that has a gradient in `grads`,
    /// gradients scaled by `factor` (the clipping factor, a 1-element tensor).
    pub fn step<AB, M>(
        &mut self,
        model: M,
        grads: GradientsParams,
        lr: f64,
        factor: Option<Tensor<B, 1>>,
    ) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        self.steps += 1;
        let mut mapper = Update {
            optimizer: self,
            grads,
            lr,
            factor,
        };
        model.map(&mut mapper)
    }
}

struct Update<'a, B: Backend> {
    optimizer: &'a mut AdamW<B>,
    grads: GradientsParams,
    lr: f64,
    factor: Option<Tensor<B, 1>>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Update<'_, AB::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let mut g = grad.reshape([n]);
        if let Some(f) = &self.factor {
            g = g * f.clone();
        }
        let s = self.optimizer.settings;
        let [b1, b2] = s.betas;
        let t = self.optimizer.steps as i32;
        let (m, v) = match self.optimizer.state.remove(&id) {
            Some(Moments { m, v }) => (
                m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1),
                v.mul_scalar(b2) + g.clone().powi_scalar(2).mul_scalar(1.0 - b2),
            ),
            None => (
                g.clone().mul_scalar(1.0 - b1),
                g.powi_scalar(2).mul_scalar(1.0 - b2),
            ),
        };
        let mut p = tensor.inner().reshape([n]);
        if D >= 2 && s.weight_decay > 0.0 {
            p = p.mul_scalar(1.0 - self.lr * s.weight_decay);
        }
        let correction1 = 1.0 - b1.powi(t);
        let correction2 = 1.0 - b2.powi(t);
        let denom = v
            .clone()
            .sqrt()
            .div_scalar(correction2.sqrt())
            .add_scalar(s.eps);
        p = p - (m.clone() / denom).mul_scalar(self.lr / correction1);
        self.optimizer.state.insert(id, Moments { m, v });
        let updated = Tensor::<AB, D>::from_inner(p.reshape(dims)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// The global L2 norm of all gradients in `grads`, as a 1-element tensor
/// (read it only when needed: reading waits for the device).
pub fn grad_norm<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    model: &M,
    grads: &GradientsParams,
) -> Option<Tensor<AB::InnerBackend, 1>> {
    struct Norm<'a, B: Backend> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<B, 1>>,
    }
    impl<AB: AutodiffBackend> ModuleVisitor<AB> for Norm<'_, AB::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            if let Some(g) = self.grads.get::<AB::InnerBackend, D>(param.id) {
                let sq = g.powi_scalar(2).sum();
                self.sum = Some(match self.sum.take() {
                    Some(s) => s + sq,
                    None => sq,
                });
            }
        }
    }
    let mut norm = Norm { grads, sum: None };
    model.visit(&mut norm);
    norm.sum.map(|s| s.sqrt())
}

/// The factor that scales gradients to norm at most `max`.
pub fn clip_factor<B: Backend>(norm: Tensor<B, 1>, max: f64) -> Tensor<B, 1> {
    norm.add_scalar(1e-6).recip().mul_scalar(max).clamp_max(1.0)
}

/// The learning rate at optimizer step `step` (0-based) of `total`.
pub fn lr_at(peak: f64, schedule: &Schedule, step: u64, total: u64) -> f64 {
    let (warmup, decay) = match schedule {
        Schedule::Constant { warmup } => (warmup, None),
        Schedule::Linear { warmup } => (warmup, Some(false)),
        Schedule::Cosine { warmup } => (warmup, Some(true)),
    };
    let warm = match *warmup {
        Warmup::Steps(n) => n,
        Warmup::Fraction(f) => (f * total as f64).ceil() as u64,
    };
    if step < warm {
        return peak * (step + 1) as f64 / warm as f64;
    }
    let Some(cosine) = decay else {
        return peak;
    };
    let left = total.saturating_sub(warm).max(1) as f64;
    let progress = ((step - warm) as f64 / left).min(1.0);
    if cosine {
        peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    } else {
        peak * (1.0 - progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_linearly_then_linear_decay_reaches_zero() {
        let s = Schedule::Linear {
            warmup: Warmup::Steps(10),
        };
        assert!((lr_at(1.0, &s, 0, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 9, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 60, 110) - 0.5).abs() < 1e-12);
        assert!(lr_at(1.0, &s, 109, 110) < 0.011);
    }

    #[test]
    fn cosine_is_half_way_down_at_mid_point_and_constant_stays() {
        let s = Schedule::Cosine {
            warmup: Warmup::Fraction(0.0),
        };
        assert!((lr_at(2.0, &s, 50, 100) - 1.0).abs() < 1e-12);
        let c = Schedule::Constant {
            warmup: Warmup::Fraction(0.1),
        };
        assert!((lr_at(2.0, &c, 5, 100) - 1.2).abs() < 1e-12);
        assert_eq!(lr_at(2.0, &c, 90, 100), 2.0);
    }
}
