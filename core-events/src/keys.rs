//! Builders for every Redis key and channel of protocol v1.
//!
//! An agent writes only below its own prefix (`node/<name>/` or `module/<id>/`), which is what makes the
//! Redis ACL of the security model a single `~<prefix>/*` pattern. Channels follow the same rule.

use crate::name::{AgentName, EventName, RunId};

/// Whether an agent is a node's root agent or a module's rootless agent. It decides the key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    Node,
    Module,
}

impl AgentKind {
    pub const ALL: [AgentKind; 2] = [AgentKind::Node, AgentKind::Module];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Node => "node",
            AgentKind::Module => "module",
        }
    }

    /// The kind named `s` (`node`, `module`), as [`AgentKind::as_str`] writes it.
    pub fn parse(s: &str) -> Option<AgentKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The key prefix of one agent, e.g. `module/traefik0`. Every key builder hangs off it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix {
    kind: AgentKind,
    name: AgentName,
    text: String,
}

impl Prefix {
    pub fn new(kind: AgentKind, name: AgentName) -> Self {
        let text = format!("{}/{}", kind.as_str(), name);
        Self { kind, name, text }
    }

    pub fn node(name: AgentName) -> Self {
        Self::new(AgentKind::Node, name)
    }

    pub fn module(id: AgentName) -> Self {
        Self::new(AgentKind::Module, id)
    }

    pub fn kind(&self) -> AgentKind {
        self.kind
    }

