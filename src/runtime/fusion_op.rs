//! What ftl's own CUDA operations share: each is one custom operation of
//! burn's fusion stream whose kernels run on the cubecl tensors under it
//! (the optimizer step, `train::optim`; LayerNorm, `model::layer_norm_cuda`;
//! attention's softmax, `model::softmax_cuda`; dropout masks,
//! `model::dropout_cuda`).

use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionBackend, FusionTensor};
use burn_ir::{CustomOpIr, OperationIr, TensorIr};

/// cubecl's CUDA runtime.
pub(crate) type Runtime = cubecl::cuda::CudaRuntime;
/// The backend burn's CUDA backend fuses over.
pub(crate) type Inner = burn_cubecl::CubeBackend<Runtime, f32, i32, u8>;
/// The fusion stream's runtime.
pub(crate) type FusionRuntime = <Inner as FusionBackend>::FusionRuntime;
/// A tensor of burn's fused CUDA backend.
pub(crate) type Fused = FusionTensor<FusionRuntime>;

/// `t` as a contiguous tensor: itself when it is one.
pub(crate) fn contiguous(t: CubeTensor<Runtime>) -> CubeTensor<Runtime> {
    if t.is_contiguous() {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

/// A new, uninitialised f32 tensor on `like`'s device.
pub(crate) fn empty_f32(like: &CubeTensor<Runtime>, shape: Shape) -> CubeTensor<Runtime> {
    empty(like, shape, DType::F32)
}

/// A new, uninitialised tensor of `dtype` on `like`'s device.
pub(crate) fn empty(like: &CubeTensor<Runtime>, shape: Shape, dtype: DType) -> CubeTensor<Runtime> {
    empty_with(like.client.clone(), like.device.clone(), shape, dtype)
}

/// A new, uninitialised tensor of `dtype` through `client`.
fn empty_with(
    client: cubecl::client::ComputeClient<Runtime>,
    device: cubecl::cuda::CudaDevice,
    shape: Shape,
    dtype: DType,
) -> CubeTensor<Runtime> {
    let handle = client.empty(shape.num_elements() * dtype.size());
    CubeTensor::new_contiguous(client, device, shape, handle, dtype)
}

/// Registers the operation `op` makes from its description, named `name`,
/// reading `inputs` and writing one f32 tensor of each shape in `outputs`,
/// and returns those tensors.
pub(crate) fn register<O: Operation<FusionRuntime> + 'static>(
    name: &'static str,
    inputs: Vec<Fused>,
    outputs: Vec<Shape>,
    op: impl FnOnce(CustomOpIr) -> O,
) -> Vec<Fused> {
    let outputs = outputs.into_iter().map(|s| (s, DType::F32)).collect();
    register_typed(name, inputs, outputs, op)
}

/// Registers an operation that reads no tensor (it makes its outputs from
/// its settings alone) on `device`'s fusion stream.
pub(crate) fn register_new<O: Operation<FusionRuntime> + 'static>(
    name: &'static str,
    device: &cubecl::cuda::CudaDevice,
    outputs: Vec<(Shape, DType)>,
    op: impl FnOnce(CustomOpIr) -> O,
) -> Vec<Fused> {
    let client = burn_fusion::get_client::<Inner>(device);
    let outputs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|(s, dtype)| TensorIr::uninit(client.create_empty_handle(), s, dtype))
        .collect();
    let desc = CustomOpIr::new(name, &[], &outputs);
    client.register(
        OperationStreams::default(),
        OperationIr::Custom(desc.clone()),
        op(desc),
    )
}

/// A new, uninitialised tensor of `dtype` on `device`.
pub(crate) fn empty_on(
    device: &cubecl::cuda::CudaDevice,
    shape: Shape,
    dtype: DType,
) -> CubeTensor<Runtime> {
    empty_with(
        <Runtime as cubecl::Runtime>::client(device),
        device.clone(),
        shape,
        dtype,
    )
}

/// [`register`] with each output's dtype given.
pub(crate) fn register_typed<O: Operation<FusionRuntime> + 'static>(
    name: &'static str,
    inputs: Vec<Fused>,
    outputs: Vec<(Shape, DType)>,
    op: impl FnOnce(CustomOpIr) -> O,
) -> Vec<Fused> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(&inputs);
    let outputs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|(s, dtype)| TensorIr::uninit(client.create_empty_handle(), s, dtype))
        .collect();
    let irs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
    let desc = CustomOpIr::new(name, &irs, &outputs);
    client.register(streams, OperationIr::Custom(desc.clone()), op(desc))
}
