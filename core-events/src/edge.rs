//! What a module may ask the edge proxy for (issue 14, in progress): a *route*, from a host name
//! and/or a path prefix to one of the module's local ports. Every part is checked here, to a
//! small grammar, because the edge service renders routes into the proxy's configuration: nothing
//! a module writes may become configuration of its own (a Caddy placeholder `{…}`, a path that
//! escapes with `..`, a header that splits a response).
//!
//! Routes are stored in the module's own hash, `module/<id>/routes` ([`crate::Prefix::routes`]),
//! one field per route name, the value [`Route`] as JSON: the module's ACL user may write only its
//! own keys, so a route is owned by the module that asked. `module-sdk route add/rm` writes them
//! and emits [`ROUTE_REQUESTED`]; every node's `edge.sync` event ([`EDGE_SYNC_EVENT`], triggered by
//! it) renders the routes of the node's modules into Caddy's configuration (docs/EDGE.md).

use serde::{Deserialize, Serialize};

/// Emitted by a module (`module-sdk route add/rm`) when it changed its routes; JSON
/// `{"route": NAME, "action": "add"|"rm"}`. Every node-agent's [`EDGE_SYNC_EVENT`] runs on it.
pub const ROUTE_REQUESTED: &str = "route-requested";
/// The node event that renders the node's routes and certificates into its proxy's configuration
/// and applies it (`imageroot/node-events/edge.sync`).
pub const EDGE_SYNC_EVENT: &str = "edge.sync";
/// Emitted by a node's edge service when a route of one of its modules was applied, changed,
/// refused or removed.
pub const ROUTE_CHANGED: &str = "route-changed";
/// Emitted by the node that stored or removed a certificate of the cluster (issued or renewed by
/// ACME, uploaded, removed), payload [`CertificateChanged`]: every module that serves TLS itself
/// (a mail server) reloads its certificate on it.
pub const CERTIFICATE_CHANGED: &str = "certificate-changed";

/// Longest host name (RFC 1035: 253 characters in text form).
const HOST_MAX: usize = 253;
const LABEL_MAX: usize = 63;
const PATH_MAX: usize = 256;
const HEADER_NAME_MAX: usize = 64;
const HEADER_VALUE_MAX: usize = 1024;
/// Extra response headers one route may set.
pub const HEADERS_MAX: usize = 16;
const ROUTE_NAME_MAX: usize = 32;

/// `module/*/routes`: every module's routes hash (a `SCAN MATCH` pattern).
pub fn routes_pattern() -> String {
    format!("{}/*/routes", crate::AgentKind::Module.as_str())
}

/// The module id of a `module/<id>/routes` key, when it is one (not checked as an agent name).
pub fn module_of_routes_key(key: &str) -> Option<&str> {
    let id = key
        .strip_prefix(crate::AgentKind::Module.as_str())?
        .strip_prefix('/')?
        .strip_suffix("/routes")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The node-agent's environment variable naming the edge's state directory (the applied Caddy
/// configuration; default `/run/agent/edge`). Local configuration, never from Redis.
pub const STATE_DIR_VAR: &str = "AGENT_EDGE_STATE_DIR";
/// The node-agent's environment variable naming Caddy's admin socket (default
/// `/run/agent/edge/admin.sock`).
pub const ADMIN_SOCKET_VAR: &str = "AGENT_EDGE_ADMIN_SOCKET";
/// The node-agent's environment variable naming the one IP address the proxy listens on (a
/// multi-homed node publishing on one address); default every address. Local configuration.
pub const BIND_VAR: &str = "AGENT_EDGE_BIND";

/// What a route of a node's modules is after the node's last `edge.sync` (in
/// [`status::ROUTES`]): served, or refused and why (a conflict, a stored route that is not valid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum RouteState {
    Serving,
    Refused(String),
}

/// The `state` of a [`RouteChanged`] event for a route that is no longer there.
pub const ROUTE_REMOVED: &str = "removed";

impl RouteState {
    /// The word of the state: `serving` or `refused`.
    pub fn word(&self) -> &'static str {
        match self {
            RouteState::Serving => "serving",
            RouteState::Refused(_) => "refused",
        }
    }
}

