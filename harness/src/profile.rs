//! `harness bench --profile`: where the filter's own per-request instructions go, Wasm function by Wasm
//! function.
//!
//! Envoy's callgrind pass counts a request's instructions, but V8's generated code has no symbols there.
//! So this runs the module in Node's V8 (the engine Envoy embeds) under `valgrind --tool=callgrind
//! --dump-instr=yes`, driven by a small JavaScript proxy-wasm host (`harness/profile-host.mjs`) with the
//! benchmark's real session cookie, and charges each instruction to the Wasm function whose code holds its
//! address. V8 writes those addresses with `--log-code`. (Calls between Wasm functions go through V8's
//! jump table, so callgrind's own call graph names the table's slots, not the functions: only the
//! addresses are reliable.)
//!
//! Two runs, of 1 000 and 3 000 requests, cancel out loading and configuring: a function's instructions
//! per request are the difference over 2 000. Node's V8 is not Envoy's (no Envoy host calls, another V8
//! version), so the figures rank the filter's own code; Envoy's callgrind pass (`bench --instructions`)
//! says what a change is worth there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

/// The two runs' request counts.
const SHORT: u64 = 1000;
const LONG: u64 = 3000;
/// Bytes per line of the instruction cache.
const LINE: u64 = 64;

/// What the host needs to play the benchmark's logged-in request.
pub struct Input {
    /// The plugin configuration, as Envoy hands it over.
    pub config: String,
    /// The VM's environment (client secret, cookie keys).
    pub env: Vec<(String, String)>,
    /// The request's `Cookie` header; empty for none.
    pub cookie: String,
}

/// One Wasm function's share of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    /// Instructions per request.
    pub instructions: f64,
    /// Entries per request (executions of its first instruction).
    pub calls: f64,
    /// Cache lines of its code run on every request.
    pub lines: usize,
}

/// Builds the module with its function names, runs both passes in `dir` and returns the report.
pub fn run(input: &Input, dir: &Path) -> Result<String> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let wasm = named_module(dir)?;
    let input_path = dir.join("input.json");
    let env: serde_json::Map<String, Value> = input
        .env
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    fs::write(
        &input_path,
        json!({ "config": input.config, "env": env, "cookie": input.cookie }).to_string(),
    )?;
    let short = pass(dir, &wasm, &input_path, SHORT)?;
    let long = pass(dir, &wasm, &input_path, LONG)?;
    let rows = rows(&short, &long)?;
    Ok(report(&rows, !input.cookie.is_empty()))
}

/// The release build with its function names kept (the shipped one has none), through the same
/// `wasm-opt -Oz` as the shipped module. Built in its own target directory, so the release build stays.
fn named_module(dir: &Path) -> Result<PathBuf> {
    let target = crate::target_dir().join("profile");
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "-p",
            "oidc-filter",
        ])
        .arg("--target-dir")
        .arg(&target)
        .env("CARGO_PROFILE_RELEASE_STRIP", "false")
        .current_dir(crate::workspace_root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the named module failed: {status}");
    }
    let release = target.join("wasm32-wasip1/release/oidc_filter.wasm");
    let out = dir.join("oidc_filter.named.wasm");
    crate::oci::optimize_keeping_names("wasm-opt", &release, &out).map_err(|e| anyhow!("{e}"))?;
    Ok(out)
}

/// One run's instruction counts by address, and the code map V8 logged.
struct Pass {
    requests: u64,
    counts: BTreeMap<u64, u64>,
    code: Vec<(u64, u64, String)>,
}

