//! One complete Caddy configuration (JSON, for `POST /load`) from what a node should serve: its
//! modules' routes, the certificates that cover their names, and pending ACME challenges.
//!
//! Every piece of text that reaches the configuration comes from a checked type
//! (`core_events::edge`): host names, path prefixes and header values cannot hold Caddy
//! placeholders (`{…}`) or matcher syntax, so a module's route can only ever be a route. The
//! output is deterministic (routes sorted, maps ordered), so the same input gives the same bytes
//! and the same [`Rendered::sha256`]: an unchanged configuration is recognised without asking
//! Caddy.

use std::collections::BTreeSet;

use core_events::edge::{HostName, Route};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A route of a module hosted on this node, as it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRoute {
    pub module: String,
    pub name: String,
    pub route: Route,
}

/// A certificate the proxy serves: its chain and key (PEM), and the names it covers.
#[derive(Clone, PartialEq, Eq)]
pub struct ServedCertificate {
    pub name: String,
    /// Host names, or `*.` and one (a wildcard covers one label).
    pub names: Vec<String>,
    pub chain_pem: String,
    pub key_pem: String,
    /// RFC 3339.
    pub not_after: String,
    /// Hex, as the store has it.
    pub serial: String,
    /// [`core_events::edge::cert::SOURCE_UPLOAD`] or [`core_events::edge::cert::SOURCE_ACME`].
    pub source: String,
}

impl std::fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServedCertificate")
            .field("name", &self.name)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// A pending ACME HTTP-01 challenge: `GET /.well-known/acme-challenge/<token>` on port 80 answers
/// the key authorization. Both are public (the ACME server reads them over plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Challenge {
    pub token: String,
    pub key_authorization: String,
}

/// Where the proxy listens and how it is administered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub http_port: u16,
    pub https_port: u16,
    /// The one address to listen on; `None`: every address.
    pub bind: Option<std::net::IpAddr>,
    /// Caddy's admin endpoint, in Caddy's address syntax (`unix//run/agent/edge/admin.sock`): it is
    /// part of every configuration, so a `POST /load` keeps it where it is.
    pub admin: String,
}

impl Listen {
    /// A listener's address in Caddy's syntax: `:PORT`, or `IP:PORT` (`[IPv6]:PORT`).
    fn address(&self, port: u16) -> String {
        match self.bind {
            None => format!(":{port}"),
            Some(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        }
    }
}

/// What the node should serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub listen: Listen,
    pub routes: Vec<ServedRoute>,
    pub certificates: Vec<ServedCertificate>,
    pub challenges: Vec<Challenge>,
}

/// A rendered configuration and its digest.
#[derive(Clone)]
pub struct Rendered {
    pub json: String,
    pub sha256: String,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The JSON holds certificate keys.
        f.debug_struct("Rendered")
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// The ACME HTTP-01 path prefix.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// True for an ACME token: base64url characters only (RFC 8555 §8.1), 1 to 256 of them. A token
/// becomes a path in the configuration, so nothing else passes.
pub fn is_challenge_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// True for a key authorization: `<token>.<thumbprint>`, base64url and one dot.
pub fn is_key_authorization(s: &str) -> bool {
    s.len() <= 512
        && s.split_once('.')
            .is_some_and(|(t, p)| is_challenge_token(t) && is_challenge_token(p))
}

/// Most specific first: a route with a host before one without, then longer path prefixes first,
/// then by name, so that Caddy's first-match order serves each request by its most specific
/// route, whatever order the routes were found in.
fn specificity_order(a: &ServedRoute, b: &ServedRoute) -> std::cmp::Ordering {
    let key = |r: &ServedRoute| {
        let (host, path) = r.route.match_key();
        let segments = if path == "/" {
            0
        } else {
            path.matches('/').count()
        };
        (
            std::cmp::Reverse(host.is_some()),
            std::cmp::Reverse(segments),
            host.map(str::to_string),
            path.to_string(),
            r.module.clone(),
            r.name.clone(),
        )
    };
    key(a).cmp(&key(b))
}

/// The Caddy matcher of a route: its host, and its prefix by whole segments (`/app` and `/app/*`,
/// never `/apple`).
fn matcher(route: &Route, hosts: Option<Vec<&str>>) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(hosts) = hosts {
        m.insert("host".into(), json!(hosts));
    }
    let (_, path) = route.match_key();
    if path != "/" {
        m.insert("path".into(), json!([path, format!("{path}/*")]));
    }
    Value::Object(m)
}

