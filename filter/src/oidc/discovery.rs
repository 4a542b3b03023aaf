//! OpenID Provider discovery: the `.well-known/openid-configuration` document (OIDC Discovery 1.0).

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use core::fmt::{self, Write as _};

use crate::json::{self, Value};
use crate::weburl::WebUrl;

/// Discovery documents are a few kilobytes; anything far larger is not one.
const MAX_BODY: usize = 256 * 1024;

/// What we use from the provider's discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: WebUrl,
    pub token_endpoint: WebUrl,
    pub jwks_uri: WebUrl,
    pub end_session_endpoint: Option<WebUrl>,
    /// `["client_secret_basic"]` when the document omits it, the default OIDC Discovery 3 specifies.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// Empty when the document omits it (the provider does not advertise PKCE; it may still support it).
    pub code_challenge_methods_supported: Vec<String>,
    /// The provider takes authorization requests only as pushed ones (RFC 9126 5), or only as signed
    /// request objects (RFC 9101 10.5): the filter sends neither, so every login fails at the IdP.
    pub requires_par: bool,
    pub requires_request_object: bool,
}

/// Why a discovery document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryError {
    /// Not JSON, too large, or a field of the wrong type.
    Malformed(String),
    /// A required field is absent.
    MissingField(&'static str),
    /// `issuer` differs from the configured issuer (OIDC Discovery 4.3: they must be identical).
    IssuerMismatch { expected: String, got: String },
    /// An endpoint is not an absolute http(s) URL without a fragment.
    BadEndpoint(&'static str),
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(reason) => write!(f, "malformed discovery document: {reason}"),
            Self::MissingField(field) => write!(f, "discovery document has no {field}"),
            Self::IssuerMismatch { expected, got } => {
                write!(
                    f,
                    "discovery issuer \"{got}\" is not the configured issuer \"{expected}\""
                )
            }
            Self::BadEndpoint(field) => {
                write!(f, "discovery {field} is not an absolute http(s) URL")
            }
        }
    }
}

impl core::error::Error for DiscoveryError {}

/// Parses a discovery document and checks it belongs to `expected_issuer`.
pub fn parse(body: &[u8], expected_issuer: &str) -> Result<ProviderMetadata, DiscoveryError> {
    if body.len() > MAX_BODY {
        return Err(DiscoveryError::Malformed(format!(
            "larger than {MAX_BODY} bytes"
        )));
    }
    let raw = RawMetadata::read(body)?;

    let issuer = raw.issuer.ok_or(DiscoveryError::MissingField("issuer"))?;
    // Byte-for-byte: a trailing slash or different case is a different issuer, and tokens carry this
    // exact string in `iss`. Tolerating variants here is how mix-up attacks get in.
    if issuer != expected_issuer {
        return Err(DiscoveryError::IssuerMismatch {
            expected: expected_issuer.to_owned(),
            got: quotable(&issuer, 256),
        });
    }

    Ok(ProviderMetadata {
        issuer,
        authorization_endpoint: endpoint("authorization_endpoint", raw.authorization_endpoint)?,
        token_endpoint: endpoint("token_endpoint", raw.token_endpoint)?,
        jwks_uri: endpoint("jwks_uri", raw.jwks_uri)?,
        // Empty is absent, as Go's encoders write a field without `omitempty` (found by a black-box
        // test: `""` refused the whole document, and every request got 503).
        end_session_endpoint: raw
            .end_session_endpoint
            .filter(|u| !u.is_empty())
            .map(|u| endpoint("end_session_endpoint", Some(u)))
            .transpose()?,
        token_endpoint_auth_methods_supported: raw
            .token_endpoint_auth_methods_supported
            .unwrap_or_else(|| vec!["client_secret_basic".to_owned()]),
        code_challenge_methods_supported: raw.code_challenge_methods_supported.unwrap_or_default(),
        requires_par: raw.requires_par,
        requires_request_object: raw.requires_request_object,
    })
}