fn pass(dir: &Path, wasm: &Path, input: &Path, requests: u64) -> Result<Pass> {
    let out = dir.join(format!("callgrind.{requests}"));
    let log = dir.join(format!("v8.{requests}.log"));
    let _ = fs::remove_file(&log);
    let host = crate::workspace_root().join("harness/profile-host.mjs");
    let result = Command::new("valgrind")
        .args(["--tool=callgrind", "--dump-instr=yes"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .args([
            "node",
            // TurboFan only, everything compiled up front: what Envoy's V8 runtime asks for.
            "--no-liftoff",
            "--no-wasm-tier-up",
            "--no-wasm-lazy-compilation",
            "--single-threaded",
            "--log-code",
            "--no-logfile-per-isolate",
        ])
        .arg(format!("--logfile={}", log.display()))
        .arg(&host)
        .arg(wasm)
        .arg(input)
        .arg(requests.to_string())
        .output()
        .context("running valgrind (install valgrind: harness/setup.sh) and node")?;
    if !result.status.success() {
        bail!(
            "the profiled run failed: {}\n{}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    let summary: Value = serde_json::from_slice(&result.stdout).with_context(|| {
        format!(
            "the host's output: {}",
            String::from_utf8_lossy(&result.stdout)
        )
    })?;
    let forwarded = summary["forwarded"].as_u64().unwrap_or(0);
    let local = summary["local"].as_u64().unwrap_or(0);
    // Every request must have taken the path being profiled.
    if forwarded != requests && local != requests {
        bail!("of {requests} requests {forwarded} were forwarded and {local} answered: {summary}");
    }
    Ok(Pass {
        requests,
        counts: instruction_counts(&fs::read_to_string(&out)?)?,
        code: code_map(&fs::read_to_string(&log)?),
    })
}

/// Wasm functions in V8's `--log-code` output: (address, size, name). Wrappers between Wasm and
/// JavaScript are left out.
fn code_map(log: &str) -> Vec<(u64, u64, String)> {
    let mut code: Vec<(u64, u64, String)> = log
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            if fields.len() < 8 || fields[0] != "code-creation" || fields[1] != "JS" {
                return None;
            }
            let name = fields[6..fields.len() - 2].join(",");
            // JavaScript functions are logged as "name url:line:column"; Wasm names have no space.
            if name.contains(' ')
                || name.starts_with("wasm-to-js")
                || name.starts_with("js-to-wasm")
            {
                return None;
            }
            let at = u64::from_str_radix(fields[4].trim_start_matches("0x"), 16).ok()?;
            let size = fields[5].parse().ok()?;
            Some((at, size, name))
        })
        .collect();
    code.sort();
    code
}

/// Instructions executed at each address, from a callgrind file written with `--dump-instr=yes`.
fn instruction_counts(callgrind: &str) -> Result<BTreeMap<u64, u64>> {
    let mut counts = BTreeMap::new();
    let mut positions = 1;
    let mut last = [0u64; 2];
    let mut after_calls = false;
    for line in callgrind.lines() {
        if let Some(p) = line.strip_prefix("positions:") {
            positions = p.split_whitespace().count().clamp(1, 2);
            continue;
        }
        if line.starts_with("calls=") {
            // The next line is the call's inclusive cost, not instructions run at that address.
            after_calls = true;
            continue;
        }
        let Some(first) = line.bytes().next() else {
            continue;
        };
        if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'*')) {
            continue;
        }
        let mut fields = line.split_whitespace();
        for slot in last.iter_mut().take(positions) {
            let f = fields
                .next()
                .ok_or_else(|| anyhow!("short cost line {line:?}"))?;
            *slot = match f.as_bytes()[0] {
                b'*' => *slot,
                b'+' => *slot + parse_number(&f[1..])?,
                b'-' => slot
                    .checked_sub(parse_number(&f[1..])?)
                    .ok_or_else(|| anyhow!("position below 0 in {line:?}"))?,
                _ => parse_number(f)?,
            };
        }
        if std::mem::take(&mut after_calls) {
            continue;
        }
        let ir = match fields.next() {
            Some(f) => parse_number(f)?,
            None => 0,
        };
        *counts.entry(last[0]).or_insert(0) += ir;
    }
    Ok(counts)
}

fn parse_number(s: &str) -> Result<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .with_context(|| format!("number {s:?}"))
}

