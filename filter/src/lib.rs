//! oidc-filter: OpenID Connect login for Envoy, as a proxy-wasm module.
//!
//! Everything that decides lives in modules that never touch the host (`config`, `session`, `cookies`,
//! `oidc`, `paths`, `provider`, `flow`, `weburl`, `form`, `json`, `wire`, `workers`); `adapter` is the only place that
//! talks to the host, through `host` (the proxy-wasm ABI's imports) and `exports` (its callbacks).
//!
//! The Wasm build is `no_std` (std's panic hook, backtraces, stderr and thread-local machinery are bytes
//! the module would carry for nothing): `wasm` holds the little of it the filter needs (with `heap`, its
//! allocator), over WASI and the wasi-libc the target links anyway. Native builds (tests, fuzzing, the harness) keep std.

#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

/// A value per VM: `thread_local!` where there are threads (native tests run in several), a plain static
/// in the Wasm module, which has one thread (`host::VmLocal`). Both are read with `with`.
#[cfg(not(all(target_arch = "wasm32", not(test))))]
macro_rules! vm_local {
    ($(#[$m:meta])* static $name:ident: $t:ty = $init:expr;) => {
        std::thread_local! { $(#[$m])* static $name: $t = const { $init }; }
    };
}
#[cfg(all(target_arch = "wasm32", not(test)))]
macro_rules! vm_local {
    ($(#[$m:meta])* static $name:ident: $t:ty = $init:expr;) => {
        $(#[$m])* static $name: crate::host::VmLocal<$t> = crate::host::VmLocal($init);
    };
}

pub mod aead;
pub mod b64;
pub mod claims;
pub mod config;
pub mod cookies;
pub mod flow;
pub mod form;
pub mod headers;
pub mod heap;
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
pub mod throttle;
pub mod weburl;
pub mod wire;
pub mod workers;

#[cfg(target_arch = "wasm32")]
mod adapter;
#[cfg(target_arch = "wasm32")]
mod exports;
#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(target_arch = "wasm32")]
mod wasm;

/// Runs once when the host instantiates the module (a WASI reactor's entry point).
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    unsafe extern "C" {
        fn __wasm_call_ctors();
    }
    // SAFETY: the linker's constructor list (wasi-libc's, if any), run once, first,
    // as a reactor must before anything else in it runs.
    unsafe { __wasm_call_ctors() };
}
