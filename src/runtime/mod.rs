//! Runtime: encoder models on burn, their weights and their tokenizer.
//!
//! This is the only part of ftl that imports burn. It is a library: it never
//! prints, and every failure a user can cause is a [`error::RuntimeError`].

#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "cuda")]
mod cublas;
pub mod error;
pub mod fetch;
#[cfg(feature = "cuda")]
mod fusion_op;
pub mod model;
pub mod tokenize;
pub mod train;
pub mod tuning;
