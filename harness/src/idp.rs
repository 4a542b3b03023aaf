//! The node programs in `harness/idp/`: the IdP (`oidc-provider`) and the sample app (`echo.mjs`).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::process::Process;

/// How long a node program may take to announce its port.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The IdP's configuration file (see `harness/idp/README.md`).
#[derive(Clone, Debug, Default)]
pub struct IdpConfig {
    /// Issuer URL: where clients reach the IdP (usually the fault proxy, not `port`).
    pub issuer: String,
    /// Port to listen on, on 127.0.0.1 (0: the OS picks).
    pub port: u16,
    /// Client registrations, see [`idp_client`].
    pub clients: Vec<Value>,
    /// Signing keys are kept here: loaded if the file exists, else generated and written.
    pub jwks_file: Option<PathBuf>,
    /// Its clock runs this many seconds ahead of the machine's: it dates tokens (`iat`, `exp`) so, as an
    /// IdP whose clock is off does.
    pub clock_ahead: Option<u64>,
}

impl IdpConfig {
    /// The JSON the IdP reads.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "issuer": self.issuer,
            "port": self.port,
            "clients": self.clients,
        });
        if let Some(f) = &self.jwks_file {
            v["jwks_file"] = json!(f.to_string_lossy());
        }
        if let Some(s) = self.clock_ahead {
            v["clock_ahead"] = json!(s);
        }
        v
    }
}

/// A client registration for an app served at `app_origin` (`http://localhost:PORT`):
/// `client_secret_basic`, refresh tokens on, redirect URI `app_origin + callback_path`, post-logout
/// redirect URI `app_origin + "/"`.
pub fn idp_client(
    client_id: &str,
    client_secret: &str,
    app_origin: &str,
    callback_path: &str,
) -> Value {
    json!({
        "client_id": client_id,
        "client_secret": client_secret,
        "redirect_uris": [format!("{app_origin}{callback_path}")],
        "post_logout_redirect_uris": [format!("{app_origin}/")],
        "token_endpoint_auth_method": "client_secret_basic",
        "refresh": true,
    })
}

/// The node binary: `$NODE_BIN`, else `node`.
pub fn node_bin() -> PathBuf {
    std::env::var_os("NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"))
}

/// `harness/idp`.
pub fn idp_dir() -> PathBuf {
    crate::workspace_root().join("harness/idp")
}

fn check_installed() -> Result<()> {
    let marker = idp_dir().join("node_modules/oidc-provider/package.json");
    if !marker.exists() {
        bail!(
            "{} is missing: run harness/setup.sh (or `npm ci` in harness/idp)",
            marker.display()
        );
    }
    Ok(())
}

/// A running IdP.
pub struct Idp {
    process: Process,
    port: u16,
}

impl Idp {
    /// Writes `DIR/idp.json` and starts the IdP, logging to `DIR/idp.log`.
    pub fn start(config: &IdpConfig, dir: &Path) -> Result<Idp> {
        check_installed()?;
        fs::create_dir_all(dir)?;
        let config_path = dir.join("idp.json");
        fs::write(
            &config_path,
            serde_json::to_string_pretty(&config.to_json())?,
        )
        .with_context(|| format!("writing {}", config_path.display()))?;
        let (process, port) = start_node("idp", dir, |cmd| {
            cmd.arg(idp_dir().join("idp.mjs")).arg(&config_path);
        })?;
        Ok(Idp { process, port })
    }

    /// The port it listens on (not the issuer's port when a proxy is in front).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its log (requests, errors).
    pub fn log(&self) -> Result<String> {
        self.process.log()
    }

    /// Stops it (also done on drop).
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(2));
    }
}

/// The running sample app.
pub struct EchoApp {
    process: Process,
    port: u16,
}