/// A pass's instructions, per-request lines and entries, by function name.
type PerFunction<'a> = (
    HashMap<&'a str, u64>,
    HashMap<&'a str, HashSet<u64>>,
    HashMap<&'a str, u64>,
);

fn per_function(pass: &Pass) -> PerFunction<'_> {
    let mut by_name: HashMap<&str, u64> = HashMap::new();
    let mut lines: HashMap<&str, HashSet<u64>> = HashMap::new();
    let mut calls: HashMap<&str, u64> = HashMap::new();
    for (at, size, name) in &pass.code {
        calls.insert(name, pass.counts.get(at).copied().unwrap_or(0));
        for (&addr, &n) in pass.counts.range(*at..*at + size) {
            *by_name.entry(name).or_insert(0) += n;
            // Run at least once per request, loading and configuring aside.
            if n * 10 >= pass.requests * 9 {
                lines.entry(name).or_default().insert(addr / LINE);
            }
        }
    }
    (by_name, lines, calls)
}

/// Each Wasm function's share of a request: instructions from the difference of the two passes (their
/// code lies at other addresses in each, so by name), calls and lines from the long pass.
fn rows(short: &Pass, long: &Pass) -> Result<Vec<Row>> {
    let (short_ir, _, _) = per_function(short);
    let (long_ir, long_lines, long_calls) = per_function(long);
    let requests = (long.requests - short.requests) as f64;
    let mut rows: Vec<Row> = long_ir
        .iter()
        .map(|(name, n)| Row {
            name: demangle(name),
            instructions: (*n as f64 - short_ir.get(name).copied().unwrap_or(0) as f64) / requests,
            calls: long_calls.get(name).copied().unwrap_or(0) as f64 / long.requests as f64,
            lines: long_lines.get(name).map_or(0, HashSet::len),
        })
        .filter(|r| r.instructions >= 0.5)
        .collect();
    if rows.is_empty() {
        bail!("no Wasm function ran per request: did V8 log its code (--log-code)?");
    }
    rows.sort_by(|a, b| b.instructions.total_cmp(&a.instructions));
    Ok(rows)
}

/// A legacy-mangled Rust name (`_ZN…E`) as a path, without its hash; other names as they are.
pub fn demangle(name: &str) -> String {
    let Some(mut rest) = name.strip_prefix("_ZN") else {
        return name.to_string();
    };
    let mut parts = Vec::new();
    while let Some(digits) = rest.find(|c: char| !c.is_ascii_digit()).filter(|&d| d > 0) {
        let Ok(len) = rest[..digits].parse::<usize>() else {
            break;
        };
        let Some(part) = rest.get(digits..digits + len) else {
            break;
        };
        parts.push(part);
        rest = &rest[digits + len..];
    }
    if parts.is_empty() || rest != "E" {
        return name.to_string();
    }
    if parts
        .last()
        .is_some_and(|p| p.len() == 17 && p.starts_with('h'))
    {
        parts.pop();
    }
    let mut path = parts.join("::");
    for (from, to) in [
        ("$LT$", "<"),
        ("$GT$", ">"),
        ("$RF$", "&"),
        ("$BP$", "*"),
        ("$C$", ","),
        ("$LP$", "("),
        ("$RP$", ")"),
        ("$u20$", " "),
        ("$u5b$", "["),
        ("$u5d$", "]"),
        ("$u7b$", "{"),
        ("$u7d$", "}"),
        ("..", "::"),
    ] {
        path = path.replace(from, to);
    }
    path.strip_prefix('_')
        .filter(|p| p.starts_with('<'))
        .map_or(path.clone(), str::to_string)
}

