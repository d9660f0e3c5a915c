//! What ftl's own CUDA operations share (the optimizer step,
//! `train::optim`; LayerNorm, `model::layer_norm_cuda`; attention's softmax,
//! `model::softmax_cuda`; dropout masks, `model::dropout_cuda`). Each is a
//! [`Kernels`]: a function from cubecl tensors to cubecl tensors that
//! launches ftl's kernels. [`launch`] runs it on the CUDA backend ftl was
//! built with: on burn's fused backend as one custom operation of the
//! fusion stream, run when the stream reaches it; on the unfused backend
//! (the `unfused` build feature) at once, on the calling thread.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;

use crate::runtime::backend::Gpu;

/// cubecl's CUDA runtime.
pub(crate) type Runtime = cubecl::cuda::CudaRuntime;
/// burn's CUDA backend without fusion: what the kernels run on.
pub(crate) type Inner = burn_cubecl::CubeBackend<Runtime, f32, i32, u8>;
/// A float tensor of the CUDA backend ftl was built with.
pub(crate) type Prim = FloatTensor<Gpu>;
/// A cubecl tensor: what the kernels read and write.
pub(crate) type Cube = CubeTensor<Runtime>;

/// An operation made of ftl's own kernels, with its settings.
pub(crate) trait Kernels: std::fmt::Debug + Send + Sync + 'static {
    /// Launches the kernels on `inputs` and returns the outputs, in the
    /// order and with the shapes and dtypes [`launch`] was given.
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube>;
}

/// `t` as a contiguous tensor: itself when it is one.
pub(crate) fn contiguous(t: Cube) -> Cube {
    if t.is_contiguous() {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

/// A new, uninitialised f32 tensor on `like`'s device.
pub(crate) fn empty_f32(like: &Cube, shape: Shape) -> Cube {
    empty(like, shape, DType::F32)
}

/// A new, uninitialised tensor of `dtype` on `like`'s device.
pub(crate) fn empty(like: &Cube, shape: Shape, dtype: DType) -> Cube {
    empty_with(like.client.clone(), like.device.clone(), shape, dtype)
}

/// A new, uninitialised tensor of `dtype` on `device`.
pub(crate) fn empty_on(device: &cubecl::cuda::CudaDevice, shape: Shape, dtype: DType) -> Cube {
    empty_with(
        <Runtime as cubecl::Runtime>::client(device),
        device.clone(),
        shape,
        dtype,
    )
}

/// A new, uninitialised tensor of `dtype` through `client`.
fn empty_with(
    client: cubecl::client::ComputeClient<Runtime>,
    device: cubecl::cuda::CudaDevice,
    shape: Shape,
    dtype: DType,
) -> Cube {
    let handle = client.empty(shape.num_elements() * dtype.size());
    CubeTensor::new_contiguous(client, device, shape, handle, dtype)
}

/// Runs `kernels`, named `name`, on `inputs` (at least one), giving one
/// f32 tensor of each shape in `outputs`.
pub(crate) fn launch<K: Kernels>(
    name: &'static str,
    inputs: Vec<Prim>,
    outputs: Vec<Shape>,
    kernels: K,
) -> Vec<Prim> {
    let outputs = outputs.into_iter().map(|s| (s, DType::F32)).collect();
    launch_typed(name, inputs, outputs, kernels)
}

#[cfg(not(feature = "unfused"))]
pub(crate) use fused::{launch_new, launch_typed};
#[cfg(feature = "unfused")]
pub(crate) use unfused::{launch_new, launch_typed};

/// On burn's fused backend: one custom operation of the fusion stream.
#[cfg(not(feature = "unfused"))]
mod fused {
    use burn::tensor::{DType, Shape};
    use burn_fusion::client::GlobalFusionClient;
    use burn_fusion::stream::{Operation, OperationStreams};
    use burn_fusion::{FusionBackend, FusionTensor};
    use burn_ir::{BackendIr, CustomOpIr, HandleContainer, OperationIr, TensorIr};

    use super::{Inner, Kernels, Prim};

    type FusionRuntime = <Inner as FusionBackend>::FusionRuntime;

    /// The stream's operation: the kernels and where their tensors are.
    #[derive(Debug)]
    struct Custom<K> {
        desc: CustomOpIr,
        kernels: K,
    }

    impl<K: Kernels> Operation<FusionRuntime> for Custom<K> {
        fn execute(&self, handles: &mut HandleContainer<<Inner as BackendIr>::Handle>) {
            let inputs = self
                .desc
                .inputs
                .iter()
                .map(|ir| handles.get_float_tensor::<Inner>(ir))
                .collect();
            let outputs = self.kernels.run(inputs);
            debug_assert_eq!(outputs.len(), self.desc.outputs.len());
            for (ir, t) in self.desc.outputs.iter().zip(outputs) {
                handles.register_float_tensor::<Inner>(&ir.id, t);
            }
        }
    }

    /// The descriptions of new tensors of these shapes and dtypes, for the
    /// stream to fill.
    fn uninit(
        client: &GlobalFusionClient<FusionRuntime>,
        outputs: Vec<(Shape, DType)>,
    ) -> Vec<TensorIr> {
        outputs
            .into_iter()
            .map(|(s, dtype)| TensorIr::uninit(client.create_empty_handle(), s, dtype))
            .collect()
    }

    /// [`super::launch`] with each output's dtype given.
    pub(crate) fn launch_typed<K: Kernels>(
        name: &'static str,
        inputs: Vec<Prim>,
        outputs: Vec<(Shape, DType)>,
        kernels: K,
    ) -> Vec<Prim> {
        let client = inputs[0].client.clone();
        let streams = OperationStreams::with_inputs(&inputs);
        let outputs = uninit(&client, outputs);
        let irs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
        let desc = CustomOpIr::new(name, &irs, &outputs);
        client.register(
            streams,
            OperationIr::Custom(desc.clone()),
            Custom { desc, kernels },
        )
    }

    /// [`super::launch`] of kernels that read no tensor (they make their
    /// outputs from their settings alone), on `device`.
    pub(crate) fn launch_new<K: Kernels>(
        name: &'static str,
        device: &cubecl::cuda::CudaDevice,
        outputs: Vec<(Shape, DType)>,
        kernels: K,
    ) -> Vec<Prim> {
        let client = burn_fusion::get_client::<Inner>(device);
        let outputs = uninit(&client, outputs);
        let desc = CustomOpIr::new(name, &[], &outputs);
        client.register(
            OperationStreams::default(),
            OperationIr::Custom(desc.clone()),
            Custom { desc, kernels },
        )
    }
}

/// On the unfused backend: the kernels are launched at once.
#[cfg(feature = "unfused")]
mod unfused {
    use burn::tensor::{DType, Shape};

    use super::{Kernels, Prim};

    /// [`super::launch`] with each output's dtype given.
    pub(crate) fn launch_typed<K: Kernels>(
        _name: &'static str,
        inputs: Vec<Prim>,
        outputs: Vec<(Shape, DType)>,
        kernels: K,
    ) -> Vec<Prim> {
        let out = kernels.run(inputs);
        debug_assert_eq!(out.len(), outputs.len());
        out
    }

    /// [`super::launch`] of kernels that read no tensor.
    pub(crate) fn launch_new<K: Kernels>(
        _name: &'static str,
        _device: &cubecl::cuda::CudaDevice,
        outputs: Vec<(Shape, DType)>,
        kernels: K,
    ) -> Vec<Prim> {
        let out = kernels.run(Vec::new());
        debug_assert_eq!(out.len(), outputs.len());
        out
    }
}
