//! `harness`: the demo, the benchmark and generated configuration files.

use std::process::ExitCode;

use harness::{Stack, demo};

const USAGE: &str = "\
usage: harness COMMAND

  demo           run the filter in Envoy with the IdP and the sample app on fixed ports
                 (http://localhost:8080, IdP http://127.0.0.1:9000) until interrupted
  bench          the same load through Envoy with oidc-filter and the alternatives, side by side
                 (`bench --help`; writes bench/results.md, .svg, .json)
  envoy-config   print the demo's Envoy bootstrap (wasmplugin/envoy.yaml)
  idp-config     print the demo's IdP configuration (harness/idp/demo.json)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("envoy-config") => demo::envoy_yaml().map(|y| print!("{y}")),
        Some("idp-config") => serde_json::to_string_pretty(&demo::idp_config())
            .map(|j| println!("{j}"))
            .map_err(Into::into),
        Some("demo") => run_demo(),
        Some("bench") => harness::bench::cli(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harness: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo() -> anyhow::Result<()> {
    let stack = Stack::start(demo::stack_spec())?;
    let site = stack.site(demo::CLIENT_ID)?;
    // Up means a browser gets the login, not a 503 while the filter still fetches the IdP's keys.
    stack.wait_ready(demo::CLIENT_ID)?;
    println!("oidc-filter demo is up:");
    println!(
        "  app:    {}/  (log in as alice or bob, any password)",
        site.origin()
    );
    println!("  logout: {}/logout", site.origin());
    println!(
        "  who is logged in: {}{}",
        site.origin(),
        demo::USERINFO_PATH
    );
    println!("  IdP:    {}", stack.issuer());
    println!("  Envoy admin: {}", stack.envoy().admin_url());
    println!("  logs:   {}", stack.dir().display());
    println!("Ctrl-C stops everything.");
    loop {
        std::thread::park();
    }
}
