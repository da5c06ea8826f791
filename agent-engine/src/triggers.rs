//! Triggers: events other agents emit (`event/<agent>/<event>`) that queue one of this agent's
//! own events, as the `.on` settings of its event directories say (plan::triggers). This is how a
//! node's edge.sync runs when a module asks for a route, and how a module reacts to
//! `certificate-changed` with a step of its own, without any agent writing another's queue.
//!
//! One subscription connection of its own (only when some event has an `.on`), in place before
//! the agent says it is ready, supervised like the listener's: on loss it reconnects with a
//! backoff. Since pub/sub has no replay, each subscription — the first at the agent's start as
//! every later one — queues each triggered event once with `"resubscribed": true`: what was
//! emitted while the agent was stopped or unsubscribed is then caught up by the event itself,
//! which reads the state it acts on (steps are idempotent).
//!
//! **Bounded under a flood.** What arrives is folded into one pending entry per (emitting agent,
//! event), the latest payload kept, at most [`MAX_PENDING`] of them; and a triggered event is not
//! queued again while the run it last queued is still waiting to be read from the queue (that run
//! will see the newest state anyway). A flood of emitted events therefore costs at most one queued
//! run at a time per triggered event. Events this agent emits itself never trigger it (no loop of
//! one).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use agent_redis::{is_transient, Backoff, Target};
use core_events::{keys, AgentName, EventName};
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind};
use tokio::sync::Notify;

use crate::context::AgentCtx;
use crate::error::{Error, Result};
use crate::listener::bulk;

/// Pending (agent, event) pairs the buffer folds a flood into.
const MAX_PENDING: usize = 1024;

/// What one received emitted event carries to the triggered run (its data, JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fired {
    from: AgentName,
    event: EventName,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Pending {
    fired: BTreeMap<(AgentName, EventName), Vec<u8>>,
    /// Arrivals folded away because [`MAX_PENDING`] pairs were waiting.
    dropped: u64,
    disconnected: bool,
}

/// The subscription's push sender: never waits, folds and bounds (see the module's text).
#[derive(Default)]
struct Inbox {
    state: Mutex<Pending>,
    wake: Notify,
}

impl Inbox {
    fn take(&self) -> (Vec<Fired>, u64, bool) {
        let mut st = self.state.lock().expect("trigger inbox lock");
        let fired = std::mem::take(&mut st.fired)
            .into_iter()
            .map(|((from, event), payload)| Fired {
                from,
                event,
                payload,
            })
            .collect();
        (fired, std::mem::take(&mut st.dropped), st.disconnected)
    }
}

impl AsyncPushSender for Inbox {
    fn send(&self, info: PushInfo) -> std::result::Result<(), SendError> {
        let PushInfo { kind, data } = info;
        let mut data = data.into_iter();
        let mut st = self.state.lock().expect("trigger inbox lock");
        match kind {
            PushKind::PMessage => {
                let _pattern = data.next();
                let channel = bulk(data.next());
                let payload = bulk(data.next());
                let Some((from, event)) = std::str::from_utf8(&channel)
                    .ok()
                    .and_then(keys::of_emitted_channel)
                else {
                    return Ok(());
                };
                let key = (from, event);
                if st.fired.len() >= MAX_PENDING && !st.fired.contains_key(&key) {
                    st.dropped += 1;
                } else {
                    st.fired.insert(key, payload);
                }
            }
            PushKind::Disconnection => st.disconnected = true,
            _ => return Ok(()),
        }
        drop(st);
        self.wake.notify_one();
        Ok(())
    }
}

/// The data of a triggered run: who emitted what, and its payload (JSON when it is, else text;
/// left out when the whole would not fit the agent's payload limit).
fn run_data(f: &Fired, max_payload: usize) -> String {
    let payload = match serde_json::from_slice::<serde_json::Value>(&f.payload) {
        Ok(v) => v,
        Err(_) => String::from_utf8_lossy(&f.payload).into_owned().into(),
    };
    let data =
        serde_json::json!({"from": f.from.as_str(), "event": f.event.as_str(), "data": payload});
    let text = data.to_string();
    if text.len() <= max_payload {
        return text;
    }
    serde_json::json!({"from": f.from.as_str(), "event": f.event.as_str(), "data": null, "truncated": true})
        .to_string()
}

/// A stream id as a comparable pair (`<ms>-<seq>`).
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Runs the triggers until shutdown. `triggers`: emitted event → own events it queues. `ready`
/// is told once the first subscription is in place (at once when there is nothing to subscribe
/// to): the agent says it is ready only then, so an event emitted after "agent ready" is never
/// missed.
pub(crate) async fn run(
    target: Target,
    ctx: AgentCtx,
    triggers: BTreeMap<EventName, Vec<EventName>>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    if triggers.is_empty() {
        let _ = ready.send(());
        return Ok(());
    }
    let mut ready = Some(ready);
    let mut backoff = Backoff::default();
    // The run each triggered event last queued: not queued again while that one waits unread.
    let mut last: HashMap<EventName, String> = HashMap::new();
    loop {
        match serve(
            &target,
            &ctx,
            &triggers,
            &mut last,
            &mut backoff,
            &mut ready,
        )
        .await
        {
            Err(Error::Shutdown) => return Ok(()),
            Err(Error::Redis(e)) if is_transient(&e) => {
                tracing::warn!(error = %e, "trigger subscription lost, reconnecting");
            }
            Err(e) => return Err(e),
            Ok(()) => tracing::warn!("trigger subscription closed, reconnecting"),
        }
        if !backoff.wait(&ctx.shutdown).await {
            return Ok(());
        }
    }
}