fn proxy_route(r: &ServedRoute) -> Value {
    let route = &r.route;
    let mut handle = Vec::new();
    if !route.headers().is_empty() {
        let mut set = serde_json::Map::new();
        for h in route.headers() {
            set.insert(h.name().to_string(), json!([h.value()]));
        }
        // Deferred: applied to the backend's response, so they replace its own values.
        handle.push(json!({"handler": "headers", "response": {"set": set, "deferred": true}}));
    }
    if route.strip_prefix() {
        let (_, path) = route.match_key();
        handle.push(json!({"handler": "rewrite", "strip_path_prefix": path}));
    }
    handle.push(json!({
        "handler": "reverse_proxy",
        "upstreams": [{"dial": format!("127.0.0.1:{}", route.port())}],
    }));
    let hosts = route.host().map(|h| vec![h.as_str()]);
    json!({
        "group": format!("{}/{}", r.module, r.name),
        "match": [matcher(route, hosts)],
        "handle": handle,
        "terminal": true,
    })
}

fn not_found() -> Value {
    json!({"handle": [{"handler": "static_response", "status_code": 404, "body": "no route\n"}]})
}

impl Desired {
    /// The names of every certificate (wildcards as `*.…`, which Caddy's host matcher takes too).
    fn cert_names(&self) -> BTreeSet<&str> {
        self.certificates
            .iter()
            .flat_map(|c| c.names.iter().map(String::as_str))
            .collect()
    }

    /// Whether some certificate covers `host`.
    fn is_covered(&self, host: &HostName) -> bool {
        self.certificates
            .iter()
            .any(|c| crate::certs::covers(&c.names, host.as_str()))
    }

    /// Whether HTTPS is served: only with a certificate to serve (a TLS listener without one
    /// would fail every handshake).
    pub fn serves_https(&self) -> bool {
        !self.certificates.is_empty()
    }

