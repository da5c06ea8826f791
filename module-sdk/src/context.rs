//! The context of a step, read from the environment the agent gives it.
//!
//! Three levels, so each command asks only for what it needs: [`redis_url_from`] (just `REDIS_URL`),
//! [`AgentContext`] (whose step this is) and [`StepContext`] (which run and step). Every value passes
//! through the `core_events` type that validates it, and a missing variable is an error that names it —
//! all missing ones at once, so a sysadmin trying a command outside a step fixes them in one go.

use core_events::keys;
use core_events::{AgentKind, AgentName, EventName, Prefix, Progress, RunId};

use crate::error::{Error, Result};
use crate::redis_url::RedisUrl;

/// Names of the variables the agent sets for every step: `core_events::step_env`'s.
pub use core_events::step_env as var;

/// Collects the missing required variables so the error can name them all.
struct Reader<F> {
    lookup: F,
    missing: Vec<&'static str>,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    fn new(lookup: F) -> Self {
        Reader {
            lookup,
            missing: Vec::new(),
        }
    }

    /// An empty variable counts as unset.
    fn optional(&self, var: &'static str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.is_empty())
    }

    fn required(&mut self, var: &'static str) -> Option<String> {
        let v = self.optional(var);
        if v.is_none() {
            self.missing.push(var);
        }
        v
    }

    fn check(&self) -> Result<()> {
        if self.missing.is_empty() {
            Ok(())
        } else {
            Err(Error::NotInStep {
                missing: self.missing.clone(),
            })
        }
    }
}

/// Looks variables up in the process environment. A value that is not UTF-8 is kept lossily, so it
/// fails validation with a message instead of reading as unset.
pub fn process_env(var: &str) -> Option<String> {
    std::env::var_os(var).map(|v| v.to_string_lossy().into_owned())
}

fn bad(var: &'static str, e: impl std::fmt::Display) -> Error {
    Error::BadVar {
        var,
        reason: e.to_string(),
    }
}

/// Parses an agent kind as `core_events` spells it (`node` or `module`).
pub fn parse_kind(s: &str) -> Option<AgentKind> {
    [AgentKind::Node, AgentKind::Module]
        .into_iter()
        .find(|k| k.as_str() == s)
}

/// Reads just `REDIS_URL` (enough for commands that name their target themselves).
pub fn redis_url_from(lookup: impl Fn(&str) -> Option<String>) -> Result<RedisUrl> {
    let mut r = Reader::new(lookup);
    let url = r.required(var::REDIS_URL);
    r.check()?;
    RedisUrl::parse(var::REDIS_URL, &url.unwrap_or_default())
}

/// Whose step this is: the agent's name and kind (hence its key prefix) and its Redis URL.
#[derive(Debug, Clone)]
pub struct AgentContext {
    pub prefix: Prefix,
    pub redis: RedisUrl,
}

impl AgentContext {
    /// Reads `AGENT_NAME`, `AGENT_KIND`, `REDIS_URL` (and checks `AGENT_KEY_PREFIX` if set).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut r = Reader::new(lookup);
        let (name, kind, url) = (
            r.required(var::AGENT_NAME),
            r.required(var::AGENT_KIND),
            r.required(var::REDIS_URL),
        );
        r.check()?;
        Self::validate(
            &r,
            &name.unwrap_or_default(),
            &kind.unwrap_or_default(),
            &url.unwrap_or_default(),
        )
    }

    pub fn from_env() -> Result<Self> {
        Self::from_lookup(process_env)
    }

    fn validate<F: Fn(&str) -> Option<String>>(
        r: &Reader<F>,
        name: &str,
        kind: &str,
        url: &str,
    ) -> Result<Self> {
        let name = AgentName::new(name).map_err(|e| bad(var::AGENT_NAME, e))?;
        let kind = parse_kind(kind).ok_or_else(|| {
            bad(
                var::AGENT_KIND,
                format!(
                    "{kind:?} is neither {:?} nor {:?}",
                    AgentKind::Node.as_str(),
                    AgentKind::Module.as_str()
                ),
            )
        })?;
        let prefix = Prefix::new(kind, name);
        if let Some(given) = r.optional(var::AGENT_KEY_PREFIX) {
            if given != prefix.as_str() {
                return Err(bad(
                    var::AGENT_KEY_PREFIX,
                    format!(
                        "{given:?} does not match AGENT_KIND and AGENT_NAME, which give {:?}",
                        prefix.as_str()
                    ),
                ));
            }
        }
        let redis = RedisUrl::parse(var::REDIS_URL, url)?;
        Ok(AgentContext { prefix, redis })
    }

    pub fn name(&self) -> &AgentName {
        self.prefix.agent()
    }

    pub fn kind(&self) -> AgentKind {
        self.prefix.kind()
    }
}

