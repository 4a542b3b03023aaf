//! Registry round trip: the `oci-image` command pushes to a real OCI registry on loopback (Debian's
//! docker-registry), skopeo pulls the image back, and the image must be what Istio's image fetcher accepts:
//! the media types it branches on, `plugin.wasm` byte for byte, and the manifest digest the command printed.
//!
//! Needs `docker-registry`, `skopeo` and `wasm-opt` on PATH (`make setup`) and the release build (`make
//! wasm`); without them the tests fail, naming what is missing.

// Test helpers panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use harness::oci::{self, Format};
use serde_json::Value;

/// The module under test: the release build.
fn module() -> &'static Path {
    static MODULE: OnceLock<PathBuf> = OnceLock::new();
    MODULE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let release = std::env::var_os("OIDC_FILTER_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("wasm32-wasip1/release/oidc_filter.wasm"));
        assert!(
            release.exists(),
            "{} is missing: run `make wasm` (or `cargo build --release --target wasm32-wasip1 -p oidc-filter`) first",
            release.display()
        );
        release
    })
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("image-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails the test when a tool is missing (`make setup` installs them all): a test that skipped would
/// pass without having tested anything.
fn tools(needed: &[&str]) {
    let missing: Vec<&str> = needed.iter().copied().filter(|t| !have(t)).collect();
    assert!(
        missing.is_empty(),
        "missing tools: {missing:?} (`make setup` installs them)"
    );
}

/// A docker-registry on a free loopback port, one per test binary.
///
/// It runs under a shell that waits on a pipe from this process: when the test binary exits, however it
/// exits, the pipe closes and the shell stops the registry and removes its storage.
struct Registry {
    addr: String,
    /// Held for each test's push and pull. The tests push the same layer (one module, several formats) to
    /// the same registry, and docker-registry's filesystem store can lose a blob when two uploads of it
    /// commit at once (the manifest upload then fails: "manifest blob unknown"), so they take turns.
    turn: Mutex<()>,
    _lifeline: Mutex<ChildStdin>,
    _shell: Mutex<Child>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("oidc-filter-registry-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("registry dir");
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .expect("registry config");
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#"docker-registry serve "$1" >"$2/registry.log" 2>&1 & pid=$!
                   trap 'kill $pid 2>/dev/null; wait $pid; rm -rf "$2"' EXIT
                   read -r _ || true"#,
                "sh",
            ])
            .arg(&config)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let lifeline = child.stdin.take().expect("registry stdin");

        let deadline = Instant::now() + Duration::from_secs(15);
        while !answers_v2(&addr) {
            let log = fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {addr}: {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            addr,
            turn: Mutex::new(()),
            _lifeline: Mutex::new(lifeline),
            _shell: Mutex::new(child),
        }
    })
}

