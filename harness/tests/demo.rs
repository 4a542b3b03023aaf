//! The README's first command, `make demo`, as a user runs it: the `harness demo` binary on its fixed
//! ports (the app on 8080, the IdP on 9000, the sample app on 9001). Chromium
//! logs in as bob with a password of its own choosing, logs out, comes back to the app and is asked to
//! log in again; Ctrl-C (SIGINT) stops everything, leaving no port taken.
//!
//! The ports are the demo's own, not ones the OS picks: a demo left running on this machine fails
//! this test (it says so) instead of being disturbed.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::process::{Process, poll};
use harness::{WebDriver, demo};

const APP: &str = "http://localhost:8080/";

fn ports() -> [u16; 3] {
    [demo::PORTS.first_site, demo::PORTS.idp, demo::PORTS.echo]
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

#[test]
fn make_demo_serves_a_browser_login_and_logout_and_ctrl_c_stops_everything() {
    let taken: Vec<u16> = ports().into_iter().filter(|&p| listening(p)).collect();
    assert!(
        taken.is_empty(),
        "ports {taken:?} are taken: is `make demo` running? Stop it to run this test"
    );

    let t0 = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.arg("demo").current_dir(harness::workspace_root());
    // As in a terminal's foreground, where Ctrl-C stops it: a test run started in the background by a
    // shell ignores SIGINT, and a child would inherit that.
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    // Stopped with its process group however the test ends.
    let log = harness::target_dir().join("e2e/demo-command.log");
    let _ = std::fs::remove_file(&log);
    let mut demo = Process::spawn("make demo", cmd, &log).unwrap();
    // What the README says it prints once a browser can log in.
    let text = poll(Duration::from_secs(90), || {
        let text = demo.log()?;
        Ok(text.contains("Ctrl-C stops everything.").then_some(text))
    })
    .unwrap_or_else(|e| {
        panic!(
            "the demo did not come up: {e:#}\n{}",
            demo.log().unwrap_or_default()
        )
    });
    eprintln!("demo up in {:?}:\n{text}", t0.elapsed());
    for needle in [
        "app:    http://localhost:8080/",
        "log in as alice or bob, any password",
        "logout: http://localhost:8080/logout",
        "who is logged in: http://localhost:8080/oauth2/userinfo",
        "IdP:    http://127.0.0.1:9000",
        "Envoy admin: http://127.0.0.1:",
        "logs:   ",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let logs = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("logs:"))
        .map(|d| std::path::PathBuf::from(d.trim()))
        .unwrap();

    // A browser opens the app: off to the IdP's form, bob with any password, back at the app.
    let driver = WebDriver::start(&logs).unwrap();
    driver.goto(APP).unwrap();
    let h1 = driver
        .log_in_and_land("bob", APP, Duration::from_secs(10))
        .unwrap();
    assert_eq!(h1, "Hello, bob@example.com");
    // The app sees the ID token and the identity headers, and no cookie of the filter's.
    let echo: serde_json::Value =
        serde_json::from_str(&driver.text(&driver.find("#echo").unwrap()).unwrap()).unwrap();
    let headers = &echo["headers"];
    let bearer = headers["authorization"].as_str().unwrap_or_default();
    assert!(bearer.starts_with("Bearer ey"), "{echo}");
    assert_eq!(headers["x-auth-request-email"], "bob@example.com", "{echo}");
    let cookie = headers["cookie"].as_str().unwrap_or_default();
    assert!(!cookie.contains("_oidc"), "{echo}");
    // The address it prints for who is logged in names bob, as JSON.
    driver.goto(&format!("{APP}oauth2/userinfo")).unwrap();
    let shown = driver.text(&driver.find("body").unwrap()).unwrap();
    let who: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(who["email"], "bob@example.com", "{shown}");
    assert_eq!(who["preferredUsername"], "bob", "{shown}");

    // `/logout` ends the session at the IdP too (it asks first) and comes back to the app, which sends
    // the browser to log in again: the IdP's form, not a silent login.
    driver.goto("http://localhost:8080/logout").unwrap();
    let yes = driver
        .wait_for("button[type=submit]", Duration::from_secs(10))
        .unwrap();
    driver.click(&yes).unwrap();
    // Back at the app without a session (with one it would greet bob), so off to the IdP, whose own
    // session ended: its form. The login that follows lands on the app again.
    driver
        .wait_for("input[name=login]", Duration::from_secs(10))
        .unwrap();
    let h1 = driver
        .log_in_and_land("alice", APP, Duration::from_secs(10))
        .unwrap();
    assert_eq!(h1, "Hello, alice@example.com");
    driver.quit().unwrap();

    // Ctrl-C: the terminal sends SIGINT to the harness (Envoy and the node servers run in groups of
    // their own, and go with it).
    let pid = demo.pid() as libc::pid_t;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = poll(Duration::from_secs(10), || Ok(demo.exit_status()))
        .unwrap_or_else(|e| panic!("the demo ignored Ctrl-C: {e:#}"));
    assert!(!status.success(), "{status:?}");
    poll(Duration::from_secs(10), || {
        let left: Vec<u16> = ports().into_iter().filter(|&p| listening(p)).collect();
        Ok(left.is_empty().then_some(()))
    })
    .unwrap_or_else(|e| panic!("something of the demo still listens after Ctrl-C: {e:#}"));
}
