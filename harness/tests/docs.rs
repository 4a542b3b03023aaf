//! The project's Markdown documents as a reader follows them: every relative link names a file that exists,
//! and every `#anchor` a heading of the document it points into (GitHub's anchors: the heading in lower
//! case, backticks and punctuation dropped, spaces as `-`, a repeated heading numbered `-1`, `-2`…).
//! Links inside code blocks and code spans are code, not links.

// Test helpers panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.md` file of the repository, outside build output, installed packages and the fuzzer's work.
fn documents() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let skip = name.starts_with('.')
                    || matches!(
                        name.as_str(),
                        "target" | "node_modules" | "corpus" | "artifacts"
                    );
                if !skip {
                    walk(&path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out.sort();
    out
}

/// The text outside fenced code blocks and code spans, line by line (a line of code reads as empty, so
/// the numbers stay the file's).
fn prose(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push(String::new());
            continue;
        }
        if fenced {
            out.push(String::new());
            continue;
        }
        let mut kept = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                kept.push(c);
            }
        }
        out.push(kept);
    }
    out
}

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a document's headings (code spans keep their text in a heading's anchor).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        if fenced {
            continue;
        }
        let base = slug(heading.trim_start_matches('#'));
        let n = seen.entry(base.clone()).or_default();
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of inline links `[text](target)` in a line of prose.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].to_string());
        rest = &after[end..];
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let docs = documents();
    assert!(
        docs.iter().any(|d| d.ends_with("README.md")),
        "no README.md found under {:?}",
        root()
    );
    let mut checked = 0;
    let mut broken = Vec::new();
    for doc in &docs {
        let text = fs::read_to_string(doc).unwrap();
        let name = doc.strip_prefix(root()).unwrap().display().to_string();
        for (n, line) in prose(&text).iter().enumerate() {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
                let path = if file.is_empty() {
                    doc.clone()
                } else {
                    doc.parent().unwrap().join(file)
                };
                if !path.exists() {
                    broken.push(format!("{name}:{}: {target}: no such file", n + 1));
                    continue;
                }
                if !anchor.is_empty() {
                    let into = fs::read_to_string(&path).unwrap_or_default();
                    if !anchors(&into).contains(anchor) {
                        broken.push(format!("{name}:{}: {target}: no such heading", n + 1));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the link reader broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_reader_knows_githubs_anchors() {
    let text = "# A\n## Attack suite (`harness/tests/attacks.rs`)\n### Identity headers (Grafana's mode)\n\
                ```\n# not a heading\n```\n## A\n";
    let got = anchors(text);
    let want: BTreeSet<String> = [
        "a",
        "a-1",
        "attack-suite-harnesstestsattacksrs",
        "identity-headers-grafanas-mode",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
    assert_eq!(
        link_targets("see [x](a.md#b) and [y](#c), not `[z](d)`"),
        ["a.md#b", "#c", "d"]
    );
    assert_eq!(
        prose("see `[z](d)` and [y](#c)\n```\n[w](e)\n```"),
        ["see  and [y](#c)", "", "", ""]
    );
}