async fn serve(
    target: &Target,
    ctx: &AgentCtx,
    triggers: &BTreeMap<EventName, Vec<EventName>>,
    last: &mut HashMap<EventName, String>,
    backoff: &mut Backoff,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<()> {
    let inbox = Arc::new(Inbox::default());
    let mut conn = tokio::select! {
        c = target.subscriber(inbox.clone()) => c?,
        _ = ctx.shutdown.cancelled() => return Err(Error::Shutdown),
    };
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(keys::client_name(&ctx.cfg.name))
        .query_async::<()>(&mut conn)
        .await?;
    for emitted in triggers.keys() {
        conn.psubscribe(keys::emitted_event_any_agent(emitted))
            .await?;
    }
    backoff.reset();
    tracing::info!(
        events = %triggers.keys().map(EventName::as_str).collect::<Vec<_>>().join(","),
        "triggers subscribed"
    );
    if let Some(tx) = ready.take() {
        let _ = tx.send(());
    }
    // Pub/sub has no replay: what was emitted while this agent was not subscribed (stopped,
    // restarting, or its subscription lost) is caught up by queuing each triggered event once, at
    // the first subscription as after every later one.
    let marker = serde_json::json!({"resubscribed": true}).to_string();
    for own in triggers.values().flatten() {
        queue(ctx, last, own, &marker).await?;
    }
    let mut ping = tokio::time::interval(std::time::Duration::from_secs(5));
    ping.tick().await;
    loop {
        let (fired, dropped, disconnected) = inbox.take();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "emitted events folded away: too many pending triggers"
            );
        }
        for f in fired {
            if f.from == ctx.cfg.name {
                continue;
            }
            let data = run_data(&f, ctx.cfg.max_payload);
            for own in triggers.get(&f.event).into_iter().flatten() {
                queue(ctx, last, own, &data).await?;
            }
        }
        if disconnected {
            return Ok(());
        }
        tokio::select! {
            _ = inbox.wake.notified() => {}
            _ = ping.tick() => {
                let ping = redis::cmd("PING");
                tokio::select! {
                    r = ping.query_async::<()>(&mut conn) => r?,
                    _ = ctx.shutdown.cancelled() => return Err(Error::Shutdown),
                }
            }
            _ = ctx.shutdown.cancelled() => return Err(Error::Shutdown),
        }
    }
}

/// Queues `own` with `data`, unless the run it last queued has not been read from the queue yet.
async fn queue(
    ctx: &AgentCtx,
    last: &mut HashMap<EventName, String>,
    own: &EventName,
    data: &str,
) -> Result<()> {
    if let Some(prev) = last.get(own) {
        let delivered = ctx.store.last_delivered().await?;
        let delivered = delivered.as_deref().and_then(stream_id);
        if let (Some(p), Some(d)) = (stream_id(prev), delivered) {
            if p > d {
                tracing::debug!(event = %own, run = %prev, "trigger folded into a queued run");
                return Ok(());
            }
        }
    }
    match ctx
        .store
        .enqueue_published(own.as_str(), data.as_bytes())
        .await?
    {
        Some(id) => {
            tracing::info!(event = %own, run = %id, "queued by a trigger");
            last.insert(own.clone(), id);
        }
        None => tracing::warn!(event = %own, "trigger not queued: the queue is full"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn push(channel: &str, payload: &str) -> PushInfo {
        PushInfo {
            kind: PushKind::PMessage,
            data: vec![
                Value::BulkString(b"event/*/x".to_vec()),
                Value::BulkString(channel.as_bytes().to_vec()),
                Value::BulkString(payload.as_bytes().to_vec()),
            ],
        }
    }

    #[test]
    fn a_flood_folds_into_one_pending_entry_per_agent_and_event() {
        let inbox = Inbox::default();
        for i in 0..10_000 {
            inbox
                .send(push(
                    "event/hello1/route-requested",
                    &format!("{{\"n\":{i}}}"),
                ))
                .unwrap();
        }
        inbox.send(push("not/an/emitted/channel", "x")).unwrap();
        let (fired, dropped, disconnected) = inbox.take();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].payload, b"{\"n\":9999}");
        assert_eq!((dropped, disconnected), (0, false));
        for i in 0..(MAX_PENDING + 5) {
            inbox
                .send(push(&format!("event/m{i}/route-requested"), "{}"))
                .unwrap();
        }
        let (fired, dropped, _) = inbox.take();
        assert_eq!((fired.len(), dropped), (MAX_PENDING, 5));
    }

    #[test]
    fn run_data_says_who_emitted_what_and_fits_the_limit() {
        let f = Fired {
            from: AgentName::new("hello1").unwrap(),
            event: EventName::new("route-requested").unwrap(),
            payload: br#"{"route":"web"}"#.to_vec(),
        };
        let data: serde_json::Value = serde_json::from_str(&run_data(&f, 1000)).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"from": "hello1", "event": "route-requested", "data": {"route": "web"}})
        );
        let big = Fired {
            payload: vec![b'x'; 2000],
            ..f
        };
        assert!(run_data(&big, 1000).contains("\"truncated\":true"));
        assert!(stream_id("1-2") < stream_id("1-10"));
        assert_eq!(stream_id("x"), None);
    }
}