/// What a module says when it changed its routes ([`ROUTE_REQUESTED`]'s JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRequest {
    /// The module whose routes changed (a node step may change a module's routes).
    pub module: String,
    pub route: String,
    pub action: RouteAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAction {
    Add,
    Rm,
}

/// What a node's edge says when a route of one of its modules changed state
/// ([`ROUTE_CHANGED`]'s JSON): `state` is [`RouteState::word`] or [`ROUTE_REMOVED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChanged {
    pub node: String,
    pub module: String,
    pub route: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `cluster/edge`: the edge proxy's settings, the same on every node (fields in [`settings`]).
pub fn settings_key() -> String {
    "cluster/edge".to_string()
}

/// `cluster/certs/<name>`: one certificate the cluster's proxies serve, named by its first host
/// name (fields in [`cert`]). Stored once for the cluster; its key encrypted to the cluster's
/// edge recipient ([`settings::RECIPIENT`]).
pub fn cert_key(name: &HostName) -> String {
    format!("cluster/certs/{name}")
}

/// `cluster/certs/*`: every certificate (a `SCAN MATCH` pattern).
pub fn certs_pattern() -> String {
    "cluster/certs/*".to_string()
}

/// The name of a `cluster/certs/<name>` key, when it is one and the name is a host name.
pub fn cert_of_key(key: &str) -> Option<HostName> {
    HostName::parse(key.strip_prefix("cluster/certs/")?).ok()
}

/// The fields of a certificate's hash ([`cert_key`]).
pub mod cert {
    /// JSON array of the host names it covers (its subject alternative names).
    pub const NAMES: &str = "names";
    /// The certificate chain, PEM, leaf first.
    pub const CHAIN: &str = "chain";
    /// The private key, PEM, age-armored to the cluster's edge recipient.
    pub const KEY: &str = "key";
    /// `upload` or `acme`.
    pub const SOURCE: &str = "source";
    pub const ISSUER: &str = "issuer";
    /// RFC 3339.
    pub const NOT_BEFORE: &str = "not_before";
    pub const NOT_AFTER: &str = "not_after";
    /// Hex.
    pub const SERIAL: &str = "serial";
    /// When it was stored (RFC 3339).
    pub const UPDATED: &str = "updated";
    pub const SOURCE_UPLOAD: &str = "upload";
    pub const SOURCE_ACME: &str = "acme";
}

/// The node-agent's and agentctl's environment variable naming the cluster's edge identity (the
/// age key that opens the certificates' keys; default [`DEFAULT_IDENTITY_FILE`]).
pub const IDENTITY_VAR: &str = "AGENT_EDGE_IDENTITY";
/// Where a node keeps the cluster's edge identity (root's, 0600).
pub const DEFAULT_IDENTITY_FILE: &str = "/etc/agent/edge.key";

/// The fields of [`settings_key`] (absent fields take their defaults).
pub mod settings {
    /// The age recipient of the cluster's edge identity: certificate keys are encrypted to it.
    pub const RECIPIENT: &str = "recipient";
    /// TCP port of plain HTTP (ACME HTTP-01 challenges and redirects to HTTPS); default 80.
    pub const HTTP_PORT: &str = "http_port";
    /// TCP port of HTTPS; default 443.
    pub const HTTPS_PORT: &str = "https_port";
    pub const DEFAULT_HTTP_PORT: u16 = 80;
    pub const DEFAULT_HTTPS_PORT: u16 = 443;
    /// The ACME directory URL (`https://…`) certificates are issued from by HTTP-01, for every
    /// routed host name no uploaded certificate covers. Absent or empty: no ACME.
    pub const ACME_DIRECTORY: &str = "acme_directory";
    /// The contact address given to the ACME server (`admin@example.org`); optional.
    pub const ACME_EMAIL: &str = "acme_email";
    /// PEM of the one root certificate to trust for the ACME directory's own HTTPS (a private
    /// ACME server); absent: the system's trusted roots.
    pub const ACME_CA: &str = "acme_ca";
}