/// The module a command works on, and the Redis URL: `module` (`--module ID`) with `url`
/// (`--redis-url`) or `REDIS_URL`; else the step's own module (`AGENT_NAME`, `AGENT_KIND`,
/// `REDIS_URL`), with `url` instead of `REDIS_URL` when given. `what` is what only modules have
/// and how to name one instead, for the error in a node's step (`"secrets; use --module ID …"`).
pub fn module_target(
    module: Option<&AgentName>,
    url: Option<RedisUrl>,
    what: &str,
) -> Result<(Prefix, RedisUrl)> {
    if let Some(id) = module {
        let url = match url {
            Some(url) => url,
            None => redis_url_from(process_env)?,
        };
        return Ok((Prefix::module(id.clone()), url));
    }
    if process_env(var::AGENT_NAME).is_none() {
        return Err(Error::Usage(
            "not inside a step (AGENT_NAME is not set): name the module with --module ID, and Redis \
             with REDIS_URL or --redis-url"
                .into(),
        ));
    }
    let ctx = AgentContext::from_env()?;
    if ctx.kind() != AgentKind::Module {
        return Err(Error::Usage(format!(
            "this step belongs to {}, a node agent: only modules have {what}",
            ctx.prefix.as_str()
        )));
    }
    Ok((ctx.prefix, url.unwrap_or(ctx.redis)))
}

/// Everything a step knows about itself.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub agent: AgentContext,
    pub event: EventName,
    pub run: RunId,
    /// The step's name (its file name in the event directory), if the agent set `AGENT_STEP`.
    pub step: Option<String>,
    /// 1 on the first attempt, more when an interrupted run is started again.
    pub attempt: Option<u32>,
}

