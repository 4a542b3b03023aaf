//! The shipped module: the release build without the SDK callbacks the filter never uses, through
//! `wasm-opt -Oz`.
//!
//! The proxy-wasm Rust SDK exports every callback of the ABI. Envoy calls each exported one, and each
//! call is a trip into the VM: for an HTTP request that is `proxy_on_response_body` per body chunk,
//! `proxy_on_log`, and the trailers callbacks, all of which the SDK answers with "continue" for this
//! filter. Without the export, the host skips the call (the ABI makes every callback optional).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

/// Exports the filter does not need: callbacks its contexts leave to the SDK's defaults (no
/// `on_done`, `on_log`, `on_http_response_body`, trailers, stream or gRPC handlers, queues or foreign functions).
/// The test `unused_callbacks_stay_unimplemented` checks the adapter still agrees.
pub const UNUSED_EXPORTS: [&str; 16] = [
    "proxy_on_done",
    "proxy_on_log",
    "proxy_on_response_body",
    "proxy_on_request_trailers",
    "proxy_on_response_trailers",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_data",
    "proxy_on_upstream_connection_close",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_close",
    "proxy_on_queue_ready",
    "proxy_on_foreign_function",
];

/// The SDK trait methods behind [`UNUSED_EXPORTS`]: the adapter must not implement any of them.
pub const UNUSED_METHODS: [&str; 12] = [
    "fn on_done",
    "fn on_log",
    "fn on_http_response_body",
    "fn on_http_request_trailers",
    "fn on_http_response_trailers",
    "fn on_new_connection",
    "fn on_downstream_data",
    "fn on_downstream_close",
    "fn on_upstream_data",
    "fn on_upstream_close",
    "fn on_grpc",
    "fn on_queue_ready",
];

/// `wasm` without the exports named in `drop`. Only the export section changes; `wasm-opt` then
/// removes the code nothing reaches any more.
pub fn without_exports(wasm: &[u8], drop: &[&str]) -> Result<Vec<u8>> {
    if wasm.get(..8) != Some(b"\0asm\x01\0\0\0".as_slice()) {
        bail!("not a WebAssembly 1.0 module");
    }
    let mut out = wasm[..8].to_vec();
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        let (size, n) = leb_u32(wasm, at + 1)?;
        let start = at + 1 + n;
        let end = start
            .checked_add(size as usize)
            .filter(|&e| e <= wasm.len())
            .ok_or_else(|| anyhow!("section {id} runs past the end"))?;
        if id == 7 {
            let body = exports_without(&wasm[start..end], drop)?;
            out.push(7);
            put_leb_u32(&mut out, u32::try_from(body.len())?);
            out.extend_from_slice(&body);
        } else {
            out.extend_from_slice(&wasm[at..end]);
        }
        at = end;
    }
    Ok(out)
}

fn exports_without(section: &[u8], drop: &[&str]) -> Result<Vec<u8>> {
    let (count, mut at) = leb_u32(section, 0)?;
    let mut kept = Vec::new();
    let mut n_kept = 0u32;
    for _ in 0..count {
        let entry_start = at;
        let (name_len, n) = leb_u32(section, at)?;
        let name_start = at + n;
        let name_end = name_start + name_len as usize;
        let name = section
            .get(name_start..name_end)
            .ok_or_else(|| anyhow!("export name runs past the section"))?;
        // kind, then the index.
        let (_, n) = leb_u32(section, name_end + 1)?;
        at = name_end + 1 + n;
        if !drop.iter().any(|d| d.as_bytes() == name) {
            kept.extend_from_slice(&section[entry_start..at]);
            n_kept += 1;
        }
    }
    let mut out = Vec::new();
    put_leb_u32(&mut out, n_kept);
    out.extend_from_slice(&kept);
    Ok(out)
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

/// Writes the shipped module for the release build `release` to `output`: unused exports dropped,
/// then `wasm-opt -Oz`.
pub fn finish(wasm_opt: &str, release: &Path, output: &Path) -> Result<()> {
    let wasm = fs::read(release).with_context(|| format!("reading {}", release.display()))?;
    let trimmed = without_exports(&wasm, &UNUSED_EXPORTS)
        .with_context(|| format!("reading the exports of {}", release.display()))?;
    let tmp = output.with_extension(format!("trimmed.{}.wasm", std::process::id()));
    fs::write(&tmp, trimmed).with_context(|| format!("writing {}", tmp.display()))?;
    let result = crate::oci::optimize(wasm_opt, &tmp, output).map_err(|e| anyhow!("{e}"));
    let _ = fs::remove_file(&tmp);
    result
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
    let tmp = out.with_extension(format!("{}.wasm", std::process::id()));
    finish("wasm-opt", release, &tmp)?;
    fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(out)
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
        // A custom section before and after, kept as they are.
        m.extend_from_slice(&[0, 3, 1, b'a', 9]);
        m.push(7);
        put_leb_u32(&mut m, section.len() as u32);
        m.extend_from_slice(&section);
        m.extend_from_slice(&[0, 2, 1, b'b']);
        m
    }

    #[test]
    fn drops_only_the_named_exports() {
        let m = module_with_exports(&[
            ("memory", 0),
            ("proxy_on_log", 300),
            ("proxy_on_request_headers", 301),
        ]);
        let out = without_exports(&m, &["proxy_on_log", "not_there"]).unwrap();
        assert_eq!(
            out,
            module_with_exports(&[("memory", 0), ("proxy_on_request_headers", 301)])
        );
        assert_eq!(without_exports(&m, &[]).unwrap(), m);
    }

    #[test]
    fn unused_callbacks_stay_unimplemented() {
        let adapter =
            fs::read_to_string(crate::workspace_root().join("filter/src/adapter.rs")).unwrap();
        for method in UNUSED_METHODS {
            assert!(
                !adapter.contains(method),
                "the adapter implements `{method}`: remove its export from UNUSED_EXPORTS"
            );
        }
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
        assert!(without_exports(b"not wasm", &[]).is_err());
        let mut m = module_with_exports(&[("a", 1)]);
        m.truncate(m.len() - 3);
        assert!(without_exports(&m, &[]).is_err());
    }
}