/// The path of `<issuer>/.well-known/openid-configuration` (OIDC Discovery 4.1: appended to the issuer's
/// path, after removing a trailing `/`).
pub fn discovery_path(issuer: &WebUrl) -> String {
    let path = issuer.path().trim_end_matches('/');
    format!("{path}/.well-known/openid-configuration")
}

/// The document as sent; unknown members are ignored (providers publish many we don't use).
struct RawMetadata {
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    end_session_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    code_challenge_methods_supported: Option<Vec<String>>,
    requires_par: bool,
    requires_request_object: bool,
}

impl RawMetadata {
    /// The members we use: `null` is absent, another type or a second member of the same name is an error.
    fn read(body: &[u8]) -> Result<RawMetadata, DiscoveryError> {
        let doc = json::parse_object(body).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
        let member = |name: &str| -> Result<Option<&Value>, DiscoveryError> {
            if doc.keys().filter(|k| *k == name).nth(1).is_some() {
                return Err(DiscoveryError::Malformed(format!(
                    "duplicate member {name}"
                )));
            }
            Ok(doc.get(name).filter(|v| !v.is_null()))
        };
        let text = |name: &str| match member(name)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(DiscoveryError::Malformed(format!("{name} is not a string"))),
        };
        let strings = |v: &Value| {
            let mut out = Vec::new();
            for s in v.as_array()? {
                out.push(s.as_str()?.to_owned());
            }
            Some(out)
        };
        let list = |name: &str| match member(name)? {
            None => Ok(None),
            Some(v) => strings(v).map(Some).ok_or_else(|| {
                DiscoveryError::Malformed(format!("{name} is not a list of strings"))
            }),
        };
        // Only `true` requires: what else the member holds is no requirement the filter must know of, and
        // no reason to refuse the whole document.
        let flag = |name: &str| matches!(doc.get(name), Some(Value::Bool(true)));
        Ok(RawMetadata {
            issuer: text("issuer")?,
            authorization_endpoint: text("authorization_endpoint")?,
            token_endpoint: text("token_endpoint")?,
            jwks_uri: text("jwks_uri")?,
            end_session_endpoint: text("end_session_endpoint")?,
            token_endpoint_auth_methods_supported: list("token_endpoint_auth_methods_supported")?,
            code_challenge_methods_supported: list("code_challenge_methods_supported")?,
            requires_par: flag("require_pushed_authorization_requests"),
            requires_request_object: flag("require_signed_request_object"),
        })
    }
}

fn endpoint(field: &'static str, value: Option<String>) -> Result<WebUrl, DiscoveryError> {
    let value = value.ok_or(DiscoveryError::MissingField(field))?;
    // A relative or non-web URL cannot be called; a fragment is forbidden on OAuth endpoints (RFC 6749 3.1).
    let url = WebUrl::parse(&value).map_err(|_| DiscoveryError::BadEndpoint(field))?;
    if url.fragment().is_some() {
        return Err(DiscoveryError::BadEndpoint(field));
    }
    Ok(url)
}

