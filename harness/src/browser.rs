//! A browser-like HTTP client: a cookie jar, no automatic redirects, HTML forms, and the IdP login.
//!
//! Cookies are kept per host, ignoring ports, as browsers do: the apps live at
//! `http://localhost:PORT` and the IdP at `http://127.0.0.1:PORT`, so their cookies stay apart as
//! they would in a real deployment. `Secure` is recorded but not enforced: browsers treat
//! `localhost` and `127.0.0.1` as secure contexts. `SameSite` is recorded, not enforced.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// What a browser sends as `Accept` for a navigation.
pub const HTML_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

/// The blocking browser. `&self` methods, so one can be shared between threads.
pub struct Browser {
    agent: ureq::Agent,
    default_headers: Vec<(String, String)>,
    jar: Mutex<Vec<Cookie>>,
    last_set_cookies: Mutex<Vec<String>>,
}

/// A response, body read.
#[derive(Clone, Debug)]
pub struct Response {
    /// The URL requested.
    pub url: String,
    /// The method used.
    pub method: String,
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-cased, repeated names kept.
    pub headers: Vec<(String, String)>,
    /// Body (lossily decoded as UTF-8).
    pub body: String,
    sent: Option<(Vec<u8>, Option<String>)>,
}

/// The end of a redirect chain and every step of it, the first response included.
#[derive(Clone, Debug)]
pub struct Followed {
    /// The last response (not a redirect).
    pub response: Response,
    /// `(url, status)` of every response on the way, in order.
    pub chain: Vec<(String, u16)>,
}

/// An HTML form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Form {
    /// The `id` attribute, if any.
    pub id: Option<String>,
    /// Absolute action URL.
    pub action: String,
    /// `GET` or `POST`.
    pub method: String,
    /// The `input` fields (name, value) in document order, including hidden ones and those
    /// outside the form that name it with `form="ID"`.
    pub fields: Vec<(String, String)>,
}

