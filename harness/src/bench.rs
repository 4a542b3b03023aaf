//! `harness bench`: the same workload through Envoy with each filter configuration, side by side.
//!
//! The method of `PERF-FACTS.md`: every configuration is its own Envoy (`--concurrency 1`, pinned
//! to core 0) answering from a `direct_response` route, so no upstream is measured; wrk (`-t1
//! -c16`) runs pinned to core 1. "CPU µs/req" is Envoy's CPU time (the scheduler's count in
//! `/proc/<pid>/task/*/schedstat`) over the run, divided by the requests Envoy completed
//! (`http.bench.downstream_rq_completed`).
//!
//! On a shared host the cost of the same work drifts by tens of % within minutes, as other tenants load
//! the caches and the physical core. So each configuration runs right next to its baseline, round after
//! round (alternating which goes first), and its overhead is the median of those pairs' differences.
//! Pairs in which other jobs or the hypervisor took more than a few % of Envoy's core are left out, and
//! a goal is judged only when the remaining pairs' 95 % interval of that median lies on one side of it.
//!
//! Each run is checked: a logged-in request must come back 200 from the route (not a redirect), and
//! over all the runs the filter must have counted each as logged in.
//!
//! A real login through [`Stack`] (IdP, filter, browser) provides the session cookie and tokens;
//! larger sessions are sealed here with the filter's own [`Keys`] from the real session, with the
//! ID token padded to size (nothing on those paths verifies its signature).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use oidc_filter::secret::Secret;
use oidc_filter::session::{self, Keys, Session};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::envoy::{Envoy, EnvoyOptions};
use crate::{Browser, SiteSpec, Stack, StackSpec};

/// The session cookie's name (the filter's default).
const COOKIE_NAME: &str = "_oidc_session";
/// The site (client id) the benchmark logs in to.
const SITE: &str = "bench";
/// Envoy runs on this core, wrk on [`LOAD_CORE`].
const ENVOY_CORE: usize = 0;
const LOAD_CORE: usize = 1;
/// wrk's connections (one thread).
const CONNECTIONS: u32 = 16;
/// The body of the `direct_response` route: what "reached upstream" looks like.
const UPSTREAM_BODY: &str = "upstream\n";
/// The native OAuth2 filter's HMAC secret (also its token encryption key, hashed).
const OAUTH2_HMAC_SECRET: &str = "bench-oauth2-hmac-secret-0123456789abcdef";
/// Lifetime of the IdP's ID tokens in the benchmark: longer than any run, so no refresh happens.
const ID_TOKEN_TTL: u64 = 4 * 3600;
/// What a browser sends; without it a request without a session gets 401, not a login redirect.
const ACCEPT_HTML: &str = "text/html,application/xhtml+xml";
/// Envoy and wrk run at this nice level (when allowed): other jobs on the machine yield to them.
const NICE: i32 = -19;
/// The share of runs' requests that must have the expected outcome.
const MIN_OK_SHARE: f64 = 0.99;

// The goals of issue 5, as benchmark figures.
/// Envoy CPU per request over no filter, µs: (configuration, what it is, at most).
const CPU_GOALS: [(&str, &str, f64); 3] = [
    ("oidc-session", "hot path (valid session)", 5.0),
    ("oidc-redirect", "unauthenticated redirect", 6.0),
    ("oidc-session-8k", "8 KB session", 10.0),
];
/// oidc-filter against what users would run instead, paired directly: (oidc-filter's side-by-side
/// configuration, the alternative's). Each pair runs as its own two Envoys (`NAME-vs-RIVAL`, `vs-RIVAL`;
/// pairs with the same alternative share its Envoy). The Lua copy sets no identity headers: it is also
/// paired with oidc-filter configured without them, the same job.
const RIVALS: [(&str, &str); 4] = [
    ("oidc-session", "lua-copy"),
    ("oidc-session-bare", "lua-copy"),
    ("oidc-session", "oauth2-session"),
    ("oidc-redirect", "oauth2-redirect"),
];
const GOAL_WASM_BYTES: u64 = 300 * 1024;
const GOAL_MEMORY_MIB_PER_WORKER: f64 = 30.0;
/// The most CPU other jobs (or the hypervisor) may take on Envoy's core during either run of a pair for
/// the pair to count as quiet.
const MAX_FOREIGN_CPU_PCT: f64 = 5.0;
/// Quiet pairs a CPU goal needs to be judged: with fewer, no interval of the median reaches 95 %.
const MIN_QUIET_PAIRS: usize = 6;

const USAGE: &str = "\
usage: harness bench [--quick] [--out DIR] [--wasm FILE] [--only NAME,...] [--duration SECS] [--rounds N]

  --quick         1 round per configuration (default: 20 rounds side by side, 40 for the rivals, 10 for
                  the scale tables; each run 1 s)
  --out DIR       where results.md, results.svg and results.json go (default: bench/ at the workspace root)
  --wasm FILE     benchmark this module as it is (default: the release build after wasm-opt -Oz)
  --compare FILE  also run the oidc-filter rows of the side-by-side table with this module (an A/B
                  of two builds in the same rounds; rows named NAME@B)
  --only NAMES    only these configurations (comma-separated names from the tables, or whole groups:
                  main, rivals, token-size, other-cookies, workers)
  --duration S    seconds per run, every configuration
  --rounds N      rounds
  --instructions  only count instructions per request under callgrind (the side-by-side, token-size and
                  other-cookies configurations; deterministic, unlike CPU time on a shared machine)
  --no-instructions  skip the instruction counts a full run ends with
  --profile       instead of a benchmark: where the filter's own instructions per logged-in request go,
                  by Wasm function (the module in Node's V8 under callgrind; prints a table)
  --session-bytes N  with --profile: a session whose cookies add up to N bytes (8192: the 8 KB row)";

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// One short round (a smoke run).
    pub quick: bool,
    /// Where to write the report; `None`: nowhere.
    pub out: Option<PathBuf>,
    /// The module to benchmark as it is; `None`: the release build through `wasm-opt -Oz`.
    pub wasm: Option<PathBuf>,
    /// A second module: the main group's oidc-filter rows run with it too (`NAME@B`).
    pub compare: Option<PathBuf>,
    /// Only these configurations; empty: all.
    pub only: Vec<String>,
    /// Seconds per run, overriding the defaults.
    pub duration: Option<Duration>,
    /// Rounds, overriding the defaults.
    pub rounds: Option<u32>,
    /// Instruction counts under callgrind: also (default for a full run), only, or not at all.
    pub instructions: Instructions,
    /// Profile the filter's own code instead (`profile.rs`).
    pub profile: bool,
    /// For the profile: a session whose cookies add up to this many bytes instead of the real one.
    pub session_bytes: Option<usize>,
}

/// Whether to count instructions per request under callgrind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Instructions {
    /// After the timed runs, unless `--quick`.
    #[default]
    Also,
    /// Instead of the timed runs.
    Only,
    /// Not at all.
    Skip,
}

impl Options {
    fn rounds(&self, group: Group) -> u32 {
        match (self.rounds, self.quick, group) {
            (Some(n), _, _) => n,
            (None, true, _) => 1,
            (None, false, Group::Main) => 20,
            // The direct pairs decide "cheaper" only when the interval excludes zero: more rounds.
            (None, false, Group::Rivals) => 40,
            (None, false, _) => 10,
        }
    }

    /// Seconds per run: short, so a run and its baseline's see the machine alike.
    fn duration(&self) -> Duration {
        self.duration.unwrap_or(Duration::from_secs(1))
    }

    fn warmup(&self) -> Duration {
        if self.quick || self.duration.is_some_and(|d| d < Duration::from_secs(2)) {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(2)
        }
    }

    /// Whether `--only` asks for configuration `name` of `group`: by its name, or by the group's. A name
    /// asks for its `--compare` twin too (`NAME@B`); `NAME@B` asks for the twin alone.
    fn wants(&self, name: &str, group: Group) -> bool {
        let plain = name.strip_suffix("@B").unwrap_or(name);
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|o| o == plain || o == name || o == group.dir())
    }
}

/// `harness bench ARGS`.
pub fn cli(args: &[String]) -> Result<()> {
    let mut opts = Options {
        out: Some(crate::workspace_root().join("bench")),
        ..Options::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--out" => opts.out = Some(PathBuf::from(value("--out")?)),
            "--wasm" => opts.wasm = Some(PathBuf::from(value("--wasm")?)),
            "--compare" => opts.compare = Some(PathBuf::from(value("--compare")?)),
            "--only" => {
                opts.only = value("--only")?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            "--duration" => {
                let secs: u64 = value("--duration")?.parse().context("--duration")?;
                opts.duration = Some(Duration::from_secs(secs.max(1)));
            }
            "--rounds" => opts.rounds = Some(value("--rounds")?.parse().context("--rounds")?),
            "--instructions" => opts.instructions = Instructions::Only,
            "--no-instructions" => opts.instructions = Instructions::Skip,
            "--profile" => opts.profile = true,
            "--session-bytes" => {
                opts.session_bytes = Some(
                    value("--session-bytes")?
                        .parse()
                        .context("--session-bytes")?,
                );
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if opts.profile {
        return profile(&opts);
    }
    let report = run(&opts)?;
    print!("{}", report.markdown());
    if let Some(out) = &opts.out {
        report.write(out)?;
        eprintln!("bench: wrote {}", out.join("results.md").display());
    }
    Ok(())
}

/// Which table a configuration belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Side by side with the alternatives.
    Main,
    /// The hot path against the token size.
    TokenSize,
    /// The hot path against the number of other cookies.
    OtherCookies,
    /// The hot path with 1 and 2 workers (and the memory figures).
    Workers,
    /// oidc-filter paired with each alternative directly, not through the floor.
    Rivals,
}

impl Group {
    const ALL: [Group; 5] = [
        Group::Main,
        Group::Rivals,
        Group::TokenSize,
        Group::OtherCookies,
        Group::Workers,
    ];

    fn dir(self) -> &'static str {
        match self {
            Group::Main => "main",
            Group::TokenSize => "token-size",
            Group::OtherCookies => "other-cookies",
            Group::Workers => "workers",
            Group::Rivals => "rivals",
        }
    }
}

/// The HTTP filters in front of the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// None: the floor.
    None,
    /// `harness/testdata/empty.wat`: returns from its one callback, the floor for any Wasm filter.
    WasmEmpty,
    /// `harness/testdata/set_header.wat`: read one header, set one.
    WasmSetHeader,
    /// `harness/testdata/cookie_copy.wat`: the Lua copy's job in Wasm, nothing more.
    WasmCopy,
    /// A Lua filter copying the session cookie into `Authorization`.
    Lua,
    /// oidc-filter alone.
    Oidc,
    /// oidc-filter, `jwt_authn` and `rbac`: Istio's chain (`jwt_authn` as istiod generates it, unless the
    /// variant asks for its verified-token cache).
    OidcIstio,
    /// Envoy's native OAuth2 filter.
    OAuth2,
}

/// What each request carries.
#[derive(Clone, Debug)]
pub enum Cookies {
    /// No `Cookie` header.
    None,
    /// This `Cookie` header.
    Header(String),
    /// The native OAuth2 filter's cookies for a logged-in user (computed once the port is known:
    /// its HMAC covers the `Host` header).
    OAuth2,
}

/// What a request must come back with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// 200 from the route: the request was let through (and, for a login filter, as logged in).
    Upstream,
    /// 302: sent to log in.
    Redirect,
}

/// One configuration: an Envoy and the requests sent to it.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Short name (`--only`, the JSON).
    pub name: String,
    /// What the table says.
    pub label: String,
    pub group: Group,
    pub chain: Chain,
    /// Envoy's `--concurrency`.
    pub workers: u32,
    pub cookies: Cookies,
    pub expect: Expect,
    /// The configuration whose cost this one's overhead is measured against.
    pub baseline: Option<String>,
    /// The forwarded token's size, where it is the point of the row.
    pub token_bytes: Option<usize>,
    /// Other cookies on the request, where that is the point of the row.
    pub other_cookies: Option<usize>,
    /// Runs the `--compare` module instead of the one benchmarked.
    pub compare: bool,
    /// oidc-filter sets its default identity headers (`false`: configured with `identity_headers: {}`).
    pub identity_headers: bool,
    /// `jwt_authn` keeps verified tokens (`jwt_cache_config`), which istiod never sets.
    pub jwt_cache: bool,
    /// The side-by-side configuration this one repeats (a rivals row), for its instruction count.
    pub same_as: Option<String>,
}

/// One run of one configuration.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Requests Envoy completed during the run.
    pub requests: u64,
    /// Requests wrk completed.
    pub wrk_requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Envoy's CPU time (all threads, `/proc/<pid>/task/*/schedstat`) per completed request.
    pub cpu_us_per_req: f64,
    /// Responses with 2xx (the route's 200), 3xx, and anything else.
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_other: u64,
    /// wrk's socket errors and timeouts.
    pub socket_errors: u64,
    /// CPU time on Envoy's core not spent by Envoy, in % of the run: other jobs' interference, the
    /// kernel's network work for other processes, and the hypervisor's (steal).
    pub foreign_cpu_pct: f64,
    /// The part of `foreign_cpu_pct` the hypervisor took (`steal` in `/proc/stat`): other tenants of the
    /// physical machine, which nothing inside this one can stop.
    pub steal_pct: f64,
    /// Envoy's CPU time in % of the run: near 100 when wrk keeps it saturated, as it should.
    pub envoy_busy_pct: f64,
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "wrk_requests": self.wrk_requests,
            "rps": self.rps,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "cpu_us_per_req": self.cpu_us_per_req,
            "status_2xx": self.status_2xx,
            "status_3xx": self.status_3xx,
            "status_other": self.status_other,
            "socket_errors": self.socket_errors,
            "foreign_cpu_pct": self.foreign_cpu_pct,
            "steal_pct": self.steal_pct,
            "envoy_busy_pct": self.envoy_busy_pct,
        })
    }
}

/// A configuration's results.
#[derive(Clone, Debug)]
pub struct Row {
    pub variant: Variant,
    pub samples: Vec<Sample>,
    /// Each run of this configuration next to its baseline's: (this one, the baseline). The overhead is
    /// taken from these pairs.
    pub pairs: Vec<(Sample, Sample)>,
    /// Requests Envoy completed over all the runs, and of them, those the filter counted as logged in
    /// (oidc-filter `sessions_forwarded`, OAuth2 `oauth_success`; 0 for other chains). The filter hands
    /// its counters to Envoy on its tick, so they are read once around all the runs, not per run.
    pub run_requests: u64,
    pub run_logged_in: u64,
    /// Bytes of the `Cookie` header sent.
    pub cookie_bytes: usize,
    /// Envoy's VmRSS once started and warmed up, and after the last run, in KiB.
    pub rss_idle_kib: u64,
    pub rss_loaded_kib: u64,
    /// Why the configuration could not be measured or failed a check.
    pub problem: Option<String>,
}

