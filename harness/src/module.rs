//! The shipped module: the release build through `wasm-opt -Oz`.
//!
//! The filter exports only the proxy-wasm callbacks it acts on (`filter/src/exports.rs`): Envoy calls every
//! exported one, each call a trip into the VM, and skips a missing one (the ABI makes every callback
//! optional). Nothing is left to strip here; the test below keeps the exports to that list.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

/// Every export of the filter module: the memory, the reactor entry, the ABI version, the allocator the
/// host returns data through, and the callbacks the filter handles.
pub const EXPORTS: [&str; 12] = [
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_configure",
    "proxy_on_tick",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    // Entered only for a request that has trailers.
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_http_call_response",
];

/// The sections of `wasm`: each one's id and the range of its content, in order. Fails on what is
/// not a module, or is cut short.
fn sections(wasm: &[u8]) -> Result<Vec<(u8, std::ops::Range<usize>)>> {
    Ok(section_spans(wasm)?
        .into_iter()
        .map(|(id, _, content)| (id, content))
        .collect())
}

/// [`sections`], with where each section's header (its id) starts.
fn section_spans(wasm: &[u8]) -> Result<Vec<(u8, usize, std::ops::Range<usize>)>> {
    if wasm.get(..8) != Some(b"\0asm\x01\0\0\0".as_slice()) {
        bail!("not a WebAssembly 1.0 module");
    }
    let mut out = Vec::new();
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        let (size, n) = leb_u32(wasm, at + 1)?;
        let start = at + 1 + n;
        let end = start
            .checked_add(size as usize)
            .filter(|&e| e <= wasm.len())
            .ok_or_else(|| anyhow!("section {id} runs past the end"))?;
        out.push((id, at, start..end));
        at = end;
    }
    Ok(out)
}

/// The names `wasm` exports, in the module's order.
pub fn exports(wasm: &[u8]) -> Result<Vec<String>> {
    match sections(wasm)?.into_iter().find(|(id, _)| *id == 7) {
        Some((_, range)) => export_names(&wasm[range]),
        None => Ok(Vec::new()),
    }
}

fn export_names(section: &[u8]) -> Result<Vec<String>> {
    let (count, mut at) = leb_u32(section, 0)?;
    let mut names = Vec::new();
    for _ in 0..count {
        let (name_len, n) = leb_u32(section, at)?;
        let name_start = at + n;
        let name_end = name_start + name_len as usize;
        let name = section
            .get(name_start..name_end)
            .ok_or_else(|| anyhow!("export name runs past the section"))?;
        names.push(String::from_utf8_lossy(name).into_owned());
        // kind, then the index.
        let (_, n) = leb_u32(section, name_end + 1)?;
        at = name_end + 1 + n;
    }
    Ok(names)
}

fn leb_u32(b: &[u8], mut at: usize) -> Result<(u32, usize)> {
    let start = at;
    let mut value = 0u32;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(at).ok_or_else(|| anyhow!("truncated LEB128"))?;
        at += 1;
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value, at - start));
        }
    }
    bail!("LEB128 too long")
}

/// Writes the shipped module for the release build `release` to `output`: `wasm-opt -Oz`.
pub fn finish(wasm_opt: &str, release: &Path, output: &Path) -> Result<()> {
    if !release.exists() {
        bail!("{} is missing", release.display());
    }
    crate::oci::optimize(wasm_opt, release, output).map_err(|e| anyhow!("{e}"))
}

/// The shipped module next to the release build (`oidc_filter.opt.wasm`), made again when the release
/// build is newer. Several test binaries may ask at once: each writes a private file and renames it.
pub fn shipped(release: &Path) -> Result<PathBuf> {
    let out = release.with_file_name("oidc_filter.opt.wasm");
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(r), Some(o)) = (modified(release), modified(&out))
        && o >= r
    {
        return Ok(out);
    }
    let tmp = out.with_extension(format!("{}.wasm", crate::private_suffix()));
    finish("wasm-opt", release, &tmp)?;
    fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(out)
}

