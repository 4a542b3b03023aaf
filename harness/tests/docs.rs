//! The project's Markdown documents as a reader follows them: every relative link names a file that exists,
//! and every `#anchor` a heading of the document it points into (GitHub's anchors: the heading in lower
//! case, backticks and punctuation dropped, spaces as `-`, a repeated heading numbered `-1`, `-2`…).
//! Links inside code blocks and code spans are code, not links.

// Test helpers panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

/// The README's section under `## {name}`, up to the next heading of that level.
fn section<'a>(text: &'a str, name: &str) -> &'a str {
    let heading = format!("\n## {name}\n");
    let from = text
        .find(&heading)
        .unwrap_or_else(|| panic!("no section {name:?}"))
        + heading.len();
    let rest = &text[from..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The code spans of a text (its fenced blocks left out), whitespace collapsed.
fn code_spans(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut prose = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    for (i, span) in prose.split('`').enumerate() {
        if i % 2 == 1 {
            out.push(span.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    out
}

fn readme() -> String {
    fs::read_to_string(root().join("README.md")).unwrap()
}

/// "Tests" names every test binary of the harness (`harness/tests/NAME.rs`, `harness/tests/NAME/main.rs`)
/// as `NAME` (`harness_*` for the harness's own), so a suite added is described where a reader looks.
#[test]
fn the_tests_section_names_every_test_binary() {
    let text = readme();
    let named: BTreeSet<String> = code_spans(section(&text, "Tests")).into_iter().collect();
    let mut binaries = Vec::new();
    for entry in fs::read_dir(root().join("harness/tests")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_some_and(|e| e == "rs") || path.join("main.rs").exists() {
            binaries.push(name);
        }
    }
    assert!(binaries.len() > 10, "{binaries:?}");
    let missing: Vec<&String> = binaries
        .iter()
        .filter(|b| {
            let shared = b.starts_with("harness_") && named.contains("harness_*");
            !(named.contains(*b) || shared)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README's Tests section does not name {missing:?}"
    );
}

/// "Layout" names every test file of the core (`filter/tests/NAME.rs`) in its `tests/:` entry.
#[test]
fn the_layout_names_every_test_of_the_core() {
    let text = readme();
    let layout = section(&text, "Layout");
    let from = layout.find("tests/:").expect("the filter's tests/: entry");
    let entry = &layout[from..];
    let entry = &entry[..entry.find("fuzz/:").unwrap_or(entry.len())];
    let words: BTreeSet<&str> = entry
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .collect();
    let mut missing = Vec::new();
    for file in fs::read_dir(root().join("filter/tests")).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if !words.contains(name.as_str()) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README's Layout does not name filter/tests/{missing:?}"
    );
}

/// A configuration the README shows as an example, merged over a minimal one (an example is often a
/// fragment, or a patch of the base's `pluginConfig`), as the filter parses it; every environment
/// variable it names is set.
fn parse_example(
    fragment: serde_json::Map<String, serde_json::Value>,
) -> Result<oidc_filter::config::Plugin, oidc_filter::config::ConfigError> {
    let mut config =
        serde_json::json!({"issuer": "https://idp.example.com", "client_id": "gateway",
        "client_secret_env": "OIDC_CLIENT_SECRET", "cookie_keys_env": "OIDC_COOKIE_KEYS"})
        .as_object()
        .unwrap()
        .clone();
    for secret in ["client_secret", "cookie_keys"] {
        if fragment.contains_key(secret) {
            config.remove(&format!("{secret}_env"));
        }
    }
    config.extend(fragment);
    // Any variable: a cookie key does as a client secret too.
    let env = |_: &str| Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string());
    oidc_filter::config::Plugin::parse(
        serde_json::Value::Object(config).to_string().as_bytes(),
        &env,
    )
}

/// Every configuration example of the README is one the filter takes: each `json` block (a bare
/// `"field": …` list read as an object), each `pluginConfig` of a YAML block, and each YAML block made of
/// `field: value` lines (one example a line).
#[test]
fn the_readmes_configuration_examples_are_accepted() {
    let text = readme();
    let fields: BTreeSet<&str> = section(&text, "Configuration reference")
        .lines()
        .skip_while(|l| !l.starts_with("| field | default |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    assert!(fields.len() > 30, "{fields:?}");
    let mut examples: Vec<(usize, serde_json::Map<String, serde_json::Value>)> = Vec::new();
    let mut block: Option<(usize, String, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            match block.take() {
                None => block = Some((n + 1, lang.to_string(), String::new())),
                Some((at, lang, body)) if lang == "json" => {
                    let body = body.trim();
                    let value: serde_json::Value = serde_json::from_str(body)
                        .or_else(|_| serde_json::from_str(&format!("{{{body}}}")))
                        .unwrap_or_else(|e| panic!("README.md:{at}: not JSON: {e}"));
                    examples.push((at, value.as_object().unwrap().clone()));
                }
                Some((at, lang, body)) if lang == "yaml" => {
                    let lines: Vec<&str> = body
                        .lines()
                        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                        .collect();
                    let own = |l: &&str| {
                        l.split_once(':')
                            .is_some_and(|(k, _)| fields.contains(k) && !l.starts_with(' '))
                    };
                    if !lines.is_empty() && lines.iter().all(own) {
                        for l in lines {
                            let v: serde_json::Value = serde_norway::from_str(l).unwrap();
                            examples.push((at, v.as_object().unwrap().clone()));
                        }
                        continue;
                    }
                    for doc in serde_norway::Deserializer::from_str(&body) {
                        let Ok(doc) = serde_json::Value::deserialize(doc) else {
                            continue;
                        };
                        if let Some(config) = doc["spec"]["pluginConfig"].as_object() {
                            examples.push((at, config.clone()));
                        }
                    }
                }
                Some(_) => {}
            }
            continue;
        }
        if let Some((_, _, body)) = block.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let lines: Vec<usize> = examples.iter().map(|(at, _)| *at).collect();
    eprintln!("examples at README.md lines {lines:?}");
    assert!(
        examples.len() >= 8,
        "only {} examples found",
        examples.len()
    );
    let refused: Vec<String> = examples
        .into_iter()
        .filter_map(|(at, fragment)| {
            parse_example(fragment.clone())
                .err()
                .map(|e| format!("README.md:{at}: {e}\n  {fragment:?}"))
        })
        .collect();
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

/// The refusals the README quotes are the filter's own words.
#[test]
fn the_readmes_refusal_examples_are_the_filters() {
    let text = readme();
    let prose = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let one = |fragment: serde_json::Value| {
        parse_example(fragment.as_object().unwrap().clone())
            .map(|_| ())
            .expect_err("refused")
            .to_string()
    };
    let short_key = one(
        serde_json::json!({"issuer": "https://idp.example.com", "client_id": "gateway",
        "client_secret_env": "S", "cookie_keys": ["MDEyMzQ1Njc4OWFiY2RlZg=="]}),
    );
    let wrong_type = one(serde_json::json!({"callout_timeout": true}));
    for quoted in [
        format!("oidc-filter: {short_key}"),
        wrong_type["invalid configuration: ".len()..].to_string(),
    ] {
        assert!(
            prose.contains(&quoted),
            "README does not quote the filter's {quoted:?}"
        );
    }
}

/// The paths the reference gives as what `post_logout_redirect_uri` refuses are refused (found in review:
/// the row said "no escape that decodes to `//`", which `/a/%2F%2Fb` has and is taken, and left out the
/// dot segments that are refused).
#[test]
fn the_post_logout_redirect_uri_examples_are_refused() {
    let text = readme();
    let row = text
        .lines()
        .find(|l| l.starts_with("| `post_logout_redirect_uri` |"))
        .expect("the row");
    // What a path may be: from "a path on this site" to the paths it may not be, the filter's own.
    let from = row.find("a path on this site").expect("the path's rule");
    let rule = &row[from..];
    let rule = &rule[..rule.find("; not `callback_path`").expect("the rule's end")];
    let examples: Vec<String> = code_spans(rule)
        .into_iter()
        .filter(|s| s.starts_with('/') && s.len() > 1)
        .collect();
    assert!(examples.len() >= 3, "{examples:?}");
    for path in &examples {
        let fragment = serde_json::json!({ "post_logout_redirect_uri": path });
        let e = parse_example(fragment.as_object().unwrap().clone())
            .map(|_| ())
            .expect_err(path);
        assert_eq!(e.field, "post_logout_redirect_uri", "{path}: {e}");
    }
    let fragment = serde_json::json!({ "post_logout_redirect_uri": "/a/%2F%2Fb" });
    assert!(parse_example(fragment.as_object().unwrap().clone()).is_ok());
}
