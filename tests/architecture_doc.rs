//! docs/architecture.md names every module of `src/`: a module added, moved or renamed without
//! its row fails here, so the module table stays true to the code.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b/mod.rs` -> `a::b`, `src/bin/rnetd.rs` -> `bin::rnetd`; None for test-only files.
fn module_path(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let is_test = |p: &String| p == "tests" || p.ends_with("_tests") || p == "bench";
    if parts.iter().any(is_test) {
        return None;
    }
    if matches!(parts.last().map(String::as_str), Some("mod")) {
        parts.pop();
    }
    Some(parts.join("::"))
}

#[test]
fn every_module_has_a_row() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut missing: Vec<String> = files
        .iter()
        .filter_map(|f| module_path(&src, f))
        .filter(|m| !doc.contains(&format!("`{m}`")))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name these modules: {missing:?}"
    );
}

#[test]
fn module_paths_are_derived_as_rust_does() {
    let src = Path::new("/r/src");
    let path = |p: &str| module_path(src, Path::new(p));
    assert_eq!(
        path("/r/src/dataplane/mod.rs").as_deref(),
        Some("dataplane")
    );
    assert_eq!(
        path("/r/src/bin/rnet-cni.rs").as_deref(),
        Some("bin::rnet-cni")
    );
    assert_eq!(
        path("/r/src/daemon/service/attach.rs").as_deref(),
        Some("daemon::service::attach")
    );
    assert_eq!(path("/r/src/daemon/service/tests/mod.rs"), None);
    assert_eq!(path("/r/src/ipsec/plan_tests.rs"), None);
}