impl StepContext {
    /// Reads `AGENT_NAME`, `AGENT_KIND`, `AGENT_EVENT`, `AGENT_RUN_ID`, `REDIS_URL` (required) and
    /// `AGENT_KEY_PREFIX`, `AGENT_STEP`, `AGENT_ATTEMPT` (optional, validated when set).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut r = Reader::new(lookup);
        let (name, kind, event, run, url) = (
            r.required(var::AGENT_NAME),
            r.required(var::AGENT_KIND),
            r.required(var::AGENT_EVENT),
            r.required(var::AGENT_RUN_ID),
            r.required(var::REDIS_URL),
        );
        r.check()?;
        let agent = AgentContext::validate(
            &r,
            &name.unwrap_or_default(),
            &kind.unwrap_or_default(),
            &url.unwrap_or_default(),
        )?;
        let event =
            EventName::new(event.unwrap_or_default()).map_err(|e| bad(var::AGENT_EVENT, e))?;
        let run = RunId::new(run.unwrap_or_default()).map_err(|e| bad(var::AGENT_RUN_ID, e))?;
        let attempt = match r.optional(var::AGENT_ATTEMPT) {
            None => None,
            Some(a) => match a.parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(bad(
                        var::AGENT_ATTEMPT,
                        format!("{a:?} is not a number from 1 up"),
                    ))
                }
            },
        };
        Ok(StepContext {
            agent,
            event,
            run,
            step: r.optional(var::AGENT_STEP),
            attempt,
        })
    }

    pub fn from_env() -> Result<Self> {
        Self::from_lookup(process_env)
    }

    /// A progress report of this step: `percent` within the step and an optional message.
    pub fn progress(&self, percent: u8, message: Option<String>) -> Progress {
        Progress {
            run: self.run.to_string(),
            step: self.step.clone(),
            step_index: None,
            steps: None,
            percent: Some(percent.min(100)),
            message: message.filter(|m| !m.is_empty()),
            status: None,
        }
    }

    /// The context as JSON for `module-sdk context`: the values and the keys and channels derived from
    /// them. The Redis URL is masked.
    pub fn to_json(&self) -> serde_json::Value {
        let p = &self.agent.prefix;
        let name = self.agent.name();
        let mut keys = serde_json::json!({
            "queue": p.queue(),
            "run": p.run(&self.run),
            "run_output": p.run_output(&self.run),
            "journal": p.journal(),
            "progress_channel": keys::progress_channel(name, &self.run),
            "emit_channel_pattern": keys::emitted_event_pattern(name),
        });
        if p.kind() == AgentKind::Module {
            keys["module_env"] = p.module_env().into();
            keys["secrets"] = p.secrets().into();
        }
        serde_json::json!({
            "agent": name,
            "kind": p.kind(),
            "key_prefix": p.as_str(),
            "event": self.event,
            "run": self.run,
            "step": self.step,
            "attempt": self.attempt,
            "redis_url": self.agent.redis,
            "keys": keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const STEP: &[(&str, &str)] = &[
        ("AGENT_NAME", "traefik0"),
        ("AGENT_KIND", "module"),
        ("AGENT_KEY_PREFIX", "module/traefik0"),
        ("AGENT_EVENT", "configure-module"),
        ("AGENT_RUN_ID", "1700000000000-0"),
        ("AGENT_STEP", "20config"),
        ("AGENT_ATTEMPT", "2"),
        ("REDIS_URL", "redis://traefik0:pw@10.5.4.1:6379"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = STEP
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter(|(_, val)| !val.is_empty()).copied());
        v
    }

    #[test]
    fn reads_a_full_step_environment() {
        let c = StepContext::from_lookup(env(STEP)).unwrap();
        assert_eq!(c.agent.name().as_str(), "traefik0");
        assert_eq!(c.agent.kind(), AgentKind::Module);
        assert_eq!(c.agent.prefix.module_env(), "module/traefik0/module.env");
        assert_eq!(c.event.as_str(), "configure-module");
        assert_eq!(c.run.as_str(), "1700000000000-0");
        assert_eq!(c.step.as_deref(), Some("20config"));
        assert_eq!(c.attempt, Some(2));
        assert_eq!(c.agent.redis.expose(), "redis://traefik0:pw@10.5.4.1:6379");
    }

    #[test]
    fn an_empty_environment_names_every_missing_variable() {
        let e = StepContext::from_lookup(env(&[])).unwrap_err();
        let msg = e.to_string();
        for v in [
            "AGENT_NAME",
            "AGENT_KIND",
            "AGENT_EVENT",
            "AGENT_RUN_ID",
            "REDIS_URL",
        ] {
            assert!(msg.contains(v), "{msg} should name {v}");
        }
        assert!(!msg.contains("AGENT_STEP"), "{msg}");
        assert_eq!(e.exit_code(), crate::exit_code::CONFIG);

        let e = StepContext::from_lookup(env(&with(&[("AGENT_RUN_ID", "")]))).unwrap_err();
        assert!(matches!(&e, Error::NotInStep { missing } if missing == &["AGENT_RUN_ID"]));
    }

    #[test]
    fn optional_variables_may_be_missing() {
        let c = StepContext::from_lookup(env(&with(&[
            ("AGENT_STEP", ""),
            ("AGENT_ATTEMPT", ""),
            ("AGENT_KEY_PREFIX", ""),
        ])))
        .unwrap();
        assert_eq!((c.step, c.attempt), (None, None));
    }

    #[test]
    fn invalid_values_are_refused_with_the_variable_named() {
        let cases: &[(&str, &str)] = &[
            ("AGENT_NAME", "../etc"),
            ("AGENT_KIND", "daemon"),
            ("AGENT_KEY_PREFIX", "module/other0"),
            ("AGENT_EVENT", "a/b"),
            ("AGENT_RUN_ID", "x y"),
            ("AGENT_ATTEMPT", "0"),
            ("AGENT_ATTEMPT", "many"),
            ("REDIS_URL", "ftp://x"),
        ];
        for &(var, value) in cases {
            let e = StepContext::from_lookup(env(&with(&[(var, value)]))).unwrap_err();
            assert!(
                matches!(&e, Error::BadVar { var: v, .. } if *v == var),
                "{var}={value}: {e}"
            );
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn agent_context_needs_less() {
        let c = AgentContext::from_lookup(env(&[
            ("AGENT_NAME", "node1"),
            ("AGENT_KIND", "node"),
            ("REDIS_URL", "unix:///run/redis.sock"),
        ]))
        .unwrap();
        assert_eq!(c.prefix.as_str(), "node/node1");
        let e = AgentContext::from_lookup(env(&[])).unwrap_err().to_string();
        assert!(
            e.contains("AGENT_NAME, AGENT_KIND, REDIS_URL are not set"),
            "{e}"
        );
        assert!(redis_url_from(env(&[]))
            .unwrap_err()
            .to_string()
            .contains("REDIS_URL"));
    }

    #[test]
    fn progress_report() {
        let c = StepContext::from_lookup(env(STEP)).unwrap();
        let p = c.progress(50, Some("halfway".into()));
        assert_eq!(p.run, "1700000000000-0");
        assert_eq!(p.step.as_deref(), Some("20config"));
        assert_eq!(
            (p.percent, p.message.as_deref()),
            (Some(50), Some("halfway"))
        );
        let j: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(j["percent"], 50);
        assert!(j.get("status").is_none());
        assert_eq!(c.progress(10, Some(String::new())).message, None);
    }

    #[test]
    fn json_masks_the_password() {
        let c = StepContext::from_lookup(env(STEP)).unwrap();
        let j = c.to_json();
        let text = j.to_string();
        assert!(!text.contains(":pw@"), "{text}");
        assert_eq!(j["redis_url"], "redis://traefik0:***@10.5.4.1:6379");
        assert_eq!(j["run"], "1700000000000-0");
        assert_eq!(j["kind"], "module");
        assert_eq!(j["keys"]["module_env"], "module/traefik0/module.env");
        assert_eq!(
            j["keys"]["progress_channel"],
            "progress/traefik0/1700000000000-0"
        );
        assert_eq!(j["keys"]["emit_channel_pattern"], "event/traefik0/*");
    }
}