    pub fn render(&self) -> Rendered {
        let mut routes: Vec<&ServedRoute> = self.routes.iter().collect();
        routes.sort_by(|a, b| specificity_order(a, b));
        let cert_names = self.cert_names();
        let https_port = self.listen.https_port;

        let mut http_routes: Vec<Value> = Vec::new();
        let mut challenges = self.challenges.clone();
        challenges.sort();
        challenges.dedup_by(|a, b| a.token == b.token);
        for c in &challenges {
            http_routes.push(json!({
                "match": [{"path": [format!("{CHALLENGE_PREFIX}{}", c.token)]}],
                "handle": [{
                    "handler": "static_response",
                    "status_code": 200,
                    "headers": {"Content-Type": ["application/octet-stream"]},
                    "body": c.key_authorization,
                }],
                "terminal": true,
            }));
        }
        for r in &routes {
            if r.route.redirect_https() {
                // To HTTPS only where HTTPS can be served: the names with a certificate.
                let names: Vec<&str> = match r.route.host() {
                    Some(h) if self.is_covered(h) => vec![h.as_str()],
                    Some(_) => vec![],
                    None => cert_names.iter().copied().collect(),
                };
                if !names.is_empty() {
                    let port = if https_port == 443 {
                        String::new()
                    } else {
                        format!(":{https_port}")
                    };
                    http_routes.push(json!({
                        "group": format!("{}/{}", r.module, r.name),
                        "match": [matcher(&r.route, Some(names))],
                        "handle": [{
                            "handler": "static_response",
                            "status_code": 308,
                            "headers": {"Location": [format!("https://{{http.request.host}}{port}{{http.request.uri}}")]},
                        }],
                        "terminal": true,
                    }));
                }
            }
            http_routes.push(proxy_route(r));
        }
        http_routes.push(not_found());

        let mut servers = serde_json::Map::new();
        servers.insert(
            "http".into(),
            json!({
                "listen": [self.listen.address(self.listen.http_port)],
                "automatic_https": {"disable": true},
                "routes": http_routes,
            }),
        );
        let mut apps = serde_json::Map::new();
        if self.serves_https() {
            let mut https_routes: Vec<Value> = routes.iter().map(|r| proxy_route(r)).collect();
            https_routes.push(not_found());
            servers.insert(
                "https".into(),
                json!({
                    "listen": [self.listen.address(https_port)],
                    "automatic_https": {"disable": true},
                    "tls_connection_policies": [{}],
                    "routes": https_routes,
                }),
            );
            let mut certs: Vec<&ServedCertificate> = self.certificates.iter().collect();
            certs.sort_by(|a, b| a.name.cmp(&b.name));
            let load: Vec<Value> = certs
                .iter()
                .map(|c| json!({"certificate": c.chain_pem, "key": c.key_pem, "tags": [c.name]}))
                .collect();
            apps.insert("tls".into(), json!({"certificates": {"load_pem": load}}));
        }
        apps.insert(
            "http".into(),
            json!({
                "http_port": self.listen.http_port,
                "https_port": https_port,
                "servers": servers,
            }),
        );
        let config = json!({
            // Not persisted by Caddy (its autosave file would hold the keys): the edge service
            // keeps the last applied configuration itself.
            "admin": {"listen": self.listen.admin, "config": {"persist": false}},
            "apps": apps,
        });
        let json = serde_json::to_string(&config).expect("a JSON value serializes");
        let sha256 = hex(&Sha256::digest(json.as_bytes()));
        Rendered { json, sha256 }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_events::edge::Header;

    fn listen() -> Listen {
        Listen {
            http_port: 80,
            https_port: 443,
            bind: None,
            admin: "unix//run/x.sock".into(),
        }
    }

    fn served(module: &str, name: &str, host: Option<&str>, path: Option<&str>) -> ServedRoute {
        ServedRoute {
            module: module.into(),
            name: name.into(),
            route: Route::new(host, path, 8080, false, true, vec![]).unwrap(),
        }
    }

    fn desired(routes: Vec<ServedRoute>) -> Desired {
        Desired {
            listen: listen(),
            routes,
            certificates: vec![],
            challenges: vec![],
        }
    }

    fn cert(name: &str) -> ServedCertificate {
        ServedCertificate {
            name: name.into(),
            names: vec![name.into()],
            chain_pem: "CHAIN".into(),
            key_pem: "KEY".into(),
            not_after: "2030-01-01T00:00:00Z".into(),
            serial: "01".into(),
            source: "upload".into(),
        }
    }

    fn groups(config: &Value, server: &str) -> Vec<String> {
        config["apps"]["http"]["servers"][server]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["group"].as_str().unwrap_or("-").to_string())
            .collect()
    }

    #[test]
    fn the_most_specific_route_comes_first_whatever_the_input_order() {
        let routes = vec![
            served("a", "root", None, Some("/")),
            served("b", "app", None, Some("/app")),
            served("c", "deep", Some("h.test"), Some("/app/x")),
            served("d", "host", Some("h.test"), None),
        ];
        let mut reversed = routes.clone();
        reversed.reverse();
        let one = desired(routes).render();
        let two = desired(reversed).render();
        assert_eq!(one.json, two.json);
        assert_eq!(one.sha256, two.sha256);
        let config: Value = serde_json::from_str(&one.json).unwrap();
        assert_eq!(
            groups(&config, "http"),
            ["c/deep", "d/host", "b/app", "a/root", "-"]
        );
    }

    #[test]
    fn paths_match_whole_segments_and_strip_prefix_rewrites() {
        let mut r = served("a", "app", Some("h.test"), Some("/app"));
        r.route = Route::new(
            Some("h.test"),
            Some("/app"),
            9000,
            true,
            false,
            vec![Header::new("X-Frame-Options", "DENY").unwrap()],
        )
        .unwrap();
        let config: Value = serde_json::from_str(&desired(vec![r]).render().json).unwrap();
        let route = &config["apps"]["http"]["servers"]["http"]["routes"][0];
        assert_eq!(route["match"][0]["path"], json!(["/app", "/app/*"]));
        assert_eq!(route["match"][0]["host"], json!(["h.test"]));
        let handle = route["handle"].as_array().unwrap();
        assert_eq!(
            handle[0]["response"]["set"]["X-Frame-Options"],
            json!(["DENY"])
        );
        assert_eq!(handle[1]["strip_path_prefix"], "/app");
        assert_eq!(handle[2]["upstreams"][0]["dial"], "127.0.0.1:9000");
    }

