//! The Istio manifests in `wasmplugin/`: every resource, raw and as kustomize builds it, against Istio's CRD
//! schemas (`testdata/istio`, as Istio publishes them), the CEL rules of those schemas checked by hand, and
//! the cross-resource facts the filter relies on (secrets only through `vmConfig.env`, bypass paths equal to
//! the policy's `notPaths`, the policy naming the RequestAuthentication's issuer and audiences, the IdP
//! clusters the callouts name (issuer and JWKS hosts) exist, a gateway of the login's own, the
//! pluginConfig the filter accepts and the local Envoy tests use).
//!
//! The schema check is a small structural-schema validator (types, properties, unknown fields, required,
//! enum, pattern, lengths, bounds, list maps, anyOf/oneOf/allOf/not) rather than a JSON-Schema crate: the
//! CRDs use a subset, and the API server's own rules (unknown fields rejected, `x-kubernetes-*`) are not
//! JSON Schema anyway. Every CEL rule met on the way must have a hand-written equivalent here, so a new
//! rule in a newer schema fails the test until someone reads it.

// Test helpers panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use oidc_filter::config::Config;
use serde::Deserialize;
use serde_json::{Value, json};

const ENV_SECRET: &str = "OIDC_CLIENT_SECRET";
const ENV_KEYS: &str = "OIDC_COOKIE_KEYS";
/// The kustomizations users deploy (the base alone has no IdP cluster; `kind/apps` holds no Istio policy).
const DEPLOYABLE: [&str; 4] = [
    "overlays/example",
    "overlays/in-cluster",
    "overlays/gateway-api",
    "kind",
];
/// Everything kustomize can build here.
const BUILDS: [&str; 6] = [
    "base",
    "overlays/example",
    "overlays/in-cluster",
    "overlays/gateway-api",
    "kind",
    "kind/apps",
];
/// pluginConfig fields that name the environment (which IdP, which client, where, how the browser reaches
/// it: over HTTPS, a `__Host-` cookie name); everything else must be the same in every overlay and in the
/// local Envoy tests.
const ENVIRONMENT_FIELDS: [&str; 7] = [
    "issuer",
    "client_id",
    "client_secret_env",
    "idp_cluster",
    "cookie_secure",
    "cookie_name",
    "post_logout_redirect_uri",
];

/// The `sha256` the shipped WasmPlugins carry until someone sets the image's digest: not 64 hex digits, so
/// the CRD's pattern refuses it and `kubectl apply` fails, rather than the gateway failing the checksum
/// and denying every request (what an all-zero digest, which the pattern takes, would do).
const SHA256_PLACEHOLDER: &str = "REPLACE-WITH-THE-DIGEST-OCI-IMAGE-PRINTS";
/// A digest of the right form, put in the placeholder's place to validate the rest of a WasmPlugin.
const SOME_DIGEST: &str = "3b1f0c6e9a5d4f27b8e1c0d9a6f3e2b7c4d5a8f90e1b2c3d4e5f6a7b8c9d0e1f";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wasmplugin_dir() -> PathBuf {
    root().join("wasmplugin")
}

/// YAML documents as JSON values (empty documents dropped).
fn yaml_docs(text: &str, origin: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn read_yaml(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_docs(&text, &path.display().to_string())
}

// ---------------------------------------------------------------------------------------------------------
// CRDs and the structural-schema validator

struct Crd {
    group: String,
    /// (version, served, storage, openAPIV3Schema)
    versions: Vec<(String, bool, bool, Value)>,
}

fn crds() -> &'static BTreeMap<String, Crd> {
    static CRDS: OnceLock<BTreeMap<String, Crd>> = OnceLock::new();
    CRDS.get_or_init(|| {
        let dir = root().join("testdata/istio");
        let mut out = BTreeMap::new();
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the CRD schemas live in testdata/istio)",
                dir.display()
            )
        });
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if !path.to_string_lossy().ends_with(".crd.yaml") {
                continue;
            }
            for crd in read_yaml(&path) {
                let spec = &crd["spec"];
                let versions = spec["versions"]
                    .as_array()
                    .expect("versions")
                    .iter()
                    .map(|v| {
                        (
                            v["name"].as_str().expect("version name").to_string(),
                            v["served"] == true,
                            v["storage"] == true,
                            v["schema"]["openAPIV3Schema"].clone(),
                        )
                    })
                    .collect();
                out.insert(
                    spec["names"]["kind"].as_str().expect("kind").to_string(),
                    Crd {
                        group: spec["group"].as_str().expect("group").to_string(),
                        versions,
                    },
                );
            }
        }
        assert!(
            out.contains_key("WasmPlugin"),
            "no WasmPlugin CRD in {}",
            dir.display()
        );
        out
    })
}

fn is_istio(doc: &Value) -> bool {
    doc["kind"].as_str().is_some_and(|k| crds().contains_key(k))
        && doc["apiVersion"]
            .as_str()
            .is_some_and(|a| a.contains(".istio.io/"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A whole resource, as `kubectl apply --validate=strict` would see it.
    Full,
    /// A patch: fields may be missing, but what is there must be valid.
    Partial,
}

/// [`validate_resource`] for a shipped resource: a WasmPlugin's placeholder `sha256` must be refused by the
/// CRD, for that alone, and the rest is then validated with a digest in its place.
fn validate_shipped(doc: &Value, mode: Mode) -> Vec<String> {
    if doc["kind"] != "WasmPlugin" || doc["spec"]["sha256"] != SHA256_PLACEHOLDER {
        return validate_resource(doc, mode);
    }
    let mut errors: Vec<String> = validate_resource(doc, mode)
        .into_iter()
        .filter(|e| !e.starts_with("WasmPlugin.spec.sha256:"))
        .collect();
    let mut with_digest = doc.clone();
    with_digest["spec"]["sha256"] = json!(SOME_DIGEST);
    let rest = validate_resource(&with_digest, mode);
    if rest != errors {
        errors.push(format!(
            "the placeholder sha256 is not refused for its pattern alone: {rest:?}"
        ));
    }
    let refused = validate_resource(doc, mode)
        .iter()
        .any(|e| e.starts_with("WasmPlugin.spec.sha256:") && e.contains("does not match"));
    if !refused {
        errors.push("the CRD's pattern takes the placeholder sha256".into());
    }
    errors
}

/// Validates an Istio resource against its CRD; returns the problems.
fn validate_resource(doc: &Value, mode: Mode) -> Vec<String> {
    let mut errors = Vec::new();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let Some(crd) = crds().get(kind) else {
        return vec![format!("no CRD for kind {kind:?}")];
    };
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let Some((group, version)) = api_version.split_once('/') else {
        return vec![format!("apiVersion {api_version:?} is not GROUP/VERSION")];
    };
    if group != crd.group {
        errors.push(format!("{kind}: group {group}, the CRD says {}", crd.group));
    }
    let Some((_, served, storage, schema)) = crd.versions.iter().find(|v| v.0 == version) else {
        return vec![format!("{kind}: version {version} is not in the CRD")];
    };
    if !served {
        errors.push(format!("{kind}: version {version} is not served"));
    }
    // The storage version is the one every Istio >= 1.22 serves without deprecation warnings.
    if !storage {
        errors.push(format!("{kind}: use the storage version, not {version}"));
    }
    let Some(object) = doc.as_object() else {
        return vec!["not an object".into()];
    };
    for key in object.keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&key.as_str()) {
            errors.push(format!("{kind}: unexpected top-level field {key}"));
        }
    }
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let dns = regex_lite::Regex::new(
        r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    .expect("regex");
    if name.len() > 253 || !dns.is_match(name) {
        errors.push(format!(
            "{kind}: metadata.name {name:?} is not a DNS subdomain"
        ));
    }
    if let Some(ns) = doc["metadata"].get("namespace") {
        let ns = ns.as_str().unwrap_or_default();
        if ns.len() > 63 || !dns.is_match(ns) || ns.contains('.') {
            errors.push(format!(
                "{kind}: metadata.namespace {ns:?} is not a DNS label"
            ));
        }
    }
    let spec_schema = &schema["properties"]["spec"];
    match doc.get("spec") {
        Some(spec) => check(
            spec_schema,
            spec,
            &format!("{kind}.spec"),
            mode,
            true,
            &mut errors,
        ),
        None => errors.push(format!("{kind}: spec is required")),
    }
    errors
}

fn regex(pattern: &str) -> regex_lite::Regex {
    static CACHE: OnceLock<std::sync::Mutex<BTreeMap<String, regex_lite::Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().expect("regex cache");
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| {
            regex_lite::Regex::new(pattern).unwrap_or_else(|e| panic!("CRD pattern {pattern}: {e}"))
        })
        .clone()
}

