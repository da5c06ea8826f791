//! `module-sdk route …`: the module's routes through the node's edge proxy — a host name and/or a
//! path prefix published to one of the module's local ports.
//!
//! The contract (the grammar of every part, the stored JSON, the key, what two routes conflict on)
//! is `core_events::edge`'s; this is the command line around it. `add` checks a new route against
//! every module's routes (one host and path go to one module), writes
//! `HSET module/<id>/routes NAME JSON` and emits `route-requested` the way `module-sdk emit` does
//! ([`crate::control::emit`]); `rm` removes one and emits the same; `list` shows them. A stored
//! value that is not a valid route (written by hand) is skipped with a warning, never trusted.

use std::collections::{BTreeMap, BTreeSet};

use clap::{Args, Subcommand};
use core_events::edge::{self, Header, Route};
use core_events::{AgentName, EventName, Prefix};

use crate::context::{module_target, process_env, redis_url_from};
use crate::control::{self, Emitted};
use crate::error::{Error, Result};
use crate::ops::Timeouts;
use crate::redis_url::RedisUrl;

/// `route --help`.
pub const LONG_ABOUT: &str = "\
Routes: publish one of the module's local ports through the node's edge proxy.

A route sends the requests for a host name and/or under a path prefix to a port of the
module on the node's loopback (127.0.0.1:PORT). The routes are the fields of the module's
own hash module/<id>/routes (NAME -> the route as JSON), which only the module and its node
may write; they are removed with the module. The edge proxy (Caddy) of the module's node
applies them: `add` and `rm` emit the event route-requested, on which every node runs
edge.sync, which renders the routes of its modules into the proxy's configuration, gets the
certificates of their host names and reloads the proxy (docs/EDGE.md).

What a route matches (a route needs --host, --path or both):
  --host H  one host name: labels of a-z, 0-9 and '-' separated by dots (an international
            name in its xn-- form); case and one trailing dot do not count. No wildcard, no
            IP address: certificates are issued per name. Without --host: any host.
  --path P  a path prefix: / or /SEGMENT/... of letters, digits and - . _ ~ (no . or ..
            segment, no percent-encoding; a trailing / does not count). Matching is by whole
            path segments: /app matches /app and /app/x, not /apple. Without --path: every
            path, the same as --path /.
--strip-prefix hands /app/x to the module as /x. Plain HTTP is redirected to HTTPS (for a
name the proxy has a certificate for) unless --no-https-redirect. --header 'Name: value' adds a response header (at most 16; not one
the proxy owns, such as Content-Length or Host; a value of visible ASCII without { and }).

Conflicts: one host and path prefix go to one route of one module. `add` refuses a route
whose host and path a route of another module has already, naming that module and its
route, and one whose host and path another route of the same module has (change that route
instead, or remove it first); it then writes nothing. Re-adding a NAME replaces that route:
`add` and `rm` are idempotent, as steps must be. The check reads every module's routes; two
modules adding the same host and path at the same moment can both pass it, and the edge
service then finds the conflict when it renders: the smaller module id's route is served, the
other is refused (node/<node>/edge, field routes; its module hears route-changed). A stored
value that is not a valid route (one written by hand) is skipped with a warning.

