//! `module-sdk route …` against a real redis-server: a module's routes through the edge proxy,
//! stored in `module/<id>/routes`, checked for conflicts with every module's routes, and announced
//! with `route-requested`.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Key and channel names are written
//! out literally on purpose: `module/<id>/routes` and `event/<id>/route-requested` are the
//! contract the edge service reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_tests::redis;
use agent_tests::{
    bin, wait_for, wait_run_end, xadd, Agent, EventDirs, RedisServer, Run, RunOutput,
};
use core_events::{keys, AgentKind, AgentName};

/// Generous: a slow 2-core machine runs these tests in parallel.
const LONG: Duration = Duration::from_secs(60);

/// `module-sdk ARGS…` with exactly `env` (plus PATH).
fn sdk(env: &[(&str, &str)], args: &[&str]) -> RunOutput {
    Run::new("module-sdk")
        .clear_env()
        .envs(env)
        .args(args)
        .timeout(LONG)
        .output()
}

/// `module-sdk route --module ID ARGS…` outside a step, REDIS_URL = `url`.
fn route(url: &str, id: &str, args: &[&str]) -> RunOutput {
    let mut all = vec!["route", "--module", id];
    all.extend_from_slice(args);
    sdk(&[("REDIS_URL", url)], &all)
}

fn ok(o: RunOutput) -> RunOutput {
    assert!(o.success(), "module-sdk failed: {o:?}");
    assert!(!o.stderr.contains("panicked"), "{o:?}");
    o
}

fn hget(con: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET").arg(key).arg(field).query(con).unwrap()
}

fn hgetall(con: &mut redis::Connection, key: &str) -> HashMap<String, String> {
    agent_tests::hgetall(con, key)
}

fn exists(con: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<i64>(con).unwrap() == 1
}