/// One structural-schema node. `strict` rejects fields the schema does not declare (off inside
/// anyOf/oneOf/allOf/not, whose branches only add value validations).
fn check(
    schema: &Value,
    value: &Value,
    path: &str,
    mode: Mode,
    strict: bool,
    errors: &mut Vec<String>,
) {
    if value.is_null() {
        if schema["nullable"] != true {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    if int_or_string {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!("{path}: must be an integer or a string"));
        }
    } else if let Some(ty) = schema["type"].as_str() {
        let ok = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => {
                errors.push(format!(
                    "{path}: schema type {other} unknown to this validator"
                ));
                true
            }
        };
        if !ok {
            errors.push(format!("{path}: must be {ty}, is {value}"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|m| len < m) {
            errors.push(format!("{path}: shorter than {}", schema["minLength"]));
        }
        if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
            errors.push(format!("{path}: longer than {}", schema["maxLength"]));
        }
        if let Some(pattern) = schema["pattern"].as_str()
            && !regex(pattern).is_match(s)
        {
            errors.push(format!("{path}: {s:?} does not match {pattern}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|m| n < m) {
            errors.push(format!("{path}: below {}", schema["minimum"]));
        }
        if schema["maximum"].as_f64().is_some_and(|m| n > m) {
            errors.push(format!("{path}: above {}", schema["maximum"]));
        }
        let range = match schema["format"].as_str() {
            Some("int32") => Some((f64::from(i32::MIN), f64::from(i32::MAX))),
            Some("uint32") => Some((0.0, f64::from(u32::MAX))),
            _ => None,
        };
        if range.is_some_and(|(lo, hi)| n < lo || n > hi) {
            errors.push(format!("{path}: out of the {} range", schema["format"]));
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if schema["minItems"].as_u64().is_some_and(|m| len < m) {
            errors.push(format!("{path}: fewer than {} items", schema["minItems"]));
        }
        if schema["maxItems"].as_u64().is_some_and(|m| len > m) {
            errors.push(format!("{path}: more than {} items", schema["maxItems"]));
        }
        if schema["items"].is_object() {
            for (i, item) in items.iter().enumerate() {
                check(
                    &schema["items"],
                    item,
                    &format!("{path}[{i}]"),
                    mode,
                    strict,
                    errors,
                );
            }
        }
        match schema["x-kubernetes-list-type"].as_str() {
            Some("map") => {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut seen = BTreeSet::new();
                for item in items {
                    let key: Vec<String> = keys.iter().map(|k| item[*k].to_string()).collect();
                    if !seen.insert(key.clone()) {
                        errors.push(format!("{path}: duplicate list-map key {key:?}"));
                    }
                }
            }
            Some("set") => {
                let mut seen = BTreeSet::new();
                for item in items {
                    if !seen.insert(item.to_string()) {
                        errors.push(format!("{path}: duplicate set item {item}"));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"].as_object();
        let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
        let n = object.len() as u64;
        if schema["maxProperties"].as_u64().is_some_and(|m| n > m) {
            errors.push(format!(
                "{path}: more than {} properties",
                schema["maxProperties"]
            ));
        }
        if mode == Mode::Full || !strict {
            for required in schema["required"].as_array().into_iter().flatten() {
                let required = required.as_str().unwrap_or_default();
                if !object.contains_key(required) {
                    errors.push(format!("{path}: {required} is required"));
                }
            }
        }
        for (key, field) in object {
            let field_path = format!("{path}.{key}");
            if let Some(sub) = properties.and_then(|p| p.get(key)) {
                check(sub, field, &field_path, mode, strict, errors);
            } else if schema["additionalProperties"].is_object() {
                check(
                    &schema["additionalProperties"],
                    field,
                    &field_path,
                    mode,
                    strict,
                    errors,
                );
            } else if strict
                && !preserve
                && (properties.is_some() || schema["additionalProperties"] == false)
            {
                errors.push(format!("{field_path}: unknown field"));
            }
        }
    }
    let branch = |sub: &Value| {
        let mut errs = Vec::new();
        check(sub, value, path, Mode::Full, false, &mut errs);
        errs.is_empty()
    };
    if let Some(any) = schema["anyOf"].as_array()
        && !any.iter().any(branch)
    {
        errors.push(format!("{path}: matches none of anyOf"));
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let matching = one.iter().filter(|s| branch(s)).count();
        if matching != 1 {
            errors.push(format!(
                "{path}: matches {matching} of oneOf, not exactly one"
            ));
        }
    }
    if let Some(all) = schema["allOf"].as_array()
        && !all.iter().all(branch)
    {
        errors.push(format!("{path}: fails allOf"));
    }
    if schema["not"].is_object() && branch(&schema["not"]) {
        errors.push(format!("{path}: matches a `not` schema"));
    }
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = rule["rule"].as_str().unwrap_or_default();
        match cel(text, value) {
            Some(true) => {}
            Some(false) => errors.push(format!(
                "{path}: {} ({})",
                rule["message"].as_str().unwrap_or("CEL rule failed"),
                normalize(text)
            )),
            None => errors.push(format!(
                "{path}: CEL rule not checked by hand yet, add it to cel(): {}",
                normalize(text)
            )),
        }
    }
}

fn normalize(rule: &str) -> String {
    rule.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn has(value: &Value, field: &str) -> bool {
    value.get(field).is_some_and(|v| !v.is_null())
}

fn count_present(value: &Value, fields: &[&str]) -> usize {
    fields.iter().filter(|f| has(value, f)).count()
}

/// A Go `time.ParseDuration` subset (what Istio durations use): `1.5s`, `300ms`, `1h30m`.
fn duration_ms(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
        total += number * factor;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// The CEL rules of the Istio CRDs, by hand. `None`: a rule this function does not know.
fn cel(rule: &str, v: &Value) -> Option<bool> {
    let s = v.as_str().unwrap_or_default();
    let rule = normalize(rule);
    let result = match rule.as_str() {
        "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            count_present(v, &["selector", "targetRef", "targetRefs"]) <= 1
        }
        "self.all(key, !key.contains(\"*\"))" => v
            .as_object()
            .is_some_and(|o| o.keys().all(|k| !k.contains('*'))),
        "self.all(key, key.size() != 0)" => v
            .as_object()
            .is_some_and(|o| o.keys().all(|k| !k.is_empty())),
        "!self.contains(\"*\")" => !s.contains('*'),
        "self.size() == 0" => s.is_empty(),
        "self != \"*\"" => s != "*",
        "0 < self && self <= 65535" => v.as_u64().is_some_and(|n| (1..=65535).contains(&n)),
        "duration(self) >= duration('1ms')" => duration_ms(s).is_some_and(|ms| ms >= 1.0),
        "url(self).getScheme() in [\"http\", \"https\"]" => {
            s.starts_with("http://") || s.starts_with("https://")
        }
        r#"isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])"# => {
            match s.split_once("://") {
                Some((scheme, rest)) => {
                    ["http", "https", "oci", "file"].contains(&scheme) && !rest.is_empty()
                }
                None => !s.is_empty() && !s.contains(char::is_whitespace),
            }
        }
        "(has(self.valueFrom) ? self.valueFrom : \"\") != \"HOST\" || !has(self.value)" => {
            v["valueFrom"] != "HOST" || !has(v, "value")
        }
        "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) && !has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true" => {
            count_present(v, &["serviceAccounts", "notServiceAccounts"]) == 0
                || count_present(
                    v,
                    &["principals", "notPrincipals", "namespaces", "notNamespaces"],
                ) == 0
        }
        "(has(self.jwksUri) ? 1 : 0) + (has(self.jwks_uri) ? 1 : 0) + (has(self.jwks) ? 1 : 0) <= 1" => {
            count_present(v, &["jwksUri", "jwks_uri", "jwks"]) <= 1
        }
        "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1" => {
            count_present(v, &["workloadSelector", "endpoints"]) <= 1
        }
        "!((has(self.addresses) ? self.addresses : []).exists(k, k.contains(\"/\")) && !((has(self.resolution) ? self.resolution : \"NONE\") in [\"STATIC\", \"NONE\"]))" =>
        {
            let cidr = v["addresses"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x.as_str().is_some_and(|x| x.contains('/')))
            });
            let resolution = v["resolution"].as_str().unwrap_or("NONE");
            // CIDR addresses only with STATIC or NONE resolution.
            !cidr || ["STATIC", "NONE"].contains(&resolution)
        }
        "((has(self.resolution) ? self.resolution : \"NONE\") == \"NONE\") ? !has(self.endpoints) : true" => {
            v["resolution"].as_str().unwrap_or("NONE") != "NONE" || !has(v, "endpoints")
        }
        "((has(self.resolution) ? self.resolution : \"\") == \"DNS_ROUND_ROBIN\") ? ((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true" => {
            v["resolution"] != "DNS_ROUND_ROBIN"
                || v["endpoints"].as_array().is_none_or(|e| e.len() <= 1)
        }
        "has(self.address) || has(self.network)" => has(v, "address") || has(v, "network"),
        "(has(self.address) ? self.address : \"\").startsWith(\"unix://\") ? !has(self.ports) : true" => {
            !v["address"]
                .as_str()
                .unwrap_or_default()
                .starts_with("unix://")
                || !has(v, "ports")
        }
        "self.startsWith(\"unix://\") ? (self.substring(7, 8) == \"/\" || self.substring(7, 8) == \"@\") : true" => {
            !s.starts_with("unix://") || s[7..].starts_with('/') || s[7..].starts_with('@')
        }
        "self.startsWith(\"unix://\") ? !self.endsWith(\"/\") : true" => {
            !s.starts_with("unix://") || !s.ends_with('/')
        }
        "self.all(key, size(key) < 63 && key.matches(\"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$\"))" =>
        {
            let re = regex("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$");
            v.as_object()
                .is_some_and(|o| o.keys().all(|k| k.chars().count() < 63 && re.is_match(k)))
        }
        "self.all(l1, self.exists_one(l2, l1.number == l2.number))" => {
            let numbers: Vec<&Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| &p["number"])
                .collect();
            numbers
                .iter()
                .all(|n| numbers.iter().filter(|m| *m == n).count() == 1)
        }
        "(has(self.tlsCertificates) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1" => {
            count_present(v, &["tlsCertificates", "credentialNames"]) <= 1
        }
        "(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1" => {
            count_present(v, &["credentialName", "credentialNames"]) <= 1
        }
        "(has(self.credentialNames) ? 1 : 0) + (has(self.tlsCertificates) ? 1 : 0) <= 1" => {
            count_present(v, &["credentialNames", "tlsCertificates"]) <= 1
        }
        _ => return None,
    };
    Some(result)
}

// ---------------------------------------------------------------------------------------------------------
// The manifests

/// Every YAML file under wasmplugin/ (Envoy's own bootstrap excepted), with its documents.
fn yaml_files() -> Vec<(PathBuf, Vec<Value>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read wasmplugin/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&wasmplugin_dir(), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "envoy.yaml"))
        .map(|p| {
            let docs = read_yaml(&p);
            (p, docs)
        })
        .collect()
}

fn kustomize_cmd() -> Option<Vec<&'static str>> {
    let works = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["kubectl", "kustomize"]) {
        Some(vec!["kubectl", "kustomize"])
    } else if works(&["kustomize", "build"]) {
        Some(vec!["kustomize", "build"])
    } else {
        None
    }
}

