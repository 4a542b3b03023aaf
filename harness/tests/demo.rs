//! The README's first command, `make demo`, as a user runs it: the `harness demo` binary on its fixed
//! ports (the app on 8080, the IdP on 9000, the sample app on 9001). Chromium
//! logs in as bob with a password of its own choosing, logs out, comes back to the app and is asked to
//! log in again; Ctrl-C (SIGINT) stops everything, leaving no port taken.
//!
//! The ports are the demo's own, not ones the OS picks: a demo left running on this machine fails
//! this test (it says so) instead of being disturbed.

// Test code, helpers included (clippy's allow-*-in-tests covers only #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::WebDriver;
use harness::demo;

const APP: &str = "http://localhost:8080/";

fn ports() -> [u16; 3] {
    [demo::PORTS.first_site, demo::PORTS.idp, demo::PORTS.echo]
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Stops the demo however the test ends, as Ctrl-C would.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    cmd.arg("demo")
        .current_dir(harness::workspace_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // As in a terminal's foreground, where Ctrl-C stops it: a test run started in the background by a
    // shell ignores SIGINT, and a child would inherit that.
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut demo = Demo(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // What the README says it prints once a browser can log in.
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.starts_with("Ctrl-C")) {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => printed.push(line),
            Err(e) => panic!("the demo did not come up ({e}); it printed {printed:?}"),
        }
    }
    let text = printed.join("\n");
    eprintln!("demo up in {:?}:\n{text}", t0.elapsed());
    for needle in [
        "app:    http://localhost:8080/",
        "log in as alice or bob, any password",
        "logout: http://localhost:8080/logout",
        "IdP:    http://127.0.0.1:9000",
        "Envoy admin: http://127.0.0.1:",
        "logs:   ",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let logs = printed
        .iter()
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
    let pid = demo.0.id() as libc::pid_t;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{status:?}");
    harness::process::poll(Duration::from_secs(10), || {
        let left: Vec<u16> = ports().into_iter().filter(|&p| listening(p)).collect();
        Ok(left.is_empty().then_some(()))
    })
    .unwrap_or_else(|e| panic!("something of the demo still listens after Ctrl-C: {e:#}"));
}