fn hset(con: &mut redis::Connection, key: &str, field: &str, value: &str) {
    let _: i64 = redis::cmd("HSET")
        .arg(key)
        .arg(field)
        .arg(value)
        .query(con)
        .unwrap();
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// The stored route NAME of module ID, as JSON.
fn stored(con: &mut redis::Connection, id: &str, name: &str) -> Option<serde_json::Value> {
    hget(con, &format!("module/{id}/routes"), name).map(|v| json(&v))
}

#[test]
fn add_list_replace_and_rm() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut con = redis.conn();

    let o = ok(route(
        &url,
        "mod0",
        &[
            "-v",
            "add",
            "web",
            "--host",
            "Hello.Test.",
            "--port",
            "8080",
        ],
    ));
    assert!(
        o.stderr
            .contains("route web (host hello.test, path /) added to module/mod0/routes"),
        "{o:?}"
    );
    assert_eq!(
        stored(&mut con, "mod0", "web"),
        Some(serde_json::json!({
            "host": "hello.test", "port": 8080, "strip_prefix": false, "redirect_https": true
        })),
        "stored normalised, as core_events::edge::Route's JSON"
    );
    ok(route(
        &url,
        "mod0",
        &[
            "add",
            "api",
            "--host",
            "hello.test",
            "--path",
            "/api/",
            "--port",
            "8081",
            "--strip-prefix",
            "--no-https-redirect",
            "--header",
            "X-Frame-Options: DENY",
            "--header",
            "Cache-Control:no-store",
        ],
    ));

    // The table: a header line, the routes sorted by name, the options spelled out.
    let table = ok(route(&url, "mod0", &["list"])).stdout;
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert_eq!(
        lines[0],
        ["MODULE", "NAME", "HOST", "PATH", "PORT", "OPTIONS"],
        "{table}"
    );
    assert_eq!(
        lines[1][..5],
        ["mod0", "api", "hello.test", "/api", "8081"],
        "{table}"
    );
    let api_line = table.lines().nth(1).unwrap();
    for opt in [
        "strip-prefix",
        "no-https-redirect",
        "X-Frame-Options: DENY",
        "Cache-Control: no-store",
    ] {
        assert!(api_line.contains(opt), "{opt} in {table}");
    }
    assert_eq!(
        lines[2],
        ["mod0", "web", "hello.test", "/", "8080", "-"],
        "{table}"
    );

    // --json: module, name and the route as stored.
    let listed = json(&ok(route(&url, "mod0", &["list", "--json"])).stdout);
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["module"], "mod0");
    assert_eq!(listed[0]["name"], "api");
    assert_eq!(listed[0]["route"], stored(&mut con, "mod0", "api").unwrap());
    assert_eq!(
        listed[0]["route"]["headers"],
        serde_json::json!([["X-Frame-Options", "DENY"], ["Cache-Control", "no-store"]])
    );
    assert_eq!(listed[1]["name"], "web");
    assert_eq!(listed[1]["route"]["port"], 8080);

    // Re-adding a name replaces that route; the same route again changes nothing.
    let o = ok(route(
        &url,
        "mod0",
        &[
            "-v",
            "add",
            "web",
            "--host",
            "hello.test",
            "--path",
            "/web",
            "--port",
            "9090",
        ],
    ));
    assert!(o.stderr.contains("replaced in module/mod0/routes"), "{o:?}");
    let o = ok(route(
        &url,
        "mod0",
        &[
            "-v",
            "add",
            "web",
            "--host",
            "hello.test",
            "--path",
            "/web",
            "--port",
            "9090",
        ],
    ));
    assert!(
        o.stderr.contains("unchanged in module/mod0/routes"),
        "{o:?}"
    );
    let routes = hgetall(&mut con, "module/mod0/routes");
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!(
        stored(&mut con, "mod0", "web"),
        Some(serde_json::json!({
            "host": "hello.test", "path": "/web", "port": 9090, "strip_prefix": false,
            "redirect_https": true
        }))
    );

    // rm, and rm of a route that is not there: both succeed; -v says which it was.
    let o = ok(route(&url, "mod0", &["-v", "rm", "api"]));
    assert!(
        o.stderr
            .contains("route api removed from module/mod0/routes"),
        "{o:?}"
    );
    let o = ok(route(&url, "mod0", &["-v", "rm", "api"]));
    assert!(
        o.stderr
            .contains("route api was not in module/mod0/routes: nothing to remove"),
        "{o:?}"
    );
    ok(route(&url, "mod0", &["rm", "never-added"]));
    assert_eq!(
        hgetall(&mut con, "module/mod0/routes")
            .into_keys()
            .collect::<Vec<_>>(),
        ["web"]
    );
    ok(route(&url, "mod0", &["rm", "web"]));
    assert!(!exists(&mut con, "module/mod0/routes"));
    assert_eq!(ok(route(&url, "mod0", &["list"])).stdout, "");
    assert_eq!(
        json(&ok(route(&url, "mod0", &["list", "--json"])).stdout),
        serde_json::json!([])
    );
}