route-requested carries {\"module\": ID, \"route\": NAME, \"action\": \"add\" or \"rm\"} and is emitted after every
`add` and `rm` that succeeded, also one that changed nothing (a step run again after a crash
must still get its route applied). Inside a step it goes to the step's agent, which publishes
it on event/<agent>/route-requested; outside a step module-sdk publishes it on
event/<module>/route-requested.

Inside a step the module is the step's own (AGENT_NAME, AGENT_KIND=module, REDIS_URL);
outside one, or from a node's step, name it with --module ID and Redis with REDIS_URL or
--redis-url.";

/// `route --help`, after the options.
pub const AFTER_HELP: &str = "\
Examples (inside a step of module wiki1):
  module-sdk route add web --host wiki.example.org --port 8080
  module-sdk route add api --host wiki.example.org --path /api --port 8081 --strip-prefix
  module-sdk route add site --path /wiki --port 8080 --header 'X-Frame-Options: DENY'
  module-sdk route add intranet --host wiki.lan --port 8080 --no-https-redirect
  module-sdk route list                                 this module's routes, a table
  module-sdk route list --all --json                    every module's, as JSON
  module-sdk route rm api                               remove one (not there: still 0)
Outside a step:
  REDIS_URL=redis://127.0.0.1:6379 module-sdk route --module wiki1 list

Exit codes: 0 ok; 2 bad arguments, or a route that is not valid (the message says which part
and what would be accepted); 69 Redis unreachable; 70 other Redis error; 73 the route
conflicts with another route (the message names it and its module), nothing written; 74
output error; 77 Redis refused (ACL: a module may write only its own routes); 78 REDIS_URL
or an AGENT_* variable missing or invalid.";

/// `module-sdk route …`
#[derive(Args, Debug)]
pub struct RouteArgs {
    /// The module whose routes to use, instead of this step's own (needed outside a step).
    #[arg(long, value_name = "ID", global = true)]
    pub module: Option<AgentName>,

    /// Redis to use instead of REDIS_URL. Prefer the REDIS_URL variable when the URL has a password:
    /// the command line is visible to other users.
    #[arg(long, value_name = "URL", global = true)]
    pub redis_url: Option<String>,

    #[command(subcommand)]
    pub cmd: RouteCmd,
}

#[derive(Subcommand, Debug)]
pub enum RouteCmd {
    /// Add or replace route NAME: `route add web --host wiki.example.org --port 8080`.
    ///
    /// Refused (exit 73, nothing written) when another route, of this module or another, has the
    /// same host and path prefix; refused (exit 2) when a part is not valid. Emits
    /// route-requested {"module": ID, "route": NAME, "action": "add"} after it, also when nothing changed.
    Add {
        /// Route name: 1 to 32 of a-z, 0-9 and '-', starting with a letter.
        #[arg(value_name = "NAME", value_parser = name_arg)]
        name: String,
        /// The host name to match (any host without it).
        #[arg(long, value_name = "H")]
        host: Option<String>,
        /// The path prefix to match, by whole segments (every path without it).
        #[arg(long, value_name = "P")]
        path: Option<String>,
        /// The module's local port the requests go to (on the node's loopback).
        #[arg(long, value_name = "N")]
        port: u16,
        /// Take the path prefix off before passing the request on (/app/x arrives as /x).
        #[arg(long)]
        strip_prefix: bool,
        /// Serve plain HTTP too instead of redirecting it to HTTPS.
        #[arg(long, visible_alias = "no-redirect")]
        no_https_redirect: bool,
        /// A response header to add, 'Name: value' (repeatable, at most 16).
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },

    /// Remove route NAME: `route rm web`. Removing a route that does not exist is not an error.
    ///
    /// Emits route-requested {"module": ID, "route": NAME, "action": "rm"} after it, also when there was nothing
    /// to remove.
    Rm {
        /// Route name: 1 to 32 of a-z, 0-9 and '-', starting with a letter.
        #[arg(value_name = "NAME", value_parser = name_arg)]
        name: String,
    },

    /// List the module's routes as a table: module, name, host, path, port, options.
    List {
        /// Every module's routes, not only this module's (needs only REDIS_URL or --redis-url).
        #[arg(long)]
        all: bool,
        /// Print a JSON array of {"module", "name", "route"} instead, "route" as stored.
        #[arg(long)]
        json: bool,
    },
}

fn name_arg(s: &str) -> Result<String> {
    edge::check_route_name(s)
        .map(str::to_string)
        .map_err(|e| Error::Usage(e.to_string()))
}

/// Runs one `route` command.
pub fn run(args: RouteArgs, verbose: bool) -> Result<()> {
    let given = args
        .redis_url
        .as_deref()
        .map(|u| RedisUrl::parse("--redis-url", u))
        .transpose()?;
    match args.cmd {
        RouteCmd::Add {
            name,
            host,
            path,
            port,
            strip_prefix,
            no_https_redirect,
            headers,
        } => {
            // Everything the module wrote is checked before Redis is asked anything.
            let headers = headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| Error::Usage(format!("route {name:?} is not valid: {e}")))?;
            let route = Route::new(
                host.as_deref(),
                path.as_deref(),
                port,
                strip_prefix,
                !no_https_redirect,
                headers,
            )
            .map_err(|e| Error::Usage(format!("route {name:?} is not valid: {e}")))?;
            // A scratch module (a backup's verification) is never published: its routes would
            // be the original's.
            if std::env::var(core_events::module_env::SCRATCH_MODULE).as_deref() == Ok("1") {
                println!(
                    "route {name}: not requested ({}=1: a scratch module, never published)",
                    core_events::module_env::SCRATCH_MODULE
                );
                return Ok(());
            }
            let (prefix, url) = target(args.module.as_ref(), given)?;
            let mut con = connect(&url)?;
            let all = scan_all(&mut con, &url)?;
            let id = prefix.agent().as_str();
            if let Some(other) = all.iter().find(|s| {
                s.route.match_key() == route.match_key() && !(s.module == id && s.name == name)
            }) {
                return Err(Error::RouteConflict(conflict(&name, &route, other, id)));
            }
            let before = all.iter().find(|s| s.module == id && s.name == name);
            let hash = prefix.routes();
            let json = route.to_json();
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&hash).arg(&name).arg(&json);
            let _: i64 = query(&mut con, &url, format!("writing {name} to {hash}"), &cmd)?;
            if verbose {
                let what = match before {
                    None => "added to",
                    Some(b) if b.route == route => "unchanged in",
                    Some(_) => "replaced in",
                };
                eprintln!("route {name} ({}) {what} {hash}", describe(&route));
            }
            requested(&prefix, &url, &name, edge::RouteAction::Add, verbose)
        }
        RouteCmd::Rm { name } => {
            let (prefix, url) = target(args.module.as_ref(), given)?;
            let mut con = connect(&url)?;
            let hash = prefix.routes();
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(&hash).arg(&name);
            let removed: i64 = query(&mut con, &url, format!("removing {name} from {hash}"), &cmd)?;
            if verbose {
                if removed > 0 {
                    eprintln!("route {name} removed from {hash}");
                } else {
                    eprintln!("route {name} was not in {hash}: nothing to remove");
                }
            }
            requested(&prefix, &url, &name, edge::RouteAction::Rm, verbose)
        }
        RouteCmd::List { all, json } => {
            let routes = if all {
                let url = match given {
                    Some(url) => url,
                    None => redis_url_from(process_env)?,
                };
                scan_all(&mut connect(&url)?, &url)?
            } else {
                let (prefix, url) = target(args.module.as_ref(), given)?;
                let hash = prefix.routes();
                read_hash(&mut connect(&url)?, &url, prefix.agent().as_str(), &hash)?
            };
            let text = if json {
                let list: Vec<Listed> = routes
                    .iter()
                    .map(|s| Listed {
                        module: &s.module,
                        name: &s.name,
                        route: &s.route,
                    })
                    .collect();
                let text = serde_json::to_string_pretty(&list)
                    .map_err(|e| Error::Usage(format!("routes as JSON: {e}")))?;
                format!("{text}\n")
            } else {
                table(&routes)
            };
            print(text.as_bytes())
        }
    }
}

