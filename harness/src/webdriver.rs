//! A minimal W3C WebDriver client driving Debian's headless Chromium through chromedriver.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::process::{Process, poll};

/// Debian's chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The key under which W3C WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver with one headless Chromium session; both stop on drop.
pub struct WebDriver {
    base: String,
    session: String,
    agent: ureq::Agent,
    profile: PathBuf,
    // Dropped last: the session is deleted first.
    _process: Process,
}

/// A reference to an element of the current page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element(pub String);

impl WebDriver {
    /// Starts chromedriver (logging to `DIR/chromedriver.log`) and a headless Chromium session
    /// with a fresh profile, `localhost` and `*.localhost` resolving to 127.0.0.1 and no other name
    /// resolving.
    pub fn start(dir: &Path) -> Result<WebDriver> {
        WebDriver::start_with_prefs(dir, json!({}), &[])
    }

    /// As [`WebDriver::start`], trusting the stack's certificate `tls` (as a user's browser trusts a
    /// gateway's), and reaching each of `quic_origins` (`localhost:PORT`) over HTTP/3 from the first
    /// request on, as a browser does once an `alt-svc` answer has told it of the port.
    pub fn start_trusting(
        dir: &Path,
        tls: &crate::Tls,
        quic_origins: &[String],
    ) -> Result<WebDriver> {
        let mut args = Vec::new();
        if !quic_origins.is_empty() {
            args.push("--enable-quic".into());
            args.push(format!(
                "--origin-to-force-quic-on={}",
                quic_origins.join(",")
            ));
        }
        WebDriver::start_with_args(dir, tls, &args)
    }

    /// As [`WebDriver::start`], trusting the stack's certificate `tls`, with more command-line `args`
    /// (`--disable-http2`: HTTP/1.1 over TLS, several connections to a site).
    pub fn start_with_args(dir: &Path, tls: &crate::Tls, args: &[String]) -> Result<WebDriver> {
        let mut all = vec![format!(
            "--ignore-certificate-errors-spki-list={}",
            tls.spki_sha256
        )];
        all.extend(args.iter().cloned());
        WebDriver::start_with_prefs(dir, json!({}), &all)
    }

    /// As [`WebDriver::start`], with scripts turned off in the browser's settings (as a user or a
    /// policy can): pages get no JavaScript, WebDriver's own scripts still run.
    pub fn start_without_scripts(dir: &Path) -> Result<WebDriver> {
        WebDriver::start_with_prefs(
            dir,
            json!({ "profile.managed_default_content_settings.javascript": 2 }),
            &[],
        )
    }