/// Set to skip the kustomize-based checks on purpose; without it a missing kustomize fails them.
const SKIP_KUSTOMIZE: &str = "OIDC_FILTER_SKIP_KUSTOMIZE";

/// `kustomize build` of a directory under wasmplugin/; None only when `OIDC_FILTER_SKIP_KUSTOMIZE`
/// is set. A missing kustomize is a failure, not a silent pass.
fn build(dir: &str) -> Option<Vec<Value>> {
    static BUILT: OnceLock<Option<BTreeMap<String, Vec<Value>>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        if std::env::var_os(SKIP_KUSTOMIZE).is_some_and(|v| !v.is_empty()) {
            eprintln!("skipped: {SKIP_KUSTOMIZE} is set (kustomize-based manifest checks)");
            return None;
        }
        let Some(cmd) = kustomize_cmd() else {
            panic!(
                "neither `kubectl kustomize` nor `kustomize` works: install kubectl (for \
                 `kubectl kustomize`) or kustomize; set {SKIP_KUSTOMIZE}=1 to skip these checks \
                 on purpose"
            );
        };
        let mut out = BTreeMap::new();
        for dir in BUILDS {
            let output = Command::new(cmd[0])
                .args(&cmd[1..])
                .arg(wasmplugin_dir().join(dir))
                .output()
                .expect("run kustomize");
            assert!(
                output.status.success(),
                "kustomize build {dir}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let text = String::from_utf8(output.stdout).expect("utf-8");
            out.insert(dir.to_string(), yaml_docs(&text, dir));
        }
        Some(out)
    });
    built.as_ref().map(|b| b[dir].clone())
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"] == kind);
    let first = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "more than one {kind}");
    first
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// The environment the gateway gives the module, for parsing pluginConfig as the filter will.
fn gateway_env(name: &str) -> Option<String> {
    match name {
        ENV_SECRET => Some("test-client-secret".into()),
        // Two keys: rotation is part of the format.
        ENV_KEYS => Some(
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=,ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
                .into(),
        ),
        _ => None,
    }
}