/// The module whose routes are meant, and the Redis URL.
fn target(module: Option<&AgentName>, url: Option<RedisUrl>) -> Result<(Prefix, RedisUrl)> {
    module_target(module, url, "routes; use --module ID for a module's")
}

/// `--header 'Name: value'`.
fn parse_header(text: &str) -> Result<Header> {
    let (name, value) = text.split_once(':').ok_or_else(|| {
        Error::Usage(format!(
            "header {text:?}: write it as 'Name: value' (a colon after the name)"
        ))
    })?;
    Header::new(name, value).map_err(|e| Error::Usage(e.to_string()))
}

/// Emits `route-requested` for route `name` of the module of `prefix`, as `module-sdk emit` does.
fn requested(
    prefix: &Prefix,
    url: &RedisUrl,
    name: &str,
    action: edge::RouteAction,
    verbose: bool,
) -> Result<()> {
    let event = EventName::new(edge::ROUTE_REQUESTED).map_err(|e| Error::Usage(e.to_string()))?;
    let request = edge::RouteRequest {
        module: prefix.agent().to_string(),
        route: name.to_string(),
        action,
    };
    let data = serde_json::to_string(&request).expect("a route request serializes");
    // Outside a step the event is the module's: published on its channel, as --module says.
    let emitted = control::emit(&event, data, || Ok((prefix.agent().clone(), url.clone())))?;
    if verbose {
        match emitted {
            Emitted::ToAgent => eprintln!("{event} handed to the agent, which publishes it"),
            Emitted::Published(n) => {
                eprintln!("{event} published for {}: {n} receivers", prefix.agent())
            }
        }
    }
    Ok(())
}

/// One valid route as stored in a module's routes hash.
#[derive(Debug)]
struct Stored {
    module: String,
    name: String,
    route: Route,
}

