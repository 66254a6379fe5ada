//! Embeds `../migrations/*.sql` so the migrate command ships with exactly the files it was built from.

use std::fmt::Write as _;
use std::path::Path;
use std::{env, fs};

fn main() {
    // Read when the script runs, not when it is compiled (`env!`): a build script compiled for
    // one checkout is reused by cargo for another that shares the target directory, and would
    // then embed the first checkout's migrations.
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = Path::new(&manifest_dir).join("../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for path in &files {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(
            out,
            "    ({file:?}, include_str!({:?})),",
            path.canonicalize().unwrap_or_else(|_| path.clone())
        );
    }
    out.push(']');
    let dest = Path::new(&env::var("OUT_DIR").unwrap_or_default()).join("migrations.rs");
    fs::write(&dest, out).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