/// The custom section [`with_release_tag`] adds.
pub const RELEASE_TAG_SECTION: &str = "oidc-filter-release";

/// `wasm` with a custom section ([`RELEASE_TAG_SECTION`], holding `tag`) appended: the same code
/// and behaviour (a runtime skips custom sections it does not know), other bytes and so another
/// hash, as a release that changed nothing the filter does would be. Refuses what is not a module.
pub fn with_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Result<Vec<u8>> {
    // Walks the sections: a module cut short would hide a custom section appended after it.
    sections(wasm)?;
    let name_len = u32::try_from(name.len())?;
    let mut content = Vec::new();
    put_leb_u32(&mut content, name_len);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0);
    put_leb_u32(&mut out, u32::try_from(content.len())?);
    out.extend_from_slice(&content);
    Ok(out)
}

/// Writes `module` with the release tag `tag` added ([`with_custom_section`]) to
/// `dir/oidc_filter.<tag>.wasm` (through a private name: Envoy may be reading the file) and returns
/// that path: another "image" of the same filter.
pub fn with_release_tag(module: &Path, tag: &str, dir: &Path) -> Result<PathBuf> {
    let wasm = fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let tagged = with_custom_section(&wasm, RELEASE_TAG_SECTION, tag.as_bytes())?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("oidc_filter.{tag}.wasm"));
    let tmp = out.with_extension(format!("wasm.{}", crate::private_suffix()));
    fs::write(&tmp, &tagged).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(out)
}

/// Compiles the WebAssembly text file `wat` into `out` with wabt's `wat2wasm`, `flags` (e.g.
/// `--enable-threads`) first.
pub fn wat2wasm(wat: &Path, out: &Path, flags: &[&str]) -> Result<()> {
    let status = std::process::Command::new("wat2wasm")
        .args(flags)
        .arg(wat)
        .arg("-o")
        .arg(out)
        .status()
        .context("running wat2wasm (install wabt: harness/setup.sh)")?;
    if !status.success() {
        bail!("wat2wasm {} failed: {status}", wat.display());
    }
    Ok(())
}

/// `wasm` with a trap in front of its `proxy_on_request_headers`: the callback runs `unreachable` when
/// the request has at least `min_headers` headers (its second argument), and is unchanged otherwise. No
/// bug of the filter's is known to lose its VM, so the tests put one in, to see what a lost VM does to
/// the requests around it. Refuses a module it does not fully understand, or whose callback is not
/// `(i32, i32, i32) -> i32` or is exported under another name too.
pub fn with_request_headers_trap(wasm: &[u8], min_headers: u32) -> Result<Vec<u8>> {
    const EXPORT: &str = "proxy_on_request_headers";
    let spans = section_spans(wasm)?;
    let content = |id: u8| {
        spans
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, _, r)| &wasm[r.clone()])
    };
    let imported = match content(2) {
        Some(imports) => imported_functions(imports)?,
        None => 0,
    };
    let exports = content(7).ok_or_else(|| anyhow!("no export section"))?;
    let func = export_index(exports, EXPORT)?;
    let body_index = func
        .checked_sub(imported)
        .ok_or_else(|| anyhow!("{EXPORT} is an import"))?;
    let types = content(1).ok_or_else(|| anyhow!("no type section"))?;
    let functions = content(3).ok_or_else(|| anyhow!("no function section"))?;
    let (params, results) = function_type(types, functions, body_index)?;
    if params != [0x7f; 3] || results != [0x7f] {
        bail!("{EXPORT} is not (i32, i32, i32) -> i32");
    }
    let (_, header_start, code_range) = spans
        .iter()
        .find(|(i, _, _)| *i == 10)
        .ok_or_else(|| anyhow!("no code section"))?;
    let code = &wasm[code_range.clone()];

    // if (headers >= min_headers) unreachable
    let mut trap = vec![0x20, 0x01, 0x41];
    put_sleb_i32(&mut trap, i32::try_from(min_headers)?);
    trap.extend_from_slice(&[0x4f, 0x04, 0x40, 0x00, 0x0b]);

    let (count, mut at) = leb_u32(code, 0)?;
    if body_index >= count {
        bail!("{EXPORT} has no body");
    }
    let mut new_code = code[..at].to_vec();
    for i in 0..count {
        let (size, n) = leb_u32(code, at)?;
        let start = at + n;
        let end = start + size as usize;
        let body = code
            .get(start..end)
            .ok_or_else(|| anyhow!("function body {i} runs past the code section"))?;
        if i == body_index {
            // The locals come first: `groups` of (count, value type).
            let (groups, mut p) = leb_u32(body, 0)?;
            for _ in 0..groups {
                let (_, n) = leb_u32(body, p)?;
                value_type(body, p + n)?;
                p += n + 1;
            }
            let mut new_body = body[..p].to_vec();
            new_body.extend_from_slice(&trap);
            new_body.extend_from_slice(&body[p..]);
            put_leb_u32(&mut new_code, u32::try_from(new_body.len())?);
            new_code.extend_from_slice(&new_body);
        } else {
            new_code.extend_from_slice(&code[at..end]);
        }
        at = end;
    }
    if at != code.len() {
        bail!("bytes after the last function body");
    }
    // The code section's id and size, then its new content, between the bytes around it.
    let mut out = wasm[..*header_start].to_vec();
    out.push(10);
    put_leb_u32(&mut out, u32::try_from(new_code.len())?);
    out.extend_from_slice(&new_code);
    out.extend_from_slice(&wasm[code_range.end..]);
    sections(&out)?;
    Ok(out)
}

