//! OCI images of the filter module in the shapes Istio's image fetcher accepts, built without a container engine.
//!
//! Istio (`pkg/wasm/imagefetcher.go`) takes the Wasm binary from, in this order:
//! - a Docker schema 2 image whose last layer is `application/vnd.docker.image.rootfs.diff.tar.gzip`
//!   holding a file named `plugin.wasm` ([`Format::Docker`]);
//! - an OCI image whose last layer is `application/vnd.oci.image.layer.v1.tar+gzip` holding `plugin.wasm`
//!   (the "compat" variant, [`Format::Oci`]);
//! - the two-layer Wasm artifact, one layer of which is `application/vnd.module.wasm.content.layer.v1+wasm`
//!   holding the raw module (the "oci" variant, [`Format::Wasm`]).
//!
//! The `sha256` of a `WasmPlugin` with an `oci://` URL is the digest of the image *manifest*, so every blob
//! here is built byte for byte reproducibly (fixed tar header, gzip without a timestamp, compact JSON with a
//! fixed key order): the same module always gives the same digest.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// Media type of a Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker image configuration.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Media type of a gzip-compressed Docker layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image configuration.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a gzip-compressed OCI layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of the runtime configuration of the Wasm artifact (its config blob and first layer).
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// Media type of the layer that holds the raw module in the Wasm artifact.
pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The file name Istio looks for inside a tar+gzip layer.
pub const PLUGIN_FILE: &str = "plugin.wasm";

/// Which of the image shapes Istio accepts to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Docker schema 2 manifest, one tar+gzip layer with `plugin.wasm`.
    Docker,
    /// OCI image manifest, one tar+gzip layer with `plugin.wasm` (the "compat" variant).
    Oci,
    /// OCI manifest of the two-layer Wasm artifact: runtime config + raw module.
    Wasm,
}

impl Format {
    /// Every format, in the order the command documents them.
    pub const ALL: [Format; 3] = [Format::Docker, Format::Oci, Format::Wasm];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Docker => "docker",
            Format::Oci => "oci",
            Format::Wasm => "wasm",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Result<Format, OciError> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                OciError::Usage(format!("unknown format {name:?} (docker, oci or wasm)"))
            })
    }

    /// The media type of this format's manifest.
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_MANIFEST,
            Format::Oci | Format::Wasm => OCI_MANIFEST,
        }
    }
}

/// Everything that can go wrong while building, writing or pushing an image.
#[derive(Debug)]
pub enum OciError {
    /// A file could not be read or written.
    Io(PathBuf, io::Error),
    /// The input is not a WebAssembly binary module.
    NotWasm(PathBuf),
    /// A tool (`wasm-opt`, `skopeo`) could not be started or failed.
    Tool(String),
    /// Bad command-line arguments.
    Usage(String),
    /// The registry holds a different manifest than the one built.
    DigestMismatch {
        /// The digest of the manifest that was built.
        built: String,
        /// The digest the push reported.
        pushed: String,
    },
}

impl fmt::Display for OciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OciError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            OciError::NotWasm(path) => {
                write!(
                    f,
                    "{}: not a WebAssembly module (no \\0asm header)",
                    path.display()
                )
            }
            OciError::Tool(msg) | OciError::Usage(msg) => f.write_str(msg),
            OciError::DigestMismatch { built, pushed } => write!(
                f,
                "the registry stored manifest {pushed}, not the one built ({built}); \
                 the push rewrote the image"
            ),
        }
    }
}

impl std::error::Error for OciError {}

/// A content-addressed blob: a manifest, a configuration or a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// What the bytes are.
    pub media_type: &'static str,
    /// The bytes, exactly as they are stored and hashed.
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        Blob { media_type, bytes }
    }

    /// `sha256:<hex>` of the bytes.
    pub fn digest(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.bytes))
    }

    /// The OCI descriptor that points to this blob.
    fn descriptor(&self) -> serde_json::Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest(),
            "size": self.bytes.len(),
        })
    }
}

/// An image ready to be written as an OCI layout.
#[derive(Clone, Debug)]
pub struct Image {
    /// The shape of the image.
    pub format: Format,
    /// The manifest, whose digest is the `WasmPlugin`'s `sha256`.
    pub manifest: Blob,
    /// The configuration blob.
    pub config: Blob,
    /// The layers, in manifest order.
    pub layers: Vec<Blob>,
}

