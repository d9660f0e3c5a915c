//! bf16 matrix products through NVIDIA's cuBLAS, on cubecl's own CUDA
//! stream, as one operation of burn's fusion stream each (`fusion_op`).
//!
//! cubecl's matrix kernels reach 60–90 TFLOP/s at the products of a
//! training step here (`[2048, 768] · [768, 3072]` took 120–150 µs on the
//! H200, profiled), where cuBLAS, which PyTorch calls, reaches several
//! times that: the products were about half of an MPNet step's GPU time
//! (BENCHMARKS.md). cuBLAS is loaded at run time (`libcublas.so`, part of
//! the CUDA toolkit and of PyTorch's wheels); where it is missing, or with
//! `FTL_CUBLAS=off`, the products stay cubecl's.
//!
//! Ordering: cubecl runs every kernel launch as a task on one device thread
//! that owns the CUDA context and streams. A product here is such a task
//! too (`DeviceHandle::submit`), queued by the fusion stream's thread like
//! that thread's kernel launches, so it runs between them in order; it
//! takes its operands' device pointers from the server as a kernel launch
//! does (`get_resource`, which also orders them after work on other
//! streams) and calls cuBLAS on cubecl's stream. cubecl does not expose
//! that stream; ftl runs cubecl with one stream (`configure_cubecl`) and
//! reads its handle once from the server's debug description. If that
//! fails, the products stay cubecl's.
//!
//! [`available`] says whether they run; [`matmul`] is the product. A
//! product that fails on the device thread does not panic there (that
//! would take cubecl's device thread down with it): its output is left as
//! it is and the first failure is kept for [`failure`], which training
//! reads with each step's metrics and reports as an error.

use std::cell::RefCell;
use std::sync::{Mutex, OnceLock};

use burn::prelude::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorMetadata};
use cubecl::device_handle::DeviceHandle;
use cubecl::server::{Binding, ComputeServer};
use cubecl::stream_id::StreamId;
use cudarc::cublas::sys as blas;

use crate::runtime::backend::{Gpu, same_type};
use crate::runtime::fusion_op::{Cube, Kernels, Runtime, contiguous, empty, launch_typed};

/// cubecl's CUDA server: the device thread's state.
type Server = <Runtime as cubecl::Runtime>::Server;

/// The cuBLAS handle and cubecl's stream, on the device thread.
struct Blas {
    handle: blas::cublasHandle_t,
}

/// The first product that failed, described.
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

/// Keeps `message` unless a failure was kept before.
fn fail(message: String) {
    let mut failure = FAILURE.lock().unwrap_or_else(|e| e.into_inner());
    failure.get_or_insert(message);
}

/// The first cuBLAS product that failed in this process, if one did: its
/// shape and cuBLAS's status.
pub fn failure() -> Option<String> {
    FAILURE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

thread_local! {
    /// Set on the device thread by [`available`]'s probe.
    static BLAS: RefCell<Option<Blas>> = const { RefCell::new(None) };
}

/// Whether the products run through cuBLAS on `device`: cuBLAS loads, its
/// handle is made on cubecl's device thread and bound to cubecl's one
/// stream. Decided once per process.
pub(crate) fn available(device: &cubecl::cuda::CudaDevice) -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("FTL_CUBLAS").is_ok_and(|v| v == "off") {
            return false;
        }
        // SAFETY: only tries to load the library.
        if !unsafe { blas::is_culib_present() } {
            return false;
        }
        probe(device).is_ok()
    })
}

/// Makes the cuBLAS handle on the device thread and binds it to cubecl's
/// stream (read from the server's description: exactly one stream there).
fn probe(device: &cubecl::cuda::CudaDevice) -> Result<(), String> {
    use cubecl::device::Device;
    let client = <Runtime as cubecl::Runtime>::client(device);
    // A stream exists once something ran on it.
    let probe = client.empty(4);
    let stream_id = StreamId::current();
    let handle = DeviceHandle::<Server>::new(device.to_id());
    handle
        .submit_blocking(move |server: &mut Server| {
            server
                .get_resource(probe.binding(), stream_id)
                .map_err(|e| format!("{e:?}"))?;
            let description = format!("{server:?}");
            let streams: Vec<&str> = description
                .match_indices("sys: 0x")
                .map(|(at, _)| &description[at + 7..])
                .map(|rest| {
                    rest.split(|c: char| !c.is_ascii_hexdigit())
                        .next()
                        .unwrap_or("")
                })
                .collect();
            let [stream] = streams.as_slice() else {
                return Err(format!("{} streams, not one", streams.len()));
            };
            let stream = usize::from_str_radix(stream, 16).map_err(|e| e.to_string())?;
            let mut handle: blas::cublasHandle_t = std::ptr::null_mut();
            // SAFETY: the device thread has cubecl's context current; the
            // stream is cubecl's, alive for the process.
            unsafe {
                check(blas::cublasCreate_v2(&mut handle))?;
                check(blas::cublasSetStream_v2(
                    handle,
                    stream as blas::cudaStream_t,
                ))?;
            }
            BLAS.with(|b| *b.borrow_mut() = Some(Blas { handle }));
            Ok(())
        })
        .map_err(|e| format!("{e:?}"))?
}

fn check(status: blas::cublasStatus_t) -> Result<(), String> {
    if status == blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{status:?}"))
    }
}

