//! Turns the README's Rust examples into tests, word for word: each ```rust block of README.md
//! becomes the body of an async test returning `Result<(), Box<dyn Error>>`, in
//! `$OUT_DIR/readme_examples.rs` (included by `tests/readme.rs`). A README example that does not
//! build or does not do what it says fails the suite.

use std::fmt::Write;

fn main() {
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    println!("cargo:rerun-if-changed={}", readme.display());
    let text = std::fs::read_to_string(&readme).expect("README.md");
    let mut out = String::new();
    let mut block: Option<String> = None;
    let mut n = 0;
    for line in text.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```rust") => block = Some(String::new()),
            (Some(body), "```") => {
                n += 1;
                let _ = write!(
                    out,
                    "#[tokio::test(flavor = \"multi_thread\")]\nasync fn readme_example_{n}() -> Result<(), Box<dyn std::error::Error>> {{\n{body}    Ok(())\n}}\n\n"
                );
                block = None;
            }
            (Some(body), _) => {
                body.push_str("    ");
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(n > 0, "README.md has no ```rust example");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR"))
        .join("readme_examples.rs");
    std::fs::write(dest, out).expect("write the examples");
}