impl Row {
    /// The median of `f` over the runs.
    pub fn median(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median(self.samples.iter().map(f).collect())
    }

    fn min_max(&self, f: impl Fn(&Sample) -> f64) -> (f64, f64) {
        let v: Vec<f64> = self.samples.iter().map(f).collect();
        (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    }
}

/// One configuration's instruction count.
#[derive(Clone, Debug)]
pub struct InstrRow {
    pub variant: Variant,
    /// Envoy's instructions (all threads, user space) per request while the counted requests ran.
    pub per_request: f64,
    /// Per request, from callgrind's cache and branch simulation (the host's cache sizes): first-level
    /// instruction-cache misses, data-cache misses (reads and writes), and mispredicted branches
    /// (conditional and indirect). CPU time weighs these beyond their instructions.
    pub i1_misses: f64,
    pub d1_misses: f64,
    pub mispredicts: f64,
    pub requests: u64,
    pub problem: Option<String>,
}

/// Module sizes.
#[derive(Clone, Debug, Default)]
pub struct Sizes {
    /// The module benchmarked.
    pub module: PathBuf,
    /// The release build, and the same after `wasm-opt -Oz`, when those were used.
    pub release_bytes: Option<u64>,
    pub optimized_bytes: Option<u64>,
}

/// Everything measured.
pub struct Report {
    pub rows: Vec<Row>,
    /// Instructions per request under callgrind, for the side-by-side configurations.
    pub instructions: Vec<InstrRow>,
    pub sizes: Sizes,
    /// How the machine looked: core count, CPU model, load averages before and after.
    pub machine: String,
    pub load_before: String,
    pub load_after: String,
    /// Per group: rounds, and seconds per run.
    pub runs: Vec<(Group, u32, Duration)>,
    pub oauth2_encrypted: bool,
    pub pinned: bool,
    /// Envoy and wrk ran at [`NICE`].
    pub boosted: bool,
}

/// Runs the benchmark: a real login for the session, then each group of configurations.
pub fn run(opts: &Options) -> Result<Report> {
    let load_before = loadavg();
    let dir = crate::target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pinned = std::thread::available_parallelism().map_or(1, usize::from) > LOAD_CORE;
    if !pinned {
        eprintln!("bench: fewer than 2 cores: Envoy and wrk are not pinned, figures are rough");
    }

    let sizes = module(opts, &dir)?;
    let set_header = wat_module(&dir, "set_header")?;
    let cookie_copy = wat_module(&dir, "cookie_copy")?;
    let empty = wat_module(&dir, "empty")?;
    // The stack's IdP stays up for the runs: their filters fetch its discovery and keys.
    let (_stack, login) = log_in(&sizes.module)?;
    let oauth2_encrypted = openssl_works();
    // Only root may raise priorities; without it the figures are more exposed to other jobs.
    let boosted = Command::new("nice")
        .args(["-n", &NICE.to_string(), "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        // SAFETY: geteuid has no preconditions.
        && unsafe { libc::geteuid() } == 0;
    if !boosted {
        eprintln!("bench: cannot raise priorities (not root): other jobs on the machine add noise");
    }
    let ctx = Ctx {
        opts,
        dir,
        oidc_wasm: sizes.module.clone(),
        set_header,
        cookie_copy,
        empty,
        login,
        oauth2_encrypted,
        pinned,
        boosted,
    };

    let mut rows = Vec::new();
    for group in Group::ALL {
        if opts.instructions == Instructions::Only {
            break;
        }
        let variants: Vec<Variant> = ctx
            .variants(group)?
            .into_iter()
            .filter(|v| opts.wants(&v.name, group))
            .collect();
        if variants.is_empty() {
            continue;
        }
        rows.extend(ctx.run_group(group, variants)?);
    }
    let counting = match opts.instructions {
        Instructions::Only => true,
        Instructions::Also => !opts.quick,
        Instructions::Skip => false,
    };
    let mut instructions = Vec::new();
    if counting {
        // The side-by-side configurations asked for, and those the rivals rows repeat; then the token-size
        // and other-cookies rows, whose growth the CPU figures alone are too noisy to show.
        let repeated = |name: &str| {
            rows.iter()
                .any(|r| r.variant.same_as.as_deref() == Some(name))
        };
        let mut variants: Vec<Variant> = Vec::new();
        for group in [Group::Main, Group::TokenSize, Group::OtherCookies] {
            variants.extend(
                ctx.variants(group)?
                    .into_iter()
                    .filter(|v| opts.wants(&v.name, group) || repeated(&v.name)),
            );
        }
        eprintln!(
            "bench: instructions per request under callgrind ({} configurations, {INSTR_REQUESTS} requests each)",
            variants.len()
        );
        for v in variants {
            instructions.push(ctx.count_instructions(v)?);
        }
    }
    Ok(Report {
        rows,
        instructions,
        sizes,
        machine: machine(),
        load_before,
        load_after: loadavg(),
        runs: Group::ALL
            .iter()
            .map(|g| (*g, opts.rounds(*g), opts.duration()))
            .collect(),
        oauth2_encrypted,
        pinned,
        boosted,
    })
}

/// The module to benchmark, and its sizes.
fn module(opts: &Options, dir: &Path) -> Result<Sizes> {
    if let Some(w) = &opts.wasm {
        let bytes = fs::metadata(w)
            .with_context(|| format!("reading {}", w.display()))?
            .len();
        return Ok(Sizes {
            module: w.clone(),
            release_bytes: None,
            optimized_bytes: Some(bytes),
        });
    }
    let release = crate::release_wasm_path()?;
    let out = dir.join("oidc_filter.opt.wasm");
    crate::module::finish("wasm-opt", &release, &out)?;
    Ok(Sizes {
        module: out.clone(),
        release_bytes: Some(fs::metadata(&release)?.len()),
        optimized_bytes: Some(fs::metadata(&out)?.len()),
    })
}

/// A real login through a stack running `module`: the stack, and what the login produced.
fn log_in(module: &Path) -> Result<(Stack, Login)> {
    eprintln!("bench: logging in through a real stack");
    let stack = Stack::start(StackSpec {
        wasm: Some(module.to_path_buf()),
        concurrency: 1,
        envoy_log_level: "warning".into(),
        ..StackSpec::new(
            "bench",
            vec![SiteSpec::new(SITE).idp_client(json!({ "id_token_ttl": ID_TOKEN_TTL }))],
        )
    })?;
    let login = Login::new(&stack)?;
    Ok((stack, login))
}

/// `bench --profile`: the benchmark's real login, then its logged-in request played in Node's V8.
fn profile(opts: &Options) -> Result<()> {
    let dir = crate::target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let sizes = module(opts, &dir)?;
    let (_, login) = log_in(&sizes.module)?;
    let input = crate::profile::Input {
        config: login.filter_config.to_string(),
        env: vec![
            (crate::client_secret_env(SITE), login.client_secret.clone()),
            (
                crate::COOKIE_KEYS_ENV.to_string(),
                crate::DEFAULT_COOKIE_KEYS.to_string(),
            ),
        ],
        cookie: match opts.session_bytes {
            Some(bytes) => login.mint_session_of(bytes)?.0,
            None => login.cookie.clone(),
        },
    };
    eprintln!("bench: profiling the logged-in request in Node's V8 under callgrind");
    print!("{}", crate::profile::run(&input, &dir.join("profile"))?);
    Ok(())
}

/// `harness/testdata/NAME.wat`, compiled.
fn wat_module(dir: &Path, name: &str) -> Result<PathBuf> {
    let wat = crate::workspace_root().join(format!("harness/testdata/{name}.wat"));
    let out = dir.join(format!("{name}.wasm"));
    crate::module::wat2wasm(&wat, &out, &[])?;
    Ok(out)
}

/// What a real login produced.
struct Login {
    /// The browser's session cookies, as a `Cookie` header.
    cookie: String,
    /// The opened session.
    session: Session,
    keys: Keys,
    /// A token response for the same user (refresh grant): the native OAuth2 filter's cookies.
    access_token: String,
    id_token: String,
    refresh_token: String,
    issuer: String,
    client_id: String,
    filter_config: Value,
    client_secret: String,
}

impl Login {
    fn new(stack: &Stack) -> Result<Login> {
        let site = stack.site(SITE)?;
        // The filter answers 503 until it has fetched discovery and JWKS.
        let agent = crate::local_agent(Duration::from_secs(5));
        crate::process::poll(Duration::from_secs(30), || {
            let status = agent
                .get(&site.url("/"))
                .header("accept", ACCEPT_HTML)
                .call()
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            Ok((status == 302).then_some(()))
        })
        .context("the filter did not get ready for a login")?;
        let browser = Browser::new();
        let done = browser.login(&site.url("/"), "alice")?;
        if done.response.status != 200 {
            bail!(
                "login ended with {}:\n{}",
                done.response.status,
                crate::browser::describe_chain(&done.chain)
            );
        }
        let mut chunks: Vec<(String, String)> = browser
            .cookies("localhost")
            .into_iter()
            .filter(|(n, _)| session::is_session_cookie(COOKIE_NAME, n))
            .collect();
        chunks.sort_by_key(|(n, _)| n.len());
        let cookie = join_cookies(&chunks);
        let sealed = session::join(&cookie, COOKIE_NAME)
            .map_err(|e| anyhow!("session cookie: {e:?}"))?
            .ok_or_else(|| anyhow!("no session cookie after the login"))?;
        let raw_key = URL_SAFE_NO_PAD
            .decode(crate::DEFAULT_COOKIE_KEYS)
            .context("cookie key")?;
        let keys = Keys::new(&[raw_key]).map_err(|e| anyhow!("cookie key: {e}"))?;
        let plain = keys
            .open(COOKIE_NAME, &sealed)
            .map_err(|e| anyhow!("opening the session cookie: {e}"))?;
        let session = Session::decode(&plain).map_err(|e| anyhow!("session: {e}"))?;
        let refresh_token = session
            .refresh_token
            .as_ref()
            .map(|t| t.expose().to_string())
            .ok_or_else(|| anyhow!("the session has no refresh token"))?;
        let (status, tokens) = crate::idp::token_request(
            stack.issuer(),
            &site.client_id,
            &site.client_secret,
            crate::idp::ClientAuth::Basic,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
            ],
        )?;
        if status != 200 {
            bail!("refresh grant: {status} {tokens}");
        }
        let field = |name: &str| {
            tokens[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("token response without {name}"))
        };
        Ok(Login {
            cookie,
            access_token: field("access_token")?,
            id_token: field("id_token")?,
            refresh_token: tokens["refresh_token"]
                .as_str()
                .map_or(refresh_token, str::to_string),
            session,
            keys,
            issuer: stack.issuer().to_string(),
            client_id: site.client_id.clone(),
            filter_config: site.filter_config.clone(),
            client_secret: site.client_secret.clone(),
        })
    }

    /// The real session with `id_token` in place of its ID token, sealed into cookies.
    fn mint(&self, id_token: &str) -> Result<String> {
        let mut s = self.session.clone();
        s.id_token = Secret::new(id_token);
        let mut nonce = [0u8; 24];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut nonce))
            .context("reading /dev/urandom")?;
        let sealed = self.keys.seal(COOKIE_NAME, &s.encode(), nonce);
        let chunks = session::split(COOKIE_NAME, &sealed).map_err(|e| anyhow!("{e:?}"))?;
        Ok(join_cookies(&chunks))
    }

    /// A session whose cookies add up to about `bytes`.
    fn mint_session_of(&self, bytes: usize) -> Result<(String, usize)> {
        let real = self.session.id_token.expose().to_string();
        let mut token_len = real.len() + bytes.saturating_sub(self.cookie.len()) * 3 / 4;
        let mut best = (self.mint(&padded_token(&real, token_len)?)?, token_len);
        for _ in 0..4 {
            let have = best.0.len();
            if have.abs_diff(bytes) < 24 {
                break;
            }
            let adjust = have.abs_diff(bytes) * 3 / 4;
            token_len = if have > bytes {
                token_len.saturating_sub(adjust)
            } else {
                token_len + adjust
            };
            best = (self.mint(&padded_token(&real, token_len)?)?, token_len);
        }
        Ok(best)
    }
}

/// `real` (a JWT) with a `pad` claim making it `len` bytes long; the signature no longer matches.
fn padded_token(real: &str, len: usize) -> Result<String> {
    let mut parts = real.splitn(3, '.');
    let (Some(header), Some(payload), Some(sig)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("the ID token is not a JWT");
    };
    if len <= real.len() {
        return Ok(real.to_string());
    }
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
    let mut pad = (len - real.len()) * 3 / 4;
    let mut token = String::new();
    for _ in 0..4 {
        claims["pad"] = json!("x".repeat(pad));
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
        token = format!("{header}.{body}.{sig}");
        if token.len() == len {
            break;
        }
        let diff = token.len().abs_diff(len) * 3 / 4;
        pad = if token.len() > len {
            pad.saturating_sub(diff.max(1))
        } else {
            pad + diff.max(1)
        };
    }
    Ok(token)
}

fn join_cookies(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `n` cookies like the ones analytics and consent banners leave, about 40 bytes each.
fn other_cookies(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("_ga_X{i:03}"),
                format!("GS1.1.{}.{}.1.1.0", 1_700_000_000 + i * 7919, 17 + i),
            )
        })
        .collect()
}

/// The session cookie among `n` others, half before and half after it.
fn with_other_cookies(session: &str, n: usize) -> String {
    let others = other_cookies(n);
    let (before, after) = others.split_at(n / 2);
    let mut parts: Vec<String> = before.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.push(session.to_string());
    parts.extend(after.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join("; ")
}

struct Ctx<'a> {
    opts: &'a Options,
    dir: PathBuf,
    oidc_wasm: PathBuf,
    set_header: PathBuf,
    cookie_copy: PathBuf,
    empty: PathBuf,
    login: Login,
    oauth2_encrypted: bool,
    pinned: bool,
    boosted: bool,
}

/// A started configuration.
struct Running {
    variant: Variant,
    envoy: Envoy,
    pid: u32,
    port: u16,
    headers: Vec<(String, String)>,
    rss_idle_kib: u64,
    load: Load,
}

