//! `agentctl cancel`: ask an agent to cancel a run.

use anyhow::{Context, Result};
use core_events::{keys, RunId};
use redis::AsyncCommands;

use crate::agent::AgentRef;
use crate::conn::Redis;
use crate::fail::{fail, invalid};

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The agent: node/NAME, module/NAME or NAME. The cancel channel is named by NAME alone, so
    /// the kind is not looked up.
    agent: String,

    /// The run to cancel. A running run's step gets SIGTERM, then SIGKILL after the agent's grace
    /// period, and the run ends `cancelled` (exit 130); a queued run is dropped before it starts.
    run_id: String,
}

pub async fn main(redis: &Redis, args: CancelArgs) -> Result<i32> {
    let agent = AgentRef::parse(&args.agent)?;
    let run = RunId::new(args.run_id.as_str()).map_err(|e| invalid(e.to_string()))?;
    let channel = keys::cancel_channel(&agent.name);
    let mut con = redis.manager().await?;
    let receivers: usize = con
        .publish(&channel, run.as_str())
        .await
        .with_context(|| format!("cannot publish on {channel}"))?;
    if receivers == 0 {
        return Err(fail(
            1,
            format!(
                "agent {} is not listening; nothing was cancelled",
                agent.name
            ),
        ));
    }
    eprintln!(
        "cancel of run {run} sent to agent {}; `agentctl show {agent} {run}` shows how it ended \
         (an unknown run id is only noted in `agentctl journal {agent}`)",
        agent.name
    );
    Ok(0)
}
