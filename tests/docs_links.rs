//! The repository documents itself: every `docs/<file>.md#<section>` a comment or a document cites
//! exists as a heading of that file, every relative link between the documents resolves, and no
//! comment points at design documents that do not ship with the repository.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tracked text the rule covers: sources, kernels, tests, benches, scripts, CI, the top-level
/// documents and `docs/` itself.
fn files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["src", "kernels", "tests", "benches", "scripts", ".ci", "docs"] {
        walk(&root().join(dir), &mut out);
    }
    for file in ["build.rs", "README.md", "BENCHMARKS.md", "Cargo.toml"] {
        out.push(root().join(file));
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown file's headings (fenced code blocks skipped).
fn anchors(doc: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// Whether `target` (`file.md`, `file.md#anchor` or `#anchor`, relative to `base`) resolves.
fn resolves(base: &Path, target: &str) -> Result<(), String> {
    let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
    let doc = if file.is_empty() {
        base.to_path_buf()
    } else {
        base.parent().unwrap().join(file)
    };
    if !doc.is_file() {
        return Err(format!("no file {}", doc.display()));
    }
    if !anchor.is_empty() && !anchors(&doc).contains(anchor) {
        return Err(format!("{} has no heading with the anchor #{anchor}", doc.display()));
    }
    Ok(())
}

/// Every `docs/<name>.md#<anchor>` (or `docs/<name>.md`) in `text`.
fn doc_citations(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("docs/") {
        let tail = &rest[at + 5..];
        let name_len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(tail.len());
        if name_len > 0 && tail[name_len..].starts_with(".md") {
            let after = &tail[name_len + 3..];
            let mut cite = format!("docs/{}.md", &tail[..name_len]);
            if let Some(anchor) = after.strip_prefix('#') {
                let len = anchor
                    .find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
                    .unwrap_or(anchor.len());
                cite.push('#');
                cite.push_str(&anchor[..len]);
            }
            out.push(cite);
        }
        rest = tail;
    }
    out
}

/// The relative targets of markdown links `[text](target)` (web addresses left out).
fn markdown_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        let tail = &rest[at + 2..];
        if let Some(end) = tail.find(')') {
            let target = &tail[..end];
            if !target.contains("://") && !target.contains(' ') {
                out.push(target.to_string());
            }
        }
        rest = tail;
    }
    out
}

#[test]
fn every_cited_docs_section_exists() {
    let mut broken = Vec::new();
    let mut cited = 0;
    for file in files() {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for cite in doc_citations(&text) {
            cited += 1;
            if let Err(e) = resolves(&root().join("README.md"), &cite) {
                broken.push(format!("{}: {cite}: {e}", file.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "citations of docs/ that do not resolve:\n{}",
        broken.join("\n")
    );
    assert!(
        cited > 20,
        "only {cited} citations of docs/ found: is the scan looking in the right place?"
    );
}

#[test]
fn links_between_the_documents_resolve() {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("a docs/ folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.extend(["README.md", "BENCHMARKS.md"].map(|f| root().join(f)));
    let mut broken = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for target in markdown_links(&text) {
            if let Err(e) = resolves(doc, &target) {
                broken.push(format!("{}: ({target}): {e}", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links that do not resolve:\n{}", broken.join("\n"));
}

#[test]
fn no_comment_points_outside_the_repository() {
    // The names are split so that this file does not match itself.
    let outside = [
        ["REFERENCE", " §"].concat(),
        ["REFERENCE", ".md"].concat(),
        ["DESIGN", ".md"].concat(),
        ["SEEDS", ".md"].concat(),
        ["shared/", "docs"].concat(),
    ];
    let mut found = Vec::new();
    for file in files() {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o.as_str())) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "these lines cite documents that are not in the repository; cite docs/ instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn slugs_follow_githubs_rule() {
    assert_eq!(slug(" Adaptive Wing loss"), "adaptive-wing-loss");
    assert_eq!(slug("ISBI 2015"), "isbi-2015");
    assert_eq!(slug("Formats: datasets, checkpoints"), "formats-datasets-checkpoints");
    assert_eq!(
        doc_citations("see docs/maths.md#adamw, and docs/formats.md."),
        ["docs/maths.md#adamw", "docs/formats.md"]
    );
}