impl Ctx<'_> {
    fn variants(&self, group: Group) -> Result<Vec<Variant>> {
        let real = &self.login.cookie;
        let v = |name: &str,
                 label: &str,
                 chain: Chain,
                 cookies: Cookies,
                 expect,
                 baseline: Option<&str>| Variant {
            name: name.into(),
            label: label.into(),
            group,
            chain,
            workers: 1,
            cookies,
            expect,
            baseline: baseline.map(str::to_string),
            token_bytes: None,
            other_cookies: None,
            compare: false,
            identity_headers: true,
            jwt_cache: false,
            same_as: None,
        };
        let session = |c: &str| Cookies::Header(c.to_string());
        let up = Expect::Upstream;
        let out = match group {
            Group::Main => {
                let (big, _) = if self.opts.wants("oidc-session-8k", group)
                    || self.opts.wants("none-8k", group)
                {
                    self.login.mint_session_of(8 * 1024)?
                } else {
                    (String::new(), 0)
                };
                let oauth2 = if self.oauth2_encrypted {
                    "Envoy OAuth2 filter, logged in (HMAC + AES cookies)"
                } else {
                    "Envoy OAuth2 filter, logged in (HMAC cookies, encryption off)"
                };
                let mut rows = vec![
                    v("none", "no filter", Chain::None, session(real), up, None),
                    v(
                        "none-nocookie",
                        "no filter, no cookie",
                        Chain::None,
                        Cookies::None,
                        up,
                        None,
                    ),
                    v(
                        "none-8k",
                        "no filter, 8 KB session cookie",
                        Chain::None,
                        session(&big),
                        up,
                        None,
                    ),
                    v(
                        "wasm-empty",
                        "Wasm: returns from its one callback (.wat)",
                        Chain::WasmEmpty,
                        session(real),
                        up,
                        Some("none"),
                    ),
                    v(
                        "wasm-set-header",
                        "Wasm: read one header, set one (.wat)",
                        Chain::WasmSetHeader,
                        session(real),
                        up,
                        Some("none"),
                    ),
                    v(
                        "wasm-copy",
                        "Wasm: copy the cookie into Authorization (.wat)",
                        Chain::WasmCopy,
                        session(real),
                        up,
                        Some("none"),
                    ),
                    v(
                        "lua-copy",
                        "Lua: copy the cookie into Authorization",
                        Chain::Lua,
                        session(real),
                        up,
                        Some("none"),
                    ),
                    v(
                        "oidc-session",
                        "oidc-filter, valid session",
                        Chain::Oidc,
                        session(real),
                        up,
                        Some("none"),
                    ),
                    Variant {
                        identity_headers: false,
                        ..v(
                            "oidc-session-bare",
                            "oidc-filter, valid session, no identity headers",
                            Chain::Oidc,
                            session(real),
                            up,
                            Some("none"),
                        )
                    },
                    v(
                        "oidc-session-8k",
                        "oidc-filter, valid 8 KB session (3 chunks)",
                        Chain::Oidc,
                        session(&big),
                        up,
                        Some("none-8k"),
                    ),
                    v(
                        "oidc-istio",
                        "oidc-filter + jwt_authn + RBAC, as istiod sets them",
                        Chain::OidcIstio,
                        session(real),
                        up,
                        Some("none"),
                    ),
                    Variant {
                        jwt_cache: true,
                        ..v(
                            "oidc-istio-cached",
                            "oidc-filter + jwt_authn with jwt_cache_config + RBAC",
                            Chain::OidcIstio,
                            session(real),
                            up,
                            Some("none"),
                        )
                    },
                    v(
                        "oauth2-session",
                        oauth2,
                        Chain::OAuth2,
                        Cookies::OAuth2,
                        up,
                        Some("none"),
                    ),
                    v(
                        "oidc-redirect",
                        "oidc-filter, no session: login redirect",
                        Chain::Oidc,
                        Cookies::None,
                        Expect::Redirect,
                        Some("none-nocookie"),
                    ),
                    v(
                        "oauth2-redirect",
                        "Envoy OAuth2 filter, no session: redirect",
                        Chain::OAuth2,
                        Cookies::None,
                        Expect::Redirect,
                        Some("none-nocookie"),
                    ),
                ];
                if self.opts.compare.is_some() {
                    let b: Vec<Variant> = rows
                        .iter()
                        .filter(|r| matches!(r.chain, Chain::Oidc | Chain::OidcIstio))
                        .map(|r| Variant {
                            name: format!("{}@B", r.name),
                            label: format!("{} [B]", r.label),
                            compare: true,
                            ..r.clone()
                        })
                        .collect();
                    rows.extend(b);
                }
                rows
            }
            Group::Rivals => {
                // The same configurations as side by side, so the pairs differ in nothing else.
                let main = self.variants(Group::Main)?;
                let like = |name: &str, renamed: String, baseline: Option<String>| {
                    main.iter()
                        .find(|m| m.name == name)
                        .map(|m| Variant {
                            name: renamed,
                            group,
                            baseline,
                            same_as: Some(name.to_string()),
                            ..m.clone()
                        })
                        .with_context(|| format!("no side-by-side configuration {name}"))
                };
                let mut out = Vec::new();
                for (ours, theirs) in RIVALS {
                    let rival = like(theirs, format!("vs-{theirs}"), None)?;
                    let oidc = like(
                        ours,
                        format!("{ours}-vs-{theirs}"),
                        Some(rival.name.clone()),
                    )?;
                    if !out.iter().any(|v: &Variant| v.name == rival.name) {
                        out.push(rival);
                    }
                    out.push(oidc);
                }
                out
            }
            Group::TokenSize => {
                let mut out = Vec::new();
                let real_token = self.login.session.id_token.expose().to_string();
                for kb in [1usize, 2, 4, 8] {
                    let token = padded_token(&real_token, kb * 1024)?;
                    let cookie = self.login.mint(&token)?;
                    let mut none = v(
                        &format!("none-token-{kb}k"),
                        &format!("no filter, {kb} KB token"),
                        Chain::None,
                        session(&cookie),
                        up,
                        None,
                    );
                    none.token_bytes = Some(token.len());
                    let mut oidc = v(
                        &format!("oidc-token-{kb}k"),
                        &format!("oidc-filter, {kb} KB token"),
                        Chain::Oidc,
                        session(&cookie),
                        up,
                        None,
                    );
                    oidc.baseline = Some(none.name.clone());
                    oidc.token_bytes = Some(token.len());
                    out.push(none);
                    out.push(oidc);
                }
                out
            }
            Group::OtherCookies => {
                let mut out = Vec::new();
                for n in [0usize, 10, 50] {
                    let cookie = with_other_cookies(real, n);
                    let mut none = v(
                        &format!("none-cookies-{n}"),
                        &format!("no filter, {n} other cookies"),
                        Chain::None,
                        session(&cookie),
                        up,
                        None,
                    );
                    none.other_cookies = Some(n);
                    let mut oidc = v(
                        &format!("oidc-cookies-{n}"),
                        &format!("oidc-filter, {n} other cookies"),
                        Chain::Oidc,
                        session(&cookie),
                        up,
                        None,
                    );
                    oidc.baseline = Some(none.name.clone());
                    oidc.other_cookies = Some(n);
                    out.push(none);
                    out.push(oidc);
                }
                out
            }
            Group::Workers => {
                let mut out = Vec::new();
                for w in [1u32, 2] {
                    let mut none = v(
                        &format!("none-workers-{w}"),
                        &format!("no filter, {w} worker(s)"),
                        Chain::None,
                        session(real),
                        up,
                        None,
                    );
                    none.workers = w;
                    let mut oidc = v(
                        &format!("oidc-workers-{w}"),
                        &format!("oidc-filter, {w} worker(s)"),
                        Chain::Oidc,
                        session(real),
                        up,
                        None,
                    );
                    oidc.workers = w;
                    oidc.baseline = Some(none.name.clone());
                    out.push(none);
                    out.push(oidc);
                }
                out
            }
        };
        Ok(out)
    }

    fn run_group(&self, group: Group, variants: Vec<Variant>) -> Result<Vec<Row>> {
        let duration = self.opts.duration();
        eprintln!(
            "bench: {} ({} configurations, {} x {}s, each next to its baseline)",
            group.dir(),
            variants.len(),
            self.opts.rounds(group),
            duration.as_secs()
        );
        let mut running = Vec::new();
        let mut rows = Vec::new();
        for v in variants {
            let r = self.start(group, v, false)?;
            rows.push(Row {
                variant: r.variant.clone(),
                samples: Vec::new(),
                pairs: Vec::new(),
                run_requests: 0,
                run_logged_in: 0,
                cookie_bytes: r
                    .headers
                    .iter()
                    .find(|(k, _)| k == "cookie")
                    .map_or(0, |(_, c)| c.len()),
                rss_idle_kib: 0,
                rss_loaded_kib: 0,
                problem: None,
            });
            running.push(r);
        }
        let mut counters_before = vec![(0, 0); running.len()];
        for ((r, row), before) in running
            .iter_mut()
            .zip(rows.iter_mut())
            .zip(&mut counters_before)
        {
            if let Err(e) = preflight(r) {
                row.problem = Some(format!("{e:#}"));
                continue;
            }
            // Warm-up: V8 tiers hot Wasm code up, caches fill.
            wrk(r.load, r.port, &r.headers, self.opts.warmup())?;
            r.rss_idle_kib = rss_kib(r.pid)?;
            row.rss_idle_kib = r.rss_idle_kib;
            *before = logged_in_counters(r)?;
        }
        // Each configuration runs right next to its baseline, so the pair sees the same machine: on a
        // shared host the cost of the same work moves by tens of % within minutes, much less within
        // seconds. A configuration without a baseline here (a baseline nothing is compared with) runs
        // alone.
        let index = |name: &str| rows.iter().position(|r| r.variant.name == name);
        let units: Vec<(usize, Option<usize>)> = rows
            .iter()
            .enumerate()
            .filter_map(
                |(i, r)| match r.variant.baseline.as_deref().and_then(index) {
                    Some(b) => Some((i, Some(b))),
                    None if rows
                        .iter()
                        .any(|o| o.variant.baseline.as_deref() == Some(&r.variant.name)) =>
                    {
                        None
                    }
                    None => Some((i, None)),
                },
            )
            .collect();
        let n = units.len();
        for round in 0..self.opts.rounds(group) {
            // Rotate the order so no configuration always runs first after a pause, and alternate
            // which of a pair runs first.
            for k in 0..n {
                let Some(&(i, base)) = units.get((k + round as usize) % n) else {
                    continue;
                };
                let order: Vec<usize> = match base {
                    Some(b) if round % 2 == 0 => vec![b, i],
                    Some(b) => vec![i, b],
                    None => vec![i],
                };
                if order
                    .iter()
                    .any(|&j| rows.get(j).is_none_or(|r| r.problem.is_some()))
                {
                    continue;
                }
                for j in order {
                    let (Some(r), Some(row)) = (running.get(j), rows.get_mut(j)) else {
                        continue;
                    };
                    let s = measure(r, duration)?;
                    eprintln!(
                        "  round {} {:<20} {:>8.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  {:>6.1} CPU us/req  (Envoy busy {:.0}%, foreign CPU {:.0}%, of it steal {:.0}%)",
                        round + 1,
                        r.variant.name,
                        s.rps,
                        s.p50_us,
                        s.p99_us,
                        s.cpu_us_per_req,
                        s.envoy_busy_pct,
                        s.foreign_cpu_pct,
                        s.steal_pct
                    );
                    if let Some(p) = check(&r.variant, &s, None) {
                        row.problem = Some(p);
                    }
                    row.samples.push(s);
                }
                // Both runs of the pair are the last of their rows.
                let last = |j: usize| rows.get(j).and_then(|r| r.samples.last()).cloned();
                if let (Some(b), Some(mine)) = (base, last(i))
                    && let (Some(theirs), Some(row)) = (last(b), rows.get_mut(i))
                {
                    row.pairs.push((mine, theirs));
                }
            }
        }
        for ((r, row), before) in running.iter().zip(rows.iter_mut()).zip(&counters_before) {
            row.rss_loaded_kib = rss_kib(r.pid).unwrap_or(0);
            if row.problem.is_some() {
                continue;
            }
            let (requests, logged_in) = logged_in_counters(r)?;
            row.run_requests = requests.saturating_sub(before.0);
            row.run_logged_in = logged_in.saturating_sub(before.1);
            let whole = Sample {
                requests: row.run_requests,
                status_2xx: row.samples.iter().map(|s| s.status_2xx).sum(),
                status_3xx: row.samples.iter().map(|s| s.status_3xx).sum(),
                ..Sample::default()
            };
            if let Some(p) = check(&row.variant, &whole, Some(row.run_logged_in)) {
                row.problem = Some(p);
            }
        }
        Ok(rows)
    }

    fn start(&self, group: Group, variant: Variant, callgrind: bool) -> Result<Running> {
        let dir = if callgrind {
            self.dir.join("instructions").join(&variant.name)
        } else {
            self.dir.join(group.dir()).join(&variant.name)
        };
        let _ = fs::remove_dir_all(&dir);
        let bootstrap = self.bootstrap(&variant)?;
        let mut opts = EnvoyOptions::new(&dir);
        opts.concurrency = variant.workers;
        opts.log_level = "warning".into();
        if callgrind {
            opts.wrapper = vec![
                "valgrind".into(),
                "--tool=callgrind".into(),
                // Counting starts when the measured requests do (`callgrind_control -i on`).
                "--instr-atstart=no".into(),
                // V8 writes and rewrites machine code on the heap.
                "--smc-check=all-non-file".into(),
                // Also simulate the caches and branch predictor: where CPU time departs from the
                // instruction count, these say why.
                "--cache-sim=yes".into(),
                "--branch-sim=yes".into(),
                format!(
                    "--callgrind-out-file={}",
                    dir.join("callgrind.out").display()
                ),
            ];
            opts.ready_timeout = Duration::from_secs(300);
        }
        let envoy = Envoy::start(&bootstrap, &opts)
            .with_context(|| format!("starting Envoy for {}", variant.name))?;
        let pid = envoy.pid();
        if self.pinned {
            pin_process(pid, ENVOY_CORE)?;
        }
        if self.boosted {
            renice_process(pid, NICE)?;
        }
        let port = envoy
            .listener_port("bench")
            .ok_or_else(|| anyhow!("Envoy for {} has no listener", variant.name))?;
        let mut headers = vec![("accept".to_string(), ACCEPT_HTML.to_string())];
        let cookie = match &variant.cookies {
            Cookies::None => None,
            Cookies::Header(c) => Some(c.clone()),
            Cookies::OAuth2 => Some(self.oauth2_cookies(&format!("127.0.0.1:{port}"))?),
        };
        if let Some(c) = cookie {
            headers.push(("cookie".to_string(), c));
        }
        Ok(Running {
            variant,
            envoy,
            pid,
            port,
            headers,
            rss_idle_kib: 0,
            load: Load {
                pinned: self.pinned,
                boosted: self.boosted,
            },
        })
    }

    /// Runs `v` under callgrind: warms it up, then counts Envoy's instructions over
    /// [`INSTR_REQUESTS`] requests on one connection. Slow (valgrind), but the same every time.
    fn count_instructions(&self, v: Variant) -> Result<InstrRow> {
        let name = v.name.clone();
        let r = self.start(Group::Main, v, true)?;
        let mut row = InstrRow {
            variant: r.variant.clone(),
            per_request: 0.0,
            i1_misses: 0.0,
            d1_misses: 0.0,
            mispredicts: 0.0,
            requests: 0,
            problem: None,
        };
        if let Err(e) = preflight(&r) {
            row.problem = Some(format!("{e:#}"));
            return Ok(row);
        }
        // Warm-up: V8 tiers the hot Wasm code up, caches fill.
        h2load(&r, INSTR_WARMUP, 4)?;
        settle_counters(&r);
        let before = r.envoy.stats()?;
        callgrind_control(r.pid, "-i", Some("on"))?;
        h2load(&r, INSTR_REQUESTS, 1)?;
        callgrind_control(r.pid, "-i", Some("off"))?;
        settle_counters(&r);
        let after = r.envoy.stats()?;
        callgrind_control(r.pid, "-d", None)?;
        let dir = self.dir.join("instructions").join(&name);
        let totals = callgrind_totals(&dir)?;
        let total = |event: &str| totals.get(event).copied().unwrap_or(0);
        let delta = |n: &str| -> u64 {
            let a = after.get(n).copied().unwrap_or(0);
            a.saturating_sub(before.get(n).copied().unwrap_or(0))
        };
        let sample = Sample {
            requests: delta("http.bench.downstream_rq_completed"),
            status_2xx: delta("http.bench.downstream_rq_2xx"),
            status_3xx: delta("http.bench.downstream_rq_3xx"),
            status_other: delta("http.bench.downstream_rq_4xx")
                + delta("http.bench.downstream_rq_5xx"),
            ..Sample::default()
        };
        let counted = logged_in(&after).saturating_sub(logged_in(&before));
        row.problem = check(&r.variant, &sample, Some(counted));
        row.requests = sample.requests;
        let per = |n: u64| n as f64 / sample.requests.max(1) as f64;
        row.per_request = per(total("Ir"));
        row.i1_misses = per(total("I1mr"));
        row.d1_misses = per(total("D1mr") + total("D1mw"));
        row.mispredicts = per(total("Bcm") + total("Bim"));
        eprintln!(
            "  {:<24} {:>10.0} instructions/request, {:>6.0} I1 misses, {:>6.0} D1 misses, {:>6.0} mispredicted branches",
            name, row.per_request, row.i1_misses, row.d1_misses, row.mispredicts
        );
        Ok(row)
    }

    fn bootstrap(&self, v: &Variant) -> Result<Value> {
        let idp_cluster = crate::envoy::cluster_name(&self.login.issuer)?;
        let mut filters = Vec::new();
        match v.chain {
            Chain::None => {}
            Chain::WasmEmpty => {
                filters.push(wasm_filter("bench-empty", &self.empty, "", None, json!({})))
            }
            Chain::WasmSetHeader => filters.push(wasm_filter(
                "bench-set-header",
                &self.set_header,
                "",
                None,
                json!({}),
            )),
            Chain::WasmCopy => filters.push(wasm_filter(
                "bench-cookie-copy",
                &self.cookie_copy,
                "",
                None,
                json!({}),
            )),
            Chain::Lua => filters.push(lua_filter()),
            Chain::Oidc | Chain::OidcIstio => {
                let secret_env = crate::client_secret_env(SITE);
                filters.push(wasm_filter(
                    "oidc-filter-bench",
                    if v.compare {
                        self.opts.compare.as_deref().unwrap_or(&self.oidc_wasm)
                    } else {
                        &self.oidc_wasm
                    },
                    crate::envoy::ROOT_ID,
                    Some(if v.identity_headers {
                        serde_json::to_string(&self.login.filter_config)?
                    } else {
                        let mut config = self.login.filter_config.clone();
                        config["identity_headers"] = json!({});
                        serde_json::to_string(&config)?
                    }),
                    json!({
                        crate::COOKIE_KEYS_ENV: crate::DEFAULT_COOKIE_KEYS,
                        secret_env: self.login.client_secret,
                    }),
                ));
                if v.chain == Chain::OidcIstio {
                    filters.push(self.jwt_authn(&idp_cluster, v.jwt_cache));
                    filters.push(crate::envoy::rbac_filter(
                        &[crate::envoy::JwtIssuer {
                            issuer: self.login.issuer.clone(),
                            audiences: vec![self.login.client_id.clone()],
                        }],
                        &[],
                        &[],
                        false,
                    ));
                }
            }
            Chain::OAuth2 => filters.push(self.oauth2_filter(&idp_cluster)),
        }
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
        }));
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "bench",
            "codec_type": "AUTO",
            "use_remote_address": true,
            "normalize_path": true,
            "route_config": {
                "name": "bench",
                "virtual_hosts": [{
                    "name": "bench",
                    "domains": ["*"],
                    "routes": [{
                        "match": { "prefix": "/" },
                        "direct_response": { "status": 200, "body": { "inline_string": UPSTREAM_BODY } },
                    }],
                }],
            },
            "http_filters": filters,
        });
        let (idp_host, idp_port) = host_port(&self.login.issuer)?;
        Ok(json!({
            "node": { "id": "oidc-filter-bench", "cluster": "oidc-filter-bench" },
            "admin": { "address": socket_address("127.0.0.1", 0) },
            "overload_manager": {
                "resource_monitors": [{
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 100_000,
                    },
                }],
            },
            "static_resources": {
                "listeners": [{
                    "name": "bench",
                    "address": socket_address("127.0.0.1", 0),
                    "filter_chains": [{
                        "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }],
                    }],
                }],
                "clusters": [{
                    "name": idp_cluster,
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": idp_cluster,
                        "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(&idp_host, idp_port) } }] }],
                    },
                }],
                "secrets": [
                    { "name": "oauth2-token", "generic_secret": { "secret": { "inline_string": self.login.client_secret } } },
                    { "name": "oauth2-hmac", "generic_secret": { "secret": { "inline_string": OAUTH2_HMAC_SECRET } } },
                ],
            },
        }))
    }

    /// Istio's `RequestAuthentication` as istiod generates it ([`crate::envoy::jwt_provider`]), or with
    /// `jwt_cache_config` added, as an EnvoyFilter patch could.
    fn jwt_authn(&self, idp_cluster: &str, cache: bool) -> Value {
        let jwks = format!("{}/jwks", self.login.issuer);
        let audiences = [self.login.client_id.clone()];
        let mut provider =
            crate::envoy::jwt_provider(&self.login.issuer, &audiences, &jwks, idp_cluster);
        if cache {
            provider["jwt_cache_config"] = json!({ "jwt_cache_size": 100 });
        }
        crate::envoy::jwt_authn_filter(vec![("bench-idp".into(), provider)])
    }

    fn oauth2_filter(&self, idp_cluster: &str) -> Value {
        let mut config = json!({
            "token_endpoint": {
                "cluster": idp_cluster,
                "uri": format!("{}/token", self.login.issuer),
                "timeout": "5s",
            },
            "authorization_endpoint": format!("{}/auth", self.login.issuer),
            "redirect_uri": "http://%REQ(:authority)%/oauth2/callback",
            "redirect_path_matcher": { "path": { "exact": "/oauth2/callback" } },
            "signout_path": { "path": { "exact": "/logout" } },
            "credentials": {
                "client_id": self.login.client_id,
                "token_secret": { "name": "oauth2-token" },
                "hmac_secret": { "name": "oauth2-hmac" },
            },
            "forward_bearer_token": true,
            "auth_scopes": ["openid", "email", "profile"],
        });
        if !self.oauth2_encrypted {
            config["disable_token_encryption"] = json!(true);
        }
        json!({
            "name": "envoy.filters.http.oauth2",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2",
                "config": config,
            },
        })
    }

    /// The cookies the native OAuth2 filter sets after a login (`OAuth2Filter::finishFlow`):
    /// the tokens (AES-256-CBC under SHA-256 of the HMAC secret, unless disabled), their expiry,
    /// and an HMAC-SHA256 over host, expiry and the plain tokens (`OAuth2CookieValidator`).
    fn oauth2_cookies(&self, host: &str) -> Result<String> {
        let l = &self.login;
        let expires = (now() + ID_TOKEN_TTL).to_string();
        let payload = [
            host,
            &expires,
            &l.access_token,
            &l.id_token,
            &l.refresh_token,
        ]
        .join("\n");
        let hmac = STANDARD.encode(hmac_sha256(
            OAUTH2_HMAC_SECRET.as_bytes(),
            payload.as_bytes(),
        ));
        let token = |t: &str| {
            if self.oauth2_encrypted {
                aes256_cbc(t, OAUTH2_HMAC_SECRET)
            } else {
                Ok(t.to_string())
            }
        };
        Ok(join_cookies(&[
            ("OauthHMAC".into(), hmac),
            ("OauthExpires".into(), expires),
            ("BearerToken".into(), token(&l.access_token)?),
            ("IdToken".into(), token(&l.id_token)?),
            ("RefreshToken".into(), token(&l.refresh_token)?),
        ]))
    }
}

