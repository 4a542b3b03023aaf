//! oidc-filter: OpenID Connect login for Envoy, as a proxy-wasm module.
//!
//! Everything that decides lives in modules that never touch the host (`config`, `session`, `cookies`,
//! `oidc`, `paths`, `provider`, `flow`, `weburl`, `form`, `json`, `wire`); `adapter` is the only place that
//! talks to proxy-wasm.

pub mod claims;
pub mod config;
pub mod cookies;
pub mod flow;
pub mod form;
pub mod headers;
pub mod json;
pub mod oidc;
pub mod paths;
pub mod provider;
pub mod renewal;
pub mod revocation;
pub mod secret;
pub mod session;
pub mod weburl;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod adapter;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    // Under panic=abort the VM dies after this hook; at least say where, without any request data.
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let _ = proxy_wasm::hostcalls::log(proxy_wasm::types::LogLevel::Critical, &format!("oidc-filter: panic at {at}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(adapter::Root::default()) });
}}
