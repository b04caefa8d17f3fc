//! The README's Rust examples, run as written: `build.rs` makes each ```rust block of README.md
//! the body of a test here, so an example that stops building or working fails the suite.

include!(concat!(env!("OUT_DIR"), "/readme_examples.rs"));
