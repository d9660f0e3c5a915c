//! The standard library: `.ft` modules embedded in the binary, so that
//! `import "std/models"` works from any directory.

/// `(name, text)` of every stdlib module; imported as `std/NAME`.
pub const MODULES: &[(&str, &str)] = &[
    ("datasets", include_str!("../stdlib/datasets.ft")),
    ("models", include_str!("../stdlib/models.ft")),
    ("recipes", include_str!("../stdlib/recipes.ft")),
];

/// The text of stdlib module `name` (without the `std/` prefix).
pub fn get(name: &str) -> Option<&'static str> {
    MODULES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The names of all stdlib modules.
pub fn names() -> Vec<&'static str> {
    MODULES.iter().map(|(n, _)| *n).collect()
}