/// The registry answers the API version check.
fn answers_v2(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// Runs the `oci-image` command; returns its stdout (the digest) or panics with its stderr.
fn oci_image(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_oci-image"))
        .args(args)
        .output()
        .expect("run oci-image");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "oci-image {args:?} failed: {stderr}"
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let output = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// What came back from the registry.
struct Pulled {
    manifest_bytes: Vec<u8>,
    manifest: Value,
    dir: PathBuf,
}

impl Pulled {
    fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let digest = descriptor["digest"].as_str().expect("digest");
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let bytes = fs::read(self.dir.join(hex)).expect("pulled blob");
        assert_eq!(
            oci::sha256_hex(&bytes),
            hex,
            "blob content matches its digest"
        );
        assert_eq!(
            descriptor["size"],
            bytes.len(),
            "blob size matches its descriptor"
        );
        bytes
    }
}

/// Builds with the command, pushes, pulls back with skopeo; returns the printed digest, the module that went
/// into the image, and the pulled image.
fn round_trip(name: &str, format: Format, optimize: bool) -> (String, Vec<u8>, Pulled) {
    let registry = registry();
    let work = scratch(name);
    let out = work.join("oci");
    let reference = format!("{}/oidc-filter:{name}", registry.addr);
    let module = module().to_str().expect("utf-8 path").to_string();
    let out_arg = out.to_str().expect("utf-8 path").to_string();
    let mut args = vec![
        "--wasm",
        &module,
        "--out",
        &out_arg,
        "--format",
        format.name(),
        "--push",
        &reference,
        "--insecure",
    ];
    if !optimize {
        args.push("--no-opt");
    }
    let turn = registry.turn.lock().unwrap_or_else(|e| e.into_inner());
    let digest = oci_image(&args);
    assert_eq!(digest.len(), 64, "a bare sha256 hex digest: {digest:?}");
    assert!(
        digest
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(
        fs::read_to_string(out.join("sha256"))
            .expect("sha256 file")
            .trim(),
        digest
    );
    let packaged = fs::read(out.join(oci::PLUGIN_FILE)).expect("packaged module");

    let source = format!("docker://{reference}");
    let manifest_bytes = skopeo(&["inspect", "--raw", "--tls-verify=false", &source]);
    let pulled_dir = work.join("pulled");
    let pulled_arg = format!("dir:{}", pulled_dir.display());
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &source,
        &pulled_arg,
    ]);
    drop(turn);
    let stored = fs::read(pulled_dir.join("manifest.json")).expect("pulled manifest");
    assert_eq!(stored, manifest_bytes, "skopeo kept the manifest as served");
    let manifest = serde_json::from_slice(&manifest_bytes).expect("manifest json");
    (
        digest,
        packaged,
        Pulled {
            manifest_bytes,
            manifest,
            dir: pulled_dir,
        },
    )
}

/// Istio's `pkg/wasm/imagefetcher.go` as of Istio 1.16 (istio/istio#40647), so in every release this
/// project supports (1.22 on), rule for rule: Docker manifests take the last of one or more layers as
/// Docker tar+gzip; anything else is tried as the compat variant (the last layer, OCI tar+gzip), then as
/// the two-layer artifact (the layer of the Wasm content type, raw). (Up to 1.15 the compat variant had
/// to have exactly one layer; the `docker` and `oci` formats have one, as `check` asserts.)
fn istio_extract(pulled: &Pulled) -> Result<Vec<u8>, String> {
    let layers = pulled.manifest["layers"].as_array().ok_or("no layers")?;
    let last = layers
        .last()
        .ok_or("number of layers must be greater than zero")?;
    if pulled.manifest["mediaType"] == oci::DOCKER_MANIFEST {
        if last["mediaType"] != oci::DOCKER_LAYER {
            return Err(format!("invalid media type {}", last["mediaType"]));
        }
        return plugin_from_tar_gz(&pulled.blob(last));
    }
    let compat = if last["mediaType"] == oci::OCI_LAYER {
        plugin_from_tar_gz(&pulled.blob(last))
    } else {
        Err(format!("invalid media type {}", last["mediaType"]))
    };
    compat.or_else(|compat| {
        if layers.len() != 2 {
            return Err(format!(
                "compat: {compat}; oci: number of layers must be 2 but got {}",
                layers.len()
            ));
        }
        layers
            .iter()
            .find(|l| l["mediaType"] == oci::WASM_LAYER)
            .map(|l| pulled.blob(l))
            .ok_or_else(|| {
                format!(
                    "compat: {compat}; oci: no layer of type {}",
                    oci::WASM_LAYER
                )
            })
    })
}

/// `extractWasmPluginBinary`: the first entry whose base name is `plugin.wasm`.
fn plugin_from_tar_gz(layer: &[u8]) -> Result<Vec<u8>, String> {
    let mut tar = Vec::new();
    GzDecoder::new(layer)
        .read_to_end(&mut tar)
        .map_err(|e| format!("failed to parse layer as tar.gz: {e}"))?;
    oci::tar_find(&tar, oci::PLUGIN_FILE)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "plugin.wasm not found in the archive".to_string())
}

