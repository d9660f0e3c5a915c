//! ftl: fine-tuning pipelines for compact language models.
//!
//! A `.ft` file describes experiments; ftl turns it into a plan in stages,
//! each a function returning its output or every diagnostic it found:
//!
//! | stage | function | input | output |
//! | --- | --- | --- | --- |
//! | parse | [`parse`] | source text | [`syntax::ast::File`] |
//! | check | [`check`] | entry path + [`check::Loader`] | [`check::Checked`] |
//! | lower | [`lower`] | [`check::Checked`] | [`plan::Plan`] |
//!
//! ```
//! use ftl::{check, lower, project::MemoryLoader, span::Sources};
//!
//! let file = r#"
//! import "std/models"
//! import "std/datasets"
//!
//! pipeline sentiment {
//!   model.base = models.minilm_l6
//!   dataset = datasets.sst2 { limit { train = 2_000 } }
//!   method = lora(rank = 8)
//!   sweep { train.lr = [1e-4, 5e-4] }
//! }
//! "#;
//! let loader = MemoryLoader::new([("sentiment.ft", file)]);
//! let mut sources = Sources::new();
//! let checked = check("sentiment.ft", &loader, &mut sources, "").expect("valid");
//! let plan = lower(&checked, &sources).expect("within budget");
//! let names: Vec<_> = plan.runs.iter().map(|r| r.name.as_str()).collect();
//! assert_eq!(names, ["sentiment/lr1e-4", "sentiment/lr5e-4"]);
//! assert_eq!(plan.runs[0].config.train.lr, 1e-4);
//! ```
//!
//! Nothing here prints or touches the terminal; `render` turns diagnostics
//! into text and the `ftl` binary does the rest.

pub mod check;
pub mod config;
pub mod diagnostic;
pub mod estimate;
pub mod fmt;
pub mod plan;
pub mod project;
pub mod render;
pub mod span;
pub mod stdlib;
pub mod syntax;

pub use check::check;
pub use plan::lower;
pub use syntax::parse;
pub mod data;
pub mod metrics;
pub mod peft;
pub mod quant;
pub mod report;
pub mod rundir;
pub mod runtime;