/// A stored cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
    /// The host it belongs to (without port).
    pub domain: String,
    /// No `Domain` attribute: sent to exactly `domain`, not to its subdomains.
    pub host_only: bool,
    /// Path.
    pub path: String,
    /// Expiry; `None` for a session cookie.
    pub expires: Option<SystemTime>,
    /// `Secure` attribute.
    pub secure: bool,
    /// `HttpOnly` attribute.
    pub http_only: bool,
    /// `SameSite` attribute as sent.
    pub same_site: Option<String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    /// A browser with an empty jar, sending `Accept: text/html,...` by default.
    pub fn new() -> Browser {
        Browser {
            agent: crate::local_agent(Duration::from_secs(30)),
            default_headers: vec![
                ("accept".into(), HTML_ACCEPT.into()),
                (
                    "user-agent".into(),
                    "Mozilla/5.0 (oidc-filter harness)".into(),
                ),
                ("accept-language".into(), "en".into()),
            ],
            jar: Mutex::new(Vec::new()),
            last_set_cookies: Mutex::new(Vec::new()),
        }
    }

    /// Gives up on a request after `limit` (30 s by default) with an error.
    pub fn with_timeout(mut self, limit: Duration) -> Browser {
        self.agent = crate::local_agent(limit);
        self
    }

    /// Sets a header sent with every request (replacing a default of the same name).
    pub fn with_header(mut self, name: &str, value: &str) -> Browser {
        let name = name.to_ascii_lowercase();
        self.default_headers.retain(|(n, _)| *n != name);
        self.default_headers.push((name, value.to_string()));
        self
    }

    /// GET.
    pub fn get(&self, url: &str) -> Result<Response> {
        self.request("GET", url, &[], None)
    }

    /// GET with extra headers (which replace defaults of the same name).
    pub fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response> {
        self.request("GET", url, headers, None)
    }

    /// POST of an `application/x-www-form-urlencoded` body.
    pub fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<Response> {
        let body = form_urlencode(form);
        self.request(
            "POST",
            url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(body.as_bytes()),
        )
    }

    /// Any request. The jar supplies `Cookie` unless `headers` has one; `Set-Cookie` is stored.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response> {
        let target = Url::parse(url)?;
        let sent_type = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.to_string());
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in &self.default_headers {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                builder = builder.header(name.as_str(), value.as_str());
            }
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let explicit_cookie = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("cookie"));
        let jar_cookie = (!explicit_cookie)
            .then(|| self.cookie_header(&target))
            .flatten();
        if let Some(cookie) = jar_cookie {
            builder = builder.header("cookie", cookie);
        }
        let result = match body {
            Some(b) => self.agent.run(builder.body(b.to_vec())?),
            None => self.agent.run(builder.body(())?),
        };
        let mut resp = result.with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .with_context(|| format!("{method} {url}: reading the body"))?;
        let set_cookies: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.clone())
            .collect();
        {
            let mut jar = lock(&self.jar);
            for line in &set_cookies {
                if let Some(c) = parse_set_cookie(line, &target, SystemTime::now()) {
                    store(&mut jar, c);
                }
            }
        }
        *lock(&self.last_set_cookies) = set_cookies;
        Ok(Response {
            url: url.to_string(),
            method: method.to_string(),
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            sent: body.map(|b| (b.to_vec(), sent_type)),
        })
    }

    /// Follows redirects from `resp` (at most `max_hops`), the way a browser does: 301/302/303
    /// become GET, 307/308 repeat the method and body.
    pub fn follow(&self, resp: Response, max_hops: usize) -> Result<Followed> {
        let mut chain = vec![(resp.url.clone(), resp.status)];
        let mut current = resp;
        for _ in 0..max_hops {
            let Some(next) = current.location() else {
                return Ok(Followed {
                    response: current,
                    chain,
                });
            };
            if !current.is_redirect() {
                break;
            }
            current = match (current.status, &current.sent) {
                (307 | 308, Some((body, ctype))) => {
                    let headers: Vec<(&str, &str)> = ctype
                        .as_deref()
                        .map(|t| vec![("content-type", t)])
                        .unwrap_or_default();
                    self.request(&current.method, &next, &headers, Some(body))?
                }
                (307 | 308, None) => self.request(&current.method, &next, &[], None)?,
                _ => self.get(&next)?,
            };
            chain.push((current.url.clone(), current.status));
        }
        if current.is_redirect() && current.location().is_some() {
            bail!(
                "more than {max_hops} redirects:\n{}",
                describe_chain(&chain)
            );
        }
        Ok(Followed {
            response: current,
            chain,
        })
    }

    /// Ends this browser's session at the harness's IdP: opens its logout page (`end_session_url`,
    /// `ISSUER/session/end` with any parameters) and confirms its form. Returns the IdP's answer to the
    /// confirmation, not followed.
    pub fn end_idp_session(&self, end_session_url: &str) -> Result<Response> {
        let page = self.get(end_session_url)?;
        let form = page
            .forms()
            .into_iter()
            .find(|f| f.id.as_deref() == Some("op.logoutForm"))
            .ok_or_else(|| anyhow!("no logout form at {end_session_url}: {}", page.body))?;
        self.submit(&form, &[("logout", "yes")])
    }

    /// Submits `form` with `extra` fields (replacing fields of the same name), without following.
    pub fn submit(&self, form: &Form, extra: &[(&str, &str)]) -> Result<Response> {
        let mut fields: Vec<(&str, &str)> = form
            .fields
            .iter()
            .filter(|(n, _)| !extra.iter().any(|(e, _)| e == n))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        fields.extend_from_slice(extra);
        if form.method == "GET" {
            let base = form.action.split('?').next().unwrap_or_default();
            self.get(&format!("{base}?{}", form_urlencode(&fields)))
        } else {
            self.post_form(&form.action, &fields)
        }
    }

    /// A new browser that [`Browser::login`]s `user` at `start_url`; fails unless the app then greets
    /// them (`Hello, USER@example.com`, as the echo app does).
    pub fn logged_in(start_url: &str, user: &str) -> Result<Browser> {
        let b = Browser::new();
        let done = b.login(start_url, user)?;
        let greeting = format!("Hello, {user}@example.com");
        if done.response.status != 200 || !done.response.body.contains(&greeting) {
            bail!(
                "{user} is not logged in at {start_url}: {} {}\n{}",
                done.response.status,
                done.response.body,
                describe_chain(&done.chain)
            );
        }
        Ok(b)
    }

    /// Follows a login from `start` through the IdP's form (as `user`) up to the redirect to an address
    /// that starts with `callback` (the site's callback path and `?`), and returns that address without
    /// requesting it: for tests of what the callback does with it.
    pub fn until_callback(&self, start: &str, callback: &str, user: &str) -> Result<String> {
        let mut resp = self.get(start)?;
        for _ in 0..20 {
            if let Some(next) = resp.location() {
                if next.starts_with(callback) {
                    return Ok(next);
                }
                resp = self.get(&next)?;
                continue;
            }
            let form = forms(&resp)
                .into_iter()
                .find(|f| f.fields.iter().any(|(n, v)| n == "prompt" && v == "login"))
                .ok_or_else(|| {
                    anyhow!(
                        "no login form at {}: {} {}",
                        resp.url,
                        resp.status,
                        resp.body
                    )
                })?;
            resp = self.submit(&form, &[("login", user), ("password", "any")])?;
        }
        bail!("no redirect to {callback}")
    }

    /// Logs `user` in from an app URL: follows the redirects into the IdP, fills the login form
    /// (`login` = user, any password), submits any further IdP form (consent), and follows back
    /// through the callback. Returns the first page that is not an IdP form, and the whole chain.
    /// If the IdP already has a session, no form shows and this is just [`Browser::follow`].
    pub fn login(&self, start_url: &str, user: &str) -> Result<Followed> {
        let mut chain = Vec::new();
        let mut resp = self.get(start_url)?;
        for _ in 0..6 {
            let followed = self.follow(resp, 20)?;
            chain.extend(followed.chain);
            let page = followed.response;
            let idp_form = forms(&page).into_iter().find(|f| {
                f.fields
                    .iter()
                    .any(|(n, v)| n == "prompt" && (v == "login" || v == "consent"))
            });
            let Some(form) = idp_form else {
                return Ok(Followed {
                    response: page,
                    chain,
                });
            };
            let is_login = form
                .fields
                .iter()
                .any(|(n, v)| n == "prompt" && v == "login");
            resp = if is_login {
                self.submit(&form, &[("login", user), ("password", "any-password")])?
            } else {
                self.submit(&form, &[])?
            };
        }
        bail!(
            "login as {user} did not finish: the IdP kept showing forms:\n{}",
            describe_chain(&chain)
        )
    }

    /// The `Set-Cookie` lines of the last response, verbatim.
    pub fn last_set_cookies(&self) -> Vec<String> {
        lock(&self.last_set_cookies).clone()
    }

    /// The value of cookie `name` for `host` (any path).
    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.stored_cookies(host)
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| c.value)
    }

    /// `(name, value)` of every live cookie for `host` (any path).
    pub fn cookies(&self, host: &str) -> Vec<(String, String)> {
        self.stored_cookies(host)
            .into_iter()
            .map(|c| (c.name, c.value))
            .collect()
    }

    /// Every live cookie for `host` with its attributes.
    pub fn stored_cookies(&self, host: &str) -> Vec<Cookie> {
        let now = SystemTime::now();
        lock(&self.jar)
            .iter()
            .filter(|c| domain_matches(c, host) && !expired(c, now))
            .cloned()
            .collect()
    }

    /// Stores a host-only session cookie for `host` with path `/` (e.g. a forged or old one).
    pub fn set_cookie(&self, host: &str, name: &str, value: &str) {
        store(
            &mut lock(&self.jar),
            Cookie {
                name: name.to_string(),
                value: value.to_string(),
                domain: host.to_ascii_lowercase(),
                host_only: true,
                path: "/".to_string(),
                expires: None,
                secure: false,
                http_only: false,
                same_site: None,
            },
        );
    }

    /// Removes cookie `name` of `host` (every path).
    pub fn remove_cookie(&self, host: &str, name: &str) {
        let host = host.to_ascii_lowercase();
        lock(&self.jar).retain(|c| !(c.domain == host && c.name == name));
    }

    /// Empties the jar.
    pub fn clear_cookies(&self) {
        lock(&self.jar).clear();
    }

    fn cookie_header(&self, url: &Url) -> Option<String> {
        let now = SystemTime::now();
        let mut jar = lock(&self.jar);
        jar.retain(|c| !expired(c, now));
        let mut matching: Vec<&Cookie> = jar
            .iter()
            .filter(|c| domain_matches(c, &url.host) && path_matches(&c.path, &url.path))
            .collect();
        if matching.is_empty() {
            return None;
        }
        // Longer paths first, as RFC 6265 asks.
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        Some(
            matching
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `Set-Cookie` lines of this response.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.header_all("set-cookie")
    }

    /// `Location`, resolved against the request URL.
    pub fn location(&self) -> Option<String> {
        self.header("location").map(|l| resolve(&self.url, l))
    }

    /// Whether the status is a redirect (301, 302, 303, 307, 308).
    pub fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308)
    }

    /// The `Authorization` the echo app reports it received (it answers API clients with JSON).
    pub fn upstream_authorization(&self) -> Option<String> {
        self.json().ok()?["headers"]["authorization"]
            .as_str()
            .map(str::to_string)
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| {
            format!(
                "{} {}: body is not JSON: {}",
                self.method, self.url, self.body
            )
        })
    }

    /// The forms on this page.
    pub fn forms(&self) -> Vec<Form> {
        forms(self)
    }
}