impl Image {
    /// Builds the image of `wasm` (the module as it will run) in the given format.
    pub fn build(wasm: &[u8], format: Format) -> Image {
        let (config, layers) = match format {
            Format::Docker | Format::Oci => {
                let tar = tar_single_file(PLUGIN_FILE, wasm);
                let (layer_type, config_type) = if format == Format::Docker {
                    (DOCKER_LAYER, DOCKER_CONFIG)
                } else {
                    (OCI_LAYER, OCI_CONFIG)
                };
                // `os`/`architecture` as Docker and the OCI image spec name WASI modules; the diff id is the
                // digest of the uncompressed tar, which container tools cross-check.
                let config = json!({
                    "architecture": "wasm",
                    "os": "wasip1",
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))]},
                    "history": [{"created_by": "oidc-filter oci-image", "comment": PLUGIN_FILE}],
                });
                let layer = Blob::new(layer_type, gzip(&tar));
                (Blob::new(config_type, to_json(&config)), vec![layer])
            }
            Format::Wasm => {
                let runtime = to_json(&json!({
                    "type": "envoy_proxy",
                    "abiVersions": ["v0.2.1"],
                    "config": {"rootIds": [crate::envoy::ROOT_ID]},
                }));
                let layers = vec![
                    Blob::new(WASM_CONFIG, runtime.clone()),
                    Blob::new(WASM_LAYER, wasm.to_vec()),
                ];
                (Blob::new(WASM_CONFIG, runtime), layers)
            }
        };
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": format.manifest_media_type(),
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        match format {
            Format::Docker => {}
            // The compat spec asks OCI-typed images to say which variant they are.
            Format::Oci => {
                manifest["annotations"] = json!({ "module.wasm.image/variant": "compat" });
            }
            Format::Wasm => {
                let titles = ["runtime-config.json", PLUGIN_FILE];
                if let Some(descriptors) = manifest["layers"].as_array_mut() {
                    for (descriptor, title) in descriptors.iter_mut().zip(titles) {
                        descriptor["annotations"] =
                            json!({ "org.opencontainers.image.title": title });
                    }
                }
            }
        }
        Image {
            format,
            manifest: Blob::new(format.manifest_media_type(), to_json(&manifest)),
            config,
            layers,
        }
    }

    /// The manifest digest as the `WasmPlugin`'s `sha256` wants it: 64 hex digits, no `sha256:` prefix.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.manifest.bytes)
    }

    /// Writes the image as an OCI image layout in `dir` (created if missing), tagged `tag`.
    ///
    /// The layout holds only this image: `index.json` is replaced, blobs of earlier builds are left alone.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<(), OciError> {
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| OciError::Io(blobs.clone(), e))?;
        for blob in [&self.manifest, &self.config]
            .into_iter()
            .chain(&self.layers)
        {
            write_file(&blobs.join(sha256_hex(&blob.bytes)), &blob.bytes)?;
        }
        let mut descriptor = self.manifest.descriptor();
        descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor],
        });
        write_file(&dir.join("index.json"), &to_json(&index))?;
        write_file(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
    }
}