/// `cluster/acme/*`: every ACME key of the cluster (a key pattern: the node users write them).
pub fn acme_pattern() -> String {
    "cluster/acme/*".to_string()
}

/// `cluster/acme/account`: the cluster's ACME account (fields in [`acme_account`]), one for the
/// cluster, made by the first node that needs it.
pub fn acme_account_key() -> String {
    "cluster/acme/account".to_string()
}

/// The fields of [`acme_account_key`].
pub mod acme_account {
    /// The directory URL the account belongs to: another directory makes another account.
    pub const DIRECTORY: &str = "directory";
    /// The account's credentials (its private key included), age-armored to the edge recipient.
    pub const CREDENTIALS: &str = "credentials";
    pub const CREATED: &str = "created";
}

/// `cluster/acme/challenges`: the pending HTTP-01 challenges, token → key authorization. Every
/// node's proxy answers them on its HTTP port, since the ACME server may reach any node.
pub fn acme_challenges_key() -> String {
    "cluster/acme/challenges".to_string()
}

/// `cluster/acme/orders/<name>`: how issuing a certificate for a host name went (fields in
/// [`acme_order`]): what `agentctl cert list` shows for a name still waiting, and the back-off
/// that keeps a failing name from asking the ACME server at every sync.
pub fn acme_order_key(name: &HostName) -> String {
    format!("cluster/acme/orders/{name}")
}

/// `cluster/acme/orders/*` (a `SCAN MATCH` pattern).
pub fn acme_orders_pattern() -> String {
    "cluster/acme/orders/*".to_string()
}

/// The name of a `cluster/acme/orders/<name>` key.
pub fn acme_order_of_key(key: &str) -> Option<HostName> {
    HostName::parse(key.strip_prefix("cluster/acme/orders/")?).ok()
}

/// `cluster/acme/locks/<name>`: held (`SET NX PX`) by the one node issuing or renewing the name's
/// certificate, so that the cluster asks the ACME server once; its value names the holder.
pub fn acme_lock_key(name: &HostName) -> String {
    format!("cluster/acme/locks/{name}")
}

/// The fields of [`acme_order_key`].
pub mod acme_order {
    /// `issuing`, `failed` or `issued`.
    pub const STATE: &str = "state";
    pub const ERROR: &str = "error";
    /// Failed attempts since the last success.
    pub const FAILURES: &str = "failures";
    /// RFC 3339: the last attempt, and the earliest next one after a failure.
    pub const ATTEMPTED: &str = "attempted";
    pub const NEXT_ATTEMPT: &str = "next_attempt";
    /// The node that made the last attempt.
    pub const NODE: &str = "node";
    /// JSON array: the challenge tokens an order in progress put in
    /// [`super::acme_challenges_key`] (taken back if its node dies before the order ends).
    pub const TOKENS: &str = "tokens";
    pub const STATE_ISSUING: &str = "issuing";
    pub const STATE_FAILED: &str = "failed";
    pub const STATE_ISSUED: &str = "issued";
}

/// The payload of [`CERTIFICATE_CHANGED`], emitted by the node that stored or removed a
/// certificate: `action` is `issued`, `renewed`, `uploaded` or `removed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateChanged {
    pub name: String,
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// The actions of a [`CertificateChanged`].
pub mod certificate_action {
    pub const ISSUED: &str = "issued";
    pub const RENEWED: &str = "renewed";
    pub const UPLOADED: &str = "uploaded";
    pub const REMOVED: &str = "removed";
}

/// `node/<name>/edge`: what the node's last `edge.sync` applied (fields in [`status`]).
pub fn status_key(node: &crate::AgentName) -> String {
    format!("{}/edge", crate::Prefix::node(node.clone()).as_str())
}