/// At most `max_chars` of `s`, for a log line between double quotes: a quote, a backslash and every
/// character outside printable ASCII written as `\u{..}` (control characters, and Unicode's invisible and
/// direction-changing ones, which would make the line read as something else). An issuer is a URL, so
/// ASCII. (`{:?}` escapes those too, but its code for `str` costs the module 1 KB.)
pub(crate) fn quotable(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max_chars) {
        if !matches!(c, ' '..='~') || c == '"' || c == '\\' {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = include_bytes!("../../../testdata/discovery/good.json");
    const OTHER_ISSUER: &[u8] = include_bytes!("../../../testdata/discovery/other-issuer.json");
    const NO_JWKS: &[u8] = include_bytes!("../../../testdata/discovery/missing-jwks-uri.json");
    const ISSUER: &str = "https://idp.example.com";

    #[test]
    fn parses_a_full_document() {
        let m = parse(GOOD, ISSUER).unwrap();
        assert_eq!(m.issuer, ISSUER);
        assert_eq!(
            m.authorization_endpoint.as_str(),
            "https://idp.example.com/oauth2/authorize"
        );
        assert_eq!(
            m.token_endpoint.as_str(),
            "https://idp.example.com/oauth2/token"
        );
        assert_eq!(m.jwks_uri.as_str(), "https://idp.example.com/oauth2/keys");
        assert_eq!(
            m.end_session_endpoint.unwrap().as_str(),
            "https://idp.example.com/oauth2/logout"
        );
        assert_eq!(
            m.token_endpoint_auth_methods_supported,
            ["client_secret_basic", "client_secret_post"]
        );
        assert_eq!(m.code_challenge_methods_supported, ["plain", "S256"]);
    }

    #[test]
    fn issuer_must_match_exactly() {
        // The document says "https://idp.example.com/": one trailing slash is already another issuer.
        assert_eq!(
            parse(OTHER_ISSUER, ISSUER),
            Err(DiscoveryError::IssuerMismatch {
                expected: ISSUER.into(),
                got: "https://idp.example.com/".into()
            })
        );
        assert_eq!(
            parse(GOOD, "https://IDP.example.com"),
            Err(DiscoveryError::IssuerMismatch {
                expected: "https://IDP.example.com".into(),
                got: ISSUER.into()
            })
        );
        assert!(parse(OTHER_ISSUER, "https://idp.example.com/").is_ok());
    }

    #[test]
    fn a_mismatched_issuer_is_quoted_safely_in_the_log_line() {
        // The IdP's issuer goes into a log line: a newline in it must not start a forged line, a quote
        // must not end the quoted text early, a right-to-left override must not turn the line around;
        // printable ASCII, trailing spaces included, shows as it is.
        let doc = br#"{"issuer": "https://evil.example/\n[warning] x \"y\\ \u00e9\u202e ",
            "authorization_endpoint": "https://a/x", "token_endpoint": "https://a/t",
            "jwks_uri": "https://a/k"}"#;
        assert_eq!(
            parse(doc, ISSUER).map_err(|e| e.to_string()),
            Err(r#"discovery issuer "https://evil.example/\u{a}[warning] x \u{22}y\u{5c} \u{e9}\u{202e} " is not the configured issuer "https://idp.example.com""#.to_owned())
        );
        // Cut at 256 characters, not bytes.
        let long = format!(
            r#"{{"issuer": "{}", "authorization_endpoint": "https://a/x",
            "token_endpoint": "https://a/t", "jwks_uri": "https://a/k"}}"#,
            "é".repeat(300)
        );
        match parse(long.as_bytes(), ISSUER) {
            Err(DiscoveryError::IssuerMismatch { got, .. }) => {
                assert_eq!(got, "\\u{e9}".repeat(256))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn required_fields() {
        assert_eq!(
            parse(NO_JWKS, ISSUER),
            Err(DiscoveryError::MissingField("jwks_uri"))
        );
        assert_eq!(
            parse(b"{}", ISSUER),
            Err(DiscoveryError::MissingField("issuer"))
        );
    }

    #[test]
    fn optional_fields_get_spec_defaults() {
        let doc = br#"{"issuer":"https://idp.example.com","authorization_endpoint":"https://idp.example.com/a",
            "token_endpoint":"https://idp.example.com/t","jwks_uri":"https://idp.example.com/k"}"#;
        let m = parse(doc, ISSUER).unwrap();
        assert_eq!(m.end_session_endpoint, None);
        assert_eq!(
            m.token_endpoint_auth_methods_supported,
            ["client_secret_basic"]
        );
        assert!(m.code_challenge_methods_supported.is_empty());
    }

    #[test]
    fn endpoints_must_be_absolute_web_urls() {
        let doc = |token: &str| {
            format!(
                r#"{{"issuer":"https://idp.example.com","authorization_endpoint":"https://idp.example.com/a",
                "token_endpoint":{token},"jwks_uri":"https://idp.example.com/k"}}"#
            )
        };
        for bad in [
            r#""/oauth2/token""#,
            r#""ftp://idp.example.com/t""#,
            r#""file:///etc/passwd""#,
            r#""https://idp.example.com/t#frag""#,
            r#""not a url""#,
        ] {
            assert_eq!(
                parse(doc(bad).as_bytes(), ISSUER),
                Err(DiscoveryError::BadEndpoint("token_endpoint")),
                "{bad}"
            );
        }
        let http = parse(doc(r#""http://idp:8080/t""#).as_bytes(), ISSUER).unwrap();
        assert_eq!(http.token_endpoint.as_str(), "http://idp:8080/t");
    }

    #[test]
    fn malformed_documents() {
        assert!(matches!(
            parse(b"<html>", ISSUER),
            Err(DiscoveryError::Malformed(_))
        ));
        assert!(matches!(
            parse(br#"{"issuer": 42}"#, ISSUER),
            Err(DiscoveryError::Malformed(_))
        ));
        for bad in [
            &br#"[]"#[..],
            br#"{"issuer": "https://idp.example.com",}"#,
            br#"{"issuer": "https://idp.example.com", "issuer": "https://evil.example"}"#,
            br#"{"issuer": "https://idp.example.com", "jwks_uri": ["https://idp.example.com/k"]}"#,
            br#"{"issuer": "https://idp.example.com", "code_challenge_methods_supported": ["S256", 1]}"#,
            br#"{"issuer": "https://idp.example.com", "code_challenge_methods_supported": "S256"}"#,
        ] {
            assert!(
                matches!(parse(bad, ISSUER), Err(DiscoveryError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Members we don't read may be anything, even repeated; `null` is absent.
        let doc = br#"{"issuer":"https://idp.example.com","authorization_endpoint":"https://idp.example.com/a",
            "token_endpoint":"https://idp.example.com/t","jwks_uri":"https://idp.example.com/k",
            "x":1,"x":[{}],"end_session_endpoint":null,"code_challenge_methods_supported":null}"#;
        let m = parse(doc, ISSUER).unwrap();
        assert_eq!(m.end_session_endpoint, None);
        assert!(m.code_challenge_methods_supported.is_empty());
        // An empty end_session_endpoint is none; one that is not a URL is still refused.
        let with_end = |v: &str| {
            let doc = format!(
                r#"{{"issuer":"https://idp.example.com","authorization_endpoint":"https://idp.example.com/a",
                "token_endpoint":"https://idp.example.com/t","jwks_uri":"https://idp.example.com/k",
                "end_session_endpoint":"{v}"}}"#
            );
            parse(doc.as_bytes(), ISSUER)
        };
        assert_eq!(with_end("").unwrap().end_session_endpoint, None);
        assert!(with_end("/logout").is_err());
        let huge = vec![b' '; MAX_BODY + 1];
        assert!(matches!(
            parse(&huge, ISSUER),
            Err(DiscoveryError::Malformed(_))
        ));
    }

    #[test]
    fn discovery_path_appends_to_the_issuer_path() {
        let path = |s: &str| discovery_path(&WebUrl::parse(s).unwrap());
        assert_eq!(
            path("https://idp.example.com"),
            "/.well-known/openid-configuration"
        );
        assert_eq!(
            path("https://idp.example.com/"),
            "/.well-known/openid-configuration"
        );
        assert_eq!(
            path("https://idp.example.com/realms/demo"),
            "/realms/demo/.well-known/openid-configuration"
        );
        assert_eq!(
            path("https://idp.example.com/realms/demo/"),
            "/realms/demo/.well-known/openid-configuration"
        );
    }

    #[test]
    fn documents_of_up_to_256_kib_are_read_and_larger_ones_refused() {
        let padded = |n: usize| {
            let mut b = GOOD.to_vec();
            b.resize(n, b' ');
            b
        };
        assert!(parse(&padded(256 * 1024), ISSUER).is_ok());
        assert!(matches!(
            parse(&padded(256 * 1024 + 1), ISSUER),
            Err(DiscoveryError::Malformed(r)) if r.contains("larger than")
        ));
    }

    #[test]
    fn quotable_escapes_del_and_keeps_the_tilde() {
        assert_eq!(quotable("~\u{7f} ", 10), "~\\u{7f} ");
    }
}
