//! The configuration parser: any pluginConfig bytes give a `Plugin` or an error naming a field,
//! and an error never quotes a secret's value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_filter::config::{Config, Plugin};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fuzz_target!(|data: &[u8]| {
    let env = |k: &str| match k {
        "SECRET" => Some("fuzz-env-secret-value".to_string()),
        "KEYS" => Some(KEY.to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let errors = [
        Plugin::parse(data, &env).err(),
        Config::parse(data, &env).err(),
    ];
    for e in errors.into_iter().flatten() {
        let msg = e.to_string();
        assert!(!e.field.is_empty());
        assert!(!msg.contains("fuzz-env-secret-value"), "{msg}");
    }
});
