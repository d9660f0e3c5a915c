//! Feeds arbitrary bytes through parse, check, lower, render and fmt.
//! Any panic is a bug; formatting must be idempotent on what parses.
#![no_main]

use ftl::project::MemoryLoader;
use ftl::span::Sources;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loader = MemoryLoader::new([("main.ft", text)]);
    let mut sources = Sources::new();
    match ftl::check("main.ft", &loader, &mut sources, "") {
        Ok(checked) => {
            if let Err(d) = ftl::lower(&checked, &sources) {
                let _ = ftl::render::render(&d, &sources, false);
            }
        }
        Err(d) => {
            let _ = ftl::render::render(&d, &sources, false);
        }
    }
    let mut s = Sources::new();
    let id = s.add("main.ft", text);
    if let Ok(ast) = ftl::parse(id, text) {
        let once = ftl::fmt::format(&ast, text);
        let id2 = s.add("formatted", once.clone());
        let ast2 = ftl::parse(id2, &once).expect("formatted text parses");
        assert_eq!(ftl::fmt::format(&ast2, &once), once);
    }
});