/// One entry of `route list --json`.
#[derive(serde::Serialize)]
struct Listed<'a> {
    module: &'a str,
    name: &'a str,
    route: &'a Route,
}

/// Every module's valid routes, by module and name: `SCAN MATCH module/*/routes`, then each hash.
fn scan_all(con: &mut redis::Connection, url: &RedisUrl) -> Result<Vec<Stored>> {
    let pattern = edge::routes_pattern();
    let mut keys = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000);
        let (next, batch): (u64, Vec<Vec<u8>>) =
            query(con, url, format!("looking for {pattern}"), &cmd)?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut all = Vec::new();
    for key in keys {
        let key = String::from_utf8_lossy(&key).into_owned();
        // The pattern's `*` matches `/` too: module/a/b/routes is not a module's routes hash.
        let Some(module) = edge::module_of_routes_key(&key) else {
            continue;
        };
        all.extend(read_hash(con, url, module, &key)?);
    }
    Ok(all)
}

/// The valid routes of one module's hash `key`, sorted by name; what is not one is skipped with a
/// warning (a key that is not a hash too).
fn read_hash(
    con: &mut redis::Connection,
    url: &RedisUrl,
    module: &str,
    key: &str,
) -> Result<Vec<Stored>> {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(key);
    let fields: Vec<(Vec<u8>, Vec<u8>)> = match cmd.query(con) {
        Ok(fields) => fields,
        Err(e) if agent_redis::is_wrong_type(&e) => {
            warn(&format!("{key} is not a hash: its routes are skipped"));
            return Ok(Vec::new());
        }
        Err(e) => return Err(Error::from_redis(url.masked(), format!("reading {key}"), e)),
    };
    let mut routes = BTreeMap::new();
    for (name, value) in fields {
        let name = String::from_utf8_lossy(&name).into_owned();
        if let Err(e) = edge::check_route_name(&name) {
            warn(&format!("skipping a field of {key}: {e}"));
            continue;
        }
        let parsed = std::str::from_utf8(&value)
            .map_err(|_| "the value is not UTF-8".to_string())
            .and_then(|v| Route::from_json(v).map_err(|e| e.to_string()));
        match parsed {
            Ok(route) => {
                routes.insert(name, route);
            }
            Err(e) => warn(&format!("skipping route {name:?} of {key}: {e}")),
        }
    }
    Ok(routes
        .into_iter()
        .map(|(name, route)| Stored {
            module: module.to_string(),
            name,
            route,
        })
        .collect())
}

fn warn(what: &str) {
    eprintln!("module-sdk: warning: {what}");
}

/// What a route matches, for messages: `host hello.test, path /`.
fn describe(route: &Route) -> String {
    let (host, path) = route.match_key();
    match host {
        Some(h) => format!("host {h}, path {path}"),
        None => format!("any host, path {path}"),
    }
}

/// Why route `name` of module `id` cannot be added next to `other`.
fn conflict(name: &str, route: &Route, other: &Stored, id: &str) -> String {
    let what = format!("route {name:?} ({})", describe(route));
    if other.module == id {
        format!(
            "{what} conflicts with route {:?} of this module ({id}): one host and path go to one \
             route; change that one (route add {} …) or remove it first (route rm {})",
            other.name, other.name, other.name
        )
    } else {
        format!(
            "{what} conflicts with route {:?} of module {}: one host and path go to one module",
            other.name, other.module
        )
    }
}

/// The options of a route, for the table: `strip-prefix, no-https-redirect, X-A: v`.
fn options(route: &Route) -> String {
    let mut opts = Vec::new();
    if route.strip_prefix() {
        opts.push("strip-prefix".to_string());
    }
    if !route.redirect_https() {
        opts.push("no-https-redirect".to_string());
    }
    opts.extend(
        route
            .headers()
            .iter()
            .map(|h| format!("{}: {}", h.name(), h.value())),
    );
    if opts.is_empty() {
        "-".to_string()
    } else {
        opts.join(", ")
    }
}