fn report(rows: &[Row], logged_in: bool) -> String {
    let total: f64 = rows.iter().map(|r| r.instructions).sum();
    let lines: usize = rows.iter().map(|r| r.lines).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "oidc-filter's Wasm functions in Node's V8, per {} request ({} minus {} requests):\n\
         {total:.0} instructions, {lines} cache lines of code run every request\n",
        if logged_in { "logged-in" } else { "anonymous" },
        LONG,
        SHORT,
    );
    let _ = writeln!(
        out,
        "| instructions | calls | lines | function |\n|---:|---:|---:|---|"
    );
    for r in rows.iter().take(40) {
        let _ = writeln!(
            out,
            "| {:.0} | {:.2} | {} | `{}` |",
            r.instructions, r.calls, r.lines, r.name
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_instructions_by_address_from_compressed_positions() {
        // Two positions (instruction address, line); relative and repeated positions; a call whose
        // inclusive cost must not count as instructions at the call's address.
        let cg = "\
version: 1
positions: instr line
events: Ir
fn=(1) foo
0x1000 3 5
+4 * 2
calls=7 0x2000 9
* * 700
-2 4 1
fn=(2)
0x2000 9 10
";
        let counts = instruction_counts(cg).unwrap();
        assert_eq!(counts.get(&0x1000), Some(&5));
        assert_eq!(counts.get(&0x1004), Some(&2));
        assert_eq!(counts.get(&0x1002), Some(&1));
        assert_eq!(counts.get(&0x2000), Some(&10));
        assert_eq!(counts.len(), 4);
    }

    #[test]
    fn maps_wasm_functions_and_leaves_out_javascript_and_wrappers() {
        let log = "\
code-creation,JS,4,100,0x2000,64,_ZN3foo3bar17h0123456789abcdefE,0x1,*
code-creation,JS,4,101,0x1000,32,proxy_on_request_headers,0x2,*
code-creation,JS,4,102,0x3000,32,wasm-to-js:i:i-_ZN3foo4host17h0123456789abcdefE,0x3,
code-creation,JS,4,103,0x4000,32,give file:///x/profile-host.mjs:24:14,0x4,~
code-creation,JS,4,103,0x4800,32, file:///x/profile-host.mjs:1:1,0x4,~
code-creation,Builtin,2,104,0x5000,32,LoadIC
";
        let map = code_map(log);
        assert_eq!(
            map,
            vec![
                (0x1000, 32, "proxy_on_request_headers".to_string()),
                (0x2000, 64, "_ZN3foo3bar17h0123456789abcdefE".to_string()),
            ]
        );
    }

    #[test]
    fn charges_each_function_the_difference_of_the_two_passes() {
        let code = |base: u64| {
            vec![
                (base, 256, "hot".to_string()),
                (base + 0x1000, 64, "setup".to_string()),
            ]
        };
        // `hot`: 10 instructions per request over two lines, plus 50 at load; `setup`: load only.
        let pass = |requests: u64, base: u64| Pass {
            requests,
            counts: BTreeMap::from([
                (base, 6 * requests + 50),
                (base + 128, 4 * requests),
                (base + 0x1000, 900),
            ]),
            code: code(base),
        };
        let rows = rows(&pass(1000, 0x10_000), &pass(3000, 0x90_000)).unwrap();
        assert_eq!(
            rows,
            vec![Row {
                name: "hot".into(),
                instructions: 10.0,
                calls: 6.0 + 50.0 / 3000.0,
                lines: 2,
            }]
        );
    }

    #[test]
    fn demangles_legacy_names() {
        assert_eq!(
            demangle("_ZN11oidc_filter7headers11HeaderBlock5parse17h890df7e7c0941d61E"),
            "oidc_filter::headers::HeaderBlock::parse"
        );
        assert_eq!(
            demangle(
                "_ZN70_$LT$core..option..Option$LT$T$GT$$u20$as$u20$core..cmp..PartialEq$GT$2eq17h23a8f675d4e1460eE"
            ),
            "<core::option::Option<T> as core::cmp::PartialEq>::eq"
        );
        assert_eq!(demangle("memcmp"), "memcmp");
        assert_eq!(demangle("_ZN3fooX"), "_ZN3fooX");
    }
}