    pub fn agent(&self) -> &AgentName {
        &self.name
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `<prefix>/*`, the prefix glob-escaped: the pattern of every key of this agent (each key
    /// builder below is the prefix plus `/…`). The ACL's `~` rule of the agent's user.
    pub fn key_pattern(&self) -> String {
        format!("{}/*", glob_escape(&self.text))
    }

    /// Stream of events waiting to run: `XADD <prefix>/queue * event E data D [id R]`.
    pub fn queue(&self) -> String {
        format!("{}/queue", self.text)
    }

    /// Hash holding one run's record.
    pub fn run(&self, run: &RunId) -> String {
        format!("{}/run/{}", self.text, run)
    }

    /// String holding one run's captured output (capped, secrets scrubbed).
    pub fn run_output(&self, run: &RunId) -> String {
        format!("{}/run/{}/output", self.text, run)
    }

    /// Stream with one entry per run state change.
    pub fn journal(&self) -> String {
        format!("{}/journal", self.text)
    }

    /// Liveness key, refreshed by the agent with a TTL.
    pub fn heartbeat(&self) -> String {
        format!("{}/heartbeat", self.text)
    }

    /// Set once when the agent's startup event has been queued, so it runs on first start only.
    pub fn startup_marker(&self) -> String {
        format!("{}/startup", self.text)
    }

    /// `module/<id>/module.env` (only meaningful for a module prefix).
    pub fn module_env(&self) -> String {
        format!("{}/module.env", self.text)
    }

    /// `module/<id>/routes`: route name → [`crate::edge::Route`] as JSON, the module's routes
    /// through the edge proxy (written by the module's own user: owned by it).
    pub fn routes(&self) -> String {
        format!("{}/routes", self.text)
    }

    /// `module/<id>/secrets`: field → age-armored ciphertext.
    pub fn secrets(&self) -> String {
        format!("{}/secrets", self.text)
    }

    /// `node/<name>/modules`: hash of the modules installed on a node, id → image (only meaningful
    /// for a node prefix). Written by the node's module.init (`70register`) and module.remove.
    pub fn modules(&self) -> String {
        format!("{}/modules", self.text)
    }

    /// `<prefix>/delivery/<token>`: the marker of one PUBLISH the agent queued (its value the
    /// queue entry's id, kept an hour), so that a retried enqueue never queues it twice.
    pub fn delivery(&self, token: &str) -> String {
        format!("{}/delivery/{token}", self.text)
    }

    /// `module/<id>/public_key`: the module's age recipient.
    pub fn public_key(&self) -> String {
        format!("{}/public_key", self.text)
    }
}

/// The name of the consumer group every agent reads its queue with.
pub const QUEUE_GROUP: &str = "agent";

/// `cluster/module_sequence/<name>`: counter of the modules of image name `<name>` ever added;
/// `agentctl module add` takes the next module id `<name><N>` from it with `INCR` (first: `<name>1`).
/// `name` is an image name as `agentctl module add` derives it (`[a-z][a-z0-9]*`).
pub fn module_sequence(name: &str) -> String {
    format!("cluster/module_sequence/{name}")
}

/// `cluster/module-repository/<name>`: a registry modules are installed from (`agentctl module
/// repo add`), a hash of the [`module_repository`](mod@module_repository) fields. `name` is a
/// repository name (`[a-z][a-z0-9-]{0,31}`, checked by agentctl).
pub fn module_repository(name: &str) -> String {
    format!("{MODULE_REPOSITORY_PREFIX}{name}")
}

/// The prefix of [`module_repository`] keys (`SCAN MATCH cluster/module-repository/*`).
pub const MODULE_REPOSITORY_PREFIX: &str = "cluster/module-repository/";

/// The fields of a [`module_repository`](fn@module_repository) hash.
pub mod module_repository {
    /// Where its modules are: `host[:port][/namespace]`, a module `NAME` being the image
    /// `<location>/NAME:<version>`.
    pub const LOCATION: &str = "location";
    /// Searched first when higher (an integer, default 50).
    pub const PRIORITY: &str = "priority";
    /// `true`: plain HTTP or an unverified certificate (a registry on loopback); `false` else.
    pub const INSECURE: &str = "insecure";
}

/// `<kind>/*`: the pattern of every key of every agent of one kind (the node user writes all of
/// `module/*`: it creates modules and their keys).
pub fn kind_key_pattern(kind: AgentKind) -> String {
    format!("{}/*", kind.as_str())
}

/// The Redis ACL user of the sysadmin: every command, key and channel.
pub const ACL_ADMIN_USER: &str = "agent-admin";

/// The Redis ACL user of an agent: `module-<id>` or `node-<name>` (e.g. `module-traefik0`).
///
/// A dash rather than the key prefix's slash: the name goes into credentials files, aclfiles and
/// shell commands, where a plain word is easier to read and quote. Names cannot collide: the kind
/// comes first (`module-x` is always module `x`, whatever `x` is), and [`ACL_ADMIN_USER`] starts
/// with `agent`, which is no kind.
pub fn acl_user(kind: AgentKind, name: &AgentName) -> String {
    format!("{}-{}", kind.as_str(), name)
}

/// The agent an ACL user name is for (`node-<name>`, `module-<id>`), when it is an agent's: the
/// inverse of [`acl_user`].
pub fn agent_of_acl_user(user: &str) -> Option<(AgentKind, AgentName)> {
    AgentKind::ALL.into_iter().find_map(|kind| {
        let name = user.strip_prefix(kind.as_str())?.strip_prefix('-')?;
        AgentName::new(name).ok().map(|n| (kind, n))
    })
}

/// `cluster/agents`: the registry of agent names, a hash `name → kind` (`node` or `module`). Nodes
/// and modules share one name space — channels carry the name only — so each name is claimed once,
/// with `HSETNX`, by whoever creates the agent (`agentctl module add`, `agentctl redis setup`, and
/// every agent at its start), and read by whoever needs the kind of a bare name. A claim is never
/// taken back: a removed module's id stays a module's.
pub fn agent_registry() -> String {
    "cluster/agents".to_string()
}

/// `CLIENT SETNAME` value of an agent's connections.
pub fn client_name(agent: &AgentName) -> String {
    format!("agent:{agent}")
}

/// Escapes Redis glob metacharacters so a name can be used literally inside a pattern.
pub fn glob_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `<agent>:<event>`: the channel a sysadmin PUBLISHes an event on.
pub fn event_channel(agent: &AgentName, event: &EventName) -> String {
    format!("{agent}:{event}")
}

/// `<agent>:*`, with the agent name escaped: the pattern an agent subscribes to.
pub fn event_pattern(agent: &AgentName) -> String {
    format!("{}:*", glob_escape(agent.as_str()))
}

/// Takes the raw event part out of a channel that matched [`event_pattern`]. It is *not* validated:
/// the caller must pass it to [`EventName::new`].
pub fn event_of_channel<'a>(agent: &AgentName, channel: &'a str) -> Option<&'a str> {
    channel.strip_prefix(agent.as_str())?.strip_prefix(':')
}

/// `cancel/<agent>`: PUBLISH a run id here to cancel it.
pub fn cancel_channel(agent: &AgentName) -> String {
    format!("cancel/{agent}")
}

/// `progress/<agent>/<run>`: progress reports of one run.
pub fn progress_channel(agent: &AgentName, run: &RunId) -> String {
    format!("progress/{agent}/{run}")
}

/// `progress/<agent>/*`, the agent name escaped: every run's progress channel of one agent.
pub fn progress_pattern(agent: &AgentName) -> String {
    format!("progress/{}/*", glob_escape(agent.as_str()))
}

/// `event/<agent>/<event>`: events an agent emits for others to react to.
pub fn emitted_event_channel(agent: &AgentName, event: &EventName) -> String {
    format!("event/{agent}/{event}")
}

/// `event/<agent>/*`, the agent name escaped: every event one agent emits (what others PSUBSCRIBE
/// to).
pub fn emitted_event_pattern(agent: &AgentName) -> String {
    format!("event/{}/*", glob_escape(agent.as_str()))
}