/// The routes as a table with a header line; nothing when there are none.
fn table(routes: &[Stored]) -> String {
    if routes.is_empty() {
        return String::new();
    }
    let rows: Vec<[String; 6]> = routes
        .iter()
        .map(|s| {
            let (host, path) = s.route.match_key();
            [
                s.module.clone(),
                s.name.clone(),
                host.unwrap_or("*").to_string(),
                path.to_string(),
                s.route.port().to_string(),
                options(&s.route),
            ]
        })
        .collect();
    let head = ["MODULE", "NAME", "HOST", "PATH", "PORT", "OPTIONS"].map(String::from);
    let mut width = [0; 6];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(width)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

fn query<T: redis::FromRedisValue>(
    con: &mut redis::Connection,
    url: &RedisUrl,
    what: String,
    cmd: &redis::Cmd,
) -> Result<T> {
    cmd.query(con)
        .map_err(|e| Error::from_redis(url.masked(), what, e))
}

fn connect(url: &RedisUrl) -> Result<redis::Connection> {
    crate::ops::connect(url, Timeouts::NORMAL)
}

use crate::ops::print_stdout as print;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit_code;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Route(RouteArgs),
    }

    fn parse(args: &[&str]) -> std::result::Result<RouteArgs, clap::Error> {
        let mut all = vec!["module-sdk", "route"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| match c.cmd {
            Top::Route(r) => r,
        })
    }

    fn route(host: Option<&str>, path: Option<&str>, port: u16) -> Route {
        Route::new(host, path, port, false, true, vec![]).unwrap()
    }

    #[test]
    fn arguments_parse() {
        let a = parse(&[
            "add",
            "web",
            "--host",
            "a.test",
            "--port",
            "8080",
            "--header",
            "X-A: 1",
            "--header",
            "X-B: 2",
            "--strip-prefix",
            "--module",
            "mod0",
        ])
        .unwrap();
        assert_eq!(a.module.as_ref().map(|m| m.as_str()), Some("mod0"));
        assert!(matches!(
            a.cmd,
            RouteCmd::Add { ref name, port: 8080, strip_prefix: true, no_https_redirect: false, ref headers, .. }
                if name == "web" && headers.len() == 2
        ));
        for bad in [
            &["add", "Web", "--port", "1"][..],
            &["add", "web"],
            &["add", "web", "--port", "70000"],
            &["rm", "a/b"],
            &["list", "extra"],
        ] {
            let e = parse(bad).expect_err("refused");
            assert_eq!(e.exit_code(), exit_code::USAGE, "{bad:?}");
        }
    }

    #[test]
    fn headers_are_name_colon_value() {
        let h = parse_header("X-Frame-Options: DENY").unwrap();
        assert_eq!((h.name(), h.value()), ("X-Frame-Options", "DENY"));
        for bad in ["X-A", "X A: 1", "Content-Length: 1", "X-A: {env.X}"] {
            let e = parse_header(bad).expect_err(bad);
            assert_eq!(e.exit_code(), exit_code::USAGE, "{bad}");
        }
    }

    #[test]
    fn conflicts_name_the_other_route_and_its_owner() {
        let r = route(Some("hello.test"), None, 8080);
        let other = Stored {
            module: "wiki1".into(),
            name: "site".into(),
            route: route(Some("hello.test"), Some("/"), 9090),
        };
        assert_eq!(
            conflict("web", &r, &other, "mod0"),
            "route \"web\" (host hello.test, path /) conflicts with route \"site\" of module \
             wiki1: one host and path go to one module"
        );
        let own = Stored {
            module: "mod0".into(),
            ..other
        };
        let msg = conflict("web", &r, &own, "mod0");
        assert!(msg.contains("\"site\" of this module (mod0)"), "{msg}");
        assert!(msg.contains("route rm site"), "{msg}");
        assert_eq!(Error::RouteConflict(msg).exit_code(), exit_code::CONFLICT);
    }

    #[test]
    fn the_table_lines_up_and_shows_options() {
        let r = Route::new(
            None,
            Some("/app"),
            8081,
            true,
            false,
            vec![Header::new("X-A", "v").unwrap()],
        )
        .unwrap();
        let text = table(&[
            Stored {
                module: "mod0".into(),
                name: "web".into(),
                route: route(Some("a.test"), None, 8080),
            },
            Stored {
                module: "mod0".into(),
                name: "app".into(),
                route: r,
            },
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("MODULE  NAME  HOST    PATH  PORT  OPTIONS"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("mod0    web   a.test  /     8080  -"),
            "{text}"
        );
        assert!(
            lines[2].ends_with("*       /app  8081  strip-prefix, no-https-redirect, X-A: v"),
            "{text}"
        );
        assert_eq!(table(&[]), "");
    }
}