/// The value type at `at`; refuses the types this reader does not size (typed references).
fn value_type(b: &[u8], at: usize) -> Result<u8> {
    match b.get(at) {
        Some(&t @ (0x7f | 0x7e | 0x7d | 0x7c | 0x7b | 0x70 | 0x6f)) => Ok(t),
        Some(t) => bail!("value type {t:#x}"),
        None => bail!("truncated value type"),
    }
}

/// How many functions the import section brings in (they come first in the function index space).
fn imported_functions(imports: &[u8]) -> Result<u32> {
    let (count, mut at) = leb_u32(imports, 0)?;
    let mut funcs = 0;
    let skip_name = |at: usize| -> Result<usize> {
        let (len, n) = leb_u32(imports, at)?;
        Ok(at + n + len as usize)
    };
    let skip_limits = |at: usize| -> Result<usize> {
        let flags = *imports.get(at).ok_or_else(|| anyhow!("truncated limits"))?;
        // Bit 0: a maximum follows; bit 1: shared; bit 2: 64-bit. Anything else is not sized here.
        if flags & !0x07 != 0 {
            bail!("limits flags {flags:#x}");
        }
        let (_, n) = leb_u32(imports, at + 1)?;
        let mut at = at + 1 + n;
        if flags & 1 != 0 {
            let (_, n) = leb_u32(imports, at)?;
            at += n;
        }
        Ok(at)
    };
    for _ in 0..count {
        at = skip_name(skip_name(at)?)?;
        let kind = *imports.get(at).ok_or_else(|| anyhow!("truncated import"))?;
        at += 1;
        at = match kind {
            0 => {
                funcs += 1;
                at + leb_u32(imports, at)?.1
            }
            1 => {
                value_type(imports, at)?;
                skip_limits(at + 1)?
            }
            2 => skip_limits(at)?,
            3 => {
                value_type(imports, at)?;
                at + 2
            }
            k => bail!("import kind {k}"),
        };
    }
    if at != imports.len() {
        bail!("bytes after the last import");
    }
    Ok(funcs)
}