/// pluginConfig as Istio hands it to the module: compact JSON (`protomarshal.ToJSON` of the Struct).
fn delivered(plugin_config: &Value) -> Vec<u8> {
    serde_json::to_vec(plugin_config).expect("json")
}

/// The parts of a parsed configuration that decide behaviour and do not depend on the environment.
fn behaviour(config: &Config) -> String {
    let paths = (
        &config.redirect_uri,
        &config.callback_path,
        &config.login_path,
        &config.logout_path,
        &config.bypass_paths,
    );
    let protocol = (&config.scopes, config.forward_token, config.client_auth);
    let cookie = (
        &config.cookie.domain,
        &config.cookie.path,
        config.cookie.same_site,
    );
    let times = (
        config.session_lifetime,
        config.refresh_margin,
        config.clock_leeway,
        config.callout_timeout,
        config.jwks_refresh_interval,
    );
    format!("{paths:?} {protocol:?} {cookie:?} {times:?}")
}

/// `notPaths` that exempt exactly what the filter's `bypass_paths` exempt (segment-boundary prefixes), the
/// ones the local Envoy tests' RBAC policy lets through too.
fn not_paths_for(bypass_paths: &[String]) -> BTreeSet<String> {
    harness::envoy::not_paths(bypass_paths)
        .into_iter()
        .collect()
}

/// True when `text` is JSON without insignificant whitespace.
fn is_compact_json(text: &str) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_whitespace() {
            return false;
        }
    }
    serde_json::from_str::<Value>(text).is_ok()
}

// ---------------------------------------------------------------------------------------------------------
// Tests

#[test]
fn every_istio_file_matches_its_crd() {
    let mut errors = Vec::new();
    let mut checked = 0;
    for (path, docs) in yaml_files() {
        let rel = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .display()
            .to_string();
        for doc in docs.iter().filter(|d| is_istio(d)) {
            // A resource file has a whole spec; a kustomize patch only the fields it changes.
            let mode = if doc["spec"].get("selector").is_some()
                || doc["spec"].get("hosts").is_some()
                || doc["spec"].get("host").is_some()
                || doc["kind"] == "Gateway"
            {
                Mode::Full
            } else {
                Mode::Partial
            };
            checked += 1;
            errors.extend(
                validate_shipped(doc, mode)
                    .into_iter()
                    .map(|e| format!("{rel}: {e}")),
            );
        }
    }
    assert!(checked >= 10, "only {checked} Istio documents found");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn kustomize_builds_match_the_crds() {
    let mut errors = Vec::new();
    for dir in BUILDS {
        let Some(docs) = build(dir) else { return };
        for doc in docs.iter().filter(|d| is_istio(d)) {
            errors.extend(
                validate_shipped(doc, Mode::Full)
                    .into_iter()
                    .map(|e| format!("{dir}: {e}")),
            );
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_deploy_guide_snippets_match_the_crds() {
    let path = root().join("README.md");
    let Ok(text) = fs::read_to_string(&path) else {
        panic!("{} is missing", path.display());
    };
    let mut errors = Vec::new();
    let mut checked = 0;
    for block in text.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap_or_default();
        for doc in yaml_docs(yaml, "README.md").iter().filter(|d| is_istio(d)) {
            checked += 1;
            let mode =
                if doc["spec"].get("pluginConfig").is_some() && doc["spec"].get("url").is_none() {
                    Mode::Partial
                } else {
                    Mode::Full
                };
            errors.extend(
                validate_shipped(doc, mode)
                    .into_iter()
                    .map(|e| format!("README.md: {e}")),
            );
        }
    }
    assert!(checked > 0, "no Istio resource in README.md");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The README's `EnvoyFilter` for the back-channel path adds what the harness's Envoy runs in `beyond.rs`
/// (the buffer filter, off, and the route that turns it on), and its route is the VirtualService's.
const BUFFER: &str = harness::envoy::BACKCHANNEL_BUFFER;

#[test]
fn the_readme_backchannel_buffer_is_the_one_tested() {
    let text = fs::read_to_string(root().join("README.md")).unwrap();
    let docs: Vec<Value> = text
        .split("```yaml\n")
        .skip(1)
        .flat_map(|b| yaml_docs(b.split("```").next().unwrap_or_default(), "README.md"))
        .collect();
    let filter = docs
        .iter()
        .find(|d| d["kind"] == "EnvoyFilter" && d["metadata"]["name"] == BUFFER)
        .expect("the README's EnvoyFilter");
    let patches = filter["spec"]["configPatches"].as_array().unwrap();
    assert_eq!(patches.len(), 2);
    assert_eq!(patches[0]["patch"]["operation"], "INSERT_FIRST");
    assert_eq!(
        patches[0]["patch"]["value"],
        harness::envoy::backchannel_buffer()
    );
    assert_eq!(patches[1]["patch"]["operation"], "MERGE");
    assert_eq!(
        patches[1]["patch"]["value"],
        harness::envoy::buffered_route_config()
    );
    let route = patches[1]["match"]["routeConfiguration"]["vhost"]["route"]["name"].clone();
    let vs = docs
        .iter()
        .find(|d| d["kind"] == "VirtualService" && d["spec"]["http"][0]["name"] == route)
        .expect("a VirtualService naming the route");
    assert_eq!(
        vs["spec"]["http"][0]["match"][0]["uri"]["exact"],
        "/oauth2/backchannel-logout"
    );
}

/// The validator is only worth its green if it goes red where the API server would.
#[test]
fn the_validator_rejects_what_the_api_server_would() {
    let good = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "oidc-filter"},
        "spec": {
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "url": "oci://registry.example/oidc-filter:1",
            "sha256": "a".repeat(64),
            "phase": "AUTHN",
            "vmConfig": {"env": [{"name": "A", "valueFrom": "HOST"}]},
            "pluginConfig": {"anything": {"goes": [1, 2]}},
        },
    });
    assert_eq!(validate_resource(&good, Mode::Full), Vec::<String>::new());
    let bad = |patch: Value, expect: &str| {
        let mut doc = good.clone();
        harness::merge_json(&mut doc, &patch);
        let errors = validate_resource(&doc, Mode::Full);
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "{patch} should fail with {expect:?}, got {errors:?}"
        );
    };
    bad(json!({"spec": {"phase": "AUTHENTICATE"}}), "is not one of");
    bad(json!({"spec": {"sha256": "sha256:abc"}}), "does not match");
    bad(
        json!({"spec": {"failStrategy": "FAIL_CLOSED"}}),
        "is not one of",
    );
    bad(json!({"spec": {"pluginconfig": {}}}), "unknown field");
    bad(
        json!({"spec": {"url": "ftp://x/y"}}),
        "url must have schema",
    );
    bad(json!({"spec": {"url": null}}), "url is required");
    bad(
        json!({"spec": {"targetRefs": [{"kind": "Gateway", "name": "gw"}]}}),
        "only one of",
    );
    bad(
        json!({"spec": {"vmConfig": {"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}}}),
        "value may only be set",
    );
    bad(
        json!({"spec": {"vmConfig": {"env": [{"name": "A"}, {"name": "A"}]}}}),
        "duplicate list-map key",
    );
    bad(
        json!({"spec": {"selector": {"matchLabels": {"app": "*"}}}}),
        "wildcard",
    );
    bad(
        json!({"apiVersion": "extensions.istio.io/v1"}),
        "not in the CRD",
    );
    bad(json!({"metadata": {"name": "Not_A_Name"}}), "DNS subdomain");

    let entry = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "idp"},
        "spec": {"hosts": ["idp.example.com"], "ports": [
            {"number": 443, "name": "a", "protocol": "HTTP"},
            {"number": 443, "name": "b", "protocol": "HTTPS"},
        ], "resolution": "DNS"},
    });
    let errors = validate_resource(&entry, Mode::Full);
    assert!(
        errors.iter().any(|e| e.contains("cannot be duplicated")),
        "{errors:?}"
    );
    let auth = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "ra"},
        "spec": {"jwtRules": [{"issuer": "x", "jwksUri": "ftp://x", "jwks": "{}", "timeout": "0s"}]},
    });
    let errors = validate_resource(&auth, Mode::Full).join("\n");
    for expect in ["scheme http", "only one of jwks", "greater than 1ms"] {
        assert!(errors.contains(expect), "{expect}: {errors}");
    }
}

