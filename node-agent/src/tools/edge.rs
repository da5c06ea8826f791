//! `node-agent edge …`: the node's side of the edge proxy. `apply` is the step of the node's
//! `edge.sync` event (imageroot/node-events/edge.sync): it renders the routes of this node's
//! modules into Caddy's configuration and applies it (the `edge` crate); `queue-sync` queues that
//! event, for steps that change routes without failing on the proxy's trouble (module.remove);
//! `acme` is its second step: the certificates the routes need, from the ACME server, once for
//! the cluster.

use core_events::edge::EDGE_SYNC_EVENT;
use core_events::record::{QUEUE_FIELD_DATA, QUEUE_FIELD_EVENT};
use std::time::{Duration, Instant};

use redis::Commands;

/// How long `queue-sync` waits for Redis to answer.
const REDIS_WAIT: Duration = Duration::from_secs(60);

use super::{Ctx, Result, ToolError};

#[derive(Debug, clap::Subcommand)]
pub enum EdgeCmd {
    /// edge.sync/10apply: render every route of this node's modules (and the certificates that
    /// cover their names) into one Caddy configuration and apply it through Caddy's admin socket
    /// (AGENT_EDGE_ADMIN_SOCKET, default /run/agent/edge/admin.sock). When Caddy refuses it, the
    /// previous configuration goes on serving, and the refusal is recorded in node/NODE/edge
    /// (`agentctl node status`) and makes this step fail. A proxy that is not running is
    /// recorded there too, without failing: agent-edge.service asks for an edge.sync when it
    /// starts. Idempotent.
    Apply,
    /// edge.sync/20acme: for every host name of this node's routes that no certificate covers, or
    /// whose ACME certificate is due for renewal, ask the ACME directory of cluster/edge
    /// (acme_directory; none: nothing to do) for a certificate by HTTP-01, once for the cluster
    /// (a lock per name in cluster/acme/locks/), and store it in cluster/certs/ for every node.
    /// A failed name is reported here and in cluster/acme/orders/NAME (`agentctl cert list`) and
    /// retried after a back-off; it does not fail the step.
    Acme,
    /// Queue an edge.sync run on this node (XADD node/NODE/queue), with DATA saying why.
    QueueSync {
        /// Why (the run's data), e.g. "module.remove hello1".
        #[arg(default_value = "")]
        why: String,
    },
}

impl EdgeCmd {
    pub fn name(&self) -> &'static str {
        match self {
            EdgeCmd::Apply => "apply",
            EdgeCmd::Acme => "acme",
            EdgeCmd::QueueSync { .. } => "queue-sync",
        }
    }
}

pub fn run(cmd: &EdgeCmd, ctx: &Ctx) -> Result<()> {
    match cmd {
        EdgeCmd::Apply => apply(ctx),
        EdgeCmd::Acme => acme(ctx),
        EdgeCmd::QueueSync { why } => {
            // At boot the proxy may come up before Redis answers: waited for, a minute at most.
            let deadline = Instant::now() + REDIS_WAIT;
            loop {
                let queued = ctx.con().and_then(|mut con| {
                    let fields = [
                        (QUEUE_FIELD_EVENT, EDGE_SYNC_EVENT),
                        (QUEUE_FIELD_DATA, why),
                    ];
                    let id: String = con.xadd(ctx.node_prefix().queue(), "*", &fields)?;
                    Ok(id)
                });
                match queued {
                    Ok(id) => {
                        println!("{EDGE_SYNC_EVENT} queued on {} (run {id})", ctx.node);
                        return Ok(());
                    }
                    Err(ToolError::Redis(e))
                        if agent_redis::is_transient(&e) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// What a step says when the proxy is not running: nothing to apply to, and no failure, since
/// agent-edge.service queues an edge.sync as soon as it is up (the node-agent's own start, at
/// boot, usually comes first). The error is recorded in node/NODE/edge for `agentctl node status`.
fn proxy_down(e: &edge::Error) -> Option<String> {
    matches!(e, edge::Error::Unreachable { .. })
        .then(|| format!("skipped: {e}; agent-edge.service queues an edge.sync when it starts"))
}

fn edge_error(e: edge::Error) -> ToolError {
    match e {
        e if e.is_transient() => ToolError::TempFailure(e.to_string()),
        edge::Error::Setting { .. } => ToolError::Config(e.to_string()),
        e => ToolError::Failed(e.to_string()),
    }
}

fn acme(ctx: &Ctx) -> Result<()> {
    let (state_dir, socket) = edge::sync::local_paths();
    let admin = edge::caddy::Admin::new(socket);
    let run = std::env::var(core_events::step_env::AGENT_RUN_ID).unwrap_or_default();
    let identity_file = edge::store::identity_path();
    let outcomes = ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        let node = edge::acme::Node {
            name: &ctx.node,
            admin: &admin,
            state_dir: &state_dir,
            identity_file: &identity_file,
            run: &run,
        };
        match edge::acme::run(&mut con, &node).await {
            Err(e) if proxy_down(&e).is_some() => {
                println!("{}", proxy_down(&e).unwrap_or_default());
                Ok(Vec::new())
            }
            other => other.map_err(edge_error),
        }
    })?;
    for outcome in &outcomes {
        match outcome {
            edge::acme::Outcome::Failed { .. } => eprintln!("warning: {outcome}"),
            _ => println!("{outcome}"),
        }
    }
    Ok(())
}

fn apply(ctx: &Ctx) -> Result<()> {
    let (state_dir, socket) = edge::sync::local_paths();
    let admin = edge::caddy::Admin::new(socket);
    let run = std::env::var(core_events::step_env::AGENT_RUN_ID).unwrap_or_default();
    let now = agent_engine::time::now_rfc3339();
    let applied = ctx.block_on(async {
        let mut con = ctx.target.connection().await?;
        match edge::sync::apply(&mut con, &ctx.node, &admin, &state_dir, &now, &run).await {
            Err(e) if proxy_down(&e).is_some() => Ok(Err(proxy_down(&e).unwrap_or_default())),
            other => other.map(Ok).map_err(edge_error),
        }
    })?;
    let applied = match applied {
        Ok(applied) => applied,
        Err(skipped) => {
            println!("{skipped}");
            return Ok(());
        }
    };
    let serving = applied
        .states
        .values()
        .filter(|s| matches!(s, edge::sync::RouteState::Serving))
        .count();
    println!(
        "applied configuration {} ({serving} routes served)",
        &applied.sha256[..12]
    );
    for (route, state) in &applied.states {
        match state {
            edge::sync::RouteState::Serving => println!("  {route}: serving"),
            edge::sync::RouteState::Refused(why) => println!("  {route}: refused: {why}"),
        }
    }
    if let Some(w) = &applied.warning {
        println!("warning: {w}");
    }
    if !applied.changed.is_empty() {
        println!("route-changed: {}", applied.changed.join(", "));
    }
    Ok(())
}