/// The parameter and result types of defined function `index` (not counting imports).
fn function_type(types: &[u8], functions: &[u8], index: u32) -> Result<(Vec<u8>, Vec<u8>)> {
    let (count, mut at) = leb_u32(functions, 0)?;
    if index >= count {
        bail!("function {index} is not in the function section");
    }
    let mut type_index = 0;
    for i in 0..=index {
        let (t, n) = leb_u32(functions, at)?;
        at += n;
        if i == index {
            type_index = t;
        }
    }
    let (count, mut at) = leb_u32(types, 0)?;
    if type_index >= count {
        bail!("type {type_index} is not in the type section");
    }
    let read_list = |at: &mut usize| -> Result<Vec<u8>> {
        let (len, n) = leb_u32(types, *at)?;
        *at += n;
        let mut list = Vec::new();
        for _ in 0..len {
            list.push(value_type(types, *at)?);
            *at += 1;
        }
        Ok(list)
    };
    for i in 0..=type_index {
        if types.get(at) != Some(&0x60) {
            bail!("type {i} is not a function type");
        }
        at += 1;
        let params = read_list(&mut at)?;
        let results = read_list(&mut at)?;
        if i == type_index {
            return Ok((params, results));
        }
    }
    bail!("type {type_index} not found")
}

/// The function index of export `name`; refuses a function exported under other names too.
fn export_index(section: &[u8], name: &str) -> Result<u32> {
    let (count, mut at) = leb_u32(section, 0)?;
    let mut functions = Vec::new();
    for _ in 0..count {
        let (name_len, n) = leb_u32(section, at)?;
        let name_start = at + n;
        let name_end = name_start + name_len as usize;
        let kind = *section
            .get(name_end)
            .ok_or_else(|| anyhow!("export runs past the section"))?;
        let (index, n) = leb_u32(section, name_end + 1)?;
        if kind == 0 {
            let this = section.get(name_start..name_end) == Some(name.as_bytes());
            functions.push((this, index));
        }
        at = name_end + 1 + n;
    }
    let index = functions
        .iter()
        .find(|(this, _)| *this)
        .map(|(_, i)| *i)
        .ok_or_else(|| anyhow!("no function export {name}"))?;
    if functions.iter().filter(|(_, i)| *i == index).count() > 1 {
        bail!("{name}'s function is exported under another name too");
    }
    Ok(index)
}

