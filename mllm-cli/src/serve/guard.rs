//! Who may talk to the server, decided from a request's head before any route runs: the
//! Host must name this server (against DNS rebinding), an Origin must be one allowed
//! (against cross-site pages; allowed ones get CORS), `/v1` and `/metrics` need an API key
//! when keys are set, and POST bodies must be JSON. Pure functions of the head: no I/O.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};

use super::request::ApiError;

/// The rules, fixed at start-up.
pub struct Policy {
    /// SHA-256 of each accepted API key (compared digest to digest, in constant time).
    key_digests: Vec<[u8; 32]>,
    /// The address the server listens on; an unspecified one (0.0.0.0) accepts any IP.
    listen_ip: Option<IpAddr>,
    /// Host names accepted besides localhost and IP literals of the listening address
    /// (lower case, without port); `*` accepts any.
    hosts: Vec<String>,
    /// Origins allowed to call from a browser (`scheme://host[:port]`, lower case); `*`: any.
    origins: Vec<String>,
}

/// What a request passing the checks takes along: the CORS origin to echo, if any.
pub struct Pass {
    pub cors_origin: Option<HeaderValue>,
}

/// A check's outcome: go on, or answer now (an error, or a preflight's 204).
pub enum Verdict {
    Pass(Pass),
    Preflight(HeaderValue, Option<HeaderValue>),
    Refuse(ApiError),
}

fn digest(key: &str) -> [u8; 32] {
    let d = Sha256::digest(key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// Equal in time independent of where the digests differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn normalise_origin(o: &str) -> String {
    o.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The host part of a Host header value (no port, no brackets, lower case, no final dot).
fn host_name(value: &str) -> Option<String> {
    let v = value.trim();
    let host = if let Some(rest) = v.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))) {
            return None;
        }
        inside
    } else {
        match v.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
            Some(_) => return None,
            None => v,
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@') {
        return None;
    }
    Some(host)
}

impl Policy {
    /// `listen_host` is `--host` as given (an IP, or a name such as `localhost`).
    pub fn new(api_keys: &[String], listen_host: &str, allowed_hosts: &[String], allowed_origins: &[String]) -> Policy {
        let listen_ip = listen_host.trim_matches(['[', ']']).parse::<IpAddr>().ok();
        let mut hosts: Vec<String> = allowed_hosts.iter().filter_map(|h| host_name(h)).collect();
        if listen_ip.is_none() {
            hosts.extend(host_name(listen_host));
        }
        Policy {
            key_digests: api_keys.iter().map(|k| digest(k)).collect(),
            listen_ip,
            hosts,
            origins: allowed_origins.iter().map(|o| normalise_origin(o)).collect(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        if host == "localhost" || self.hosts.iter().any(|h| h == "*" || h == host) {
            return true;
        }
        // An IP literal cannot be rebound to another server by DNS.
        match (host.parse::<IpAddr>(), self.listen_ip) {
            (Ok(ip), Some(listen)) => listen.is_unspecified() || ip == listen,
            _ => false,
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let o = normalise_origin(origin);
        self.origins.iter().any(|a| a == "*" || *a == o)
    }

    fn key_accepted(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let refuse = |message: &str| ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.to_string(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(refuse("no API key given: send the header 'Authorization: Bearer KEY'"));
        };
        let value = value.to_str().unwrap_or("");
        let key = match value.split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
            _ => return Err(refuse("the Authorization header must be 'Bearer KEY'")),
        };
        let d = digest(key);
        // Every key is compared, whichever matches.
        let matched = self.key_digests.iter().fold(false, |any, k| any | same_digest(k, &d));
        if matched {
            Ok(())
        } else {
            Err(refuse("incorrect API key"))
        }
    }

    /// Check a request head.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Verdict {
        let forbidden = |message: String, code: &'static str| {
            Verdict::Refuse(ApiError::invalid(None, message).with_status(StatusCode::FORBIDDEN).with_code(code))
        };
        let host = headers.get(header::HOST).map(|v| v.to_str().ok().and_then(host_name));
        match host {
            None => return Verdict::Refuse(ApiError::invalid(None, "the request has no Host header")),
            Some(None) => return Verdict::Refuse(ApiError::invalid(None, "the Host header is malformed")),
            Some(Some(h)) if !self.host_allowed(&h) => {
                return forbidden(
                    format!("the host '{h}' is not served here (start the server with --allowed-host {h} to allow it)"),
                    "host_not_allowed",
                )
            }
            Some(Some(_)) => {}
        }
        let cors_origin = match headers.get(header::ORIGIN) {
            None => None,
            Some(o) => {
                let text = o.to_str().unwrap_or("");
                if !self.origin_allowed(text) {
                    let shown: String = text.chars().take(100).flat_map(char::escape_default).collect();
                    return forbidden(
                        format!("the origin '{shown}' may not call this server (see --allowed-origin)"),
                        "origin_not_allowed",
                    );
                }
                Some(o.clone())
            }
        };
        if method == Method::OPTIONS {
            if let Some(origin) = cors_origin {
                let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
                return Verdict::Preflight(origin, asked);
            }
        }
        let protected = path == "/v1" || path.starts_with("/v1/") || path == "/metrics";
        if protected && !self.key_digests.is_empty() {
            if let Err(e) = self.key_accepted(headers) {
                return Verdict::Refuse(e);
            }
        }
        if method == Method::POST {
            let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let mime = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json")) {
                let shown: String = ctype.chars().take(100).flat_map(char::escape_default).collect();
                return Verdict::Refuse(
                    ApiError::invalid(
                        None,
                        if ctype.is_empty() {
                            "the request body must be JSON: send 'Content-Type: application/json'".to_string()
                        } else {
                            format!("the request body must be JSON (Content-Type: application/json), not '{shown}'")
                        },
                    )
                    .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                    .with_code("unsupported_media_type"),
                );
            }
        }
        Verdict::Pass(Pass { cors_origin })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn status(v: Verdict) -> u16 {
        match v {
            Verdict::Pass(_) => 200,
            Verdict::Preflight(..) => 204,
            Verdict::Refuse(e) => e.status.as_u16(),
        }
    }

