//! Training: the loop that runs a plan's run, and what it leaves behind.
//!
//! | file | what |
//! | --- | --- |
//! | `optim.rs` | AdamW, gradient norm and clipping, learning-rate schedules |
//! | `state.rs` | parameters by path, checkpoints, PEFT adapters, heads, HF weights |
//! | `run.rs` | [`run::execute`]: data → model → steps → evaluation → run directory |

pub mod optim;
pub mod run;
pub mod state;