fn check(name: &str, format: Format, optimize: bool) {
    tools(&["docker-registry", "skopeo", "wasm-opt"]);
    let (digest, packaged, pulled) = round_trip(name, format, optimize);
    assert_eq!(
        oci::sha256_hex(&pulled.manifest_bytes),
        digest,
        "the registry's manifest has the digest the command printed"
    );
    let build = fs::read(module()).expect("module");
    if optimize {
        assert!(packaged.starts_with(b"\0asm"), "a Wasm module");
        assert!(
            packaged.len() < build.len(),
            "wasm-opt ran: {} bytes packaged from {}",
            packaged.len(),
            build.len()
        );
    } else {
        assert!(packaged == build, "--no-opt packages the build as it is");
    }
    let extracted = istio_extract(&pulled).expect("Istio's fetcher accepts the image");
    assert!(
        extracted == packaged,
        "plugin.wasm in the image is the build, byte for byte"
    );

    let manifest = &pulled.manifest;
    let layer_types: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["mediaType"].as_str().expect("layer media type"))
        .collect();
    let (manifest_type, config_type, expected_layers) = match format {
        Format::Docker => (
            oci::DOCKER_MANIFEST,
            oci::DOCKER_CONFIG,
            vec![oci::DOCKER_LAYER],
        ),
        Format::Oci => (oci::OCI_MANIFEST, oci::OCI_CONFIG, vec![oci::OCI_LAYER]),
        Format::Wasm => (
            oci::OCI_MANIFEST,
            oci::WASM_CONFIG,
            vec![oci::WASM_CONFIG, oci::WASM_LAYER],
        ),
    };
    assert_eq!(manifest["mediaType"], manifest_type);
    assert_eq!(manifest["config"]["mediaType"], config_type);
    assert_eq!(layer_types, expected_layers);
    let config: Value = serde_json::from_slice(&pulled.blob(&manifest["config"])).expect("config");
    if format == Format::Wasm {
        assert_eq!(config["type"], "envoy_proxy");
    } else {
        let layer = pulled.blob(&manifest["layers"][0]);
        let mut tar = Vec::new();
        GzDecoder::new(&layer[..])
            .read_to_end(&mut tar)
            .expect("gzip");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", oci::sha256_hex(&tar))
        );
    }
}

#[test]
fn docker_image_round_trip() {
    check("docker", Format::Docker, false);
}

#[test]
fn oci_compat_image_round_trip() {
    check("oci", Format::Oci, false);
}

#[test]
fn wasm_artifact_round_trip() {
    check("wasm", Format::Wasm, false);
}

/// The default path: `wasm-opt -Oz` on the release module, then the image of what it wrote.
#[test]
fn optimized_module_round_trip() {
    check("optimized", Format::Oci, true);
}

/// The layout the command writes is one skopeo reads as it is (for the OCI-typed formats).
#[test]
fn layout_is_readable_by_skopeo() {
    tools(&["skopeo"]);
    let out = scratch("layout").join("oci");
    let module = module().to_str().expect("utf-8 path").to_string();
    let out_arg = out.to_str().expect("utf-8 path").to_string();
    let digest = oci_image(&[
        "--wasm", &module, "--out", &out_arg, "--format", "wasm", "--tag", "v1", "--no-opt",
    ]);
    let raw = skopeo(&["inspect", "--raw", &format!("oci:{out_arg}:v1")]);
    assert_eq!(oci::sha256_hex(&raw), digest);
    let index: Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).expect("index")).expect("json");
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
}

#[test]
fn rejects_what_is_not_wasm() {
    let work = scratch("not-wasm");
    let bogus = work.join("bogus.wasm");
    fs::write(&bogus, "#!/bin/sh\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_oci-image"))
        .args([
            "--wasm",
            bogus.to_str().expect("utf-8"),
            "--no-opt",
            "--out",
        ])
        .arg(work.join("oci"))
        .output()
        .expect("run oci-image");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no digest printed on failure");
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a WebAssembly module"));
}