    #[test]
    fn https_and_redirects_only_for_names_with_a_certificate() {
        let routes = vec![
            served("a", "web", Some("a.test"), None),
            served("b", "web", Some("b.test"), None),
        ];
        let plain: Value = serde_json::from_str(&desired(routes.clone()).render().json).unwrap();
        assert!(plain["apps"]["http"]["servers"]["https"].is_null());
        assert!(plain["apps"]["tls"].is_null());
        assert_eq!(groups(&plain, "http"), ["a/web", "b/web", "-"]);

        let mut with_cert = desired(routes);
        with_cert.certificates.push(cert("a.test"));
        let config: Value = serde_json::from_str(&with_cert.render().json).unwrap();
        // a.test: redirect, then its proxy route (never reached on port 80); b.test: proxied.
        assert_eq!(groups(&config, "http"), ["a/web", "a/web", "b/web", "-"]);
        let redirect = &config["apps"]["http"]["servers"]["http"]["routes"][0];
        assert_eq!(redirect["handle"][0]["status_code"], 308);
        assert_eq!(
            redirect["handle"][0]["headers"]["Location"][0],
            "https://{http.request.host}{http.request.uri}"
        );
        assert_eq!(groups(&config, "https"), ["a/web", "b/web", "-"]);
        assert_eq!(
            config["apps"]["tls"]["certificates"]["load_pem"][0]["tags"],
            json!(["a.test"])
        );
        assert!(format!("{with_cert:?}").contains("a.test"));
        assert!(!format!("{with_cert:?}").contains("KEY"));
    }

    #[test]
    fn a_bind_address_is_in_every_listener() {
        let mut d = desired(vec![served("a", "web", Some("a.test"), None)]);
        d.certificates.push(cert("a.test"));
        d.listen.bind = Some("127.0.0.2".parse().unwrap());
        let config: Value = serde_json::from_str(&d.render().json).unwrap();
        let servers = &config["apps"]["http"]["servers"];
        assert_eq!(servers["http"]["listen"], json!(["127.0.0.2:80"]));
        assert_eq!(servers["https"]["listen"], json!(["127.0.0.2:443"]));
        d.listen.bind = Some("::1".parse().unwrap());
        let config: Value = serde_json::from_str(&d.render().json).unwrap();
        assert_eq!(
            config["apps"]["http"]["servers"]["http"]["listen"],
            json!(["[::1]:80"])
        );
    }

    #[test]
    fn a_redirect_names_a_port_other_than_443() {
        let mut d = desired(vec![served("a", "web", Some("a.test"), None)]);
        d.listen.https_port = 8443;
        d.certificates.push(cert("a.test"));
        let config: Value = serde_json::from_str(&d.render().json).unwrap();
        let redirect = &config["apps"]["http"]["servers"]["http"]["routes"][0];
        assert_eq!(
            redirect["handle"][0]["headers"]["Location"][0],
            "https://{http.request.host}:8443{http.request.uri}"
        );
    }

    #[test]
    fn challenges_are_answered_first_on_http() {
        let mut d = desired(vec![served("a", "root", None, Some("/"))]);
        d.challenges.push(Challenge {
            token: "tok_en-1".into(),
            key_authorization: "tok_en-1.thumb".into(),
        });
        let config: Value = serde_json::from_str(&d.render().json).unwrap();
        let first = &config["apps"]["http"]["servers"]["http"]["routes"][0];
        assert_eq!(
            first["match"][0]["path"],
            json!(["/.well-known/acme-challenge/tok_en-1"])
        );
        assert_eq!(first["handle"][0]["body"], "tok_en-1.thumb");
        assert!(is_challenge_token("tok_en-1"));
        for bad in ["", "a/b", "a{b}", "a.b", "a b"] {
            assert!(!is_challenge_token(bad), "{bad:?}");
        }
        assert!(is_key_authorization("a.b"));
        assert!(!is_key_authorization("a.b.c"));
        assert!(!is_key_authorization("a"));
    }
}
