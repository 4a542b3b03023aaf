//! `oci-image`: packs the filter module into an OCI image Istio's `WasmPlugin` can pull, without a container
//! engine, and prints the manifest digest that goes into the `WasmPlugin`'s `sha256`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use harness::oci::{self, Format, Image, OciError, Push};

const USAGE: &str = "\
usage: oci-image --wasm FILE [--out DIR] [--format docker|oci|wasm] [--tag TAG]
                 [--no-opt] [--wasm-opt BIN] [--push REGISTRY/REPO:TAG] [--insecure] [--skopeo BIN]

Builds an OCI image of FILE that Istio's image fetcher accepts and writes it as an OCI image layout in DIR
(default target/oci), with the packaged module (DIR/plugin.wasm) and the manifest digest (DIR/sha256).
Prints the manifest digest, 64 hex digits: the WasmPlugin's spec.sha256.

  --wasm FILE     the release module: target/wasm32-wasip1/release/oidc_filter.wasm
  --no-opt        package FILE as it is; by default it goes through `wasm-opt -Oz --strip-debug`
  --wasm-opt BIN  the wasm-opt to run (default: wasm-opt on PATH)
  --format        docker: Docker schema 2, one tar+gzip layer holding plugin.wasm
                  oci:    OCI image, one tar+gzip layer holding plugin.wasm (default)
                  wasm:   two-layer Wasm artifact (application/vnd.module.wasm.content.layer.v1+wasm)
  --tag TAG       the tag inside the layout (default: the tag of --push, else latest); skopeo reads the
                  layout (oci:DIR:TAG) for the oci and wasm formats, not for docker
  --push REF      copy the image to a registry with skopeo (REF without docker://); fails if the
                  registry stores a manifest with another digest
  --insecure      do not verify the registry's TLS certificate (a loopback registry over plain HTTP)
  --skopeo BIN    the skopeo to run (default: skopeo on PATH)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match Options::parse(&args).and_then(|options| run(&options)) {
        Ok(digest) => {
            println!("{digest}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oci-image: {e}");
            if matches!(e, OciError::Usage(_)) {
                eprintln!("{USAGE}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The command line, parsed.
struct Options {
    wasm: PathBuf,
    out: PathBuf,
    format: Format,
    tag: String,
    optimize: bool,
    wasm_opt: String,
    push: Option<String>,
    tls_verify: bool,
    skopeo: String,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, OciError> {
        let mut wasm = None;
        let mut out = PathBuf::from("target/oci");
        let mut format = Format::Oci;
        let mut tag = None;
        let mut optimize = true;
        let mut wasm_opt = "wasm-opt".to_string();
        let mut push = None;
        let mut tls_verify = true;
        let mut skopeo = "skopeo".to_string();

        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .cloned()
                    .ok_or_else(|| OciError::Usage(format!("{arg} needs a value")))
            };
            match arg.as_str() {
                "--wasm" => wasm = Some(PathBuf::from(value()?)),
                "--out" => out = PathBuf::from(value()?),
                "--format" => format = Format::parse(&value()?)?,
                "--tag" => tag = Some(value()?),
                "--no-opt" => optimize = false,
                "--wasm-opt" => wasm_opt = value()?,
                "--push" => push = Some(value()?),
                "--insecure" => tls_verify = false,
                "--skopeo" => skopeo = value()?,
                other => return Err(OciError::Usage(format!("unknown argument {other:?}"))),
            }
        }
        let wasm = wasm.ok_or_else(|| OciError::Usage("--wasm is required".into()))?;
        let tag = tag
            .or_else(|| push.as_deref().and_then(tag_of))
            .unwrap_or_else(|| "latest".to_string());
        if let Some(reference) = push.as_deref().filter(|r| r.contains("://")) {
            return Err(OciError::Usage(format!(
                "--push {reference}: give registry/repository:tag, without a scheme"
            )));
        }
        Ok(Options {
            wasm,
            out,
            format,
            tag,
            optimize,
            wasm_opt,
            push,
            tls_verify,
            skopeo,
        })
    }
}

/// Builds, writes and (optionally) pushes; returns the manifest digest in hex.
fn run(options: &Options) -> Result<String, OciError> {
    let input = oci::read_wasm(&options.wasm)?;
    std::fs::create_dir_all(&options.out).map_err(|e| OciError::Io(options.out.clone(), e))?;
    let packaged = options.out.join(oci::PLUGIN_FILE);
    if options.optimize {
        harness::module::finish(&options.wasm_opt, &options.wasm, &packaged)
            .map_err(|e| OciError::Tool(format!("{e:#}")))?;
    } else {
        write(&packaged, &input)?;
    }
    let module = oci::read_wasm(&packaged)?;

    let image = Image::build(&module, options.format);
    image.write_layout(&options.out, &options.tag)?;
    let sha256 = image.sha256();
    write(
        &options.out.join("sha256"),
        format!("{sha256}\n").as_bytes(),
    )?;
    eprintln!(
        "oci-image: {} image {}:{} ({} bytes of wasm{}), manifest sha256:{sha256}",
        options.format.name(),
        options.out.display(),
        options.tag,
        module.len(),
        if options.optimize {
            format!(", wasm-opt -Oz from {}", input.len())
        } else {
            String::new()
        },
    );

    if let Some(reference) = &options.push {
        let to = Push {
            skopeo: &options.skopeo,
            reference,
            tls_verify: options.tls_verify,
        };
        let scratch = options.out.with_extension("push");
        let pushed = image.push(&scratch, &to)?;
        let built = format!("sha256:{sha256}");
        if pushed != built {
            return Err(OciError::DigestMismatch { built, pushed });
        }
        eprintln!("oci-image: pushed {reference}; WasmPlugin url: oci://{reference}");
    }
    Ok(sha256)
}

/// The tag of `registry[:port]/repository:tag`, if it has one.
fn tag_of(reference: &str) -> Option<String> {
    let last = reference.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    (!tag.is_empty() && !reference.contains('@')).then(|| tag.to_string())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    std::fs::write(path, bytes).map_err(|e| OciError::Io(path.to_path_buf(), e))
}