#[test]
fn the_wasmplugin_is_what_istio_and_the_filter_need() {
    for dir in DEPLOYABLE.iter().chain(&["base"]) {
        let Some(docs) = build(dir) else { return };
        let plugin = &find(&docs, "WasmPlugin")["spec"];
        assert_eq!(plugin["phase"], "AUTHN", "{dir}");
        // Fail closed (never FAIL_OPEN), and a lost VM replaced (`vm_crash.rs`).
        assert_eq!(plugin["failStrategy"], "FAIL_RELOAD", "{dir}");
        let url = plugin["url"].as_str().expect("url");
        assert!(url.starts_with("oci://"), "{dir}: {url}");
        // Either the placeholder the API server refuses (kind: setup.sh puts the real digest in its
        // place), or a digest: never one the schema takes that is no image's (empty: nothing checked;
        // all zeros: a checksum mismatch, and the gateway denying every request).
        let sha = plugin["sha256"].as_str().expect("sha256");
        if sha != SHA256_PLACEHOLDER {
            assert!(
                sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                "{dir}: {sha}"
            );
            assert!(!placeholder_digest(sha), "{dir}: {sha} is a placeholder");
        }

        // Secrets reach the module only as host environment variables, never inline in the resource.
        let config = &plugin["pluginConfig"];
        for inline in ["client_secret", "cookie_keys"] {
            assert!(
                config.get(inline).is_none(),
                "{dir}: {inline} inline in pluginConfig"
            );
        }
        let env = plugin["vmConfig"]["env"].as_array().expect("vmConfig.env");
        assert!(
            env.iter()
                .all(|e| e["valueFrom"] == "HOST" && e.get("value").is_none()),
            "{dir}: {env:?}"
        );
        let declared: BTreeSet<String> = env
            .iter()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect();
        let read: BTreeSet<String> = harness::envoy::env_var_names(config).into_iter().collect();
        assert_eq!(
            declared, read,
            "{dir}: the env vars pluginConfig reads are the ones declared"
        );
        assert_eq!(
            read,
            BTreeSet::from([ENV_SECRET.to_string(), ENV_KEYS.to_string()])
        );

        // Delivered as Istio delivers it, the filter accepts it.
        let parsed = Config::parse(&delivered(config), &gateway_env)
            .unwrap_or_else(|e| panic!("{dir}: the filter rejects pluginConfig: {e}"));
        // Over HTTPS, a session cookie no other host of the domain can set (found in review: the
        // default name let a sibling host toss in its own session).
        assert_eq!(
            parsed.cookie.secure,
            parsed.cookie_name.starts_with("__Host-"),
            "{dir}: {}",
            parsed.cookie_name
        );
    }
}

#[test]
fn policies_agree_with_the_filter() {
    for dir in DEPLOYABLE.iter().chain(&["base"]) {
        let Some(docs) = build(dir) else { return };
        let plugin = find(&docs, "WasmPlugin");
        let config = &plugin["spec"]["pluginConfig"];
        let authn = find(&docs, "RequestAuthentication");
        let authz = find(&docs, "AuthorizationPolicy");

        let namespace = &plugin["metadata"]["namespace"];
        assert!(namespace.is_string(), "{dir}: no namespace");
        // Attached to the gateway's pods by label, or to a Gateway API Gateway: the three alike.
        let attached = |doc: &Value| {
            (
                doc["spec"]["selector"].clone(),
                doc["spec"]["targetRefs"].clone(),
            )
        };
        let (selector, targets) = attached(plugin);
        assert!(
            selector.is_null() != targets.is_null(),
            "{dir}: a selector or targetRefs"
        );
        for doc in [authn, authz] {
            assert_eq!(
                &doc["metadata"]["namespace"], namespace,
                "{dir}: one gateway namespace"
            );
            assert_eq!(
                attached(doc),
                (selector.clone(), targets.clone()),
                "{dir}: one gateway"
            );
        }

        let rules = authn["spec"]["jwtRules"].as_array().expect("jwtRules");
        assert_eq!(rules.len(), 1, "{dir}");
        assert_eq!(
            rules[0]["issuer"], config["issuer"],
            "{dir}: jwt_authn checks our issuer"
        );
        assert!(
            strings(&rules[0]["audiences"])
                .contains(&config["client_id"].as_str().unwrap_or_default().to_string()),
            "{dir}: an ID token's audience is the client id"
        );
        assert_eq!(rules[0]["forwardOriginalToken"], true, "{dir}");
        // jwt_authn reads the token only where the filter puts it, as the local Envoy tests' provider
        // does (found by a black-box test: a rule without `fromHeaders` also reads an `access_token`
        // query parameter, istiod's default, and refused logged-in requests to apps that take their own
        // API tokens so).
        let provider = harness::envoy::jwt_provider("i", &[], "https://i/keys", "c");
        let from_headers: Vec<Value> = rules[0]["fromHeaders"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|h| json!({"name": h["name"], "value_prefix": h["prefix"]}))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            json!(from_headers),
            provider["from_headers"],
            "{dir}: the header the tests' jwt_authn reads"
        );
        for other in ["fromParams", "fromCookies"] {
            assert!(rules[0].get(other).is_none(), "{dir}: {other}");
        }

        // DENY without a token of our issuer (rule 0), or with one for another client (rule 1), on the
        // same protected hosts and paths. A bare `*` would take any issuer that any RequestAuthentication
        // on the gateway lists (a mesh-wide one too); request principals are `ISSUER/SUBJECT`.
        assert_eq!(authz["spec"]["action"], "DENY", "{dir}");
        let policy_rules = authz["spec"]["rules"].as_array().expect("rules");
        assert_eq!(policy_rules.len(), 2, "{dir}: {policy_rules:?}");
        let (rule, audience_rule) = (&policy_rules[0], &policy_rules[1]);
        let issuer = rules[0]["issuer"].as_str().expect("issuer");
        assert_eq!(
            rule["from"],
            json!([{"source": {"notRequestPrincipals": [format!("{issuer}/*")]}}]),
            "{dir}: the principals of our issuer, any subject"
        );
        assert!(rule.get("when").is_none(), "{dir}");
        assert!(audience_rule.get("from").is_none(), "{dir}");
        assert_eq!(
            audience_rule["when"],
            json!([{"key": "request.auth.audiences", "notValues": rules[0]["audiences"]}]),
            "{dir}: the audiences jwt_authn accepts for our issuer"
        );
        assert_eq!(
            rule["to"], audience_rule["to"],
            "{dir}: both rules protect the same hosts and paths"
        );
        let operation = &rule["to"][0]["operation"];
        let bypass = strings(&config["bypass_paths"]);
        let not_paths: BTreeSet<String> = strings(&operation["notPaths"]).into_iter().collect();
        assert_eq!(
            not_paths,
            not_paths_for(&bypass),
            "{dir}: notPaths are the bypass paths"
        );
        let hosts = strings(&operation["hosts"]);
        assert!(!hosts.is_empty(), "{dir}: no protected host");
        for host in hosts.iter().filter(|h| !h.ends_with(":*")) {
            assert!(
                hosts.contains(&format!("{host}:*")),
                "{dir}: {host} with a port too"
            );
        }
    }
}