/// The WebAssembly features rustc enables for `wasm32-wasip1`, and SIMD, which the filter's byte loops use
/// (`#[target_feature(enable = "simd128")]`); Envoy's V8 runs them all.
///
/// Named explicitly because the release profile strips the `target_features` section wasm-opt would
/// otherwise read them from; a module using anything else fails validation here, not in the gateway.
pub const WASM_FEATURES: [&str; 7] = [
    "--enable-simd",
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-nontrapping-float-to-int",
    "--enable-mutable-globals",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// Runs `wasm-opt -Oz` on `input`, writing `output`.
///
/// Functions that have one caller are inlined only when they are small (`-ocimfs 70`; binaryen's
/// default has no bound). Envoy's V8 compiles every function with TurboFan when the plugin loads
/// (proxy-wasm turns Liftoff off), and Envoy's allocator keeps the peak. Measured in Envoy 1.40 with one
/// worker, against `70`: the giant functions that unbounded inlining builds cost about 15 MiB more
/// resident memory for 2 KB less module; no such inlining at all (`-ocimfs 0`) leaves 370 more small
/// functions, about 2.8 MiB more memory and 2.9 KB more module. Instructions per request are the same
/// for `0` and `70` within the repeat noise.
pub fn optimize(wasm_opt: &str, input: &Path, output: &Path) -> Result<(), OciError> {
    run_wasm_opt(wasm_opt, input, output, "--strip-debug")
}

/// [`optimize`], keeping the function names (for profiles; not shipped).
pub fn optimize_keeping_names(wasm_opt: &str, input: &Path, output: &Path) -> Result<(), OciError> {
    run_wasm_opt(wasm_opt, input, output, "-g")
}

/// `wasm-opt -Oz` as [`optimize`] describes, with `debug_info` (`--strip-debug` or `-g`).
fn run_wasm_opt(
    wasm_opt: &str,
    input: &Path,
    output: &Path,
    debug_info: &str,
) -> Result<(), OciError> {
    let result = Command::new(wasm_opt)
        .args([
            "-Oz",
            "--one-caller-inline-max-function-size",
            "70",
            debug_info,
        ])
        .args(WASM_FEATURES)
        .arg(input)
        .arg("-o")
        .arg(output)
        .output()
        .map_err(|e| OciError::Tool(format!("cannot run {wasm_opt}: {e} (install binaryen)")))?;
    if result.status.success() {
        return Ok(());
    }
    // The validator prints every offending instruction; the first lines and the last say enough.
    let stderr = String::from_utf8_lossy(&result.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let shown = if lines.len() > 12 {
        format!(
            "{}\n...\n{}",
            lines[..8].join("\n"),
            lines[lines.len() - 2..].join("\n")
        )
    } else {
        lines.join("\n")
    };
    Err(OciError::Tool(format!(
        "{wasm_opt} failed on {}: {}\n{shown}",
        input.display(),
        result.status
    )))
}

/// Reads a module and checks it is WebAssembly, so a wrong path fails here and not in the gateway.
pub fn read_wasm(path: &Path) -> Result<Vec<u8>, OciError> {
    let bytes = fs::read(path).map_err(|e| OciError::Io(path.to_path_buf(), e))?;
    if bytes.len() < 8 || !bytes.starts_with(b"\0asm") {
        return Err(OciError::NotWasm(path.to_path_buf()));
    }
    Ok(bytes)
}

/// Where to push and how.
#[derive(Clone, Debug)]
pub struct Push<'a> {
    /// The skopeo binary.
    pub skopeo: &'a str,
    /// `registry/repository:tag`, without a transport prefix.
    pub reference: &'a str,
    /// Verify the registry's TLS certificate (off only for a loopback registry over plain HTTP).
    pub tls_verify: bool,
}

impl Image {
    /// Writes the image in skopeo's `dir:` transport format (manifest.json and blobs named by digest).
    ///
    /// skopeo reads every manifest type from there, while its `oci:` reader only finds OCI-typed
    /// manifests, so a Docker schema 2 image could not be pushed from the layout.
    pub fn write_dir(&self, dir: &Path) -> Result<(), OciError> {
        fs::create_dir_all(dir).map_err(|e| OciError::Io(dir.to_path_buf(), e))?;
        write_file(&dir.join("version"), b"Directory Transport Version: 1.1\n")?;
        write_file(&dir.join("manifest.json"), &self.manifest.bytes)?;
        for blob in [&self.config].into_iter().chain(&self.layers) {
            write_file(&dir.join(sha256_hex(&blob.bytes)), &blob.bytes)?;
        }
        Ok(())
    }

    /// Copies the image to a registry with skopeo and returns the manifest digest the registry stored
    /// (`sha256:<hex>`); `scratch` is a directory to stage the copy in, removed afterwards.
    ///
    /// skopeo brings registry authentication (`skopeo login`, `~/.docker/config.json`) and TLS, and copies a
    /// manifest it need not convert byte for byte; the caller compares the result with [`Image::sha256`].
    pub fn push(&self, scratch: &Path, to: &Push<'_>) -> Result<String, OciError> {
        let _ = fs::remove_dir_all(scratch);
        self.write_dir(scratch)?;
        let digest_file = scratch.join("pushed.digest");
        let output = Command::new(to.skopeo)
            .arg("copy")
            .arg("--quiet")
            .arg(format!("--dest-tls-verify={}", to.tls_verify))
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("dir:{}", scratch.display()))
            .arg(format!("docker://{}", to.reference))
            .output()
            .map_err(|e| OciError::Tool(format!("cannot run {}: {e} (install skopeo)", to.skopeo)));
        let digest = output.and_then(|output| {
            if !output.status.success() {
                return Err(OciError::Tool(format!(
                    "skopeo copy to {} failed: {}",
                    to.reference,
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            fs::read_to_string(&digest_file).map_err(|e| OciError::Io(digest_file.clone(), e))
        });
        let _ = fs::remove_dir_all(scratch);
        Ok(digest?.trim().to_string())
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A POSIX ustar archive with one regular file, fixed owner, mode and time, so its bytes depend on the
/// content alone.
pub fn tar_single_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    put(&mut header[0..100], name.as_bytes());
    put(&mut header[100..108], b"0000644\0");
    put(&mut header[108..116], b"0000000\0");
    put(&mut header[116..124], b"0000000\0");
    put(
        &mut header[124..136],
        format!("{:011o}\0", content.len()).as_bytes(),
    );
    put(&mut header[136..148], b"00000000000\0");
    header[156] = b'0';
    put(&mut header[257..263], b"ustar\0");
    put(&mut header[263..265], b"00");
    // The checksum is computed with its own field read as spaces.
    put(&mut header[148..156], b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    put(&mut header[148..156], format!("{sum:06o}\0 ").as_bytes());

    let padded = content.len().div_ceil(512) * 512;
    let mut tar = Vec::with_capacity(512 + padded + 1024);
    tar.extend_from_slice(&header);
    tar.extend_from_slice(content);
    tar.resize(512 + padded + 1024, 0);
    tar
}

/// Reads the file `name` out of a tar archive (ustar, as [`tar_single_file`] and common tools write it).
pub fn tar_find<'a>(tar: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            return None;
        }
        let field = |range: std::ops::Range<usize>| {
            let raw = &header[range];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            &raw[..end]
        };
        let size_field = String::from_utf8_lossy(field(124..136)).trim().to_string();
        let size = usize::from_str_radix(&size_field, 8).ok()?;
        let start = at + 512;
        let body = tar.get(start..start + size)?;
        let entry = String::from_utf8_lossy(field(0..100)).to_string();
        if entry.trim_start_matches("./") == name {
            return Some(body);
        }
        at = start + size.div_ceil(512) * 512;
    }
    None
}

/// gzip with no file name and a zero timestamp, so the output depends on the input alone.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    fs::write(path, bytes).map_err(|e| OciError::Io(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn tar_header_is_valid_ustar() {
        let tar = tar_single_file(PLUGIN_FILE, MODULE);
        assert_eq!(tar.len(), 512 + 512 + 1024);
        let stored: u32 =
            u32::from_str_radix(std::str::from_utf8(&tar[148..154]).expect("octal"), 8)
                .expect("checksum");
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, header.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(tar_find(&tar, PLUGIN_FILE), Some(MODULE));
        assert_eq!(tar_find(&tar, "other.wasm"), None);
    }

    #[test]
    fn tar_of_an_exact_block_has_no_padding() {
        let content = vec![7u8; 1024];
        let tar = tar_single_file(PLUGIN_FILE, &content);
        assert_eq!(tar.len(), 512 + 1024 + 1024);
        assert_eq!(tar_find(&tar, PLUGIN_FILE), Some(&content[..]));
    }

    #[test]
    fn builds_are_reproducible() {
        for format in Format::ALL {
            let a = Image::build(MODULE, format);
            let b = Image::build(MODULE, format);
            assert_eq!(a.sha256(), b.sha256(), "{format:?}");
            assert_eq!(a.sha256().len(), 64);
        }
    }

    #[test]
    fn tar_gzip_layer_holds_the_module() {
        for format in [Format::Docker, Format::Oci] {
            let image = Image::build(MODULE, format);
            let layer = image.layers.last().expect("a layer");
            let mut tar = Vec::new();
            GzDecoder::new(&layer.bytes[..])
                .read_to_end(&mut tar)
                .expect("gzip");
            assert_eq!(tar_find(&tar, PLUGIN_FILE), Some(MODULE));
            let config: serde_json::Value =
                serde_json::from_slice(&image.config.bytes).expect("json");
            assert_eq!(
                config["rootfs"]["diff_ids"][0],
                format!("sha256:{}", sha256_hex(&tar))
            );
        }
    }

    #[test]
    fn manifests_point_at_their_blobs() {
        for format in Format::ALL {
            let image = Image::build(MODULE, format);
            let manifest: serde_json::Value =
                serde_json::from_slice(&image.manifest.bytes).expect("json");
            assert_eq!(manifest["mediaType"], format.manifest_media_type());
            assert_eq!(manifest["config"]["digest"], image.config.digest());
            let layers = manifest["layers"].as_array().expect("layers");
            assert_eq!(layers.len(), image.layers.len());
            for (descriptor, blob) in layers.iter().zip(&image.layers) {
                assert_eq!(descriptor["digest"], blob.digest());
                assert_eq!(descriptor["size"], blob.bytes.len());
                assert_eq!(descriptor["mediaType"], blob.media_type);
            }
        }
        let wasm = Image::build(MODULE, Format::Wasm);
        assert_eq!(wasm.layers.len(), 2, "Istio wants exactly two layers");
        assert_eq!(wasm.layers[1].media_type, WASM_LAYER);
        assert_eq!(wasm.layers[1].bytes, MODULE);
    }

    #[test]
    fn rejects_non_wasm() {
        let dir = std::env::temp_dir().join(format!("oci-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("x.wasm");
        fs::write(&path, b"not wasm").expect("write");
        assert!(matches!(read_wasm(&path), Err(OciError::NotWasm(_))));
        fs::write(&path, MODULE).expect("write");
        assert_eq!(read_wasm(&path).expect("wasm"), MODULE);
        let _ = fs::remove_dir_all(&dir);
    }
}