fn data_type(dtype: DType) -> blas::cudaDataType {
    match dtype {
        DType::BF16 => blas::cudaDataType::CUDA_R_16BF,
        DType::F32 => blas::cudaDataType::CUDA_R_32F,
        other => unreachable!("cuBLAS products take bf16 and f32, not {other:?}"),
    }
}

/// `op(a) · op(b)` for row-major `a`, `b`, `op` transposing where asked.
#[derive(Debug)]
struct Product {
    transpose: [bool; 2],
    out: DType,
}

/// The shape of `op(t)` for a 2-D `t`.
fn op_shape(t: &Shape, transpose: bool) -> [usize; 2] {
    let [r, c] = [t[0], t[1]];
    if transpose { [c, r] } else { [r, c] }
}

impl Kernels for Product {
    fn run(&self, inputs: Vec<Cube>) -> Vec<Cube> {
        let [a, b]: [Cube; 2] = inputs.try_into().expect("two operands");
        let (a, b) = (contiguous(a), contiguous(b));
        let [ta, tb] = self.transpose;
        let [m, k] = op_shape(a.meta.shape(), ta);
        let [_, n] = op_shape(b.meta.shape(), tb);
        let out = empty(&a, Shape::new([m, n]), self.out);
        let types = [a.dtype, b.dtype, self.out].map(data_type);
        let [lda, ldb] = [a.meta.shape()[1], b.meta.shape()[1]];
        let bindings = [&a, &b, &out].map(|t| t.handle.clone().binding());
        let stream_id = StreamId::current();
        let device = DeviceHandle::<Server>::new(cubecl::device::Device::to_id(&a.device));
        device.submit(move |server: &mut Server| {
            gemm(
                server,
                stream_id,
                bindings,
                [m, n, k],
                [ta, tb],
                [lda, ldb],
                types,
            )
        });
        vec![out]
    }
}

/// The product on the device thread. Row-major `C = op(A)·op(B)` is
/// column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`: cuBLAS is given B first.
fn gemm(
    server: &mut Server,
    stream_id: StreamId,
    [a, b, c]: [Binding; 3],
    [m, n, k]: [usize; 3],
    [ta, tb]: [bool; 2],
    [lda, ldb]: [usize; 2],
    [a_type, b_type, c_type]: [blas::cudaDataType; 3],
) {
    // Described only when it failed: this runs for every product.
    let shape = || format!("cuBLAS product [{m}×{k}]·[{k}×{n}]");
    let resources = [a, b, c].map(|binding| server.get_resource(binding, stream_id));
    let [a, b, c] = match resources {
        [Ok(a), Ok(b), Ok(c)] => [a, b, c],
        [a, b, c] => {
            let e = [a.err(), b.err(), c.err()].into_iter().flatten().next();
            fail(format!(
                "{}: an operand is not on the device ({e:?})",
                shape()
            ));
            return;
        }
    };
    let op = |t: bool| {
        if t {
            blas::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    BLAS.with(|blas_state| {
        let state = blas_state.borrow();
        let Some(state) = state.as_ref() else {
            fail(format!(
                "{}: cuBLAS is not set up on cubecl's device thread",
                shape()
            ));
            return;
        };
        // SAFETY: the pointers are the operands' device memory, held by
        // the resources for the call; the sizes are the tensors' (row-major,
        // contiguous); alpha and beta are host values (cuBLAS's default
        // pointer mode); the handle is bound to cubecl's stream, on which
        // the operands were written and after which they are read.
        let status = unsafe {
            blas::cublasGemmEx(
                state.handle,
                op(tb),
                op(ta),
                n as i32,
                m as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                b.resource().ptr as *const std::ffi::c_void,
                b_type,
                ldb as i32,
                a.resource().ptr as *const std::ffi::c_void,
                a_type,
                lda as i32,
                (&beta as *const f32).cast(),
                c.resource().ptr as *mut std::ffi::c_void,
                c_type,
                n as i32,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        if let Err(status) = check(status) {
            fail(format!("{} failed: {status}", shape()));
        }
    });
}

/// Whether [`matmul`] takes a product of `a`: `I` is ftl's CUDA backend,
/// `a` is bf16 and cuBLAS is [`available`].
pub(crate) fn applies<I: Backend>(a: &FloatTensor<I>) -> bool {
    if std::any::TypeId::of::<I>() != std::any::TypeId::of::<Gpu>() || a.dtype() != DType::BF16 {
        return false;
    }
    let device = I::float_device(a);
    (&device as &dyn std::any::Any)
        .downcast_ref::<cubecl::cuda::CudaDevice>()
        .is_some_and(available)
}

/// `op(a) · op(b)` of 2-D bf16 tensors on ftl's CUDA backend, in `out`
/// (bf16 or f32), with f32 accumulation. Call only where [`available`]
/// said so.
pub(crate) fn matmul<I: Backend>(
    a: FloatTensor<I>,
    b: FloatTensor<I>,
    transpose: [bool; 2],
    out: DType,
) -> FloatTensor<I> {
    let [m, _] = op_shape(&a.shape(), transpose[0]);
    let [_, n] = op_shape(&b.shape(), transpose[1]);
    let mut result = launch_typed(
        "ftl_cublas_product",
        vec![same_type(a), same_type(b)],
        vec![(Shape::new([m, n]), out)],
        Product { transpose, out },
    );
    same_type(result.remove(0))
}
