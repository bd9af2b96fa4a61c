//! House rules as a test, in the manner of rust-analyzer's tidy test, so CI has no hidden
//! steps: every `.rs` file opens with a `//!` header saying its concern; only the edge
//! crates (`accrete-proto`, `accrete-client`, `accrete-server`, and benchmark crates)
//! depend on the generated protobuf types; no hand-written source file outside tests has
//! more than 600 lines (counting up to its `#[cfg(test)]` module).
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;
const PROTO_EDGES: [&str; 3] = ["accrete-proto", "accrete-client", "accrete-server"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate directories of the workspace (`crates/*` with a Cargo.toml).
fn crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The names in a manifest's `[dependencies]` table (not dev- or build-dependencies).
fn normal_dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = line.split_once(['=', '.']) {
                if !name.trim().is_empty() && !name.starts_with('#') {
                    out.push(name.trim().to_string());
                }
            }
        }
    }
    out
}

fn package_name(manifest: &str) -> String {
    manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("name = ").map(|n| n.trim_matches('"').to_string()))
        .unwrap_or_default()
}

#[test]
fn every_rust_file_opens_with_a_header() {
    let mut files = Vec::new();
    rs_files(&root().join("crates"), &mut files);
    rs_files(&root().join("tests"), &mut files);
    let missing: Vec<String> = files
        .iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().trim_start().starts_with("//!"))
        .map(|p| p.strip_prefix(root()).unwrap_or(p).display().to_string())
        .collect();
    assert!(files.len() > 40, "found only {} .rs files under {}", files.len(), root().display());
    assert!(missing.is_empty(), "files without a //! header saying what they are for: {missing:?}");
}

#[test]
fn protobuf_types_stay_at_the_edges() {
    let mut offenders = Vec::new();
    for dir in crates() {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let name = package_name(&manifest);
        let edge = PROTO_EDGES.contains(&name.as_str()) || name.contains("bench");
        if !edge && normal_dependencies(&manifest).iter().any(|d| d == "accrete-proto") {
            offenders.push(name);
        }
    }
    assert!(
        offenders.is_empty(),
        "crates that depend on accrete-proto but are not an edge ({PROTO_EDGES:?} or a bench crate): {offenders:?}; \
         use accrete-client's typed API and core types instead"
    );
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut long = Vec::new();
    for dir in crates() {
        let mut files = Vec::new();
        rs_files(&dir.join("src"), &mut files);
        for f in files {
            if f.file_name().is_some_and(|n| n == "tests.rs") || f.components().any(|c| c.as_os_str() == "tests") {
                continue;
            }
            let n = code_lines(&std::fs::read_to_string(&f).unwrap());
            if n > MAX_LINES {
                long.push(format!("{} ({n})", f.strip_prefix(root()).unwrap_or(&f).display()));
            }
        }
    }
    assert!(long.is_empty(), "source files over {MAX_LINES} lines (split them by concern): {long:?}");
}

/// Lines of a file before its inline test module (`#[cfg(test)]` then `mod tests {`); a
/// `#[cfg(test)] mod tests;` pointing at another file does not end the count.
fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let inline_tests = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod ") && w[1].trim_end().ends_with('{'));
    inline_tests.unwrap_or(lines.len())
}

/// Files that may read gRPC status codes: the two error mappings.
const CODE_READERS: [&str; 2] = ["crates/accrete-client/src/error.rs", "crates/accrete-server/src/error.rs"];

#[test]
fn only_the_error_mappings_read_grpc_codes() {
    let mut files = Vec::new();
    rs_files(&root().join("crates"), &mut files);
    let mut offenders = Vec::new();
    for f in files {
        let rel = f.strip_prefix(root()).unwrap_or(&f).display().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        // `Code::` as a word (not `StatusCode::`, `ExitCode::`), or `tonic::Code`
        let reads = text.contains("tonic::Code")
            || text
                .match_indices("Code::")
                .any(|(i, _)| text[..i].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_')));
        if reads && !CODE_READERS.contains(&rel.as_str()) {
            offenders.push(rel);
        }
    }
    assert!(
        offenders.is_empty(),
        "gRPC codes read outside {CODE_READERS:?}: {offenders:?}; match ClientError's variants"
    );
}

#[test]
fn the_line_count_stops_at_an_inline_test_module_only() {
    let declared = "//! x\n#[cfg(test)]\nmod tests;\nfn a() {}\nfn b() {}\n";
    assert_eq!(code_lines(declared), 5);
    let inline = "//! x\nfn a() {}\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n";
    assert_eq!(code_lines(inline), 2);
}

#[test]
fn the_dependency_reader_sees_only_normal_dependencies() {
    let m = "[package]\nname = \"x\"\n[dependencies]\naccrete-core.workspace = true\ntonic = { version = \"1\" }\n\
             [dev-dependencies]\naccrete-proto.workspace = true\n";
    assert_eq!(normal_dependencies(m), vec!["accrete-core", "tonic"]);
    assert_eq!(package_name(m), "x");
}