/// `event/*/<event>`, the event name escaped: one event, whichever agent emits it (what an
/// agent's triggers PSUBSCRIBE to: an event directory's `.on` setting).
pub fn emitted_event_any_agent(event: &EventName) -> String {
    format!("event/*/{}", glob_escape(event.as_str()))
}

/// The emitting agent and the event of an `event/<agent>/<event>` channel, both checked.
pub fn of_emitted_channel(channel: &str) -> Option<(AgentName, EventName)> {
    let (agent, event) = channel.strip_prefix("event/")?.split_once('/')?;
    Some((AgentName::new(agent).ok()?, EventName::new(event).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_channels_name_their_agent_and_event() {
        let e = EventName::new("route-requested").unwrap();
        assert_eq!(emitted_event_any_agent(&e), "event/*/route-requested");
        let (a, ev) = of_emitted_channel(&emitted_event_channel(&agent("hello1"), &e)).unwrap();
        assert_eq!((a.as_str(), ev.as_str()), ("hello1", "route-requested"));
        for bad in [
            "event/hello1",
            "event//x",
            "event/a/b/c",
            "progress/a/b",
            "event/a/..",
        ] {
            assert!(of_emitted_channel(bad).is_none(), "{bad}");
        }
    }

    fn agent(s: &str) -> AgentName {
        AgentName::new(s).unwrap()
    }

    #[test]
    fn acl_user_names_give_their_agent_back() {
        for kind in AgentKind::ALL {
            let user = acl_user(kind, &agent("n1"));
            assert_eq!(agent_of_acl_user(&user), Some((kind, agent("n1"))));
        }
        for other in [
            "agent-admin",
            "default",
            "join-abc",
            "module-",
            "node",
            "module-A b",
        ] {
            assert_eq!(agent_of_acl_user(other), None, "{other}");
        }
    }

    #[test]
    fn keys_are_under_the_prefix() {
        let p = Prefix::module(agent("traefik0"));
        let run = RunId::new("1-0").unwrap();
        assert_eq!(p.as_str(), "module/traefik0");
        assert_eq!(p.queue(), "module/traefik0/queue");
        assert_eq!(p.run(&run), "module/traefik0/run/1-0");
        assert_eq!(p.run_output(&run), "module/traefik0/run/1-0/output");
        assert_eq!(p.journal(), "module/traefik0/journal");
        assert_eq!(p.module_env(), "module/traefik0/module.env");
        assert_eq!(p.secrets(), "module/traefik0/secrets");
        assert_eq!(p.public_key(), "module/traefik0/public_key");
        assert_eq!(
            Prefix::node(agent("node1")).heartbeat(),
            "node/node1/heartbeat"
        );
    }

    #[test]
    fn channels() {
        let a = agent("node1");
        let e = EventName::new("module.init").unwrap();
        assert_eq!(event_channel(&a, &e), "node1:module.init");
        assert_eq!(event_pattern(&a), "node1:*");
        assert_eq!(
            event_of_channel(&a, "node1:module.init"),
            Some("module.init")
        );
        assert_eq!(event_of_channel(&a, "node10:x"), None);
        assert_eq!(event_of_channel(&a, "node1:../x"), Some("../x"));
        assert_eq!(cancel_channel(&a), "cancel/node1");
        assert_eq!(
            progress_channel(&a, &RunId::new("r1").unwrap()),
            "progress/node1/r1"
        );
        assert_eq!(emitted_event_channel(&a, &e), "event/node1/module.init");
    }

    #[test]
    fn patterns_cover_what_the_builders_build() {
        let a = agent("node1");
        let p = Prefix::node(a.clone());
        let run = RunId::new("r1").unwrap();
        let e = EventName::new("module.init").unwrap();
        let covers = |pattern: String, built: String| {
            let head = pattern.strip_suffix('*').expect("a trailing *");
            assert!(built.starts_with(head), "{pattern} does not cover {built}");
        };
        covers(p.key_pattern(), p.queue());
        covers(p.key_pattern(), p.run_output(&run));
        covers(kind_key_pattern(AgentKind::Node), p.journal());
        covers(progress_pattern(&a), progress_channel(&a, &run));
        covers(emitted_event_pattern(&a), emitted_event_channel(&a, &e));
        covers(event_pattern(&a), event_channel(&a, &e));
        assert_eq!(
            acl_user(AgentKind::Module, &agent("traefik0")),
            "module-traefik0"
        );
        assert_eq!(acl_user(AgentKind::Node, &a), "node-node1");
        for k in AgentKind::ALL {
            assert_eq!(AgentKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(AgentKind::parse("host"), None);
    }

    #[test]
    fn glob_escaping() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("node-1.x"), "node-1.x");
    }
}