    /// [`WebDriver::start`] with Chromium preferences `prefs` and more command-line `extra` arguments.
    fn start_with_prefs(dir: &Path, prefs: Value, extra: &[String]) -> Result<WebDriver> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        fs::create_dir_all(dir)?;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let profile =
            std::env::temp_dir().join(format!("oidc-harness-chromium-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&profile);
        fs::create_dir_all(&profile)?;

        let port = free_port()?;
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"));
        let mut process = Process::spawn(
            "chromedriver",
            cmd,
            &dir.join(format!("chromedriver-{n}.log")),
        )
        .context("install it with harness/setup.sh")?;
        let base = format!("http://127.0.0.1:{port}");
        let agent = crate::local_agent(Duration::from_secs(60));
        let ready = poll(Duration::from_secs(15), || {
            if !process.is_running() {
                return Err(anyhow!("chromedriver exited"));
            }
            Ok(call(&agent, "GET", &format!("{base}/status"), None)
                .ok()
                .filter(|v| v["ready"].as_bool() == Some(true)))
        });
        if let Err(e) = ready {
            return Err(process.failure(&format!("{e:#}")));
        }

        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            format!("--user-data-dir={}", profile.display()),
            // Only our loopback servers: nothing else resolves.
            "--host-resolver-rules=MAP localhost 127.0.0.1, MAP *.localhost 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
                .into(),
        ];
        args.extend(extra.iter().cloned());
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "pageLoad": 30_000, "script": 10_000, "implicit": 0 },
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args, "prefs": prefs },
                },
            },
        });
        let session = match call(&agent, "POST", &format!("{base}/session"), Some(&caps)) {
            Ok(v) => v["sessionId"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no sessionId in {v}"))?,
            Err(e) => return Err(process.failure(&format!("creating a session: {e:#}"))),
        };
        Ok(WebDriver {
            base,
            session,
            agent,
            profile,
            _process: process,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn get(&self, path: &str) -> Result<Value> {
        call(&self.agent, "GET", &self.url(path), None)
    }

    fn post(&self, path: &str, body: Value) -> Result<Value> {
        call(&self.agent, "POST", &self.url(path), Some(&body))
    }

    /// Navigates and waits for the page to load.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url }))
            .with_context(|| format!("navigating to {url}"))?;
        Ok(())
    }

    /// The current page's URL.
    pub fn current_url(&self) -> Result<String> {
        string(self.get("/url")?)
    }

    /// The current page's title.
    pub fn title(&self) -> Result<String> {
        string(self.get("/title")?)
    }

    /// The current page's HTML.
    pub fn source(&self) -> Result<String> {
        string(self.get("/source")?)
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Result<Element> {
        let v = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .with_context(|| format!("finding {css:?}"))?;
        element(&v)
    }

    /// Every element matching a CSS selector.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self.post(
            "/elements",
            json!({ "using": "css selector", "value": css }),
        )?;
        v.as_array()
            .ok_or_else(|| anyhow!("not a list: {v}"))?
            .iter()
            .map(element)
            .collect()
    }

    /// Polls for an element matching `css`.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element> {
        poll(timeout, || Ok(self.find_all(css)?.into_iter().next())).with_context(|| {
            format!(
                "waiting for {css:?} on {}",
                self.current_url().unwrap_or_default()
            )
        })
    }

    /// Polls until the current URL satisfies `pred`; returns it.
    pub fn wait_for_url(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let url = self.current_url()?;
            if pred(&url) {
                return Ok(url);
            }
            if Instant::now() >= deadline {
                bail!("URL still {url} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` into an element.
    pub fn send_keys(&self, el: &Element, text: &str) -> Result<()> {
        self.post(&format!("/element/{}/value", el.0), json!({ "text": text }))?;
        Ok(())
    }

    /// Clicks an element (and waits for a navigation it starts).
    pub fn click(&self, el: &Element) -> Result<()> {
        self.post(&format!("/element/{}/click", el.0), json!({}))?;
        Ok(())
    }

    /// The rendered text of an element.
    pub fn text(&self, el: &Element) -> Result<String> {
        string(self.get(&format!("/element/{}/text", el.0))?)
    }

    /// An attribute of an element.
    pub fn attribute(&self, el: &Element, name: &str) -> Result<Option<String>> {
        let v = self.get(&format!("/element/{}/attribute/{name}", el.0))?;
        Ok(v.as_str().map(str::to_string))
    }

    /// Runs a script (`return ...;`) in the page.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
    }

    /// At the test IdP's login form (oidc-provider's: `login`, `password`, a submit button), logs in
    /// as `user` with any password; waits up to `timeout` for the form.
    pub fn log_in_at_idp(&self, user: &str, timeout: Duration) -> Result<()> {
        let login = self.wait_for("input[name=login]", timeout)?;
        self.send_keys(&login, user)?;
        self.send_keys(&self.find("input[name=password]")?, "any")?;
        self.click(&self.find("button[type=submit]")?)
    }

    /// At the test IdP's login form, logs in as `user` (`log_in_at_idp`), waits for the browser to land
    /// on `app`, and returns the page's `h1` (the sample app greets its user there).
    pub fn log_in_and_land(&self, user: &str, app: &str, timeout: Duration) -> Result<String> {
        self.log_in_at_idp(user, timeout)?;
        self.wait_for_url(|u| u == app, timeout)?;
        let h1 = self.wait_for("h1", timeout)?;
        self.text(&h1)
    }

    /// Logs in as `user` at the test IdP's form whenever the browser is there, until it lands on `target`:
    /// a document of the site loaded from `target` or now at it (a page may move its own address on with
    /// `history.pushState`), not one a script marked old by setting `window.harnessOldPage`.
    pub fn log_in_and_land_on(&self, user: &str, target: &str, timeout: Duration) -> Result<()> {
        let script = "const n = performance.getEntriesByType('navigation')[0]; \
             return document.readyState === 'complete' && n && !window.harnessOldPage \
               ? [n.name, location.href] : null;";
        poll(timeout, || {
            let at = self.execute(script, json!([])).unwrap_or_default();
            if at[0] == target || at[1] == target {
                return Ok(Some(()));
            }
            if self.find("input[name=login]").is_ok() {
                // The form may be gone by now (an earlier try submitted it).
                let _ = self.log_in_at_idp(user, Duration::from_secs(1));
            }
            Ok(None)
        })
        .with_context(|| {
            format!(
                "did not land on {target}, at {:?}",
                self.current_url().unwrap_or_default()
            )
        })
    }

    /// Follows a link on the current page to `href`, as a user's click would (the request then says
    /// which site it came from).
    pub fn click_link_to(&self, href: &str) -> Result<()> {
        self.execute(
            "const a = document.createElement('a'); a.href = arguments[0]; \
             document.body.append(a); a.click();",
            json!([href]),
        )?;
        Ok(())
    }

    /// Reloads the page and waits up to `timeout` for the new document to have loaded (the old one is
    /// marked first, so that it is not taken for the new).
    pub fn reload(&self, timeout: Duration) -> Result<()> {
        self.execute(
            "window.harnessOldPage = true; location.reload();",
            json!([]),
        )?;
        poll(timeout, || {
            let fresh = self.execute(
                "return document.readyState === 'complete' && !window.harnessOldPage;",
                json!([]),
            );
            // A navigation in progress can fail a script: try again.
            Ok(fresh
                .ok()
                .and_then(|v| v.as_bool())
                .filter(|&f| f)
                .map(|_| ()))
        })
        .context("reloading")
    }

    /// The value of the cookie `name` visible to the current page.
    pub fn cookie_value(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .cookies()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str().map(str::to_string)))
    }

    /// Runs a Chrome DevTools Protocol command in the current tab (chromedriver's `goog/cdp/execute`).
    pub fn cdp(&self, cmd: &str, params: Value) -> Result<Value> {
        self.post("/goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
            .with_context(|| format!("CDP {cmd}"))
    }

    /// Goes to the entry of this tab's history that is at `url` (the latest such, before the current
    /// one), as Back pressed as often as it takes would: from the back/forward cache when the browser
    /// kept the page there.
    pub fn go_back_to(&self, url: &str) -> Result<()> {
        let history = self.cdp("Page.getNavigationHistory", json!({}))?;
        let current = history["currentIndex"].as_u64().unwrap_or(0);
        let entries = history["entries"].as_array().cloned().unwrap_or_default();
        let entry = entries
            .iter()
            .take(usize::try_from(current).unwrap_or(0))
            .rev()
            .find(|e| e["url"] == url)
            .ok_or_else(|| anyhow!("{url} is not in the history: {history}"))?;
        self.cdp(
            "Page.navigateToHistoryEntry",
            json!({ "entryId": entry["id"] }),
        )?;
        Ok(())
    }

    /// Makes the current page's frame number `index` the context of the following commands.
    pub fn switch_to_frame(&self, index: u32) -> Result<()> {
        self.post("/frame", json!({ "id": index }))?;
        Ok(())
    }

    /// Back to the top-level page as the context of the following commands.
    pub fn switch_to_top(&self) -> Result<()> {
        self.post("/frame", json!({ "id": null }))?;
        Ok(())
    }

    /// The cookies visible to the current page, as WebDriver cookie objects.
    pub fn cookies(&self) -> Result<Vec<Value>> {
        Ok(self.get("/cookie")?.as_array().cloned().unwrap_or_default())
    }

    /// Deletes the current page's cookies.
    pub fn delete_cookies(&self) -> Result<()> {
        call(&self.agent, "DELETE", &self.url("/cookie"), None)?;
        Ok(())
    }

    /// Saves a PNG screenshot of the viewport.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let png = base64::engine::general_purpose::STANDARD
            .decode(string(self.get("/screenshot")?)?)
            .context("decoding the screenshot")?;
        fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session and stops chromedriver and Chromium (as dropping does).
    pub fn quit(self) -> Result<()> {
        call(
            &self.agent,
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            None,
        )?;
        Ok(())
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        let quick = crate::local_agent(Duration::from_secs(5));
        let _ = call(
            &quick,
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            None,
        );
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// A WebDriver call; returns the response's `value`, or an error with WebDriver's message.
fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
    let builder = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    let req = match body {
        Some(b) => agent.run(builder.body(b.to_string())?),
        None => agent.run(builder.body(())?),
    };
    let mut resp = req.with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{method} {url}: not JSON ({status}): {text}"))?;
    let value = json.get("value").cloned().unwrap_or(Value::Null);
    if status != 200 {
        bail!(
            "{method} {url}: {status} {}: {}",
            value["error"].as_str().unwrap_or("error"),
            value["message"].as_str().unwrap_or(&text)
        );
    }
    Ok(value)
}

fn element(v: &Value) -> Result<Element> {
    v[ELEMENT_KEY]
        .as_str()
        .map(|id| Element(id.to_string()))
        .ok_or_else(|| anyhow!("not an element: {v}"))
}

fn string(v: Value) -> Result<String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("not a string: {v}"))
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
