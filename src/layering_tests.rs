//! The house's import rules, read from the code: a module may import only
//! what sits below it, so that no import climbs back up and no two parts
//! import each other.
//!
//! Two tables. Across the crate, each top-level module names the modules it
//! may import ([`CRATE`]). Inside `service`, `core` imports no feature; a
//! feature imports `core` and itself, never another feature; the top
//! (`service/mod.rs`, `jobs.rs`) may import anything ([`feature_of`]).
//!
//! What counts as an import: a path `crate::x`, `super::x` or
//! `crate::service::x` outside comments and `#[cfg(test)]` modules, and the
//! names inside `use crate::{…}` and `use super::{…}` groups.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Each top-level module and what it may import.
const CRATE: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("secret", &[]),
    ("error", &[]),
    ("domain", &["error"]),
    ("config", &["clock", "error", "domain", "secret"]),
    ("db", &["config", "error"]),
    ("telemetry", &["config"]),
    ("mail", &["config", "error", "domain", "secret"]),
    ("metrics", &["mail"]),
    ("auth", &["clock", "config", "db", "domain", "error", "metrics", "secret"]),
    ("service", &["auth", "clock", "config", "db", "domain", "error", "mail", "metrics", "secret"]),
    ("graphql", &["auth", "clock", "config", "domain", "error", "metrics", "service"]),
    ("http", &["auth", "clock", "config", "db", "domain", "error", "graphql", "metrics", "service"]),
    (
        "app",
        &[
            "auth", "clock", "config", "db", "domain", "error", "graphql", "http", "mail", "metrics", "secret",
            "service",
        ],
    ),
    ("cli", &["app", "config", "telemetry"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `path` as the repository names it (`src/service/core/store.rs`).
fn shown(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path).display().to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` with comments removed and the insides of string and character
/// literals blanked (their line breaks kept), so that neither a `//` nor a
/// brace inside a literal is read as code.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let keep_breaks = |from: usize, to: usize, out: &mut String| {
        out.extend(chars[from..to.min(chars.len())].iter().filter(|c| **c == '\n'));
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let after_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let (start, mut depth) = (i, 0);
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            keep_breaks(start, i, &mut out);
        } else if c == 'r' && !after_ident && matches!(next, Some('"' | '#')) {
            // A raw string: r"…", r#"…"#.
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let start = i;
            i += hashes + 2;
            while i < chars.len() && !(chars[i] == '"' && chars[i + 1..].iter().take(hashes).all(|c| *c == '#')) {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
            keep_breaks(start, i, &mut out);
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
            keep_breaks(start, i, &mut out);
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{…}'
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The file's code without comments, literals and its `#[cfg(test)]` items
/// (a test may reach anywhere).
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut pending_test = false;
    for line in blank_comments_and_literals(text).lines() {
        let line = line.trim();
        if skip_depth.is_none() && line.starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        let opens = line.matches('{').count() as i32;
        let closes = line.matches('}').count() as i32;
        if pending_test && skip_depth.is_none() {
            if line.ends_with(';') && opens == 0 {
                // `#[cfg(test)] mod x;`: nothing of it is here.
                pending_test = false;
                continue;
            }
            skip_depth = Some(depth);
            pending_test = false;
        }
        depth += opens - closes;
        match skip_depth {
            Some(d) if depth <= d && (opens > 0 || closes > 0 || line.ends_with(';')) => skip_depth = None,
            Some(_) => {}
            None => {
                code.push_str(line);
                code.push('\n');
            }
        }
    }
    code
}

/// The first segments named after `prefix` (`crate::`, `super::`): in plain
/// paths, and each item of a `prefix{…}` group.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let inner = &group[..end];
            // Top-level items of the group only.
            let mut d = 0;
            let mut start = true;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => d += 1,
                    '}' => d -= 1,
                    ',' if d == 0 => start = true,
                    c if start && d == 0 && (c.is_alphanumeric() || c == '_') => {
                        let name: String =
                            inner[i..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        names.insert(name);
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// A file of tests only (`x_tests.rs`, `tests.rs`, declared under
/// `#[cfg(test)]`): a test may reach anywhere.
fn is_test_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == "tests.rs" || n.ends_with("_tests.rs"))
}

/// The top-level module a file belongs to (`src/service/core/store.rs`:
/// `service`), or `None` for `lib.rs`, `main.rs` and this file.
fn top_of(path: &Path) -> Option<String> {
    if is_test_file(path) {
        return None;
    }
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.trim_end_matches(".rs").to_owned();
    (!matches!(first.as_str(), "lib" | "main" | "layering_tests" | "readme_sections")).then_some(first)
}

#[test]
fn no_module_imports_one_above_it() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for path in &files {
        let Some(top) = top_of(path) else { continue };
        let allowed = CRATE
            .iter()
            .find(|(m, _)| *m == top)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{} belongs to `{top}`, which the table does not name: add it", shown(path)));
        let code = code_of(&std::fs::read_to_string(path).expect("read"));
        for name in names_after(&code, "crate::") {
            let is_module = CRATE.iter().any(|(m, _)| *m == name);
            if is_module && name != top && !allowed.contains(&name.as_str()) {
                wrong.push(format!("{} imports crate::{name}", shown(path)));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that climb up or sideways:\n{}", wrong.join("\n"));
}

/// The part of `service` a file belongs to: `core`, a feature's name, or
/// `None` for the top (`mod.rs`, `jobs.rs`, the service tests), which may
/// import every part.
fn feature_of(path: &Path) -> Option<String> {
    if is_test_file(path) {
        return None;
    }
    let rel = path.strip_prefix(src().join("service")).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.trim_end_matches(".rs").to_owned();
    (!matches!(first.as_str(), "mod" | "jobs" | "testkit" | "tests" | "race_tests")).then_some(first)
}

/// The service parts a file refers to: by `crate::service::x`, by a
/// `service::{x, …}` group inside `use crate::{…}`, by `super::x` from a file
/// whose `super` is `service` (one directly under it, or a folder's
/// `mod.rs`), and by `super::super::x` from a file inside a folder.
fn service_parts(path: &Path, code: &str) -> BTreeSet<String> {
    let service = src().join("service");
    let mut parts = names_after(code, "crate::service::");
    parts.extend(names_after(code, "service::"));
    let parent = path.parent();
    let direct = parent == Some(service.as_path());
    let folder_root =
        path.file_name().is_some_and(|n| n == "mod.rs") && parent.and_then(Path::parent) == Some(&service);
    if direct || folder_root {
        parts.extend(names_after(code, "super::"));
    } else if parent.and_then(Path::parent) == Some(&service) {
        parts.extend(names_after(code, "super::super::"));
    }
    parts
}

/// The files at the top of `service` (no feature's): features and the core
/// take only the shared types of `service/mod.rs` from the top, never these.
const TOP_FILES: [&str; 4] = ["jobs", "testkit", "tests", "race_tests"];

#[test]
fn features_import_the_core_and_never_each_other() {
    let mut files = Vec::new();
    rust_files(&src().join("service"), &mut files);
    let parts: BTreeSet<String> = files.iter().filter_map(|p| feature_of(p)).collect();
    let mut wrong = Vec::new();
    for path in &files {
        let Some(own) = feature_of(path) else { continue };
        let code = code_of(&std::fs::read_to_string(path).expect("read"));
        for part in service_parts(path, &code) {
            let above = (parts.contains(&part) || TOP_FILES.contains(&part.as_str())) && part != "core";
            if above && part != own {
                wrong.push(format!("{} ({own}) imports service::{part}", shown(path)));
            }
        }
        // A glob would hide what it brings in.
        if code.contains("service::*") || code.contains("super::super::*") {
            wrong.push(format!("{} ({own}) imports a whole module with *", shown(path)));
        }
    }
    assert!(wrong.is_empty(), "imports between features, or from the core up:\n{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_imports_and_skips_tests_and_comments() {
    let code = code_of(
        "use crate::{config::X, service::{core::store, sessions}};\n\
         // crate::app in a comment\n\
         fn f() { crate::db::go(); }\n\
         #[cfg(test)]\nmod tests {\n    use crate::http;\n    fn g() { crate::app::run(); }\n}\n\
         fn h() { super::mail::send(); }\n",
    );
    let names = names_after(&code, "crate::");
    assert_eq!(names, ["config", "db", "service"].map(String::from).into_iter().collect());
    assert_eq!(names_after(&code, "super::"), ["mail"].map(String::from).into_iter().collect());
    assert_eq!(
        names_after("use crate::service::{core::x, sessions::{a, b}};", "crate::service::"),
        ["core", "sessions"].map(String::from).into_iter().collect()
    );
    // Nested in `use crate::{…}`, and literals that look like code.
    let code = code_of(
        "use crate::{config::X, service::{Services, recovery}};\n\
         fn f() { let url = \"smtp://x\"; if a { b(\"{\", '{'); } }\n\
         #[cfg(test)]\nmod tests {\n    fn g() { crate::app::run(); }\n}\n",
    );
    assert_eq!(names_after(&code, "service::"), ["Services", "recovery"].map(String::from).into_iter().collect());
    assert_eq!(names_after(&code, "crate::"), ["config", "service"].map(String::from).into_iter().collect());
}