/// The clusters the filter's callouts name exist on the gateway: a Kubernetes Service, or a ServiceEntry
/// port speaking HTTP with TLS originated by a DestinationRule.
///
/// With `idp_cluster` every callout goes to that one cluster. Without it, the filter names a cluster
/// after each URL it calls, `outbound|PORT||HOST`: the issuer's (discovery), and the JWKS and token
/// endpoints the discovery document names. The manifests know two of those URLs: the issuer, and the
/// JWKS URL (the RequestAuthentication's `jwksUri`, which for an IdP outside the cluster is the one its
/// discovery document names), so both hosts are checked. The token endpoint's host is in no manifest
/// and is not checked here; the shipped overlays' IdP, Keycloak, serves it on the issuer's host
/// (`ISSUER/protocol/openid-connect/token`).
#[test]
fn the_idp_clusters_exist_on_the_gateway() {
    for dir in DEPLOYABLE {
        let Some(docs) = build(dir) else { return };
        let config = &find(&docs, "WasmPlugin")["spec"]["pluginConfig"];
        let clusters = match config["idp_cluster"].as_str() {
            Some(c) => vec![("idp_cluster", c.to_string())],
            None => {
                let jwks = &find(&docs, "RequestAuthentication")["spec"]["jwtRules"][0]["jwksUri"];
                [("issuer", &config["issuer"]), ("jwksUri", jwks)]
                    .into_iter()
                    .map(|(what, url)| {
                        let url = url.as_str().unwrap_or_else(|| panic!("{dir}: {what}"));
                        let cluster = harness::envoy::cluster_name(url).expect("cluster name");
                        (what, cluster)
                    })
                    .collect()
            }
        };
        for (what, cluster) in clusters {
            cluster_exists(&docs, &format!("{dir} ({what})"), &cluster);
        }
    }
}

/// `cluster` (`outbound|PORT||HOST`) is a Kubernetes Service's, or a ServiceEntry's with TLS originated.
fn cluster_exists(docs: &[Value], dir: &str, cluster: &str) {
    let parts: Vec<&str> = cluster.split('|').collect();
    assert!(
        parts.len() == 4 && parts[0] == "outbound" && parts[2].is_empty(),
        "{dir}: {cluster} is not an Istio outbound cluster name"
    );
    let port: u64 = parts[1].parse().expect("port");
    let host = parts[3];
    if host.ends_with(".svc.cluster.local") {
        assert_eq!(
            host.split('.').count(),
            5,
            "{dir}: SERVICE.NAMESPACE.svc.cluster.local"
        );
        return;
    }
    let entry = docs
        .iter()
        .filter(|d| d["kind"] == "ServiceEntry")
        .map(|d| &d["spec"])
        .find(|e| strings(&e["hosts"]).iter().any(|h| h == host))
        .unwrap_or_else(|| panic!("{dir}: no ServiceEntry for {host}"));
    assert_eq!(entry["location"], "MESH_EXTERNAL", "{dir}");
    let se_port = entry["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["number"] == port))
        .unwrap_or_else(|| panic!("{dir}: no ServiceEntry port {port}"));
    assert_eq!(
        se_port["protocol"], "HTTP",
        "{dir}: the callouts speak plain HTTP to the cluster"
    );
    assert_eq!(
        strings(&entry["exportTo"]),
        ["."],
        "{dir}: keep the HTTP port 443 to the gateway"
    );
    let rule = docs
        .iter()
        .filter(|d| d["kind"] == "DestinationRule")
        .map(|d| &d["spec"])
        .find(|r| r["host"] == host)
        .unwrap_or_else(|| panic!("{dir}: no DestinationRule for {host}"));
    let tls = rule["trafficPolicy"]["portLevelSettings"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["port"]["number"] == port))
        .map(|p| &p["tls"])
        .unwrap_or_else(|| panic!("{dir}: no TLS settings for port {port}"));
    assert_eq!(tls["mode"], "SIMPLE", "{dir}");
    assert_eq!(tls["sni"], host, "{dir}");
    assert!(
        tls.get("insecureSkipVerify").is_none_or(|v| v == false),
        "{dir}"
    );
}