/// The fields of [`status_key`].
pub mod status {
    /// When the serving configuration was applied (RFC 3339).
    pub const APPLIED: &str = "applied";
    /// SHA-256 of the serving configuration (hex).
    pub const CONFIG_SHA256: &str = "config_sha256";
    /// JSON: `"<module>/<route>"` → `{"state": "serving"}` or `{"state": "refused", "reason":
    /// …}`, every route of the node's modules as the serving configuration has it.
    pub const ROUTES: &str = "routes";
    /// Why the last configuration was not applied (empty when it was): Caddy's refusal.
    pub const ERROR: &str = "error";
    /// When that happened (RFC 3339), and the run that tried.
    pub const ERROR_AT: &str = "error_at";
    pub const ERROR_RUN: &str = "error_run";
    /// JSON: certificate name → its `not_after`, the certificates the serving configuration has.
    pub const CERTIFICATES: &str = "certificates";
    /// What may go wrong with the serving configuration although it applied (empty when
    /// nothing): e.g. reloads that can reset connections.
    pub const WARNING: &str = "warning";
    /// JSON array: the ACME challenge tokens the serving configuration answers (the issuing node
    /// waits for every node to answer them before asking the ACME server to validate).
    pub const CHALLENGES: &str = "challenges";
}

/// Why a route, or a part of it, is refused. The messages are for the module author: they say
/// what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("host {0:?}: {1}")]
    Host(String, &'static str),
    #[error("path {0:?}: {1}")]
    Path(String, &'static str),
    #[error("header {0:?}: {1}")]
    Header(String, &'static str),
    #[error("route name {0:?}: 1 to 32 of a-z, 0-9 and '-', starting with a letter")]
    Name(String),
    #[error("a route needs a host, a path prefix or both")]
    NoMatch,
    #[error("port 0: a route goes to the module's port, 1 to 65535")]
    Port,
    #[error("strip_prefix needs a path prefix to strip")]
    StripWithoutPath,
    #[error("{0} headers: at most {HEADERS_MAX}")]
    TooManyHeaders(usize),
    #[error("the route is not valid JSON: {0}")]
    Json(String),
}

/// A host name a route matches: lowercase ASCII labels of `a-z`, `0-9` and `-` (IDNs in their
/// `xn--` form), one trailing dot dropped. Not an IP address, not a wildcard: certificates are
/// issued per name by HTTP-01, which cannot prove a wildcard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct HostName(String);

impl HostName {
    pub fn parse(s: &str) -> Result<HostName, RouteError> {
        let bad = |why| Err(RouteError::Host(s.to_string(), why));
        let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        if name.is_empty() {
            return bad("empty");
        }
        if !name.is_ascii() {
            return bad("not ASCII: write an international name in its xn-- form");
        }
        if name.len() > HOST_MAX {
            return bad("longer than 253 characters");
        }
        if name.starts_with("*.") || name == "*" {
            return bad("a wildcard: certificates are issued per name (HTTP-01)");
        }
        for label in name.split('.') {
            if label.is_empty() {
                return bad("an empty label (two dots, or a leading dot)");
            }
            if label.len() > LABEL_MAX {
                return bad("a label longer than 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return bad("only letters, digits, '-' and dots");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("a label starts or ends with '-'");
            }
        }
        let last = name.rsplit('.').next().unwrap_or_default();
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return bad("an IP address or all digits: a route matches a name");
        }
        Ok(HostName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<HostName> for String {
    fn from(h: HostName) -> String {
        h.0
    }
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A path prefix a route matches: `/`, or `/` followed by segments of `A-Z a-z 0-9 - . _ ~`
/// separated by single slashes; no `.` or `..` segment, no percent-encoding, no trailing slash
/// (`/app/` is `/app`: the same route). Matching is by whole segments: `/app` matches `/app` and
/// `/app/x`, not `/apple`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn parse(s: &str) -> Result<PathPrefix, RouteError> {
        let bad = |why| Err(RouteError::Path(s.to_string(), why));
        if !s.starts_with('/') {
            return bad("must start with '/'");
        }
        if s.len() > PATH_MAX {
            return bad("longer than 256 characters");
        }
        if s == "/" {
            return Ok(PathPrefix(s.into()));
        }
        // One trailing slash is the same prefix; what is left must be whole segments ("//" is not).
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        for segment in trimmed[1..].split('/') {
            if segment.is_empty() {
                return bad("an empty segment ('//')");
            }
            if segment == "." || segment == ".." {
                return bad("a '.' or '..' segment");
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            {
                return bad(
                    "only letters, digits, '-', '.', '_', '~' and '/' (no percent-encoding)",
                );
            }
        }
        Ok(PathPrefix(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<PathPrefix> for String {
    fn from(p: PathPrefix) -> String {
        p.0
    }
}

/// A response header a route adds: a field name of RFC 9110's token characters (not one the proxy
/// must own: framing, connection and host headers), and a value of visible ASCII and spaces, without
/// `{` and `}` (the proxy's placeholders).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "(String, String)", into = "(String, String)")]
pub struct Header {
    name: String,
    value: String,
}

/// Headers the proxy sets or that change how a response is framed: never a module's.
const OWNED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Header {
    pub fn new(name: &str, value: &str) -> Result<Header, RouteError> {
        let bad = |why| Err(RouteError::Header(name.to_string(), why));
        if name.is_empty() || name.len() > HEADER_NAME_MAX {
            return bad("a name of 1 to 64 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b))
        {
            return bad("a name of letters, digits and !#$&'*+-.^_`|~");
        }
        if OWNED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return bad("set by the proxy, not by a route");
        }
        if value.len() > HEADER_VALUE_MAX {
            return bad("a value longer than 1024 characters");
        }
        if !value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'{' && b != b'}')
        {
            return bad("a value of visible ASCII and spaces, without '{' and '}'");
        }
        Ok(Header {
            name: name.to_string(),
            value: value.trim().to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

impl TryFrom<(String, String)> for Header {
    type Error = RouteError;
    fn try_from((name, value): (String, String)) -> Result<Header, RouteError> {
        Header::new(&name, &value)
    }
}

impl From<Header> for (String, String) {
    fn from(h: Header) -> (String, String) {
        (h.name, h.value)
    }
}

/// The name of one of a module's routes (a field of `module/<id>/routes`).
pub fn check_route_name(s: &str) -> Result<&str, RouteError> {
    let ok = !s.is_empty()
        && s.len() <= ROUTE_NAME_MAX
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(s)
        .ok_or_else(|| RouteError::Name(s.to_string()))
}

/// One route: requests for `host` (any host when `None`) under `path` (all paths when `None`) go
/// to the module's `port` on the node's loopback. Built only through [`Route::new`] or from JSON,
/// which checks the same rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RouteFields", into = "RouteFields")]
pub struct Route {
    host: Option<HostName>,
    path: Option<PathPrefix>,
    port: u16,
    strip_prefix: bool,
    redirect_https: bool,
    headers: Vec<Header>,
}

/// A route as written: every field checked by [`Route::new`] on the way in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    port: u16,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default = "yes")]
    redirect_https: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<Header>,
}

fn yes() -> bool {
    true
}

impl TryFrom<RouteFields> for Route {
    type Error = RouteError;
    fn try_from(f: RouteFields) -> Result<Route, RouteError> {
        Route::new(
            f.host.as_deref(),
            f.path.as_deref(),
            f.port,
            f.strip_prefix,
            f.redirect_https,
            f.headers,
        )
    }
}

impl From<Route> for RouteFields {
    fn from(r: Route) -> RouteFields {
        RouteFields {
            host: r.host.map(String::from),
            path: r.path.map(String::from),
            port: r.port,
            strip_prefix: r.strip_prefix,
            redirect_https: r.redirect_https,
            headers: r.headers,
        }
    }
}

impl Route {
    pub fn new(
        host: Option<&str>,
        path: Option<&str>,
        port: u16,
        strip_prefix: bool,
        redirect_https: bool,
        headers: Vec<Header>,
    ) -> Result<Route, RouteError> {
        let host = host.map(HostName::parse).transpose()?;
        let path = path.map(PathPrefix::parse).transpose()?;
        if host.is_none() && path.is_none() {
            return Err(RouteError::NoMatch);
        }
        if port == 0 {
            return Err(RouteError::Port);
        }
        if strip_prefix && path.as_ref().is_none_or(|p| p.as_str() == "/") {
            return Err(RouteError::StripWithoutPath);
        }
        if headers.len() > HEADERS_MAX {
            return Err(RouteError::TooManyHeaders(headers.len()));
        }
        Ok(Route {
            host,
            path,
            port,
            strip_prefix,
            redirect_https,
            headers,
        })
    }

    /// A route from its stored JSON (a field value of `module/<id>/routes`).
    pub fn from_json(text: &str) -> Result<Route, RouteError> {
        serde_json::from_str(text).map_err(|e| RouteError::Json(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a route always serializes")
    }

    /// What two routes conflict on: the same host (or both any host) and the same path prefix
    /// (no path is `/`). Two modules may not hold routes with the same key.
    pub fn match_key(&self) -> (Option<&str>, &str) {
        (
            self.host.as_ref().map(HostName::as_str),
            self.path.as_ref().map_or("/", PathPrefix::as_str),
        )
    }

    pub fn host(&self) -> Option<&HostName> {
        self.host.as_ref()
    }

    pub fn path(&self) -> Option<&PathPrefix> {
        self.path.as_ref()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn strip_prefix(&self) -> bool {
        self.strip_prefix
    }

    pub fn redirect_https(&self) -> bool {
        self.redirect_https
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes_keys_name_their_module() {
        assert_eq!(routes_pattern(), "module/*/routes");
        assert_eq!(module_of_routes_key("module/hello1/routes"), Some("hello1"));
        for bad in [
            "module//routes",
            "module/a/b/routes",
            "node/n1/routes",
            "module/a/routesx",
        ] {
            assert_eq!(module_of_routes_key(bad), None, "{bad}");
        }
        let node = crate::AgentName::new("n1").unwrap();
        assert_eq!(status_key(&node), "node/n1/edge");
    }

    #[test]
    fn host_names_are_normalised_and_checked() {
        assert_eq!(
            HostName::parse("Hello.Test.").unwrap().as_str(),
            "hello.test"
        );
        assert_eq!(
            HostName::parse("xn--bcher-kva.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
        assert_eq!(HostName::parse("intranet").unwrap().as_str(), "intranet");
        for (bad, why) in [
            ("", "empty"),
            ("*.example.org", "wildcard"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("-a.b", "starts or ends"),
            ("a_b.c", "only letters"),
            ("a b", "only letters"),
            ("{http.request.host}", "only letters"),
            ("bücher.example", "xn--"),
            ("192.168.1.1", "IP address"),
            ("[::1]", "only letters"),
        ] {
            let e = HostName::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(HostName::parse(&format!("{}.test", "a".repeat(64))).is_err());
        assert!(HostName::parse(&format!("{}test", "a.".repeat(130))).is_err());
    }

    #[test]
    fn path_prefixes_are_normalised_and_checked() {
        assert_eq!(PathPrefix::parse("/").unwrap().as_str(), "/");
        assert_eq!(PathPrefix::parse("/app/").unwrap().as_str(), "/app");
        assert_eq!(
            PathPrefix::parse("/a-b/c_d.e~f").unwrap().as_str(),
            "/a-b/c_d.e~f"
        );
        for (bad, why) in [
            ("app", "start with '/'"),
            ("", "start with '/'"),
            ("//", "empty segment"),
            ("/a//b", "empty segment"),
            ("/a/../b", "'..'"),
            ("/.", "'.'"),
            ("/a%2e", "percent"),
            ("/{path}", "only letters"),
            ("/a b", "only letters"),
            ("/a?b", "only letters"),
            ("/a*", "only letters"),
        ] {
            let e = PathPrefix::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn headers_that_the_proxy_owns_or_that_could_split_a_response_are_refused() {
        assert!(Header::new("Strict-Transport-Security", "max-age=31536000").is_ok());
        for (name, value) in [
            ("Content-Length", "1"),
            ("host", "x"),
            ("X-A", "a\r\nSet-Cookie: x"),
            ("X-A", "{env.SECRET}"),
            ("X A", "1"),
            ("", "1"),
        ] {
            assert!(Header::new(name, value).is_err(), "{name:?}: {value:?}");
        }
    }

    #[test]
    fn a_route_needs_something_to_match_and_somewhere_to_go() {
        assert_eq!(
            Route::new(None, None, 80, false, true, vec![]),
            Err(RouteError::NoMatch)
        );
        assert_eq!(
            Route::new(Some("a.test"), None, 0, false, true, vec![]),
            Err(RouteError::Port)
        );
        assert_eq!(
            Route::new(Some("a.test"), None, 8080, true, true, vec![]),
            Err(RouteError::StripWithoutPath)
        );
        let many = (0..=HEADERS_MAX)
            .map(|i| Header::new(&format!("X-{i}"), "v").unwrap())
            .collect();
        assert_eq!(
            Route::new(Some("a.test"), None, 8080, false, true, many),
            Err(RouteError::TooManyHeaders(HEADERS_MAX + 1))
        );
        let r = Route::new(Some("A.test"), Some("/app/"), 8080, true, false, vec![]).unwrap();
        assert_eq!(r.match_key(), (Some("a.test"), "/app"));
        let whole = Route::new(Some("a.test"), None, 8080, false, true, vec![]).unwrap();
        let root = Route::new(Some("a.test"), Some("/"), 9090, false, true, vec![]).unwrap();
        assert_eq!(
            whole.match_key(),
            root.match_key(),
            "no path is /: they conflict"
        );
    }

    #[test]
    fn stored_json_is_checked_like_a_new_route() {
        let r = Route::from_json(r#"{"host":"hello.test","port":8080}"#).unwrap();
        assert!(r.redirect_https(), "redirect by default");
        assert_eq!(Route::from_json(&r.to_json()).unwrap(), r);
        for bad in [
            r#"{"host":"{upstream}","port":8080}"#,
            r#"{"host":"a.test","port":70000}"#,
            r#"{"host":"a.test","port":8080,"caddy":{"handle":[]}}"#,
            r#"{"host":"a.test","port":8080,"headers":[["X","a\nb"]]}"#,
            r#"{"port":8080}"#,
            "not json",
        ] {
            assert!(Route::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_names_are_short_slugs() {
        assert!(check_route_name("web").is_ok());
        assert!(check_route_name("admin-2").is_ok());
        for bad in ["", "2web", "Web", "a/b", &"a".repeat(33)] {
            assert!(check_route_name(bad).is_err(), "{bad:?}");
        }
    }

    /// Characters that mean something to the proxy's configuration, a shell or HTTP framing.
    const UNSAFE: &str = "{}\"'\\ \t\r\n%*?#";

    proptest! {
        /// Whatever a module writes, what is accepted holds none of the proxy's syntax.
        #[test]
        fn accepted_parts_hold_no_proxy_syntax(s in "\\PC{0,40}") {
            let unsafe_char = |c: char| UNSAFE.contains(c);
            if let Ok(h) = HostName::parse(&s) {
                prop_assert!(!h.as_str().contains(unsafe_char), "host {:?}", h);
                prop_assert_eq!(HostName::parse(h.as_str()).unwrap(), h.clone());
            }
            if let Ok(p) = PathPrefix::parse(&s) {
                prop_assert!(!p.as_str().contains(unsafe_char), "path {:?}", p);
                prop_assert!(!p.as_str().contains("/../") && !p.as_str().ends_with("/.."), "path {:?}", p);
                prop_assert_eq!(PathPrefix::parse(p.as_str()).unwrap(), p.clone());
            }
            if let Ok(h) = Header::new("X-Test", &s) {
                prop_assert!(!h.value().contains(['{', '}', '\r', '\n']), "value {:?}", h);
            }
        }

        #[test]
        fn any_json_is_a_route_or_an_error(s in "\\PC{0,120}") {
            let _ = Route::from_json(&s);
        }
    }
}
