//! Embedding lookups (the word and position tables, MPNet's relative
//! attention bias) with a backward pass of their own on the autodiff
//! backends ftl trains with.
//!
//! The forward pass is burn's (`embedding`: a row gather). The backward
//! pass sums each row's gradient over the positions that looked it up.
//! burn 0.21 does that on CUDA with `select_assign`, whose kernel gives one
//! thread to each column of the table and loops over every position in
//! turn: 768 threads for MPNet's word table, each reading 2,048 rows one
//! after another, 1.46 ms of a step whose kernels otherwise take about
//! 20 ms; 0.66 ms for the position table and 0.38 ms for the relative bias
//! (12 threads over 4,096 positions). On CUDA ftl's kernel
//! (`model::lookup_cuda`) gives each position a cube instead. On the
//! CPU the backward pass is burn's own, so the values are the same there.
//!
//! Other backends (inference, the inner backend of evaluation) use burn's
//! lookup as it is.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::{FloatTensor, IntTensor};

use crate::runtime::backend::{Cpu, same_type};

/// Rows `ids` `[batch, seq]` of `table` `[rows, d]` → `[batch, seq, d]`.
pub fn lookup<B: Backend>(table: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    if TypeId::of::<B>() == TypeId::of::<Autodiff<Cpu>>() {
        return same_type(own::<Cpu>(same_type(table), same_type(ids)));
    }
    #[cfg(feature = "cuda")]
    if TypeId::of::<B>() == TypeId::of::<Autodiff<crate::runtime::backend::Gpu>>() {
        use crate::runtime::backend::Gpu;
        return same_type(own::<Gpu>(same_type(table), same_type(ids)));
    }
    burn::tensor::module::embedding(table, ids)
}

/// The lookup as an operation of burn's autodiff with [`LookupBackward`].
fn own<I: Backend>(
    table: Tensor<Autodiff<I>, 2>,
    ids: Tensor<Autodiff<I>, 2, Int>,
) -> Tensor<Autodiff<I>, 3> {
    let table = table.into_primitive().tensor();
    let ids: IntTensor<I> = ids.into_primitive();
    let out = match LookupBackward
        .prepare::<NoCheckpointing>([table.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (table.primitive.clone(), ids.clone()),
            I::embedding(table.primitive, ids),
        ),
        OpsKind::UnTracked(prep) => prep.finish(I::embedding(table.primitive, ids)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The table's gradient from the result's.
#[derive(Debug)]
struct LookupBackward;

impl<I: Backend> Backward<I, 1> for LookupBackward {
    type State = (FloatTensor<I>, IntTensor<I>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let (table, ids) = ops.state;
        if let Some(node) = node {
            grads.register::<I>(node.id, table_gradient::<I>(table, grad, ids));
        }
    }
}

/// `Σ` of `grad` `[batch, seq, d]` into the rows of a zero table shaped
/// as `table`: by ftl's kernel where it applies, else by burn's.
fn table_gradient<I: Backend>(
    table: FloatTensor<I>,
    grad: FloatTensor<I>,
    ids: IntTensor<I>,
) -> FloatTensor<I> {
    #[cfg(feature = "cuda")]
    if super::lookup_cuda::applies::<I>(&table, &grad) {
        return super::lookup_cuda::table_gradient::<I>(table, grad, ids);
    }
    I::embedding_backward(table, grad, ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::backend::cpu_device;

    type Train = Autodiff<Cpu>;

    /// The same values and table gradient as burn's lookup, with repeated
    /// ids, an id looked up once and rows never looked up.
    #[test]
    fn same_values_and_gradient_as_burns_lookup() {
        let device = cpu_device();
        let table: Vec<f32> = (0..7 * 5).map(|i| (i as f32 * 0.37).sin()).collect();
        let ids = TensorData::new(vec![3i64, 1, 3, 6, 1, 1, 0, 3], [2, 4]);
        let weights: Vec<f32> = (0..8 * 5).map(|i| (i as f32 * 0.11).cos()).collect();
        let run = |ours: bool| {
            let t = Tensor::<Train, 2>::from_data(TensorData::new(table.clone(), [7, 5]), &device)
                .require_grad();
            let ids = Tensor::<Train, 2, Int>::from_data(ids.clone(), &device);
            let y = if ours {
                lookup(t.clone(), ids)
            } else {
                burn::tensor::module::embedding(t.clone(), ids)
            };
            let w =
                Tensor::<Train, 3>::from_data(TensorData::new(weights.clone(), [2, 4, 5]), &device);
            let grads = (y.clone() * w).sum().backward();
            let grad: Vec<f32> = t.grad(&grads).unwrap().into_data().to_vec().unwrap();
            (y.inner().into_data().to_vec::<f32>().unwrap(), grad)
        };
        let (ours, burns) = (run(true), run(false));
        assert_eq!(ours, burns);
        let grad = &ours.1;
        // Row 3 was looked up at positions 0, 2 and 7; rows 2, 4 and 5 never.
        for c in 0..5 {
            let expected = weights[c] + weights[2 * 5 + c] + weights[7 * 5 + c];
            assert!((grad[3 * 5 + c] - expected).abs() < 1e-6);
            for row in [2, 4, 5] {
                assert_eq!(grad[row * 5 + c], 0.0);
            }
        }
    }
}