#[test]
fn an_invalid_route_is_refused_naming_what_is_wrong_and_nothing_is_written() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut con = redis.conn();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--host", "a..b.test", "--port", "80"],
            "host \"a..b.test\": an empty label",
        ),
        (&["--host", "*.example.org", "--port", "80"], "a wildcard"),
        (
            &["--host", "{http.request.host}", "--port", "80"],
            "only letters, digits",
        ),
        (&["--host", "192.168.1.1", "--port", "80"], "an IP address"),
        (
            &["--path", "/a/../b", "--port", "80"],
            "path \"/a/../b\": a '.' or '..' segment",
        ),
        (&["--path", "app", "--port", "80"], "must start with '/'"),
        (&["--path", "/a%2e", "--port", "80"], "no percent-encoding"),
        (
            &[
                "--host",
                "a.test",
                "--port",
                "80",
                "--header",
                "Content-Length: 1",
            ],
            "header \"Content-Length\": set by the proxy",
        ),
        (
            &[
                "--host",
                "a.test",
                "--port",
                "80",
                "--header",
                "X-A: {env.SECRET}",
            ],
            "without '{' and '}'",
        ),
        (
            &["--host", "a.test", "--port", "80", "--header", "X-No-Colon"],
            "write it as 'Name: value'",
        ),
        (
            &["--port", "80"],
            "a route needs a host, a path prefix or both",
        ),
        (&["--host", "a.test", "--port", "0"], "port 0"),
        (
            &["--host", "a.test", "--port", "80", "--strip-prefix"],
            "strip_prefix needs a path prefix",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["add", "web"];
        all.extend_from_slice(args);
        let o = route(&url, "mod0", &all);
        assert_eq!(o.code(), 2, "{args:?}: {o:?}");
        assert!(
            o.stderr.contains("route \"web\" is not valid") && o.stderr.contains(needle),
            "{args:?}: {needle:?} in {o:?}"
        );
        assert!(!exists(&mut con, "module/mod0/routes"), "{args:?}");
    }
    // A bad route name is refused by the command line itself.
    let o = route(
        &url,
        "mod0",
        &["add", "Web", "--host", "a.test", "--port", "80"],
    );
    assert_eq!(o.code(), 2, "{o:?}");
    assert!(o.stderr.contains("route name \"Web\""), "{o:?}");
    assert!(!exists(&mut con, "module/mod0/routes"));
    // Nothing is asked of Redis before the route is checked: an unreachable one does not matter.
    let o = route(
        "redis://127.0.0.1:1",
        "mod0",
        &["add", "web", "--host", "a..b", "--port", "80"],
    );
    assert_eq!(o.code(), 2, "{o:?}");
    // Outside a step without --module: say how to name the module.
    let o = sdk(&[("REDIS_URL", &url)], &["route", "list"]);
    assert_eq!(o.code(), 2, "{o:?}");
    assert!(o.stderr.contains("--module ID"), "{o:?}");
}

#[test]
fn a_route_of_another_module_on_the_same_host_and_path_is_refused() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut con = redis.conn();
    ok(route(
        &url,
        "wiki1",
        &["add", "site", "--host", "hello.test", "--port", "8080"],
    ));
    let before = hget(&mut con, "module/wiki1/routes", "site").unwrap();

    // No path is /, and the host's case does not count: the same host and path.
    let o = route(
        &url,
        "mod0",
        &[
            "add",
            "web",
            "--host",
            "HELLO.test",
            "--path",
            "/",
            "--port",
            "9090",
        ],
    );
    assert_eq!(o.code(), 73, "{o:?}");
    assert!(
        o.stderr.contains(
            "route \"web\" (host hello.test, path /) conflicts with route \"site\" of module \
             wiki1: one host and path go to one module"
        ),
        "{o:?}"
    );
    assert!(!exists(&mut con, "module/mod0/routes"), "nothing written");
    assert_eq!(
        hget(&mut con, "module/wiki1/routes", "site").as_deref(),
        Some(before.as_str()),
        "the first route stays as it was"
    );

    // Another path on that host, or the same path on any host, is another route.
    ok(route(
        &url,
        "mod0",
        &[
            "add",
            "web",
            "--host",
            "hello.test",
            "--path",
            "/web",
            "--port",
            "9090",
        ],
    ));
    ok(route(
        &url,
        "mod0",
        &["add", "any", "--path", "/", "--port", "9091"],
    ));
    // ... and a third module is refused by either.
    let o = route(
        &url,
        "other2",
        &[
            "add",
            "x",
            "--path",
            "/web/",
            "--host",
            "hello.test",
            "--port",
            "1",
        ],
    );
    assert_eq!(o.code(), 73, "{o:?}");
    assert!(o.stderr.contains("route \"web\" of module mod0"), "{o:?}");
    let o = route(&url, "other2", &["add", "y", "--port", "1", "--path", "/"]);
    assert_eq!(o.code(), 73, "{o:?}");
    assert!(
        o.stderr
            .contains("(any host, path /) conflicts with route \"any\" of module mod0"),
        "{o:?}"
    );
    assert!(!exists(&mut con, "module/other2/routes"));

    // Every module's routes, sorted by module.
    let all = json(&ok(route(&url, "mod0", &["list", "--all", "--json"])).stdout);
    let names: Vec<(String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["module"].as_str().unwrap().into(),
                e["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("mod0".to_string(), "any".to_string()),
            ("mod0".into(), "web".into()),
            ("wiki1".into(), "site".into())
        ]
    );
    // --all needs only REDIS_URL.
    let table = ok(sdk(&[("REDIS_URL", &url)], &["route", "list", "--all"])).stdout;
    assert_eq!(table.lines().count(), 4, "{table}");
}

