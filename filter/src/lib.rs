//! oidc-filter: OpenID Connect login for Envoy, as a proxy-wasm module.
//!
//! Everything that decides lives in modules that never touch the host (`config`, `session`, `cookies`,
//! `oidc`, `paths`, `provider`, `flow`, `weburl`, `form`, `json`, `wire`); `adapter` is the only place that
//! talks to the host, through `host` (the proxy-wasm ABI's imports) and `exports` (its callbacks).

pub mod b64;
pub mod claims;
pub mod config;
pub mod cookies;
pub mod flow;
pub mod form;
pub mod headers;
pub mod idhash;
pub mod json;
pub mod oidc;
pub mod paths;
pub mod provider;
pub mod renewal;
pub mod revocation;
pub mod secret;
pub mod session;
pub mod sha256;
pub mod weburl;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod adapter;
#[cfg(target_arch = "wasm32")]
mod exports;
#[cfg(target_arch = "wasm32")]
mod host;

/// Runs once when the host instantiates the module (a WASI reactor's entry point).
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    unsafe extern "C" {
        fn __wasm_call_ctors();
    }
    // SAFETY: the linker's constructor list (wasi-libc's environment and allocator setup), run once, first,
    // as a reactor must before anything else in it runs.
    unsafe { __wasm_call_ctors() };
    // Under panic=abort the VM dies after this hook; at least say where, without any request data.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        host::log(
            host::LogLevel::Critical,
            &format!("oidc-filter: panic at {at}"),
        );
    }));
}