/// One `(url, status)` per line.
pub fn describe_chain(chain: &[(String, u16)]) -> String {
    chain
        .iter()
        .map(|(u, s)| format!("  {s} {u}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The forms of an HTML page, actions resolved against the page URL.
pub fn forms(page: &Response) -> Vec<Form> {
    let html = &page.body;
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut spans = Vec::new();
    for (start, attrs) in tags(html, "form") {
        let end = lower[start..]
            .find("</form")
            .map(|e| start + e)
            .unwrap_or(html.len());
        let action = attr(&attrs, "action").unwrap_or_default();
        let action = if action.is_empty() {
            page.url.clone()
        } else {
            resolve(&page.url, &action)
        };
        let method = attr(&attrs, "method")
            .unwrap_or_else(|| "GET".into())
            .to_ascii_uppercase();
        spans.push((start, end));
        out.push(Form {
            id: attr(&attrs, "id"),
            action,
            method,
            fields: Vec::new(),
        });
    }
    for (pos, attrs) in tags(html, "input") {
        let Some(name) = attr(&attrs, "name") else {
            continue;
        };
        let kind = attr(&attrs, "type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if matches!(
            kind.as_str(),
            "submit" | "button" | "image" | "reset" | "file"
        ) {
            continue;
        }
        if matches!(kind.as_str(), "checkbox" | "radio") && attr(&attrs, "checked").is_none() {
            continue;
        }
        let value = attr(&attrs, "value").unwrap_or_default();
        let owner = match attr(&attrs, "form") {
            Some(id) => out
                .iter()
                .position(|f| f.id.as_deref() == Some(id.as_str())),
            None => spans.iter().position(|&(s, e)| s < pos && pos < e),
        };
        if let Some(i) = owner {
            out[i].fields.push((name, value));
        }
    }
    out
}

/// `(position, attributes)` of every `<name ...>` tag; attribute names lower-cased, values
/// entity-decoded; a bare attribute has an empty value.
fn tags(html: &str, name: &str) -> Vec<(usize, Vec<(String, String)>)> {
    let lower = html.to_ascii_lowercase();
    let needle = format!("<{name}");
    let bytes = html.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find(&needle) {
        let start = from + found;
        let mut i = start + needle.len();
        from = i;
        if i < bytes.len()
            && !(bytes[i].is_ascii_whitespace() || bytes[i] == b'>' || bytes[i] == b'/')
        {
            continue;
        }
        let mut attrs = Vec::new();
        loop {
            while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] == b'>' {
                break;
            }
            let name_start = i;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !b"=>/".contains(&bytes[i])
            {
                i += 1;
            }
            let attr_name = lower[name_start..i].to_string();
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut value = String::new();
            if i < bytes.len() && bytes[i] == b'=' {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                    let quote = bytes[i];
                    let value_start = i + 1;
                    let value_end = bytes[value_start..]
                        .iter()
                        .position(|&b| b == quote)
                        .map(|p| value_start + p)
                        .unwrap_or(bytes.len());
                    value = decode_entities(&html[value_start..value_end]);
                    i = (value_end + 1).min(bytes.len());
                } else {
                    let value_start = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                        i += 1;
                    }
                    value = decode_entities(&html[value_start..i]);
                }
            }
            if attr_name.is_empty() {
                i += 1;
            } else {
                attrs.push((attr_name, value));
            }
        }
        out.push((start, attrs));
        from = i.max(from);
    }
    out
}