#[test]
fn a_second_name_of_the_same_module_on_one_host_and_path_is_refused() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut con = redis.conn();
    ok(route(
        &url,
        "mod0",
        &[
            "add", "web", "--host", "a.test", "--path", "/app", "--port", "8080",
        ],
    ));
    let before = hget(&mut con, "module/mod0/routes", "web").unwrap();
    let o = route(
        &url,
        "mod0",
        &[
            "add", "web2", "--host", "a.test", "--path", "/app/", "--port", "8081",
        ],
    );
    assert_eq!(o.code(), 73, "{o:?}");
    assert!(
        o.stderr.contains(
            "route \"web2\" (host a.test, path /app) conflicts with route \"web\" of this module \
             (mod0)"
        ),
        "{o:?}"
    );
    assert!(o.stderr.contains("route rm web"), "{o:?}");
    assert_eq!(
        hgetall(&mut con, "module/mod0/routes"),
        HashMap::from([("web".to_string(), before)])
    );
    // The route itself may change under its own name.
    ok(route(
        &url,
        "mod0",
        &[
            "add", "web", "--host", "a.test", "--path", "/app", "--port", "8081",
        ],
    ));
    assert_eq!(stored(&mut con, "mod0", "web").unwrap()["port"], 8081);
}

/// An ACL user made with the project's own rules (`redis_acl::rules::module_rules`); its URL.
fn module_user(redis: &RedisServer, con: &mut redis::Connection, id: &str) -> String {
    let name = AgentName::new(id).unwrap();
    let user = keys::acl_user(AgentKind::Module, &name);
    let password = format!("pw-{id}-0123456789");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg(redis_acl::rules::module_rules(&name))
        .arg(format!(">{password}"))
        .query(con)
        .unwrap();
    format!("redis://{user}:{password}@127.0.0.1:{}", redis.port())
}

