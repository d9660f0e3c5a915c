//! A global allocator that counts the bytes the process holds, and the
//! highest count since the last [`reset_peak`]: how the memory checks in
//! `bench/` and `tests/memory.rs` measure training on the CPU. A binary
//! includes it with `#[path = "…/counting.rs"] mod counting;`, which also
//! makes it that binary's allocator. It also builds the model they count
//! ([`classifier`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn moved(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        moved(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        moved(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        moved(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes held now.
pub fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

/// The highest count since the last [`reset_peak`].
#[allow(dead_code)] // not every binary that counts needs the peak
pub fn peak() -> isize {
    PEAK.load(Ordering::SeqCst)
}

/// Starts a new peak from the count now.
#[allow(dead_code)]
pub fn reset_peak() {
    PEAK.store(live(), Ordering::SeqCst);
}

/// A small BERT: big enough that its parameters dwarf bookkeeping.
#[allow(dead_code)]
pub const SMALL_BERT: &str = r#"{
  "model_type": "bert", "vocab_size": 4000, "hidden_size": 128, "num_hidden_layers": 2,
  "num_attention_heads": 4, "intermediate_size": 512, "max_position_embeddings": 40,
  "type_vocab_size": 2, "pad_token_id": 0, "layer_norm_eps": 1e-12, "hidden_act": "gelu"
}"#;

/// `config`'s encoder (its dropout set to `dropout` where given) with a
/// two-class mean-pooled head, prepared for `method` in f32 without
/// quantization, on the CPU's autodiff backend: the model the counts train.
#[allow(dead_code)]
pub fn classifier(
    config: &ftl::runtime::model::EncoderConfig,
    method: &ftl::config::Method,
    dropout: Option<f64>,
) -> ftl::runtime::model::classifier::Classifier<burn::backend::Autodiff<ftl::runtime::backend::Cpu>>
{
    use ftl::config::{Precision, QuantFormat, Quantize};
    use ftl::runtime::model::head::{ClassificationHeadConfig, Pooling};
    let device = ftl::runtime::backend::cpu_device();
    let mut encoder = config.init(&device);
    if let Some(p) = dropout {
        encoder.set_dropout(p);
    }
    let head =
        ClassificationHeadConfig::new(encoder.hidden_size(), 2, Pooling::Mean, 1).init(&device);
    let quantize = Quantize {
        format: QuantFormat::None,
        block_size: 64,
        double_quant: false,
        compute: Precision::Fp32,
    };
    ftl::runtime::model::classifier::Classifier { encoder, head }
        .prepare(config.architecture, method, &quantize, 3)
        .expect("the method prepares")
}