    #[test]
    fn host_names_are_parsed() {
        assert_eq!(host_name("LocalHost:8080").as_deref(), Some("localhost"));
        assert_eq!(host_name("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host_name("example.com.").as_deref(), Some("example.com"));
        assert_eq!(host_name("127.0.0.1").as_deref(), Some("127.0.0.1"));
        for bad in ["", ":80", "a:b", "[::1", "[::1]x", "a b", "user@host"] {
            assert_eq!(host_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn hosts_must_name_this_server() {
        let p = Policy::new(&[], "127.0.0.1", &["api.example.com".into()], &[]);
        let get = |host: &str| status(p.check(&Method::GET, "/health", &head(&[("host", host)])));
        assert_eq!(get("127.0.0.1:8080"), 200);
        assert_eq!(get("localhost"), 200);
        assert_eq!(get("localhost:1"), 200);
        assert_eq!(get("API.example.com:443"), 200);
        assert_eq!(get("evil.example.com"), 403);
        assert_eq!(get("10.0.0.1"), 403);
        assert_eq!(status(p.check(&Method::GET, "/health", &HeaderMap::new())), 400);
        let any = Policy::new(&[], "0.0.0.0", &[], &[]);
        assert_eq!(status(any.check(&Method::GET, "/", &head(&[("host", "10.0.0.1:80")]))), 200);
        assert_eq!(status(any.check(&Method::GET, "/", &head(&[("host", "rebound.example")]))), 403);
    }

    #[test]
    fn origins_must_be_allowed_and_get_a_preflight() {
        let p = Policy::new(&[], "127.0.0.1", &[], &["http://app.example:3000/".into()]);
        let with = |m: Method, origin: &str| {
            status(p.check(&m, "/v1/models", &head(&[("host", "localhost"), ("origin", origin)])))
        };
        assert_eq!(with(Method::GET, "http://app.example:3000"), 200);
        assert_eq!(with(Method::GET, "http://evil.example"), 403);
        assert_eq!(with(Method::GET, "null"), 403);
        assert_eq!(with(Method::OPTIONS, "http://APP.example:3000"), 204);
        assert_eq!(with(Method::OPTIONS, "http://evil.example"), 403);
    }

    #[test]
    fn keys_guard_v1_and_metrics_only() {
        let p = Policy::new(&["k1".into(), "second-key".into()], "127.0.0.1", &[], &[]);
        let get = |path: &str, auth: Option<&str>| {
            let mut h = head(&[("host", "localhost")]);
            if let Some(a) = auth {
                h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
            }
            status(p.check(&Method::GET, path, &h))
        };
        assert_eq!(get("/health", None), 200);
        assert_eq!(get("/v1/models", None), 401);
        assert_eq!(get("/metrics", None), 401);
        assert_eq!(get("/v1/models", Some("Bearer k1")), 200);
        assert_eq!(get("/v1/models", Some("bearer second-key")), 200);
        assert_eq!(get("/v1/models", Some("Bearer k2")), 401);
        assert_eq!(get("/v1/models", Some("Basic k1")), 401);
        assert_eq!(get("/v1/models", Some("Bearer ")), 401);
        assert!(same_digest(&digest("a"), &digest("a")) && !same_digest(&digest("a"), &digest("b")));
    }

    #[test]
    fn post_bodies_must_be_json() {
        let p = Policy::new(&[], "127.0.0.1", &[], &[]);
        let post = |ctype: Option<&str>| {
            let mut h = head(&[("host", "localhost")]);
            if let Some(c) = ctype {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_str(c).unwrap());
            }
            status(p.check(&Method::POST, "/v1/completions", &h))
        };
        assert_eq!(post(Some("application/json")), 200);
        assert_eq!(post(Some("Application/JSON; charset=utf-8")), 200);
        assert_eq!(post(None), 415);
        assert_eq!(post(Some("text/plain")), 415);
        assert_eq!(post(Some("application/x-www-form-urlencoded")), 415);
    }
}