/// The Secret reaches the gateway container as the variables the WasmPlugin declares, every way we ship:
/// the chart's values, a Deployment patch, a Gateway API gateway's ConfigMap.
#[test]
fn the_gateway_environment_carries_the_declared_variables() {
    let dir = wasmplugin_dir().join("gateway");
    let secret = &read_yaml(&dir.join("secret.example.yaml"))[0];
    let keys: BTreeSet<String> = secret["stringData"]
        .as_object()
        .expect("stringData")
        .keys()
        .cloned()
        .collect();
    let secret_name = secret["metadata"]["name"].as_str().expect("name");

    let values = &read_yaml(&dir.join("values.yaml"))[0];
    let patch = &read_yaml(&dir.join("deployment-patch.yaml"))[0];
    let container = &patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "istio-proxy");
    // A Gateway API gateway: the patch Istio merges into the Deployment it makes.
    let options = gateway_api_deployment_patch();
    let options_container = &options["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(options_container["name"], "istio-proxy");
    for (what, env) in [
        ("values.yaml envVarFrom", &values["envVarFrom"]),
        ("deployment-patch.yaml", &container["env"]),
        (
            "components/gateway-api ConfigMap",
            &options_container["env"],
        ),
    ] {
        let env = env.as_array().unwrap_or_else(|| panic!("{what}"));
        let names: BTreeSet<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(names, BTreeSet::from([ENV_SECRET, ENV_KEYS]), "{what}");
        for e in env {
            let from = &e["valueFrom"]["secretKeyRef"];
            assert_eq!(from["name"], secret_name, "{what}");
            assert!(
                keys.contains(from["key"].as_str().unwrap_or_default()),
                "{what}: {from}"
            );
        }
    }
    // The Secret lives beside the gateway: it names no namespace, so `kubectl -n` decides, and the
    // command that creates it names the manifests' namespace.
    assert!(
        secret["metadata"].get("namespace").is_none(),
        "secret.example.yaml: no namespace of its own"
    );
    let Some(docs) = build("base") else { return };
    let namespace = find(&docs, "WasmPlugin")["metadata"]["namespace"]
        .as_str()
        .expect("namespace")
        .to_string();
    let text = fs::read_to_string(dir.join("secret.example.yaml")).unwrap();
    let create = format!("kubectl -n {namespace} create secret generic {secret_name}");
    assert!(text.contains(&create), "secret.example.yaml: {create}");
}

/// The release name of the istio/gateway chart that `text` installs (`helm upgrade --install NAME
/// istio/gateway`), the first one.
fn gateway_release(text: &str) -> Option<&str> {
    text.split("upgrade --install").skip(1).find_map(|rest| {
        let mut words = rest.split_whitespace();
        let name = words.next()?;
        (words.next()? == "istio/gateway").then_some(name)
    })
}

/// The filter and its policies attach to a gateway of the protected hosts' own, never to the shared
/// default one (`istio: ingressgateway`), where every other app would be sent to log in and its own
/// Bearer tokens refused: the istio/gateway release that the guide, the chart values and the kind demo
/// install, whose pods the chart labels `istio: RELEASE` (less a leading `istio-`).
#[test]
fn the_manifests_attach_to_a_gateway_of_their_own() {
    let dir = wasmplugin_dir();
    let setup = fs::read_to_string(dir.join("kind/setup.sh")).unwrap();
    let release = gateway_release(&setup).expect("setup.sh installs an istio/gateway release");
    let label = release.strip_prefix("istio-").unwrap_or(release);
    assert_ne!(label, "ingressgateway", "the shared default gateway");
    let selector = json!({"matchLabels": {"istio": label}});

    for (file, what) in [
        ("gateway/values.yaml", "helm upgrade --install"),
        ("gateway/deployment-patch.yaml", "patch deployment"),
    ] {
        let text = fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            text.contains(&format!("{what} {release} ")),
            "{file}: {what} {release}"
        );
    }
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    assert_eq!(gateway_release(&readme), Some(release), "README.md");
    assert!(
        setup.contains(&format!("svc/{release} ")),
        "setup.sh forwards to {release}"
    );
    let demo = read_yaml(&dir.join("kind/apps/gateway.yaml"));
    assert_eq!(
        json!({"matchLabels": find(&demo, "Gateway")["spec"]["selector"]}),
        selector,
        "the kind demo's Gateway"
    );

    for build_dir in ["base", "overlays/example", "overlays/in-cluster", "kind"] {
        let Some(docs) = build(build_dir) else { return };
        for kind in ["WasmPlugin", "RequestAuthentication", "AuthorizationPolicy"] {
            assert_eq!(
                find(&docs, kind)["spec"]["selector"],
                selector,
                "{build_dir}: {kind}"
            );
        }
    }
}

/// The `deployment` patch of the ConfigMap that components/gateway-api's Gateway names.
fn gateway_api_deployment_patch() -> Value {
    let docs = read_yaml(&wasmplugin_dir().join("components/gateway-api/gateway.yaml"));
    let map = find(&docs, "ConfigMap");
    let text = map["data"]["deployment"].as_str().expect("data.deployment");
    yaml_docs(text, "the gateway-api ConfigMap").remove(0)
}

