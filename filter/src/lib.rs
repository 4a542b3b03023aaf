//! oidc-filter: OpenID Connect login for Envoy, as a proxy-wasm module.
//!
//! Everything that decides lives in modules that never touch the host (`config`, `session`, `cookies`,
//! `oidc`, `paths`, `flow`); `adapter` is the only place that talks to proxy-wasm.

pub mod cookies;
pub mod oidc;
pub mod secret;
pub mod session;