/// Writes `module` with [`with_request_headers_trap`] to `dir/oidc_filter.trap.wasm` and returns that
/// path.
pub fn with_trap_file(module: &Path, min_headers: u32, dir: &Path) -> Result<PathBuf> {
    let wasm = fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let trapped = with_request_headers_trap(&wasm, min_headers)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("oidc_filter.trap.wasm");
    fs::write(&out, &trapped).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// The custom sections of `wasm`: name and payload, in order.
pub fn custom_sections(wasm: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for (id, range) in sections(wasm)? {
        if id != 0 {
            continue;
        }
        let (start, end) = (range.start, range.end);
        let (name_len, n) = leb_u32(&wasm[..end], start)?;
        let name_end = (start + n)
            .checked_add(name_len as usize)
            .filter(|&e| e <= end)
            .ok_or_else(|| anyhow!("a custom section's name runs past the section"))?;
        let name = String::from_utf8_lossy(&wasm[start + n..name_end]).into_owned();
        out.push((name, wasm[name_end..end].to_vec()));
    }
    Ok(out)
}

fn put_sleb_i32(out: &mut Vec<u8>, mut v: i32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0) {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_leb_u32(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module_with_exports(exports: &[(&str, u32)]) -> Vec<u8> {
        let mut section = Vec::new();
        put_leb_u32(&mut section, exports.len() as u32);
        for (name, index) in exports {
            put_leb_u32(&mut section, name.len() as u32);
            section.extend_from_slice(name.as_bytes());
            section.push(0);
            put_leb_u32(&mut section, *index);
        }
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        // A custom section before and after.
        m.extend_from_slice(&[0, 3, 1, b'a', 9]);
        m.push(7);
        put_leb_u32(&mut m, section.len() as u32);
        m.extend_from_slice(&section);
        m.extend_from_slice(&[0, 2, 1, b'b']);
        m
    }

    #[test]
    fn reads_export_names() {
        let m = module_with_exports(&[("memory", 0), ("proxy_on_request_headers", 301)]);
        assert_eq!(exports(&m).unwrap(), ["memory", "proxy_on_request_headers"]);
    }

    #[test]
    fn the_filter_exports_only_the_callbacks_it_handles() {
        let wasm = fs::read(crate::release_wasm_path().unwrap()).unwrap();
        let mut found = exports(&wasm).unwrap();
        let mut expected = EXPORTS.map(String::from).to_vec();
        found.sort();
        expected.sort();
        assert_eq!(
            found, expected,
            "filter/src/exports.rs and EXPORTS disagree: each extra callback is a trip into the VM"
        );
    }

    #[test]
    fn a_release_tag_is_a_custom_section_at_the_end() {
        let m = module_with_exports(&[("memory", 0)]);
        let tagged = with_custom_section(&m, RELEASE_TAG_SECTION, b"v2").unwrap();
        assert_eq!(&tagged[..m.len()], m.as_slice());
        assert_eq!(exports(&tagged).unwrap(), ["memory"]);
        // The test module's own custom sections, then the tag (a long payload: a two-byte size).
        let long = vec![7u8; 300];
        let tagged = with_custom_section(&tagged, "x", &long).unwrap();
        let sections = custom_sections(&tagged).unwrap();
        let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", RELEASE_TAG_SECTION, "x"]);
        assert_eq!(sections[2].1, b"v2");
        assert_eq!(sections[3].1, long);
        let mut cut = m.clone();
        cut.pop();
        assert!(with_custom_section(&cut, "x", b"").is_err());
    }

    /// `wat` compiled by `wat2wasm` (with the threads proposal, for a shared memory).
    fn wat(wat: &str) -> Vec<u8> {
        let dir = crate::target_dir().join("module-tests");
        fs::create_dir_all(&dir).unwrap();
        let name = format!("m{}", crate::private_suffix());
        let (src, out) = (
            dir.join(format!("{name}.wat")),
            dir.join(format!("{name}.wasm")),
        );
        fs::write(&src, wat).unwrap();
        wat2wasm(&src, &out, &["--enable-threads"]).unwrap_or_else(|e| panic!("{e:#}\n{wat}"));
        fs::read(&out).unwrap()
    }

    /// Calls `proxy_on_request_headers(1, headers, 1)` of `wasm` in Node's V8 (imports stubbed),
    /// once per count: its result, or `trap` when it trapped.
    fn call_in_v8(wasm: &[u8], counts: &[u32]) -> Vec<String> {
        let dir = crate::target_dir().join("module-tests");
        let path = dir.join(format!("m{}.wasm", crate::private_suffix()));
        fs::write(&path, wasm).unwrap();
        let script = r#"
            const bytes = require("fs").readFileSync(process.argv[1]);
            const mod = new WebAssembly.Module(bytes);
            const imports = {};
            for (const i of WebAssembly.Module.imports(mod)) {
              imports[i.module] ??= {};
              imports[i.module][i.name] =
                i.kind === "function" ? () => 0
                : i.kind === "memory" ? new WebAssembly.Memory({initial: 1, maximum: 2, shared: true})
                : i.kind === "table" ? new WebAssembly.Table({initial: 1, element: "anyfunc"})
                : new WebAssembly.Global({value: "i32", mutable: false}, 7);
            }
            const inst = new WebAssembly.Instance(mod, imports);
            for (const n of process.argv.slice(2)) {
              try { console.log(String(inst.exports.proxy_on_request_headers(1, Number(n), 1))); }
              catch (e) { console.log(e instanceof WebAssembly.RuntimeError ? "trap" : "error " + e); }
            }
        "#;
        let out = std::process::Command::new(crate::idp::node_bin())
            .arg("-e")
            .arg(script)
            .arg(&path)
            .args(counts.iter().map(u32::to_string))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A module with an import of each kind before the callback, locals in it, and functions around it.
    const CALLBACK_MODULE: &str = r#"
        (module
          (import "env" "a" (func $a (param i32) (result i32)))
          (import "env" "t" (table 1 funcref))
          (import "env" "m" (memory 1 2 shared))
          (import "env" "g" (global i32))
          (import "env" "b" (func $b))
          (func $before (result i32) (i32.const 5))
          (func $on_headers (param i32 i32 i32) (result i32) (local i64 i32) (local f32)
            (local.set 4 (i32.add (local.get 1) (global.get 0)))
            (local.get 4))
          (func $after (param i32) (result i32) (local.get 0))
          (export "before" (func $before))
          (export "proxy_on_request_headers" (func $on_headers))
          (export "after" (func $after)))
    "#;

    #[test]
    fn the_trap_is_taken_at_the_count_given_and_the_callback_is_unchanged_below_it() {
        let m = wat(CALLBACK_MODULE);
        assert_eq!(call_in_v8(&m, &[0, 59, 60, 200]), ["7", "66", "67", "207"]);
        for at in [60, 64, 1000] {
            let trapped = with_request_headers_trap(&m, at).unwrap();
            assert_eq!(
                call_in_v8(&trapped, &[0, at - 1, at, at + 1, 100_000]),
                ["7", (at + 6).to_string().as_str(), "trap", "trap", "trap"],
                "trap at {at}"
            );
        }
        // The shipped module: its callback has the signature, and the module still compiles.
        let shipped = fs::read(crate::wasm_path().unwrap()).unwrap();
        let trapped = with_request_headers_trap(&shipped, 60).unwrap();
        assert_eq!(trapped.len(), shipped.len() + 9);
        assert_eq!(exports(&trapped).unwrap(), exports(&shipped).unwrap());
    }

    #[test]
    fn the_trap_refuses_what_it_cannot_place_exactly() {
        let other_signature = CALLBACK_MODULE.replace(
            "(param i32 i32 i32) (result i32) (local i64",
            "(param i32 i32) (result i32) (local i32 i64",
        );
        let err = with_request_headers_trap(&wat(&other_signature), 60).unwrap_err();
        assert!(
            err.to_string().contains("not (i32, i32, i32) -> i32"),
            "{err}"
        );
        let exported_twice = CALLBACK_MODULE.replace(
            r#"(export "after" (func $after))"#,
            r#"(export "after" (func $on_headers))"#,
        );
        let err = with_request_headers_trap(&wat(&exported_twice), 60).unwrap_err();
        assert!(err.to_string().contains("another name"), "{err}");
        let no_callback = CALLBACK_MODULE.replace("proxy_on_request_headers", "other");
        assert!(with_request_headers_trap(&wat(&no_callback), 60).is_err());
        let imported = r#"(module (import "env" "proxy_on_request_headers" (func $f (param i32 i32 i32) (result i32)))
            (export "proxy_on_request_headers" (func $f)))"#;
        assert!(with_request_headers_trap(&wat(imported), 60).is_err());
        let m = wat(CALLBACK_MODULE);
        assert!(with_request_headers_trap(&m[..m.len() - 3], 60).is_err());
    }

    #[test]
    fn leb128_round_trips() {
        for v in [0u32, 1, 127, 128, 300, 16_384, u32::MAX] {
            let mut b = Vec::new();
            put_leb_u32(&mut b, v);
            assert_eq!(leb_u32(&b, 0).unwrap(), (v, b.len()));
        }
    }

    #[test]
    fn refuses_what_is_not_a_module() {
        assert!(exports(b"not wasm").is_err());
        let mut m = module_with_exports(&[("a", 1)]);
        m.truncate(m.len() - 7);
        assert!(exports(&m).is_err());
    }
}