/// On a Gateway API gateway the filter and its policies name the Gateway, which is Istio's, deployed
/// with the ConfigMap that gives its pods the filter's environment, and listening, over HTTPS, for the
/// hosts the policy protects and routes of the namespaces labelled for it only. (No Gateway API schema
/// is at hand: the Gateway's own fields are checked here, not against its CRD.)
#[test]
fn a_gateway_api_gateway_carries_the_filter_and_its_environment() {
    let dir = "overlays/gateway-api";
    let Some(docs) = build(dir) else { return };
    let plugin = find(&docs, "WasmPlugin");
    let gateway = find(&docs, "Gateway");
    assert_eq!(
        gateway["spec"]["gatewayClassName"], "istio",
        "Istio deploys it"
    );
    assert_eq!(
        gateway["metadata"]["namespace"], plugin["metadata"]["namespace"],
        "a WasmPlugin attaches only to a Gateway of its own namespace"
    );
    assert_eq!(
        plugin["spec"]["targetRefs"],
        json!([{
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": gateway["metadata"]["name"],
        }])
    );

    // Its pods get every variable the WasmPlugin declares, from the Secret of the deploy guide.
    let params = &gateway["spec"]["infrastructure"]["parametersRef"];
    assert_eq!(
        (&params["group"], &params["kind"]),
        (&json!(""), &json!("ConfigMap"))
    );
    let map = find(&docs, "ConfigMap");
    assert_eq!(map["metadata"]["name"], params["name"]);
    assert_eq!(
        map["metadata"]["namespace"],
        gateway["metadata"]["namespace"]
    );
    let patch = yaml_docs(
        map["data"]["deployment"].as_str().expect("data.deployment"),
        dir,
    )
    .remove(0);
    let containers = patch["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let proxy = containers
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("the istio-proxy container");
    let declared: BTreeSet<&str> = plugin["spec"]["vmConfig"]["env"]
        .as_array()
        .expect("vmConfig.env")
        .iter()
        .filter(|e| e["valueFrom"] == "HOST")
        .filter_map(|e| e["name"].as_str())
        .collect();
    let given: BTreeSet<&str> = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"]["name"] == "oidc-filter")
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(given, declared);

    // Every listener: HTTPS (the filter's cookies are Secure), for a host the policy protects, open to
    // the labelled namespaces only.
    let protected = strings(
        &find(&docs, "AuthorizationPolicy")["spec"]["rules"][0]["to"][0]["operation"]["hosts"],
    );
    let listeners = gateway["spec"]["listeners"].as_array().expect("listeners");
    assert!(!listeners.is_empty());
    for l in listeners {
        assert_eq!(l["protocol"], "HTTPS", "{l}");
        let host = l["hostname"].as_str().expect("a listener for one host");
        assert!(
            protected.iter().any(|h| h == host),
            "{host} not in {protected:?}"
        );
        assert_eq!(l["allowedRoutes"]["namespaces"]["from"], "Selector", "{l}");
    }
}

/// One configuration, two deliveries: the WasmPlugin's pluginConfig and what the local Envoy tests feed the
/// filter (the harness's default site configuration and the committed demo bootstrap) differ only in the
/// fields that name the environment, and configure the same behaviour.
#[test]
fn plugin_config_agrees_with_the_local_envoy_tests() {
    let Some(base) = build("base") else { return };
    let manifest = find(&base, "WasmPlugin")["spec"]["pluginConfig"].clone();

    let mut local = vec![(
        "harness::default_filter_config".to_string(),
        harness::default_filter_config("http://127.0.0.1:9000", "demo", "demo")
            .expect("local config"),
    )];
    let envoy_yaml = wasmplugin_dir().join("envoy.yaml");
    if !envoy_yaml.exists() {
        eprintln!("wasmplugin/envoy.yaml not there yet: compared with the harness's default only");
    } else {
        let bootstrap = &read_yaml(&envoy_yaml)[0];
        let mut found = Vec::new();
        collect_string_values(bootstrap, &mut found);
        assert!(
            !found.is_empty(),
            "no StringValue configuration in wasmplugin/envoy.yaml"
        );
        for text in found {
            assert!(
                is_compact_json(&text),
                "envoy.yaml: the configuration is not compact JSON: {text}"
            );
            local.push((
                "wasmplugin/envoy.yaml".into(),
                serde_json::from_str(&text).expect("json"),
            ));
        }
    }

    let strip = |v: &Value| -> BTreeMap<String, Value> {
        v.as_object()
            .expect("object")
            .iter()
            .filter(|(k, _)| !ENVIRONMENT_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let any_env = |name: &str| gateway_env(name).or_else(|| Some("test-client-secret".to_string()));
    let ours = Config::parse(&delivered(&manifest), &gateway_env).expect("manifest config");
    for (origin, config) in &local {
        // Shared fields carry the same values.
        let (a, b) = (strip(&manifest), strip(config));
        for (key, value) in &a {
            if let Some(other) = b.get(key) {
                assert_eq!(
                    value, other,
                    "{origin}: {key} differs from the WasmPlugin's"
                );
            }
        }
        // Fields only one side spells out are the filter's defaults: the parsed behaviour is the same.
        let theirs =
            Config::parse(&delivered(config), &any_env).unwrap_or_else(|e| panic!("{origin}: {e}"));
        assert_eq!(behaviour(&ours), behaviour(&theirs), "{origin}");
        assert_eq!(ours.cookie.secure, theirs.cookie.secure, "{origin}");
    }

    // The overlays change only the environment.
    for dir in DEPLOYABLE {
        let Some(docs) = build(dir) else { return };
        let overlay = &find(&docs, "WasmPlugin")["spec"]["pluginConfig"];
        let (a, b) = (strip(&manifest), strip(overlay));
        assert_eq!(
            a, b,
            "{dir}: only {ENVIRONMENT_FIELDS:?} may differ from the base"
        );
    }
}

fn collect_string_values(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str)
                == Some("type.googleapis.com/google.protobuf.StringValue")
                && let Some(text) = map.get("value").and_then(Value::as_str)
            {
                out.push(text.to_string());
            }
            map.values().for_each(|v| collect_string_values(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_string_values(v, out)),
        _ => {}
    }
}

/// A 64-hex `sha256` no image has: a real digest uses most of the 16 digits (all zeros, `abab…` do not).
fn placeholder_digest(sha: &str) -> bool {
    sha.bytes().collect::<BTreeSet<u8>>().len() < 8
}

/// The kind demo applies its WasmPlugin with the digest `oci-image` printed in the placeholder's place.
#[test]
fn setup_sh_replaces_the_placeholder_digest() {
    let script = fs::read_to_string(wasmplugin_dir().join("kind/setup.sh")).unwrap();
    assert!(
        script.contains(r#"sed "s/^  sha256: .*/  sha256: $digest/""#),
        "setup.sh no longer puts the digest in the WasmPlugin"
    );
    if build("kind").is_none() {
        return;
    }
    // What `kubectl kustomize wasmplugin/kind` prints, as the script pipes it to sed.
    let cmd = kustomize_cmd().expect("kustomize");
    let output = Command::new(cmd[0])
        .args(&cmd[1..])
        .arg(wasmplugin_dir().join("kind"))
        .output()
        .expect("run kustomize");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("  sha256: "))
            .collect::<Vec<_>>(),
        [format!("  sha256: {SHA256_PLACEHOLDER}")],
        "the line setup.sh rewrites"
    );
    assert!(placeholder_digest(&"0".repeat(64)));
    assert!(!placeholder_digest(SOME_DIGEST));
}

#[test]
fn compact_json_check() {
    assert!(is_compact_json(r#"{"a":"b c","d":[1,2]}"#));
    assert!(!is_compact_json(r#"{"a": "b"}"#));
    assert!(!is_compact_json("{\"a\":\"b\"}\n"));
    assert!(!is_compact_json("{"));
    assert_eq!(
        not_paths_for(&["/healthz".into(), "/acme/".into()]),
        BTreeSet::from([
            "/healthz".into(),
            "/healthz/*".into(),
            "/acme".into(),
            "/acme/*".into()
        ])
    );
    assert_eq!(duration_ms("1.5s"), Some(1500.0));
    assert_eq!(duration_ms("1h30m"), Some(5_400_000.0));
    assert_eq!(duration_ms("0s"), Some(0.0));
    assert_eq!(duration_ms("5"), None);
}

/// setup.sh writes `APP_PORT` into the kind realm's redirect URIs by replacing `app.localhost:8080`: the
/// realm names the app with that port wherever it names it, or a login on another port would meet
/// Keycloak's "Invalid parameter: redirect_uri".
#[test]
fn the_kind_realm_names_the_app_as_setup_sh_rewrites_it() {
    let realm = fs::read_to_string(wasmplugin_dir().join("kind/realm.json")).unwrap();
    let script = fs::read_to_string(wasmplugin_dir().join("kind/setup.sh")).unwrap();
    assert!(
        script.contains(r#"-e "s/app\.localhost:8080/app.localhost:$APP_PORT/g""#),
        "setup.sh no longer rewrites the realm's app port"
    );
    let named: Vec<&str> = realm
        .match_indices("app.localhost")
        .map(|(i, _)| &realm[i..(i + 18).min(realm.len())])
        .collect();
    assert!(named.len() >= 2, "{named:?}");
    assert!(
        named.iter().all(|n| *n == "app.localhost:8080"),
        "{named:?}"
    );
}

/// The kind script is not run here (no Docker), but it parses and lints clean.
#[test]
fn setup_script_lints() {
    let script = wasmplugin_dir().join("kind/setup.sh");
    let status = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash");
    assert!(status.success(), "bash -n {}", script.display());
    let out = Command::new("shellcheck")
        .arg(&script)
        .output()
        .expect("shellcheck (`make setup` installs it)");
    assert!(
        out.status.success(),
        "shellcheck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