fn attr(attrs: &[(String, String)], name: &str) -> Option<String> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// Decodes the HTML character references that matter in attribute values.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.bytes().take(12).position(|b| b == b';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `application/x-www-form-urlencoded`.
pub fn form_urlencode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_escape(k), form_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes `%XX` and `+` of a query or form component.
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The decoded query parameters of a URL.
pub fn query_params(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

/// The first decoded query parameter `name` of a URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    query_params(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Resolves a `Location` or form action against the URL of the page that sent it.
pub fn resolve(base: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    if let Some(r) = reference.strip_prefix("//") {
        return format!("{scheme}://{r}");
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..authority_end]);
    if reference.starts_with('/') {
        return format!("{origin}{reference}");
    }
    let path = rest[authority_end..]
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    if reference.starts_with('?') {
        return format!("{origin}{path}{reference}");
    }
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    format!("{origin}{dir}{reference}")
}

/// Host (lower-case, no port) and path of an http(s) URL.
struct Url {
    host: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| anyhow!("not an http(s) URL: {url}"))?;
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        let path = rest[authority_end..]
            .split(['?', '#'])
            .next()
            .unwrap_or_default();
        Ok(Url {
            host: host.to_ascii_lowercase(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn store(jar: &mut Vec<Cookie>, cookie: Cookie) {
    jar.retain(|c| !(c.name == cookie.name && c.domain == cookie.domain && c.path == cookie.path));
    if !expired(&cookie, SystemTime::now()) {
        jar.push(cookie);
    }
}

fn expired(c: &Cookie, now: SystemTime) -> bool {
    c.expires.is_some_and(|e| e <= now)
}

fn domain_matches(c: &Cookie, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == c.domain || (!c.host_only && host.ends_with(&format!(".{}", c.domain)))
}

fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/') || request_path[cookie_path.len()..].starts_with('/')))
}

/// Parses a `Set-Cookie` line received for `url` (RFC 6265 section 5.2, leniently).
fn parse_set_cookie(line: &str, url: &Url, now: SystemTime) -> Option<Cookie> {
    let mut parts = line.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let mut cookie = Cookie {
        name: name.to_string(),
        value: value.trim().to_string(),
        domain: url.host.clone(),
        host_only: true,
        path: default_path(&url.path),
        expires: None,
        secure: false,
        http_only: false,
        same_site: None,
    };
    let mut max_age = None;
    let mut expires = None;
    for part in parts {
        let (key, val) = part.split_once('=').unwrap_or((part, ""));
        let val = val.trim();
        match key.trim().to_ascii_lowercase().as_str() {
            "max-age" => {
                max_age = val.parse::<i64>().ok();
            }
            // Max-Age wins over Expires, whatever their order.
            "expires" => expires = parse_http_date(val),
            "domain" => {
                let d = val.trim_start_matches('.').to_ascii_lowercase();
                if !d.is_empty() {
                    // A cookie for an unrelated domain is refused, as browsers do.
                    if url.host != d && !url.host.ends_with(&format!(".{d}")) {
                        return None;
                    }
                    cookie.domain = d;
                    cookie.host_only = false;
                }
            }
            "path" if val.starts_with('/') => cookie.path = val.to_string(),
            "secure" => cookie.secure = true,
            "httponly" => cookie.http_only = true,
            "samesite" => cookie.same_site = Some(val.to_string()),
            _ => {}
        }
    }
    cookie.expires = match max_age {
        Some(secs) if secs <= 0 => Some(UNIX_EPOCH),
        Some(secs) => Some(now + Duration::from_secs(secs.unsigned_abs())),
        None => expires,
    };
    Some(cookie)
}

fn default_path(request_path: &str) -> String {
    match request_path.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => request_path[..i].to_string(),
    }
}

/// Parses an IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`) and the dashed cookie variant.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let s = s.split_once(',').map(|(_, r)| r).unwrap_or(s);
    let fields: Vec<&str> = s
        .split(|c: char| c.is_ascii_whitespace() || c == '-')
        .filter(|f| !f.is_empty())
        .collect();
    let [day, month, year, time, ..] = fields.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| month.to_ascii_lowercase().starts_with(m))? as i64
        + 1;
    let mut year: i64 = year.parse().ok()?;
    if year < 100 {
        year += if year < 70 { 2000 } else { 1900 };
    }
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    let days = days_from_civil(year, month, day);
    let secs = days * 86400 + h * 3600 + m * 60 + sec;
    if secs < 0 {
        return Some(UNIX_EPOCH);
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> Url {
        Url::parse(u).unwrap()
    }

    #[test]
    fn set_cookie_attributes() {
        let now = SystemTime::now();
        let c = parse_set_cookie(
            "_oidc=abc; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=60",
            &url("http://localhost:8080/oauth2/callback?code=x"),
            now,
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.value.as_str()), ("_oidc", "abc"));
        assert_eq!(c.domain, "localhost");
        assert!(c.host_only && c.secure && c.http_only);
        assert_eq!(c.same_site.as_deref(), Some("Lax"));
        assert_eq!(c.expires, Some(now + Duration::from_secs(60)));

        let c = parse_set_cookie("a=b", &url("http://127.0.0.1:9/interaction/xyz"), now).unwrap();
        assert_eq!(c.path, "/interaction");
        let c = parse_set_cookie("a=b; Max-Age=0", &url("http://x/"), now).unwrap();
        assert!(expired(&c, now));
        let c = parse_set_cookie(
            "a=b; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            &url("http://x/"),
            now,
        )
        .unwrap();
        assert!(expired(&c, now));
        assert!(
            parse_set_cookie("a=b; Domain=example.com", &url("http://localhost/"), now).is_none()
        );
    }

    #[test]
    fn http_dates() {
        let t = parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_445_412_480
        );
        let t = parse_http_date("Wed, 21-Oct-2015 07:28:00 GMT").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_445_412_480
        );
    }

    #[test]
    fn paths() {
        assert!(path_matches("/", "/anything"));
        assert!(path_matches("/auth", "/auth/abc"));
        assert!(!path_matches("/auth", "/authx"));
        assert!(path_matches("/auth/", "/auth/abc"));
    }

    #[test]
    fn jar_is_keyed_by_host_not_port() {
        let b = Browser::new();
        store(
            &mut lock(&b.jar),
            parse_set_cookie(
                "s=1; Path=/",
                &url("http://localhost:1/"),
                SystemTime::now(),
            )
            .unwrap(),
        );
        assert_eq!(
            b.cookie_header(&url("http://localhost:2/x")).as_deref(),
            Some("s=1")
        );
        assert_eq!(b.cookie_header(&url("http://127.0.0.1:1/x")), None);
        store(
            &mut lock(&b.jar),
            parse_set_cookie(
                "s=; Max-Age=0; Path=/",
                &url("http://localhost:1/"),
                SystemTime::now(),
            )
            .unwrap(),
        );
        assert_eq!(b.cookie_header(&url("http://localhost:1/")), None);
    }

    #[test]
    fn resolving() {
        let base = "http://localhost:8080/a/b?x=1";
        assert_eq!(resolve(base, "/c"), "http://localhost:8080/c");
        assert_eq!(resolve(base, "c"), "http://localhost:8080/a/c");
        assert_eq!(resolve(base, "?y"), "http://localhost:8080/a/b?y");
        assert_eq!(resolve(base, "//h/p"), "http://h/p");
        assert_eq!(resolve(base, "http://h:1/p"), "http://h:1/p");
    }

    #[test]
    fn url_coding() {
        assert_eq!(form_urlencode(&[("a b", "c&d=é")]), "a+b=c%26d%3D%C3%A9");
        assert_eq!(url_decode("a+b%3D%C3%A9%"), "a b=é%");
        assert_eq!(
            query_param("http://x/cb?code=a%2Fb&state=s#f", "code").as_deref(),
            Some("a/b")
        );
    }

    #[test]
    fn form_parsing() {
        let page = Response {
            url: "http://127.0.0.1:9/interaction/u1".into(),
            method: "GET".into(),
            status: 200,
            headers: vec![],
            body: r#"<form autocomplete="off" action="http://127.0.0.1:9/interaction/u1/login?a=1&amp;b=2" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
  <input type=checkbox name=remember>
  <button type="submit">Sign-in</button></form>
<form id="f2" method="post" action="/session/end/confirm"><input type="hidden" name="xsrf" value="x&#39;y"/></form>
<button form="f2" name="logout" value="yes">yes</button><input form="f2" name="extra" value="1">"#
                .into(),
            sent: None,
        };
        let forms = forms(&page);
        assert_eq!(forms.len(), 2);
        assert_eq!(
            forms[0].action,
            "http://127.0.0.1:9/interaction/u1/login?a=1&b=2"
        );
        assert_eq!(forms[0].method, "POST");
        assert_eq!(
            forms[0].fields,
            vec![
                ("prompt".into(), "login".into()),
                ("login".into(), String::new())
            ]
        );
        assert_eq!(forms[1].action, "http://127.0.0.1:9/session/end/confirm");
        assert_eq!(
            forms[1].fields,
            vec![("xsrf".into(), "x'y".into()), ("extra".into(), "1".into())]
        );
    }
}