/// Pins every thread of `pid` to `core` (threads it starts later inherit the mask). Done after
/// start-up because the harness spawns processes from a thread of its own.
fn pin_process(pid: u32, core: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads the set passed.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        set
    };
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
        // SAFETY: as above.
        let rc =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc != 0 {
            bail!(
                "pinning thread {tid} of {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
        let allowed = proc_status_path(
            &format!("/proc/{pid}/task/{tid}/status"),
            "Cpus_allowed_list",
        )?;
        if allowed != core.to_string() {
            bail!("thread {tid} of {pid} still runs on cores {allowed}");
        }
    }
    Ok(())
}

/// Sets the nice level of every thread of `pid` (Linux keeps it per thread).
fn renice_process(pid: u32, nice: i32) -> Result<()> {
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: libc::id_t = task?.file_name().to_string_lossy().parse()?;
        // SAFETY: setpriority has no memory-safety preconditions.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            bail!(
                "renicing thread {tid} of {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// One request as wrk will send it, until it gets the expected answer (the filter may still be
/// fetching discovery and JWKS, jwt_authn its JWKS).
fn preflight(r: &Running) -> Result<()> {
    let agent = crate::local_agent(Duration::from_secs(5));
    let url = format!("http://127.0.0.1:{}/", r.port);
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut req = agent.get(&url);
        for (k, v) in &r.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.call() {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                let ok = match r.variant.expect {
                    Expect::Upstream => status == 200 && body == UPSTREAM_BODY,
                    Expect::Redirect => status == 302,
                };
                if ok {
                    return Ok(());
                }
                last = format!("status {status}, body {:?}", truncate(&body, 120));
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "{} never answered as expected ({:?}); last: {last}\n{}",
        r.variant.name,
        r.variant.expect,
        crate::envoy::log_excerpt(&r.envoy.log_path())
    )
}

/// oidc-filter adds its logged-in count to Envoy's counter on its 1 s tick (later under valgrind, which
/// runs Envoy's threads one at a time): the counters of an oidc-filter configuration are read once that
/// count has stood still this long.
const COUNTER_LAG: Duration = Duration::from_millis(1500);

fn settle_counters(r: &Running) {
    if !matches!(r.variant.chain, Chain::Oidc | Chain::OidcIstio) {
        return;
    }
    // Still changing after 15 s, or unreadable: the run's own check of the counts says so.
    let _ = crate::process::settled(
        Duration::from_secs(15),
        COUNTER_LAG,
        || r.envoy.stats().map(|s| logged_in(&s)),
        |n| *n,
    );
}

/// One run of `r`. The filter's own counters lag (they reach Envoy on its tick), so the logged-in
/// check is made over all the runs together ([`Ctx::run_group`]).
fn measure(r: &Running, duration: Duration) -> Result<Sample> {
    let before = r.envoy.stats()?;
    let cpu0 = process_cpu_ns(r.pid)?;
    let (core0, steal0) = core_busy_ticks(ENVOY_CORE)?;
    let t0 = Instant::now();
    let w = wrk(r.load, r.port, &r.headers, duration)?;
    let elapsed = t0.elapsed();
    let cpu1 = process_cpu_ns(r.pid)?;
    let (core1, steal1) = core_busy_ticks(ENVOY_CORE)?;
    let after = r.envoy.stats()?;
    // Exact names: Envoy repeats the HTTP counters under `listener.<address>.`.
    let delta = |name: &str| -> u64 {
        let a = after.get(name).copied().unwrap_or(0);
        a.saturating_sub(before.get(name).copied().unwrap_or(0))
    };
    let requests = delta("http.bench.downstream_rq_completed");
    let tick_us = 1e6 / clock_ticks_per_sec();
    let envoy_us = cpu1.saturating_sub(cpu0) as f64 / 1000.0;
    let elapsed_us = elapsed.as_micros().max(1) as f64;
    let core_us = core1.saturating_sub(core0) as f64 * tick_us;
    Ok(Sample {
        requests,
        wrk_requests: w.requests,
        rps: w.rps,
        p50_us: w.p50_us,
        p99_us: w.p99_us,
        cpu_us_per_req: if requests == 0 {
            0.0
        } else {
            envoy_us / requests as f64
        },
        status_2xx: delta("http.bench.downstream_rq_2xx"),
        status_3xx: delta("http.bench.downstream_rq_3xx"),
        status_other: delta("http.bench.downstream_rq_4xx") + delta("http.bench.downstream_rq_5xx"),
        socket_errors: w.errors,
        foreign_cpu_pct: ((core_us - envoy_us) / elapsed_us * 100.0).max(0.0),
        steal_pct: steal1.saturating_sub(steal0) as f64 * tick_us / elapsed_us * 100.0,
        envoy_busy_pct: envoy_us / elapsed_us * 100.0,
    })
}

/// The logged-in counters of `r`'s Envoy: (requests completed, requests the filter let through as
/// logged in), read once the filter has handed its counters over.
fn logged_in_counters(r: &Running) -> Result<(u64, u64)> {
    settle_counters(r);
    let s = r.envoy.stats()?;
    let completed = s
        .get("http.bench.downstream_rq_completed")
        .copied()
        .unwrap_or(0);
    Ok((completed, logged_in(&s)))
}

/// Requests a login filter let through as logged in, in Envoy's `stats`: oidc-filter's
/// `sessions_forwarded` and the OAuth2 filter's `oauth_success` (0 for other chains).
fn logged_in(stats: &HashMap<String, u64>) -> u64 {
    let get = |n: &str| stats.get(n).copied().unwrap_or(0);
    get("wasmcustom.oidc_filter.sessions_forwarded") + get("http.bench.oauth_success")
}

/// Why a run does not count, if it does not.
/// `logged_in`: of `s.requests`, those the filter counted as logged in, when known.
fn check(v: &Variant, s: &Sample, logged_in: Option<u64>) -> Option<String> {
    if s.requests == 0 {
        return Some("no request completed".into());
    }
    let share = |n: u64| n as f64 / s.requests as f64;
    match v.expect {
        Expect::Upstream if share(s.status_2xx) < MIN_OK_SHARE => Some(format!(
            "only {:.1}% reached the route ({} redirects, {} other)",
            share(s.status_2xx) * 100.0,
            s.status_3xx,
            s.status_other
        )),
        Expect::Upstream
            if matches!(v.chain, Chain::Oidc | Chain::OidcIstio | Chain::OAuth2)
                && logged_in.is_some_and(|n| share(n) < MIN_OK_SHARE) =>
        {
            Some(format!(
                "only {:.1}% were let through as logged in",
                share(logged_in.unwrap_or(0)) * 100.0
            ))
        }
        Expect::Redirect if share(s.status_3xx) < MIN_OK_SHARE => Some(format!(
            "only {:.1}% were redirected",
            share(s.status_3xx) * 100.0
        )),
        _ => None,
    }
}

/// What wrk reports.
#[derive(Clone, Debug, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// How wrk runs: pinned to [`LOAD_CORE`], at [`NICE`].
#[derive(Clone, Copy, Debug)]
struct Load {
    pinned: bool,
    boosted: bool,
}

/// Requests counted under callgrind, and sent before counting.
const INSTR_REQUESTS: u64 = 2000;
const INSTR_WARMUP: u64 = 3000;

/// Sends `n` requests with the configuration's headers over `connections` HTTP/1.1 connections.
fn h2load(r: &Running, n: u64, connections: u32) -> Result<()> {
    let mut cmd = Command::new("h2load");
    cmd.arg("--h1")
        .arg(format!("-n{n}"))
        .arg(format!("-c{connections}"));
    for (k, v) in &r.headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(format!("http://127.0.0.1:{}/", r.port));
    let out = cmd
        .output()
        .context("running h2load (Debian package nghttp2-client)")?;
    if !out.status.success() {
        bail!(
            "h2load failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn callgrind_control(pid: u32, flag: &str, value: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("callgrind_control");
    cmd.arg(flag);
    if let Some(v) = value {
        cmd.arg(v);
    }
    let out = cmd
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control (Debian package valgrind)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {flag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The event totals (`Ir`, `I1mr`, `Bcm`, ... to their counts) of the dump `callgrind_control -d` wrote
/// in `dir` (`callgrind.out.1`): the dump returns before the file is complete, so this waits for its
/// `totals:` line.
fn callgrind_totals(dir: &Path) -> Result<HashMap<String, u64>> {
    let path = dir.join("callgrind.out.1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = fs::read_to_string(&path) {
            let events = text.lines().find_map(|l| l.strip_prefix("events:"));
            let totals = text.lines().find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
                    .filter(|t| t.split_whitespace().next().is_some_and(|n| n != "0"))
            });
            if let (Some(events), Some(totals)) = (events, totals) {
                let parsed: HashMap<String, u64> = events
                    .split_whitespace()
                    .zip(totals.split_whitespace())
                    .filter_map(|(e, n)| Some((e.to_string(), n.parse().ok()?)))
                    .collect();
                if parsed.get("Ir").is_some_and(|&n| n > 0) {
                    return Ok(parsed);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no instruction total in {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wrk(
    load: Load,
    port: u16,
    headers: &[(String, String)],
    duration: Duration,
) -> Result<WrkResult> {
    let mut argv: Vec<String> = Vec::new();
    if load.boosted {
        argv.extend(["nice".into(), "-n".into(), NICE.to_string()]);
    }
    if load.pinned {
        argv.extend(["taskset".into(), "-c".into(), LOAD_CORE.to_string()]);
    }
    argv.push("wrk".into());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.arg("-t1")
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg("--timeout")
        .arg("5s");
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(format!("http://127.0.0.1:{port}/"));
    let out = cmd.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        let words: Vec<&str> = t.split_whitespace().collect();
        if in_distribution {
            match words.as_slice() {
                ["50%", v] => r.p50_us = parse_latency(v)?,
                ["99%", v] => r.p99_us = parse_latency(v)?,
                [p, _] if p.ends_with('%') => {}
                _ => in_distribution = false,
            }
        }
        if let [n, "requests", "in", ..] = words.as_slice() {
            r.requests = n.parse().context("wrk request count")?;
        }
        if let ["Requests/sec:", v] = words.as_slice() {
            r.rps = v.parse().context("wrk Requests/sec")?;
        }
        if let Some(rest) = t.strip_prefix("Socket errors:") {
            r.errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    if r.rps == 0.0 && r.requests == 0 {
        bail!("cannot read wrk's output:\n{text}");
    }
    Ok(r)
}

/// `123.45us`, `1.20ms`, `2.00s` -> microseconds.
fn parse_latency(s: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else {
        bail!("latency {s:?}");
    };
    Ok(num
        .parse::<f64>()
        .with_context(|| format!("latency {s:?}"))?
        * scale)
}

/// CPU time of every thread of `pid`, in ns: the scheduler's own count (`/proc/<pid>/task/*/schedstat`),
/// exact where `/proc/<pid>/stat` counts 10 ms ticks. With paravirtual time accounting it leaves out what
/// the hypervisor stole, as `/proc/<pid>/stat` does. Falls back to the ticks where the kernel has no
/// schedstat.
fn process_cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0u64;
    let mut read = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between the listing and the read.
        let Ok(text) = fs::read_to_string(t?.path().join("schedstat")) else {
            continue;
        };
        if let Some(Ok(ns)) = text.split_whitespace().next().map(str::parse::<u64>) {
            total += ns;
            read += 1;
        }
    }
    if read == 0 {
        return Ok((process_cpu_ticks(pid)? as f64 * 1e9 / clock_ticks_per_sec()) as u64);
    }
    Ok(total)
}

/// utime + stime of every thread of `pid`, in clock ticks.
fn process_cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are space-separated.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: {stat}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line; `rest` starts at field 3.
    let field = |i: usize| -> Result<u64> {
        f.get(i - 3)
            .ok_or_else(|| anyhow!("/proc/{pid}/stat is short"))?
            .parse()
            .context("/proc/pid/stat")
    };
    Ok(field(14)? + field(15)?)
}

/// Busy (not idle, not iowait) ticks of one core from `/proc/stat`.
/// Clock ticks core `core` has been busy (anything but idle and iowait), and of those, stolen by the
/// hypervisor.
fn core_busy_ticks(core: usize) -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .ok_or_else(|| anyhow!("/proc/stat has no {name}"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    Ok((busy, v.get(7).copied().unwrap_or(0)))
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn proc_status(pid: u32, key: &str) -> Result<String> {
    proc_status_path(&format!("/proc/{pid}/status"), key)
}

fn proc_status_path(path: &str, key: &str) -> Result<String> {
    let status = fs::read_to_string(path)?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
        .ok_or_else(|| anyhow!("{path} has no {key}"))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let v = proc_status(pid, "VmRSS")?;
    v.trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("VmRSS {v:?}"))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!("{cores} cores, {model}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("not a URL: {url}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("no port in {url}"))?;
    Ok((host.to_string(), port.parse().context("port")?))
}

fn socket_address(address: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": address, "port_value": port } })
}

/// A Wasm filter in the shape Istio emits.
fn wasm_filter(
    name: &str,
    path: &Path,
    root_id: &str,
    configuration: Option<String>,
    env: Value,
) -> Value {
    let mut config = json!({
        "name": name,
        "root_id": root_id,
        "failure_policy": "FAIL_RELOAD",
        "vm_config": {
            "vm_id": name,
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": path.to_string_lossy() } },
        },
    });
    if let Some(c) = configuration {
        config["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": c,
        });
    }
    if env.as_object().is_some_and(|o| !o.is_empty()) {
        config["vm_config"]["environment_variables"] = json!({ "key_values": env });
    }
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": config,
        },
    })
}

/// The cookie-to-header copy people write by hand.
fn lua_filter() -> Value {
    let code = format!(
        r#"function envoy_on_request(handle)
  local cookie = handle:headers():get("cookie")
  if cookie == nil then return end
  local token = string.match(cookie, "{COOKIE_NAME}=([^;]+)")
  if token ~= nil then
    handle:headers():replace("authorization", "Bearer " .. token)
  end
end
"#
    );
    json!({
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": { "inline_string": code },
        },
    })
}

/// Istio's `AuthorizationPolicy` requiring a verified principal.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = sha2::Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = sha2::Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn openssl_works() -> bool {
    aes256_cbc("probe", "key").is_ok()
}

/// The native OAuth2 filter's token encryption: base64url(IV || AES-256-CBC(SHA-256(secret), IV, t)).
fn aes256_cbc(plaintext: &str, secret: &str) -> Result<String> {
    let key = sha2::Sha256::digest(secret.as_bytes());
    let mut iv = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut iv))
        .context("reading /dev/urandom")?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut child = Command::new("openssl")
        .args(["enc", "-aes-256-cbc", "-K", &hex(&key), "-iv", &hex(&iv)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("openssl stdin"))?
        .write_all(plaintext.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "openssl enc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut combined = iv.to_vec();
    combined.extend_from_slice(&out.stdout);
    Ok(URL_SAFE_NO_PAD.encode(combined))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Overhead of a row over its baseline, from the runs made next to each other (pairs): the median of
/// the paired differences and ratios over the quiet pairs (over all pairs when none is quiet).
#[derive(Clone, Copy, Debug)]
pub struct Overhead {
    pub diff_us: f64,
    pub ratio: f64,
    /// A 95 % confidence interval of the median difference, from the quiet pairs (order statistics,
    /// no assumption about the noise's distribution); `None` with fewer than [`MIN_QUIET_PAIRS`].
    pub interval: Option<(f64, f64)>,
    /// Pairs in which neither run had more than [`MAX_FOREIGN_CPU_PCT`] foreign CPU, and all pairs.
    pub quiet: usize,
    pub pairs: usize,
}

/// The distribution-free 95 % confidence interval of the median of `v`: the `k`-th smallest and largest
/// values, `k` the largest with P(Binomial(n, 1/2) < k) <= 2.5 %. `None` below 6 values, where even the
/// extremes cover less than 95 %.
fn median_interval(mut v: Vec<f64>) -> Option<(f64, f64)> {
    let n = v.len();
    if n < MIN_QUIET_PAIRS {
        return None;
    }
    v.sort_by(f64::total_cmp);
    // P(X <= j) for X ~ Binomial(n, 1/2), j = 0, 1, ...
    let mut choose = 1.0_f64;
    let mut below = 0.0_f64;
    let total = 2.0_f64.powi(i32::try_from(n).ok()?);
    let mut k = 0;
    for j in 0..n {
        below += choose / total;
        if below > 0.025 {
            break;
        }
        k = j + 1;
        choose = choose * (n - j) as f64 / (j + 1) as f64;
    }
    let k = k.max(1);
    Some((*v.get(k - 1)?, *v.get(n - k)?))
}

impl Report {
    /// The row called `name`.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.variant.name == name)
    }

    /// CPU µs/req of `row` over its baseline.
    pub fn overhead(&self, row: &Row) -> Option<Overhead> {
        let base = self.row(row.variant.baseline.as_deref()?)?;
        if row.problem.is_some() || base.problem.is_some() || row.pairs.is_empty() {
            return None;
        }
        let calm = |s: &Sample| s.foreign_cpu_pct <= MAX_FOREIGN_CPU_PCT;
        let quiet: Vec<&(Sample, Sample)> = row
            .pairs
            .iter()
            .filter(|(a, b)| calm(a) && calm(b))
            .collect();
        let used: Vec<&(Sample, Sample)> = if quiet.is_empty() {
            row.pairs.iter().collect()
        } else {
            quiet.clone()
        };
        let diffs = |p: &[&(Sample, Sample)]| -> Vec<f64> {
            p.iter()
                .map(|(a, b)| a.cpu_us_per_req - b.cpu_us_per_req)
                .collect()
        };
        Some(Overhead {
            diff_us: median(diffs(&used)),
            ratio: median(
                used.iter()
                    .map(|(a, b)| a.cpu_us_per_req / b.cpu_us_per_req)
                    .collect(),
            ),
            interval: median_interval(diffs(&quiet)),
            quiet: quiet.len(),
            pairs: row.pairs.len(),
        })
    }

    /// The oidc rows of a scale table: the varied quantity, then cookie size, both CPU figures and the overhead.
    fn scale_rows(&self, md: &mut String, rows: &[&Row], key: impl Fn(&Row) -> usize) {
        for r in rows.iter().filter(|r| r.variant.chain == Chain::Oidc) {
            let base = r.variant.baseline.as_deref().and_then(|b| self.row(b));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
                key(r),
                r.cookie_bytes,
                base.map_or("–".into(), |b| format!(
                    "{:.1}",
                    b.median(|s| s.cpu_us_per_req)
                )),
                cpu_cell(r),
                self.overhead(r).map_or("–".into(), over_cell),
                self.instructions_over(&r.variant.name)
                    .map_or("–".into(), |i| format!("{i:+.0}")),
                r.median(|s| s.rps),
                r.median(|s| s.p99_us),
            );
        }
    }

    fn rows_in(&self, group: Group) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.variant.group == group)
            .collect()
    }

    /// Plugin memory: (workers, VmRSS without plugin, with, difference per worker) in MiB.
    fn memory(&self) -> Vec<(u32, f64, f64, f64)> {
        let mut out = Vec::new();
        for w in [1u32, 2] {
            let (Some(none), Some(oidc)) = (
                self.row(&format!("none-workers-{w}")),
                self.row(&format!("oidc-workers-{w}")),
            ) else {
                continue;
            };
            if none.rss_loaded_kib == 0 || oidc.rss_loaded_kib == 0 {
                continue;
            }
            let n = none.rss_loaded_kib as f64 / 1024.0;
            let o = oidc.rss_loaded_kib as f64 / 1024.0;
            out.push((w, n, o, (o - n) / f64::from(w)));
        }
        out
    }

    /// Instructions per request of configuration `name` over its baseline, from the callgrind pass.
    pub fn instructions_over(&self, name: &str) -> Option<f64> {
        let row = self.instruction_row(name)?;
        let base = self.instruction_row(row.variant.baseline.as_deref()?)?;
        Some(row.per_request - base.per_request)
    }

    /// The callgrind pass's row for configuration `name`, when it counted without a problem.
    fn instruction_row(&self, name: &str) -> Option<&InstrRow> {
        self.instructions
            .iter()
            .find(|r| r.variant.name == name && r.problem.is_none())
    }

    /// Each goal: (goal, measured, pass).
    pub fn goals(&self) -> Vec<(String, String, Option<bool>)> {
        let mut out = Vec::new();
        // What a Wasm filter costs here before it does anything, for scale.
        let floors: String = [
            (
                "wasm-empty",
                "a Wasm module that only returns from its request-headers callback",
            ),
            (
                "wasm-set-header",
                "a Wasm module doing nothing but read one header and set one",
            ),
            ("wasm-copy", "a Wasm module doing only the Lua copy's job"),
        ]
        .iter()
        .filter_map(|(name, what)| {
            let o = self.overhead(self.row(name)?)?;
            Some(format!("; {what}: {} µs", over_cell(o)))
        })
        .collect();
        let mut cpu_goal = |name: &str, what: &str, limit: f64| {
            let measured = self.row(name).and_then(|r| self.overhead(r));
            let instructions = match (
                self.instructions_over(name),
                self.instructions_over("wasm-set-header"),
            ) {
                (Some(i), Some(f)) => {
                    format!("; instructions per request: {i:+.0} (the one-header module: {f:+.0})")
                }
                (Some(i), None) => format!("; instructions per request: {i:+.0}"),
                _ => String::new(),
            };
            // CPU time is judged from the quiet pairs only, and only when their 95 % interval lies
            // wholly on one side of the goal.
            let (verdict, why) = match measured {
                None => (None, String::new()),
                Some(o) => match o.interval {
                    None => (
                        None,
                        format!(
                            "; not judged: {} of {} pairs quiet (at most {MAX_FOREIGN_CPU_PCT:.0} % foreign CPU on Envoy's core), {MIN_QUIET_PAIRS} needed",
                            o.quiet, o.pairs
                        ),
                    ),
                    Some((lo, hi)) => {
                        let range = format!(
                            "; 95 % interval {lo:+.1} to {hi:+.1} µs from {} of {} pairs",
                            o.quiet, o.pairs
                        );
                        if hi <= limit {
                            (Some(true), range)
                        } else if lo > limit {
                            (Some(false), range)
                        } else {
                            (
                                None,
                                format!("{range}; not judged: the interval holds the goal"),
                            )
                        }
                    }
                },
            };
            out.push((
                format!("{what}: at most +{limit} µs Envoy CPU/request over no filter"),
                measured.map_or("not measured".into(), |o| {
                    format!("{:+.1} µs (`{name}`){why}{floors}{instructions}", o.diff_us)
                }),
                verdict,
            ));
        };
        for (name, what, limit) in CPU_GOALS {
            cpu_goal(name, what, limit);
        }
        let size = self.sizes.optimized_bytes;
        out.push((
            format!(
                "module after wasm-opt -Oz: at most {} KiB",
                GOAL_WASM_BYTES / 1024
            ),
            size.map_or("not measured".into(), |b| {
                format!("{b} bytes ({:.0} KiB)", b as f64 / 1024.0)
            }),
            size.map(|b| b <= GOAL_WASM_BYTES),
        ));
        let mem = self.memory();
        let worst = mem
            .iter()
            .map(|m| m.3)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let second = match mem.as_slice() {
            [(_, n1, o1, _), (_, n2, o2, _)] => {
                format!("; a second worker adds {:+.1} MiB", (o2 - o1) - (n2 - n1))
            }
            _ => String::new(),
        };
        out.push((
            format!(
                "Envoy memory with the plugin: at most +{GOAL_MEMORY_MIB_PER_WORKER} MiB per worker"
            ),
            worst.map_or("not measured".into(), |w| {
                format!("{w:+.1} MiB per worker, counting all of it against one worker{second}")
            }),
            worst.map(|w| w <= GOAL_MEMORY_MIB_PER_WORKER),
        ));
        out
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# oidc-filter: benchmark against the alternatives\n");
        let _ = writeln!(
            md,
            "Generated by `cargo run --release -p harness -- bench`. Machine: {}. Load average before: {}, after: {}.\n",
            self.machine, self.load_before, self.load_after
        );
        let dur: Vec<String> = self
            .runs
            .iter()
            .filter(|(g, _, _)| !self.rows_in(*g).is_empty())
            .map(|(g, n, d)| format!("{} {n} × {} s", g.dir(), d.as_secs()))
            .collect();
        let _ = writeln!(
            md,
            "Method: one Envoy 1.40 per configuration, `--concurrency 1`{}, a `direct_response` route \
             (no upstream); wrk `-t1 -c{CONNECTIONS}`{}, `Accept: text/html`. Rounds × seconds per run: \
             {}, after a warm-up run; in each round every configuration runs right next to its baseline (a \
             pair; which goes first alternates), so both see the same state of a shared machine. \
             Figures are medians over runs. CPU µs/req = Envoy's CPU time (all threads, \
             `/proc/<pid>/task/*/schedstat`) / requests Envoy completed; \"over\" = median of the pairs' \
             differences to the baseline named, over the quiet pairs (neither run with more than \
             {MAX_FOREIGN_CPU_PCT:.0} % foreign CPU), with the 95 % interval of that median where at \
             least {MIN_QUIET_PAIRS} pairs are quiet. Envoy{}. \"Envoy busy\" = Envoy's CPU time in % of \
             the run: below ~95% wrk did not keep it saturated, and CPU per request rises with idle \
             wake-ups. \"Foreign CPU\" = time Envoy's core was busy but not with Envoy (other jobs, or the \
             hypervisor running other tenants: \"of it steal\"): above a few % the figures are \
             disturbed.\n",
            if self.pinned {
                " pinned to core 0"
            } else {
                " (not pinned)"
            },
            if self.pinned { " pinned to core 1" } else { "" },
            dur.join(", "),
            if self.boosted {
                " and wrk run at nice -19, so other jobs on the machine yield to them"
            } else {
                " and wrk run at normal priority (not root)"
            },
        );

        let main = self.rows_in(Group::Main);
        if !main.is_empty() {
            let _ = writeln!(md, "## Side by side\n");
            let _ = writeln!(
                md,
                "| configuration | req/s | p50 µs | p99 µs | Envoy CPU µs/req (min–max) | over baseline (95 % interval) | ratio | quiet pairs | baseline | checked | Envoy busy | foreign CPU | of it steal |"
            );
            let _ = writeln!(
                md,
                "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"
            );
            for r in &main {
                self.table_row(&mut md, r);
            }
            let _ = writeln!(
                md,
                "\nCookies: the oidc rows, `none`, the Wasm modules and `lua-copy` send the session cookie \
                 of a real login ({} bytes); the 8 KB rows a session sealed with the same key around a \
                 padded ID token; `oauth2-session` the native filter's five cookies for the same user \
                 (access, ID and refresh token from the IdP{}), {} bytes. The redirect rows send no cookie.\n",
                self.row("oidc-session")
                    .or(self.row("none"))
                    .map_or(0, |r| r.cookie_bytes),
                if self.oauth2_encrypted {
                    ", AES-encrypted as Envoy does"
                } else {
                    ", encryption disabled"
                },
                self.row("oauth2-session").map_or(0, |r| r.cookie_bytes),
            );
        }

        let rivals = self.rows_in(Group::Rivals);
        if !rivals.is_empty() {
            self.rivals_table(&mut md, &rivals);
        }

        if !self.instructions.is_empty() {
            let _ = writeln!(md, "## Instructions per request (callgrind)\n");
            let _ = writeln!(
                md,
                "Envoy under `valgrind --tool=callgrind`: after a warm-up of {INSTR_WARMUP} requests, Envoy's \
                 instructions (all threads, user space) are counted over {INSTR_REQUESTS} requests on one \
                 connection. Unlike CPU time this does not move with other jobs on the machine, so it is the \
                 figure to compare two builds with. It does not weigh system calls, nor cache misses and \
                 mispredicted branches, which callgrind simulates alongside (per request, with the host's \
                 cache sizes; in brackets, over the baseline): a first-level cache miss that hits the next \
                 level costs about a dozen cycles, a mispredicted branch about fifteen. A copy of more than \
                 a few KB counts one instruction per byte moved (the C library's `rep movsb`, which the \
                 hardware runs many bytes per cycle), so rows with large headers read dearer here than they run.\n"
            );
            let _ = writeln!(
                md,
                "| configuration | instructions/request | over baseline | ratio | I1 misses | D1 misses | mispredicted branches | baseline | checked |"
            );
            let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|---|");
            for r in &self.instructions {
                let base = r
                    .variant
                    .baseline
                    .as_deref()
                    .and_then(|b| self.instructions.iter().find(|i| i.variant.name == b))
                    .filter(|b| b.problem.is_none() && r.problem.is_none());
                let (over, ratio) = match base {
                    Some(b) => (
                        format!("{:+.0}", r.per_request - b.per_request),
                        format!("{:.2}×", r.per_request / b.per_request),
                    ),
                    None => ("–".into(), "–".into()),
                };
                // Misses over the baseline's, where there is one.
                let miss = |f: fn(&InstrRow) -> f64| match base {
                    Some(b) => format!("{:.0} ({:+.0})", f(r), f(r) - f(b)),
                    None => format!("{:.0}", f(r)),
                };
                let _ = writeln!(
                    md,
                    "| {} (`{}`) | {:.0} | {over} | {ratio} | {} | {} | {} | {} | {} |",
                    r.variant.label,
                    r.variant.name,
                    r.per_request,
                    miss(|r| r.i1_misses),
                    miss(|r| r.d1_misses),
                    miss(|r| r.mispredicts),
                    r.variant
                        .baseline
                        .as_deref()
                        .map_or("–".to_string(), |b| format!("`{b}`")),
                    match &r.problem {
                        None => format!("{} requests", r.requests),
                        Some(p) => format!("**FAILED**: {p}"),
                    },
                );
            }
            let _ = writeln!(md);
        }

        let tokens = self.rows_in(Group::TokenSize);
        if !tokens.is_empty() {
            let _ = writeln!(md, "## Scale: token size\n");
            let _ = writeln!(
                md,
                "The hot path with the real session's ID token padded to size (the filter does not verify it on this path). \
                 Instructions over no filter from the callgrind pass, as in the side-by-side table: with CPU time this noisy, \
                 they show how the cost grows.\n"
            );
            let _ = writeln!(
                md,
                "| token bytes | Cookie header bytes | no filter CPU µs/req | oidc-filter CPU µs/req | over no filter | instructions over no filter | oidc req/s | oidc p99 µs |"
            );
            let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|");
            self.scale_rows(&mut md, &tokens, |r| r.variant.token_bytes.unwrap_or(0));
            md.push('\n');
        }

        let cookies = self.rows_in(Group::OtherCookies);
        if !cookies.is_empty() {
            let _ = writeln!(md, "## Scale: other cookies on the request\n");
            let _ = writeln!(
                md,
                "| other cookies | Cookie header bytes | no filter CPU µs/req | oidc-filter CPU µs/req | over no filter | instructions over no filter | oidc req/s | oidc p99 µs |"
            );
            let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|");
            self.scale_rows(&mut md, &cookies, |r| r.variant.other_cookies.unwrap_or(0));
            md.push('\n');
        }

        let workers = self.rows_in(Group::Workers);
        if !workers.is_empty() {
            let _ = writeln!(md, "## Scale: workers\n");
            let _ = writeln!(
                md,
                "Both workers share core 0 (wrk keeps core 1), so this shows the per-request cost of a \
                 second VM and session cache, not a throughput gain.\n"
            );
            let _ = writeln!(
                md,
                "| workers | no filter CPU µs/req | oidc-filter CPU µs/req | over no filter | no filter req/s | oidc req/s |"
            );
            let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
            for r in workers.iter().filter(|r| r.variant.chain == Chain::Oidc) {
                let base = r.variant.baseline.as_deref().and_then(|b| self.row(b));
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.0} |",
                    r.variant.workers,
                    base.map_or("–".into(), |b| format!(
                        "{:.1}",
                        b.median(|s| s.cpu_us_per_req)
                    )),
                    cpu_cell(r),
                    self.overhead(r).map_or("–".into(), over_cell),
                    base.map_or("–".into(), |b| format!("{:.0}", b.median(|s| s.rps))),
                    r.median(|s| s.rps),
                );
            }
            md.push('\n');
        }

        let _ = writeln!(md, "## Size and memory\n");
        let _ = writeln!(md, "| module | bytes |");
        let _ = writeln!(md, "|---|---:|");
        if let Some(b) = self.sizes.release_bytes {
            let _ = writeln!(
                md,
                "| release build (`cargo build --release --target wasm32-wasip1`) | {b} |"
            );
        }
        if let Some(b) = self.sizes.optimized_bytes {
            let _ = writeln!(
                md,
                "| benchmarked module (`{}`) | {b} |",
                self.sizes
                    .module
                    .file_name()
                    .map_or(String::new(), |f| f.to_string_lossy().into_owned())
            );
        }
        md.push('\n');
        let mem = self.memory();
        if !mem.is_empty() {
            let _ = writeln!(
                md,
                "Envoy VmRSS after the runs (Envoy has one Wasm VM per worker plus one on the main thread):\n"
            );
            let _ = writeln!(
                md,
                "| workers | no plugin MiB | oidc-filter MiB | plugin per worker MiB |"
            );
            let _ = writeln!(md, "|---:|---:|---:|---:|");
            for (w, n, o, per) in &mem {
                let _ = writeln!(md, "| {w} | {n:.1} | {o:.1} | {per:+.1} |");
            }
            if let [(_, n1, o1, _), (_, n2, o2, _)] = mem.as_slice() {
                let _ = writeln!(
                    md,
                    "\nA second worker adds {:+.1} MiB with the plugin and {:+.1} MiB without: {:+.1} MiB for the plugin's second VM \
                     (V8 shares the compiled module between a plugin's VMs; each VM adds its own linear memory).",
                    o2 - o1,
                    n2 - n1,
                    (o2 - o1) - (n2 - n1)
                );
            }
            if let (Some(t), Some((_, n1, _, _))) = (self.row("wasm-set-header"), mem.first())
                && t.rss_loaded_kib > 0
            {
                let t = t.rss_loaded_kib as f64 / 1024.0;
                let _ = writeln!(
                    md,
                    "The trivial Wasm module (`wasm-set-header`, 1 worker) takes {t:.1} MiB, {:+.1} MiB over no plugin: \
                     the V8 runtime's own share.",
                    t - n1
                );
            }
            md.push('\n');
        }

        let _ = writeln!(md, "## Goals\n");
        let _ = writeln!(md, "| goal | measured | result |");
        let _ = writeln!(md, "|---|---|---|");
        for (goal, measured, pass) in self.goals() {
            let result = match pass {
                Some(true) => "pass",
                Some(false) => "**miss**",
                None => "–",
            };
            let _ = writeln!(md, "| {goal} | {measured} | {result} |");
        }
        let problems: Vec<&Row> = self.rows.iter().filter(|r| r.problem.is_some()).collect();
        if !problems.is_empty() {
            let _ = writeln!(md, "\n## Problems\n");
            for r in problems {
                let _ = writeln!(
                    md,
                    "- `{}`: {}",
                    r.variant.name,
                    r.problem.as_deref().unwrap_or_default()
                );
            }
        }
        md
    }

    /// oidc-filter against each alternative, paired directly: the median of the pairs' differences, and
    /// which is cheaper where the 95 % interval of that median lies wholly on one side of zero.
    fn rivals_table(&self, md: &mut String, rows: &[&Row]) {
        let _ = writeln!(
            md,
            "## oidc-filter against each alternative, paired directly\n"
        );
        let _ = writeln!(
            md,
            "Each pair is oidc-filter's configuration and the alternative's, as in the side-by-side table \
             but in Envoys of their own, run right next to each other: the difference comes from one \
             pair of runs, not from two overheads measured against the floor in different pairs. \
             Instructions from the callgrind pass of the side-by-side configurations.\n"
        );
        let _ = writeln!(
            md,
            "| oidc-filter | against | oidc-filter CPU µs/req | theirs | difference (95 % interval) | quiet pairs | instructions, difference | cheaper |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---|");
        for r in rows.iter().filter(|r| r.variant.baseline.is_some()) {
            let Some(theirs) = r.variant.baseline.as_deref().and_then(|b| self.row(b)) else {
                continue;
            };
            let instructions = |row: &Row| {
                self.instruction_row(row.variant.same_as.as_deref()?)
                    .map(|i| i.per_request)
            };
            let over = self.overhead(r);
            let _ = writeln!(
                md,
                "| {} (`{}`) | {} (`{}`) | {} | {} | {} | {} | {} | {} |",
                r.variant.label,
                r.variant.name,
                theirs.variant.label,
                theirs.variant.name,
                cpu_cell(r),
                cpu_cell(theirs),
                over.map_or("–".into(), over_cell),
                over.map_or("–".into(), |o| format!("{}/{}", o.quiet, o.pairs)),
                match (instructions(r), instructions(theirs)) {
                    (Some(a), Some(b)) => format!("{:+.0}", a - b),
                    _ => "–".into(),
                },
                match over.map(|o| (o.interval, o.quiet, o.pairs)) {
                    _ if r.problem.is_some() || theirs.problem.is_some() => "**FAILED**".into(),
                    None => "–".into(),
                    Some((None, quiet, pairs)) =>
                        format!("not judged: {quiet} of {pairs} pairs quiet"),
                    Some((Some((_, hi)), _, _)) if hi < 0.0 => "**oidc-filter**".into(),
                    Some((Some((lo, _)), _, _)) if lo > 0.0 =>
                        format!("**{}**", theirs.variant.label),
                    Some(_) => "neither: the interval holds zero".into(),
                },
            );
        }
        md.push('\n');
    }

    fn table_row(&self, md: &mut String, r: &Row) {
        let over = self.overhead(r);
        let checked = match (&r.problem, r.variant.expect) {
            (Some(_), _) => "**FAILED**".to_string(),
            (None, Expect::Upstream) => {
                let s: u64 = r.samples.iter().map(|s| s.status_2xx).sum();
                let n: u64 = r.samples.iter().map(|s| s.requests).sum();
                if matches!(
                    r.variant.chain,
                    Chain::Oidc | Chain::OidcIstio | Chain::OAuth2
                ) {
                    format!(
                        "{:.2}% 200, {:.2}% logged in",
                        pct(s, n),
                        pct(r.run_logged_in, r.run_requests)
                    )
                } else {
                    format!("{:.2}% 200", pct(s, n))
                }
            }
            (None, Expect::Redirect) => {
                let s: u64 = r.samples.iter().map(|s| s.status_3xx).sum();
                let n: u64 = r.samples.iter().map(|s| s.requests).sum();
                format!("{:.2}% 302", pct(s, n))
            }
        };
        let _ = writeln!(
            md,
            "| {} (`{}`) | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% | {:.0}% |",
            r.variant.label,
            r.variant.name,
            r.median(|s| s.rps),
            r.median(|s| s.p50_us),
            r.median(|s| s.p99_us),
            cpu_cell(r),
            over.map_or("–".into(), over_cell),
            over.map_or("–".into(), |o| format!("{:.2}×", o.ratio)),
            over.map_or("–".into(), |o| format!("{}/{}", o.quiet, o.pairs)),
            r.variant
                .baseline
                .as_deref()
                .map_or("–".into(), |b| format!("`{b}`")),
            checked,
            r.median(|s| s.envoy_busy_pct),
            r.median(|s| s.foreign_cpu_pct),
            r.median(|s| s.steal_pct),
        );
    }

    /// A chart of the side-by-side table, one line per configuration, three panels: Envoy CPU per request
    /// over the baseline (the median of the quiet pairs, a whisker for its 95 % interval, a red mark at the
    /// goal where there is one), instructions per request over the baseline (callgrind), and requests/s.
    /// The first two are the figures the goals are judged by; a run's own CPU time moves with the machine.
    pub fn svg(&self) -> String {
        let rows: Vec<&Row> = self
            .rows_in(Group::Main)
            .into_iter()
            .filter(|r| !r.samples.is_empty())
            .collect();
        let label_w = 350.0;
        let panel_w = 200.0;
        let gap = 90.0;
        let row_h = 24.0;
        let top = 74.0;
        let xs = [
            label_w,
            label_w + panel_w + gap,
            label_w + 2.0 * (panel_w + gap),
        ];
        let width = label_w + 3.0 * (panel_w + gap);
        let height = top + row_h * rows.len() as f64 + 44.0;
        let bottom = top + row_h * rows.len() as f64;
        let overheads: Vec<Option<Overhead>> = rows.iter().map(|r| self.overhead(r)).collect();
        let goal_of = |name: &str| CPU_GOALS.iter().find(|g| g.0 == name).map(|g| g.2);
        // Scales: from 0 to the largest figure (the interval's top, the goals), so every bar and whisker fits.
        let max_cpu = rows
            .iter()
            .zip(&overheads)
            .flat_map(|(r, o)| {
                let hi = o.map(|o| o.interval.map_or(o.diff_us, |(_, hi)| hi.max(o.diff_us)));
                [hi, goal_of(&r.variant.name)]
            })
            .flatten()
            .fold(1.0, f64::max);
        let instr: Vec<Option<f64>> = rows
            .iter()
            .map(|r| self.instructions_over(&r.variant.name))
            .collect();
        let max_instr = instr.iter().flatten().copied().fold(1.0, f64::max);
        let max_rps = rows.iter().map(|r| r.median(|s| s.rps)).fold(1.0, f64::max);
        let scale = |v: f64, max: f64| v.max(0.0) / max * panel_w;

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
        let rounds = self
            .runs
            .iter()
            .find(|(g, _, _)| *g == Group::Main)
            .map_or(0, |r| r.1);
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="15" font-weight="bold">oidc-filter and the alternatives (Envoy 1.40, 1 worker, {rounds} rounds of paired runs)</text>"#
        );
        let titles = [
            (
                "Envoy CPU µs/request over baseline",
                "median of quiet pairs; whisker: 95 % interval",
            ),
            ("instructions/request over baseline", "callgrind, thousands"),
            ("requests/s", "median of runs"),
        ];
        for (x, (title, sub)) in xs.iter().zip(titles) {
            let _ = writeln!(
                s,
                r##"<text x="{x}" y="44" font-weight="bold">{title}</text><text x="{x}" y="60" fill="#555">{sub}</text>"##
            );
        }
        for (i, r) in rows.iter().enumerate() {
            let y = top + row_h * i as f64;
            let mid = y + row_h / 2.0;
            let color = match r.variant.chain {
                Chain::None => "#9e9e9e",
                Chain::Oidc | Chain::OidcIstio => "#1f77b4",
                _ => "#ff7f0e",
            };
            let opacity = if r.variant.expect == Expect::Redirect {
                "0.55"
            } else {
                "1"
            };
            let bar = |s: &mut String, x: f64, w: f64, fill_opacity: &str| {
                let _ = writeln!(
                    s,
                    r#"<rect x="{x}" y="{:.1}" width="{w:.1}" height="{:.0}" fill="{color}" fill-opacity="{fill_opacity}"/>"#,
                    y + 3.0,
                    row_h - 6.0
                );
            };
            let text = |s: &mut String, x: f64, t: &str, fill: &str| {
                let _ = writeln!(
                    s,
                    r#"<text x="{x:.1}" y="{:.1}" fill="{fill}">{t}</text>"#,
                    y + 16.0
                );
            };
            let _ = writeln!(
                s,
                r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"#,
                label_w - 8.0,
                y + 16.0,
                xml_escape(&r.variant.label)
            );

            // CPU over the baseline.
            let x = xs[0];
            match (r.variant.baseline.as_deref(), overheads[i]) {
                (None, _) => text(&mut s, x, "baseline", "#555"),
                (Some(_), None) => text(&mut s, x, "–", "#555"),
                (Some(_), Some(o)) => {
                    // Without an interval (too few quiet pairs) the bar is pale: a figure, not a finding.
                    let judged = o.interval.is_some();
                    bar(
                        &mut s,
                        x,
                        scale(o.diff_us, max_cpu),
                        if judged { opacity } else { "0.25" },
                    );
                    let mut end = x + scale(o.diff_us, max_cpu);
                    if let Some((lo, hi)) = o.interval {
                        let (a, b) = (x + scale(lo, max_cpu), x + scale(hi, max_cpu));
                        let _ = writeln!(
                            s,
                            r##"<path d="M{a:.1} {:.1}V{:.1}M{a:.1} {mid:.1}H{b:.1}M{b:.1} {:.1}V{:.1}" stroke="#000" stroke-width="1.5" fill="none"/>"##,
                            mid - 4.0,
                            mid + 4.0,
                            mid - 4.0,
                            mid + 4.0
                        );
                        end = end.max(b);
                    }
                    if let Some(goal) = goal_of(&r.variant.name) {
                        let g = x + scale(goal, max_cpu);
                        let _ = writeln!(
                            s,
                            r##"<line x1="{g:.1}" y1="{:.1}" x2="{g:.1}" y2="{:.1}" stroke="#d62728" stroke-width="3"><title>goal: at most +{goal} µs</title></line>"##,
                            y + 1.0,
                            y + row_h - 1.0
                        );
                        end = end.max(g);
                    }
                    let label = if judged {
                        format!("{:+.1}", o.diff_us)
                    } else {
                        format!("{:+.1} ({}/{} quiet)", o.diff_us, o.quiet, o.pairs)
                    };
                    text(&mut s, end + 4.0, &label, "#000");
                }
            }

            // Instructions over the baseline.
            let x = xs[1];
            match (r.variant.baseline.as_deref(), instr[i]) {
                (None, _) => text(&mut s, x, "baseline", "#555"),
                (Some(_), None) => text(&mut s, x, "–", "#555"),
                (Some(_), Some(n)) => {
                    bar(&mut s, x, scale(n, max_instr), opacity);
                    text(
                        &mut s,
                        x + scale(n, max_instr) + 4.0,
                        &format!("{:+.1}k", n / 1000.0),
                        "#000",
                    );
                }
            }

            // Requests per second.
            let x = xs[2];
            let rps = r.median(|s| s.rps);
            bar(&mut s, x, scale(rps, max_rps), opacity);
            text(
                &mut s,
                x + scale(rps, max_rps) + 4.0,
                &format!("{rps:.0}"),
                "#000",
            );
        }
        for x in xs {
            let _ = writeln!(
                s,
                r##"<line x1="{x}" y1="{:.0}" x2="{x}" y2="{bottom:.0}" stroke="#555"/>"##,
                top - 2.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="10" y="{:.0}" fill="#555">blue: oidc-filter; orange: the alternatives; grey: no filter (each row's baseline is the no-filter run with the same cookies); pale: unauthenticated redirect; red mark: the goal</text>"##,
            height - 14.0
        );
        s.push_str("</svg>\n");
        s
    }

    /// The raw runs as JSON.
    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let over = self.overhead(r);
                json!({
                    "name": r.variant.name,
                    "label": r.variant.label,
                    "group": r.variant.group.dir(),
                    "workers": r.variant.workers,
                    "baseline": r.variant.baseline,
                    "same_as": r.variant.same_as,
                    "cookie_bytes": r.cookie_bytes,
                    "token_bytes": r.variant.token_bytes,
                    "other_cookies": r.variant.other_cookies,
                    "rss_idle_kib": r.rss_idle_kib,
                    "rss_loaded_kib": r.rss_loaded_kib,
                    "problem": r.problem,
                    "overhead_us": over.map(|o| o.diff_us),
                    "overhead_interval_us": over.and_then(|o| o.interval).map(|(lo, hi)| [lo, hi]),
                    "quiet_pairs": over.map(|o| o.quiet),
                    "run_requests": r.run_requests,
                    "run_logged_in": r.run_logged_in,
                    "samples": r.samples.iter().map(Sample::json).collect::<Vec<_>>(),
                    // [this run's CPU µs/req, its baseline's, this run's foreign CPU %, its baseline's]
                    "pairs": r.pairs.iter().map(|(a, b)| json!([a.cpu_us_per_req, b.cpu_us_per_req, a.foreign_cpu_pct, b.foreign_cpu_pct])).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "machine": self.machine,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "runs": self.runs.iter().map(|(g, n, d)| json!({"group": g.dir(), "rounds": n, "seconds": d.as_secs()})).collect::<Vec<_>>(),
            "module": self.sizes.module,
            "release_bytes": self.sizes.release_bytes,
            "optimized_bytes": self.sizes.optimized_bytes,
            "rows": rows,
            "instructions": self.instructions.iter().map(|r| json!({
                "name": r.variant.name,
                "group": r.variant.group.dir(),
                "baseline": r.variant.baseline,
                "per_request": r.per_request,
                "i1_misses": r.i1_misses,
                "d1_misses": r.d1_misses,
                "mispredicts": r.mispredicts,
                "requests": r.requests,
                "problem": r.problem,
            })).collect::<Vec<_>>(),
        })
    }

    /// Writes `results.md`, `results.svg` and `results.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("results.md"), self.markdown())?;
        fs::write(dir.join("results.svg"), self.svg())?;
        fs::write(
            dir.join("results.json"),
            // Compact: a full run has hundreds of runs.
            serde_json::to_string(&self.json())? + "\n",
        )?;
        Ok(())
    }
}