#[test]
fn a_module_user_writes_only_its_own_routes() {
    let redis = RedisServer::start();
    let mut admin = redis.conn();
    let url_a = module_user(&redis, &mut admin, "moda");
    let _url_b = module_user(&redis, &mut admin, "modb");
    ok(route(
        &redis.url(),
        "modb",
        &["add", "site", "--host", "b.test", "--port", "80"],
    ));

    // Redis itself refuses module A a write to module B's routes...
    let mut as_a = redis::Client::open(url_a.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let e = redis::cmd("HSET")
        .arg("module/modb/routes")
        .arg("site")
        .arg(r#"{"host":"b.test","port":1}"#)
        .query::<i64>(&mut as_a)
        .expect_err("module A may not write module B's routes");
    assert!(
        e.to_string().contains("NOPERM") || e.code() == Some("NOPERM"),
        "{e}"
    );
    // ... and so does module-sdk, with exit 77 and without the password.
    let o = route(
        &url_a,
        "modb",
        &["add", "site", "--host", "a.test", "--port", "80"],
    );
    assert_eq!(o.code(), 77, "{o:?}");
    assert!(!o.stderr.contains("pw-moda"), "{o:?}");
    let o = route(&url_a, "modb", &["rm", "site"]);
    assert_eq!(o.code(), 77, "{o:?}");
    assert!(hget(&mut admin, "module/modb/routes", "site").is_some());

    // Its own routes it writes: the conflict scan reads every module's, the event is its own.
    ok(route(
        &url_a,
        "moda",
        &["add", "web", "--host", "a.test", "--port", "8080"],
    ));
    assert!(stored(&mut admin, "moda", "web").is_some());
    let o = route(
        &url_a,
        "moda",
        &["add", "web2", "--host", "b.test", "--port", "8080"],
    );
    assert_eq!(o.code(), 73, "{o:?}");
    assert!(o.stderr.contains("route \"site\" of module modb"), "{o:?}");
    let all = ok(route(&url_a, "moda", &["list", "--all"])).stdout;
    assert!(all.contains("modb") && all.contains("moda"), "{all}");
    ok(route(&url_a, "moda", &["rm", "web"]));
    assert!(!exists(&mut admin, "module/moda/routes"));
}

#[test]
fn garbage_in_another_modules_routes_is_skipped_with_a_warning() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut con = redis.conn();
    hset(
        &mut con,
        "module/evil0/routes",
        "notjson",
        "not json at all",
    );
    hset(
        &mut con,
        "module/evil0/routes",
        "inject",
        r#"{"host":"{upstream}","port":80}"#,
    );
    hset(
        &mut con,
        "module/evil0/routes",
        "extra",
        r#"{"host":"a.test","port":80,"caddy":{"handle":[]}}"#,
    );
    hset(
        &mut con,
        "module/evil0/routes",
        "Bad Name",
        r#"{"host":"a.test","port":80}"#,
    );
    hset(
        &mut con,
        "module/evil0/routes",
        "fine",
        r#"{"host":"evil.test","port":80}"#,
    );
    let _: () = redis::cmd("SET")
        .arg("module/str0/routes")
        .arg("a string")
        .query(&mut con)
        .unwrap();
    hset(&mut con, "module/a/b/routes", "x", "y");
    let _: i64 = redis::cmd("HSET")
        .arg("module/bin0/routes")
        .arg("bin")
        .arg(&[0xffu8, 0xfe, 0x00][..])
        .query(&mut con)
        .unwrap();

    // None of it is a route: a.test is free for mod0 (only warnings on the way).
    let o = ok(route(
        &url,
        "mod0",
        &["add", "web", "--host", "a.test", "--port", "8080"],
    ));
    for needle in [
        "warning: skipping route \"notjson\" of module/evil0/routes: the route is not valid JSON",
        "warning: skipping route \"inject\" of module/evil0/routes",
        "warning: skipping route \"extra\" of module/evil0/routes",
        "warning: skipping a field of module/evil0/routes: route name \"Bad Name\"",
        "warning: module/str0/routes is not a hash",
        "warning: skipping route \"bin\" of module/bin0/routes: the value is not UTF-8",
    ] {
        assert!(o.stderr.contains(needle), "{needle:?} in {o:?}");
    }
    assert!(stored(&mut con, "mod0", "web").is_some());
    // A valid route among the garbage still conflicts.
    let o = route(
        &url,
        "mod0",
        &["add", "evil", "--host", "evil.test", "--port", "8080"],
    );
    assert_eq!(o.code(), 73, "{o:?}");
    assert!(o.stderr.contains("route \"fine\" of module evil0"), "{o:?}");

    // list --all shows the valid routes only, and says what it skipped.
    let o = ok(route(&url, "mod0", &["list", "--all", "--json"]));
    let all = json(&o.stdout);
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fine", "web"], "{o:?}");
    assert!(
        o.stderr.contains("warning: skipping route \"inject\""),
        "{o:?}"
    );
    let o = ok(route(&url, "evil0", &["list"]));
    assert_eq!(o.stdout.lines().count(), 2, "{o:?}");
    assert!(o.stdout.contains("evil.test"), "{o:?}");
}

/// Subscribes to `channel` and waits until Redis counts the subscription.
fn subscribe<'a>(
    redis: &RedisServer,
    con: &'a mut redis::Connection,
    channel: &str,
) -> redis::PubSub<'a> {
    let mut ps = con.as_pubsub();
    ps.subscribe(channel).unwrap();
    let mut check = redis.conn();
    wait_for(&format!("a subscriber on {channel}"), LONG, || {
        let v: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut check)
            .ok()?;
        (v.first()?.1 >= 1).then_some(())
    });
    ps.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    ps
}