impl EchoApp {
    /// Starts `echo.mjs` on `port` (0: the OS picks), logging to `DIR/echo.log`.
    pub fn start(port: u16, dir: &Path) -> Result<EchoApp> {
        check_installed()?;
        let (process, port) = start_node("echo", dir, |cmd| {
            cmd.arg(idp_dir().join("echo.mjs")).arg(port.to_string());
        })?;
        Ok(EchoApp { process, port })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log.
    pub fn log(&self) -> Result<String> {
        self.process.log()
    }
}

/// Starts one of our node programs and waits for its port. A start that announces nothing in time is
/// killed and tried again, up to four times in all: on a loaded 2-core machine a node start has been seen
/// to stall silently, three times in a row once (a CI run whose disk was busy: node reads its modules'
/// files at start).
fn start_node(name: &str, dir: &Path, args: impl Fn(&mut Command)) -> Result<(Process, u16)> {
    start_node_within(name, dir, START_TIMEOUT, args)
}

fn start_node_within(
    name: &str,
    dir: &Path,
    timeout: Duration,
    args: impl Fn(&mut Command),
) -> Result<(Process, u16)> {
    let mut last = None;
    for _ in 0..4 {
        let mut cmd = Command::new(node_bin());
        args(&mut cmd);
        let mut process =
            Process::spawn_with_handshake(name, cmd, &dir.join(format!("{name}.log")))?;
        match process.wait_for_port(timeout) {
            Ok(port) => return Ok((process, port)),
            Err(e) => {
                eprintln!("{name}: {e:#}; starting it again");
                // Also in its log, where a run that passed after the second start still shows it: the
                // error's first line only. The rest is the log's own last lines, and written back into
                // the log they would count as the program's lines twice (a test that counts the IdP's
                // `GET /jwks` lines saw six fetches too many).
                let what = e.to_string();
                let what = what.lines().next().unwrap_or_default();
                let _ = fs::OpenOptions::new()
                    .append(true)
                    .open(dir.join(format!("{name}.log")))
                    .and_then(|mut f| {
                        let note = format!("harness: {what}; starting it again\n");
                        std::io::Write::write_all(&mut f, note.as_bytes())
                    });
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{name} did not start")))
}

/// A PKCE pair `(verifier, S256 challenge)` from 32 random bytes.
pub fn pkce_pair() -> Result<(String, String)> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let verifier = random_token(32)?;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    Ok((verifier, challenge))
}

/// `n` random bytes as base64url (for `state`, `nonce`, PKCE verifiers).
pub fn random_token(n: usize) -> Result<String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut bytes = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// How a client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret.
    Basic,
    /// `client_id` and `client_secret` in the form.
    Post,
}

/// POSTs `params` to the IdP's token endpoint (`issuer/token`) as a confidential client; returns
/// the status and the JSON body.
pub fn token_request(
    issuer: &str,
    client_id: &str,
    client_secret: &str,
    auth: ClientAuth,
    params: &[(&str, &str)],
) -> Result<(u16, Value)> {
    use crate::browser::form_urlencode;
    use base64::Engine as _;
    let mut form: Vec<(&str, &str)> = params.to_vec();
    let mut req = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("{issuer}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json");
    match auth {
        ClientAuth::Basic => {
            // RFC 6749 section 2.3.1: form-encode each part before joining them.
            let user = form_urlencode(&[("", client_id)]);
            let pass = form_urlencode(&[("", client_secret)]);
            let pair = format!("{}:{}", &user[1..], &pass[1..]);
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            req = req.header("authorization", format!("Basic {basic}"));
        }
        ClientAuth::Post => {
            form.push(("client_id", client_id));
            form.push(("client_secret", client_secret));
        }
    }
    let agent = crate::local_agent(Duration::from_secs(10));
    let mut resp = agent
        .run(req.body(form_urlencode(&form))?)
        .with_context(|| format!("POST {issuer}/token"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    let json = serde_json::from_str(&text)
        .with_context(|| format!("token response ({status}) is not JSON: {text}"))?;
    Ok((status, json))
}

/// The payload of a JWT, decoded without any verification.
pub fn jwt_payload(jwt: &str) -> Result<Value> {
    use base64::Engine as _;
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("not a JWT: {jwt}"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("JWT payload is not base64url")?;
    serde_json::from_slice(&bytes).context("JWT payload is not JSON")
}

/// How [`forge_id_token`] signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    /// RS256 with the IdP's own RSA key (a valid signature: only the claims can be wrong).
    Rs256,
    /// RS256 with a fresh key, under the IdP key's `kid`: a bad signature.
    OtherKey,
    /// `alg: none`, empty signature.
    AlgNone,
    /// HS256 keyed with the IdP's RSA public key as PEM (algorithm confusion).
    Hs256PublicKey,
}

/// An ID token signed as `how` says, with `header` merged over `{alg, typ, kid}` and `payload` as
/// the claims. `jwks_file` holds the IdP's private keys (the stack's `idp-jwks.json`).
pub fn forge_id_token(
    jwks_file: &Path,
    how: Forge,
    header: &Value,
    payload: &Value,
) -> Result<String> {
    let how = match how {
        Forge::Rs256 => "rs256",
        Forge::OtherKey => "other-key",
        Forge::AlgNone => "none",
        Forge::Hs256PublicKey => "hs256-pubkey",
    };
    let spec = json!({ "jwks_file": jwks_file, "how": how, "header": header, "payload": payload });
    let out = Command::new(node_bin())
        .arg(idp_dir().join("forge.mjs"))
        .arg(spec.to_string())
        .output()
        .context("running forge.mjs")?;
    if !out.status.success() {
        bail!("forge.mjs failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start that stalls is noted in the program's log, and the log still holds each of the
    /// program's lines once per start: tests count the IdP's requests in it.
    #[test]
    fn a_stalled_start_is_noted_without_copying_the_log() {
        let dir = crate::target_dir()
            .join("e2e")
            .join("harness-stalled-start");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let started = start_node_within("stall", &dir, Duration::from_millis(1500), |cmd| {
            // Writes a request line to its log, then never announces a port.
            cmd.args([
                "-e",
                "process.stderr.write('GET /jwks 200 0ms\\n'); setInterval(() => {}, 1000)",
            ]);
        });
        let e = started
            .err()
            .expect("a program that announces no port must not start");
        assert!(format!("{e:#}").contains("no port announced"), "{e:#}");
        let log = fs::read_to_string(dir.join("stall.log")).unwrap();
        // Four starts, each noted once.
        assert_eq!(log.matches("GET /jwks ").count(), 4, "{log}");
        assert_eq!(log.matches("; starting it again").count(), 4, "{log}");
    }
}
