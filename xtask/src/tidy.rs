//! Tidy checks of the whole tree, as ordinary tests (rust-analyzer's way).

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{
    bench::{CALIBRATION, TARGETS},
    root,
};

/// Every `.rs` file of the tree, outside `target/`, the target directory
/// (`CARGO_TARGET_DIR`, wherever it is) and hidden directories.
fn rust_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" || path == skip {
                continue;
            }
            if path.is_dir() {
                walk(&path, skip, out);
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &crate::target_dir(), &mut out);
    out.sort();
    out
}

/// The manifests of every workspace member.
fn member_manifests() -> Vec<PathBuf> {
    let root = root();
    let text = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let manifest: toml::Table = text.parse().unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    let mut out = Vec::new();
    for member in members {
        let member = member.as_str().unwrap();
        if let Some(parent) = member.strip_suffix("/*") {
            for entry in fs::read_dir(root.join(parent)).unwrap().flatten() {
                let manifest = entry.path().join("Cargo.toml");
                if manifest.exists() {
                    out.push(manifest);
                }
            }
        } else {
            out.push(root.join(member).join("Cargo.toml"));
        }
    }
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// Fails listing every offender, not just the first.
#[track_caller]
fn assert_none(what: &str, offenders: &[String]) {
    assert!(offenders.is_empty(), "{what}:\n  {}", offenders.join("\n  "));
}

#[test]
fn every_member_opts_into_workspace_lints() {
    let manifests = member_manifests();
    assert!(manifests.len() >= 4, "found only {manifests:?}");
    let offenders: Vec<String> = manifests
        .iter()
        .filter(|path| {
            let manifest: toml::Table = fs::read_to_string(path).unwrap().parse().unwrap();
            manifest.get("lints").and_then(|l| l.get("workspace")).and_then(toml::Value::as_bool) != Some(true)
        })
        .map(|p| relative(p))
        .collect();
    assert_none("members without `[lints] workspace = true`", &offenders);
}

#[test]
fn every_member_takes_its_package_fields_from_the_workspace() {
    let offenders: Vec<String> = member_manifests()
        .iter()
        .filter(|path| {
            let manifest: toml::Table = fs::read_to_string(path).unwrap().parse().unwrap();
            let package = &manifest["package"];
            ["edition", "rust-version", "license", "publish"].iter().any(|field| {
                package.get(field).and_then(|v| v.get("workspace")).and_then(toml::Value::as_bool) != Some(true)
            })
        })
        .map(|p| relative(p))
        .collect();
    assert_none("members not using `<field>.workspace = true` for edition/rust-version/license/publish", &offenders);
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let files = rust_files();
    assert!(files.len() > 10, "the walk found only {files:?}");
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| !fs::read_to_string(path).unwrap().starts_with("//!"))
        .map(|p| relative(p))
        .collect();
    assert_none("files whose first line is not a `//!` doc", &offenders);
}

/// The `pub use` statements of `text`, each from its line to its `;`, with
/// the line it starts on.
fn pub_use_statements(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with("pub use ") {
            let statement = text[offset..].split(';').next().unwrap_or("");
            out.push((n + 1, statement));
        }
        offset += line.len();
    }
    out
}

#[test]
fn no_glob_reexports() {
    let offenders: Vec<String> = rust_files()
        .iter()
        .flat_map(|path| {
            let text = fs::read_to_string(path).unwrap();
            pub_use_statements(&text)
                .into_iter()
                .filter(|(_, statement)| statement.contains('*'))
                .map(|(line, _)| format!("{}:{line}", relative(path)))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_none("glob re-exports (`pub use` of `*`); list the items", &offenders);
}

#[test]
fn glob_reexports_are_recognised() {
    let text =
        "//! x\npub use crate::a::{b, c};\n    pub use super::{\n        d::*,\n    };\nlet s = \"pub use x::*\";\n";
    let found: Vec<usize> =
        pub_use_statements(text).into_iter().filter(|(_, s)| s.contains('*')).map(|(line, _)| line).collect();
    assert_eq!(found, vec![3]);
}

#[test]
fn test_support_is_only_a_dev_dependency() {
    let offenders: Vec<String> = member_manifests()
        .iter()
        .filter(|path| {
            let manifest: toml::Table = fs::read_to_string(path).unwrap().parse().unwrap();
            let shipped = |t: &toml::Value| {
                ["dependencies", "build-dependencies"]
                    .iter()
                    .any(|s| t.get(*s).is_some_and(|d| d.get("modelfleet-test-support").is_some()))
            };
            shipped(&toml::Value::Table(manifest.clone()))
                || manifest
                    .get("target")
                    .and_then(toml::Value::as_table)
                    .is_some_and(|targets| targets.values().any(shipped))
        })
        .map(|p| relative(p))
        .collect();
    assert_none("members shipping modelfleet-test-support (a dev-dependency only)", &offenders);
}

#[test]
fn only_the_store_depends_on_rusqlite() {
    let offenders: Vec<String> = member_manifests()
        .iter()
        .filter(|path| !path.ends_with("crates/store/Cargo.toml"))
        .filter(|path| {
            let manifest: toml::Table = fs::read_to_string(path).unwrap().parse().unwrap();
            let sections = ["dependencies", "dev-dependencies", "build-dependencies"];
            let direct = sections.iter().any(|s| manifest.get(*s).is_some_and(|d| d.get("rusqlite").is_some()));
            let per_target = manifest.get("target").and_then(toml::Value::as_table).is_some_and(|targets| {
                targets
                    .values()
                    .any(|t| sections.iter().any(|s| t.get(*s).is_some_and(|d| d.get("rusqlite").is_some())))
            });
            direct || per_target
        })
        .map(|p| relative(p))
        .collect();
    assert_none("members other than crates/store depending on rusqlite", &offenders);
}

#[test]
fn no_should_panic_or_ignore() {
    let banned = [concat!("#[should", "_panic"), concat!("#[ig", "nore")];
    let offenders: Vec<String> = rust_files()
        .iter()
        .flat_map(|path| {
            let text = fs::read_to_string(path).unwrap();
            text.lines()
                .enumerate()
                .filter(|(_, line)| banned.iter().any(|b| line.contains(b)))
                .map(|(n, _)| format!("{}:{}", relative(path), n + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_none("tests that should_panic or are ignored: assert on the Err instead, and run every test", &offenders);
}

#[test]
fn every_bench_target_names_a_bench() {
    let sources: String = rust_files()
        .iter()
        .filter(|p| p.starts_with(root().join("benches")))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    let offenders: Vec<String> = TARGETS
        .iter()
        .chain([&CALIBRATION])
        .filter(|t| {
            let (group, function) = t.name.split_once('/').unwrap_or((t.name, ""));
            !sources.contains(&format!("\"{group}\"")) || !sources.contains(&format!("\"{function}\""))
        })
        .map(|t| t.name.to_owned())
        .collect();
    assert_none("bench targets whose group or function no bench under benches/ defines", &offenders);
}

#[test]
fn readme_and_architecture_name_every_crate() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let architecture = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let offenders: Vec<String> = member_manifests()
        .iter()
        .filter(|p| p.starts_with(root().join("crates")))
        .filter_map(|p| {
            let dir = p.parent()?.file_name()?.to_string_lossy().into_owned();
            let path = format!("crates/{dir}");
            (!readme.contains(&path) || !architecture.contains(&path)).then_some(path)
        })
        .collect();
    assert_none("crates missing from README.md or ARCHITECTURE.md", &offenders);
}