/// The next message's channel and payload (as JSON), within `LONG`.
fn next_message(ps: &mut redis::PubSub<'_>) -> (String, serde_json::Value) {
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "no message within {LONG:?}");
        match ps.get_message() {
            Ok(msg) => {
                let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                return (msg.get_channel_name().to_string(), json(&payload));
            }
            Err(e) if e.is_timeout() => continue,
            Err(e) => panic!("pub/sub failed: {e}"),
        }
    }
}

#[test]
fn route_requested_is_published_outside_a_step() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut sub = redis.conn();
    let mut ps = subscribe(&redis, &mut sub, "event/mod0/route-requested");

    let o = ok(route(
        &url,
        "mod0",
        &["-v", "add", "web", "--host", "a.test", "--port", "8080"],
    ));
    assert!(
        o.stderr
            .contains("route-requested published for mod0: 1 receivers"),
        "{o:?}"
    );
    assert_eq!(
        next_message(&mut ps),
        (
            "event/mod0/route-requested".to_string(),
            serde_json::json!({"module": "mod0", "route": "web", "action": "add"})
        )
    );
    ok(route(&url, "mod0", &["rm", "web"]));
    assert_eq!(
        next_message(&mut ps).1,
        serde_json::json!({"module": "mod0", "route": "web", "action": "rm"})
    );
    // Emitted also when nothing changed: a step run again must still get its route applied.
    ok(route(&url, "mod0", &["rm", "web"]));
    assert_eq!(
        next_message(&mut ps).1,
        serde_json::json!({"module": "mod0", "route": "web", "action": "rm"})
    );
    // A refused route emits nothing: the next message is the one after it.
    ok(route(
        &url,
        "other1",
        &["add", "site", "--host", "b.test", "--port", "80"],
    ));
    assert_eq!(
        route(
            &url,
            "mod0",
            &["add", "x", "--host", "b.test", "--port", "80"]
        )
        .code(),
        73
    );
    assert_eq!(route(&url, "mod0", &["add", "x", "--port", "80"]).code(), 2);
    ok(route(
        &url,
        "mod0",
        &["add", "y", "--host", "c.test", "--port", "80"],
    ));
    assert_eq!(
        next_message(&mut ps).1,
        serde_json::json!({"module": "mod0", "route": "y", "action": "add"})
    );
}

#[test]
fn inside_a_step_the_route_is_the_steps_modules_and_its_agent_emits_the_event() {
    let redis = RedisServer::start();
    let dirs = EventDirs::new(1);
    let sdk = bin("module-sdk").display().to_string();
    assert!(!sdk.contains('\''), "unexpected quote in {sdk}");
    dirs.step(
        0,
        "configure",
        "10route",
        &format!("'{sdk}' route add web --host hello.test --path /wiki --port 8080 --strip-prefix"),
    );
    let _agent = Agent::module(&redis, "mod0", &dirs, &[]);
    let mut sub = redis.conn();
    let mut ps = subscribe(&redis, &mut sub, "event/mod0/route-requested");

    let mut con = redis.conn();
    xadd(
        &mut con,
        "module/mod0/queue",
        &[("event", "configure"), ("data", ""), ("id", "configure-1")],
    );
    assert_eq!(
        next_message(&mut ps),
        (
            "event/mod0/route-requested".to_string(),
            serde_json::json!({"module": "mod0", "route": "web", "action": "add"})
        )
    );
    let rec = wait_run_end(&mut con, "module/mod0/run/configure-1", LONG);
    assert_eq!(
        rec.get("status").map(String::as_str),
        Some("done"),
        "{rec:?}"
    );
    assert_eq!(
        stored(&mut con, "mod0", "web"),
        Some(serde_json::json!({
            "host": "hello.test", "path": "/wiki", "port": 8080, "strip_prefix": true,
            "redirect_https": true
        }))
    );
}