/// An overhead, with its interval when there is one.
fn over_cell(o: Overhead) -> String {
    match o.interval {
        Some((lo, hi)) => format!("{:+.1} ({lo:+.1} to {hi:+.1})", o.diff_us),
        None => format!("{:+.1}", o.diff_us),
    }
}

fn cpu_cell(r: &Row) -> String {
    if r.samples.is_empty() {
        return "–".into();
    }
    let (lo, hi) = r.min_max(|s| s.cpu_us_per_req);
    if r.samples.len() > 1 {
        format!("{:.1} ({lo:.1}–{hi:.1})", r.median(|s| s.cpu_us_per_req))
    } else {
        format!("{:.1}", r.median(|s| s.cpu_us_per_req))
    }
}

fn pct(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 * 100.0 / d as f64
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   300.50us  100.00us   2.00ms   90.00%\n    Req/Sec    50.00k     1.00k   52.00k    80.00%\n  Latency Distribution\n     50%  290.00us\n     75%  310.00us\n     90%  400.00us\n     99%    1.20ms\n  50000 requests in 1.00s, 5.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\nRequests/sec:  49950.12\nTransfer/sec:      5.00MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 50000);
        assert!((r.rps - 49950.12).abs() < 1e-6);
        assert!((r.p50_us - 290.0).abs() < 1e-6);
        assert!((r.p99_us - 1200.0).abs() < 1e-6);
        assert_eq!(r.errors, 3);
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn padded_tokens_have_the_size_asked_for() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","iss":"http://x"}"#);
        let real = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        for len in [1024, 2048, 4096, 8192] {
            let t = padded_token(&real, len).unwrap();
            assert!(t.len().abs_diff(len) <= 3, "{len}: {}", t.len());
            assert!(t.ends_with(".c2ln"));
        }
        assert_eq!(padded_token(&real, 10).unwrap(), real);
    }

    #[test]
    fn other_cookies_surround_the_session() {
        let h = with_other_cookies("s=1", 4);
        assert_eq!(h.split("; ").count(), 5);
        assert_eq!(h.split("; ").nth(2), Some("s=1"));
        assert_eq!(with_other_cookies("s=1", 0), "s=1");
    }

    fn variant(name: &str, baseline: Option<&str>) -> Variant {
        Variant {
            name: name.into(),
            label: name.into(),
            group: Group::Main,
            chain: Chain::None,
            workers: 1,
            cookies: Cookies::None,
            expect: Expect::Upstream,
            baseline: baseline.map(str::to_string),
            token_bytes: None,
            other_cookies: None,
            compare: false,
            identity_headers: true,
            jwt_cache: false,
            same_as: None,
        }
    }

    fn sample(cpu: f64, foreign: f64) -> Sample {
        Sample {
            cpu_us_per_req: cpu,
            foreign_cpu_pct: foreign,
            ..Sample::default()
        }
    }

    /// Configuration `v` measured in `pairs` next to its baseline `base`: the baseline's row, and `v`'s.
    fn paired(base: Variant, v: Variant, pairs: Vec<(Sample, Sample)>) -> Vec<Row> {
        let row = |variant: Variant, samples: Vec<Sample>, pairs: Vec<(Sample, Sample)>| Row {
            variant,
            samples,
            pairs,
            run_requests: 0,
            run_logged_in: 0,
            cookie_bytes: 0,
            rss_idle_kib: 0,
            rss_loaded_kib: 0,
            problem: None,
        };
        vec![
            row(
                base,
                pairs.iter().map(|p| p.1.clone()).collect(),
                Vec::new(),
            ),
            row(v, pairs.iter().map(|p| p.0.clone()).collect(), pairs),
        ]
    }

    /// `v` counted by the callgrind pass at `per_request` instructions.
    fn counted(v: Variant, per_request: f64) -> InstrRow {
        InstrRow {
            variant: v,
            per_request,
            i1_misses: 0.0,
            d1_misses: 0.0,
            mispredicts: 0.0,
            requests: 2000,
            problem: None,
        }
    }

    /// A hot-path row measured in pairs: (its CPU, its baseline's CPU, foreign CPU % of both).
    fn report_with(pairs: &[(f64, f64, f64)]) -> Report {
        let pairs: Vec<(Sample, Sample)> = pairs
            .iter()
            .map(|&(a, b, f)| (sample(a, f), sample(b, f)))
            .collect();
        Report {
            rows: paired(
                variant("none", None),
                variant("oidc-session", Some("none")),
                pairs,
            ),
            instructions: Vec::new(),
            sizes: Sizes::default(),
            machine: String::new(),
            load_before: String::new(),
            load_after: String::new(),
            runs: Vec::new(),
            oauth2_encrypted: true,
            pinned: true,
            boosted: true,
        }
    }

    fn hot(r: &Report) -> (String, Option<bool>) {
        let (_, measured, pass) = r
            .goals()
            .into_iter()
            .find(|(goal, _, _)| goal.starts_with("hot path"))
            .expect("a hot-path goal");
        (measured, pass)
    }

    #[test]
    fn cpu_goals_are_judged_from_paired_quiet_runs() {
        // The machine drifts between pairs (20 to 38 µs), but each pair sees it alike: +4 ± 0.5.
        let steady: Vec<(f64, f64, f64)> = (0..10)
            .map(|i| {
                let base = 20.0 + 2.0 * f64::from(i);
                (base + 4.0 + if i % 2 == 0 { 0.5 } else { -0.5 }, base, 1.0)
            })
            .collect();
        let (measured, pass) = hot(&report_with(&steady));
        assert_eq!(pass, Some(true), "{measured}");
        assert!(measured.starts_with("+4.0 µs"), "{measured}");
        assert!(measured.contains("from 10 of 10 pairs"), "{measured}");

        // The same pairs 3 µs dearer: every quiet pair is over the goal.
        let dear: Vec<_> = steady.iter().map(|&(a, b, f)| (a + 3.0, b, f)).collect();
        let (measured, pass) = hot(&report_with(&dear));
        assert_eq!(pass, Some(false), "{measured}");

        // Pairs that scatter across the goal: shown, not judged.
        let scattered: Vec<_> = (0..10)
            .map(|i| (20.0 + 1.0 + f64::from(i), 20.0, 1.0))
            .collect();
        let (measured, pass) = hot(&report_with(&scattered));
        assert_eq!(pass, None, "{measured}");
        assert!(measured.contains("holds the goal"), "{measured}");

        // Other jobs took a fifth of Envoy's core in half the pairs: too few quiet ones remain, and the
        // noisy pairs do not count even where they would pass.
        let noisy: Vec<_> = steady
            .iter()
            .enumerate()
            .map(|(i, &(a, b, _))| {
                if i < 5 {
                    (a - 3.0, b, 20.0)
                } else {
                    (a, b, 1.0)
                }
            })
            .collect();
        let (measured, pass) = hot(&report_with(&noisy));
        assert_eq!(pass, None, "{measured}");
        assert!(
            measured.contains("not judged: 5 of 10 pairs quiet"),
            "{measured}"
        );
    }

    /// The rivals table's line for oidc-filter paired with the Lua copy: pairs of (oidc-filter's CPU,
    /// the Lua copy's), with 1 % foreign CPU.
    fn against_lua(pairs: &[(f64, f64)]) -> String {
        let mut r = report_with(&[]);
        let rival = |name: &str, baseline: Option<&str>| Variant {
            group: Group::Rivals,
            ..variant(name, baseline)
        };
        let pairs: Vec<(Sample, Sample)> = pairs
            .iter()
            .map(|&(a, b)| (sample(a, 1.0), sample(b, 1.0)))
            .collect();
        r.rows = paired(
            rival("vs-lua-copy", None),
            rival("oidc-session-vs-lua-copy", Some("vs-lua-copy")),
            pairs,
        );
        let md = r.markdown();
        md.lines()
            .find(|l| l.starts_with("| oidc-session-vs-lua-copy "))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn rivals_are_judged_from_the_direct_pairs() {
        // The machine drifts (40 to 58 µs) but each pair sees it alike.
        let drift = |d: f64| -> Vec<(f64, f64)> {
            (0..10)
                .map(|i| {
                    let theirs = 40.0 + 2.0 * f64::from(i);
                    (theirs + d + if i % 2 == 0 { 0.3 } else { -0.3 }, theirs)
                })
                .collect()
        };
        let cheaper = against_lua(&drift(-2.0));
        assert!(cheaper.contains("| -2.0 (-2.3 to -1.7) |"), "{cheaper}");
        assert!(cheaper.ends_with("| **oidc-filter** |"), "{cheaper}");

        let dearer = against_lua(&drift(1.5));
        assert!(dearer.ends_with("| **vs-lua-copy** |"), "{dearer}");

        // Differences either side of zero: no winner.
        let even: Vec<(f64, f64)> = (0..10).map(|i| (50.0 + f64::from(i) - 4.5, 50.0)).collect();
        let even = against_lua(&even);
        assert!(
            even.ends_with("| neither: the interval holds zero |"),
            "{even}"
        );

        // Too few pairs for an interval.
        let few = against_lua(&drift(-2.0)[..4]);
        assert!(few.ends_with("| not judged: 4 of 4 pairs quiet |"), "{few}");
    }

    #[test]
    fn scale_tables_show_the_instructions_over_no_filter() {
        let scale = |name: &str, baseline: Option<&str>, chain: Chain| Variant {
            group: Group::TokenSize,
            chain,
            token_bytes: Some(if name.ends_with("1k") { 1024 } else { 8192 }),
            ..variant(name, baseline)
        };
        let pairs = |a: f64| vec![(sample(a, 1.0), sample(40.0, 1.0)); 3];
        let mut r = report_with(&[]);
        r.rows = paired(
            scale("none-token-1k", None, Chain::None),
            scale("oidc-token-1k", Some("none-token-1k"), Chain::Oidc),
            pairs(52.0),
        );
        r.rows.extend(paired(
            scale("none-token-8k", None, Chain::None),
            scale("oidc-token-8k", Some("none-token-8k"), Chain::Oidc),
            pairs(60.0),
        ));
        // The 1 KB pair was counted; the 8 KB one was not.
        r.instructions = vec![
            counted(scale("none-token-1k", None, Chain::None), 147_677.0),
            counted(
                scale("oidc-token-1k", Some("none-token-1k"), Chain::Oidc),
                199_322.0,
            ),
        ];
        let md = r.markdown();
        let table: Vec<&str> = md
            .lines()
            .skip_while(|l| !l.starts_with("## Scale: token size"))
            .filter(|l| l.starts_with("| 1024 |") || l.starts_with("| 8192 |"))
            .collect();
        assert_eq!(table.len(), 2, "{md}");
        let cells =
            |l: &str| -> Vec<String> { l.split('|').map(|c| c.trim().to_string()).collect() };
        assert_eq!(cells(table[0])[5], "+12.0", "{}", table[0]);
        assert_eq!(cells(table[0])[6], "+51645", "{}", table[0]);
        assert_eq!(cells(table[1])[6], "–", "{}", table[1]);
    }

    #[test]
    fn the_chart_shows_overheads_with_intervals_and_goals() {
        let steady: Vec<(f64, f64, f64)> = (0..10)
            .map(|i| (24.0 + if i % 2 == 0 { 0.5 } else { -0.5 }, 20.0, 1.0))
            .collect();
        let mut r = report_with(&steady);
        // A redirect row measured on a busy machine: 3 of 10 pairs quiet, too few for an interval.
        let noisy: Vec<(Sample, Sample)> = (0..10)
            .map(|i| {
                let f = if i < 3 { 1.0 } else { 30.0 };
                (sample(31.0, f), sample(20.0, f))
            })
            .collect();
        r.rows.push(Row {
            variant: Variant {
                expect: Expect::Redirect,
                ..variant("oidc-redirect", Some("none"))
            },
            samples: noisy.iter().map(|p| p.0.clone()).collect(),
            pairs: noisy,
            ..r.rows[1].clone()
        });
        r.instructions = vec![
            counted(variant("none", None), 131_000.0),
            counted(variant("oidc-session", Some("none")), 184_200.0),
        ];
        let svg = r.svg();
        let line = |label: &str| -> Vec<&str> {
            svg.lines()
                .skip_while(|l| !l.contains(&format!(">{label}</text>")))
                .skip(1)
                .take_while(|l| !l.contains(r#"text-anchor="end""#))
                .collect()
        };
        // The hot path: its median, a whisker for the interval (+3.5 to +4.5), and the goal at +5.
        let hot = line("oidc-session");
        assert!(hot.iter().any(|l| l.contains(">+4.0</text>")), "{hot:#?}");
        assert_eq!(
            hot.iter().filter(|l| l.starts_with("<path")).count(),
            1,
            "{hot:#?}"
        );
        assert!(
            hot.iter().any(|l| l.contains("goal: at most +5 µs")),
            "{hot:#?}"
        );
        assert!(hot.iter().any(|l| l.contains(">+53.2k</text>")), "{hot:#?}");
        // The noisy row: a pale bar, no whisker, and how few of its pairs were quiet.
        let redirect = line("oidc-redirect");
        assert!(
            redirect
                .iter()
                .any(|l| l.contains(">+11.0 (3/10 quiet)</text>")),
            "{redirect:#?}"
        );
        assert!(
            redirect
                .iter()
                .any(|l| l.contains(r#"fill-opacity="0.25""#)),
            "{redirect:#?}"
        );
        assert!(
            !redirect.iter().any(|l| l.starts_with("<path")),
            "{redirect:#?}"
        );
        assert!(
            redirect.iter().any(|l| l.contains("goal: at most +6 µs")),
            "{redirect:#?}"
        );
        // No instruction count for it: a dash, not a bar.
        assert!(
            redirect.iter().any(|l| l.contains(">–</text>")),
            "{redirect:#?}"
        );
        // The baseline is named as such, not drawn as an overhead of 0.
        assert!(
            line("none")
                .iter()
                .filter(|l| l.contains(">baseline</text>"))
                .count()
                == 2
        );
        // The goal's mark lies on the scale: +5 at 5/max of the panel's width, left of the whisker's top.
        let x_of = |l: &str, attr: &str| -> f64 {
            let at = l.find(&format!("{attr}=\"")).unwrap() + attr.len() + 2;
            l[at..].split('"').next().unwrap().parse().unwrap()
        };
        let goal = hot.iter().find(|l| l.contains("goal:")).unwrap();
        let bar = hot.iter().find(|l| l.starts_with("<rect")).unwrap();
        let (x0, w) = (x_of(bar, "x"), x_of(bar, "width"));
        let g = x_of(goal, "x1");
        assert!(
            (g - x0) > w,
            "the goal (+5) lies beyond the +4.0 bar: {goal} {bar}"
        );
    }

    #[test]
    fn median_intervals_cover_95_percent() {
        let v = |n: u32| (1..=n).map(f64::from).collect::<Vec<_>>();
        // Below 6 values even the extremes cover less than 95 %.
        assert_eq!(median_interval(v(5)), None);
        // 6 to 8 values: the extremes (P(X = 0) = 1/64 .. 1/256).
        assert_eq!(median_interval(v(6)), Some((1.0, 6.0)));
        assert_eq!(median_interval(v(8)), Some((1.0, 8.0)));
        // 9 values: P(X <= 1) = 10/512 < 2.5 %.
        assert_eq!(median_interval(v(9)), Some((2.0, 8.0)));
        assert_eq!(median_interval(v(10)), Some((2.0, 9.0)));
        // 20 values: P(X <= 5) = 2.07 %, P(X <= 6) = 5.8 %.
        assert_eq!(median_interval(v(20)), Some((6.0, 15.0)));
        // Order does not matter.
        assert_eq!(
            median_interval(vec![9.0, 1.0, 5.0, 3.0, 7.0, 2.0]),
            Some((1.0, 9.0))
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
