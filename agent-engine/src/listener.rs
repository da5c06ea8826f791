//! The subscription side of an agent: PUBLISHed events become queue entries, cancels reach runs.
//!
//! Pub/sub has no replay and a subscription dies silently with its connection, so this task owns one
//! RESP3 connection, watches it (a `Disconnection` push or a failed PING), and on loss reconnects with
//! backoff and subscribes again. Events published while it was away were never received by anyone
//! (PUBLISH returned 0 to the sender), which is the documented contract; queued events are unaffected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use core_events::record::journal_status;
use core_events::{keys, EventName, JournalEntry, RunId, RunRecord, RunStatus};
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::redis_conn::{is_transient, Backoff};
use crate::runner::CancelHandle;
use crate::shown;
use crate::store::Store;
use crate::time::now_rfc3339;

/// Cancel handles of the runs executing now, by run id.
pub(crate) type Running = Arc<Mutex<HashMap<String, CancelHandle>>>;

const PING_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn listen(
    client: Client,
    store: Store,
    running: Running,
    ready: oneshot::Sender<()>,
) -> Result<()> {
    let mut ready = Some(ready);
    let mut backoff = Backoff::default();
    let shutdown = store.shutdown.clone();
    loop {
        match subscribe_and_serve(&client, &store, &running, &mut ready, &mut backoff).await {
            Err(Error::Shutdown) => return Ok(()),
            Err(Error::Redis(e)) if is_transient(&e) => {
                tracing::warn!(error = %e, "subscription lost, reconnecting");
            }
            Err(e) => return Err(e),
            Ok(()) => tracing::warn!("subscription connection closed, reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

async fn subscribe_and_serve(
    client: &Client,
    store: &Store,
    running: &Running,
    ready: &mut Option<oneshot::Sender<()>>,
    backoff: &mut Backoff,
) -> Result<()> {
    let cfg = store.cfg.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<PushInfo>();
    let conn_cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(crate::redis_conn::COMMAND_TIMEOUT))
        .set_push_sender(tx);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&conn_cfg)
        .await?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(keys::client_name(&cfg.name))
        .query_async::<()>(&mut conn)
        .await?;
    conn.psubscribe(keys::event_pattern(&cfg.name)).await?;
    conn.subscribe(keys::cancel_channel(&cfg.name)).await?;
    backoff.reset();
    tracing::info!(pattern = %keys::event_pattern(&cfg.name), "subscribed");
    if let Some(r) = ready.take() {
        let _ = r.send(());
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                match msg.kind {
                    PushKind::Disconnection => return Ok(()),
                    PushKind::PMessage => on_event(store, msg.data).await?,
                    PushKind::Message => on_cancel(store, running, msg.data).await?,
                    _ => {}
                }
            }
            _ = ping.tick() => {
                redis::cmd("PING").query_async::<()>(&mut conn).await?;
            }
            _ = store.shutdown.cancelled() => return Err(Error::Shutdown),
        }
    }
}

fn bytes(v: Option<Value>) -> Vec<u8> {
    v.and_then(|v| redis::from_redis_value::<Vec<u8>>(v).ok())
        .unwrap_or_default()
}

fn refusal(event: String, message: String) -> JournalEntry {
    JournalEntry::new("", event, journal_status::REFUSED, 0, now_rfc3339())
        .with_exit_code(core_events::exit::INVALID)
        .with_message(message)
}

/// `pmessage` data: pattern, channel, payload.
async fn on_event(store: &Store, data: Vec<Value>) -> Result<()> {
    let mut it = data.into_iter();
    let (_pattern, channel, payload) = (it.next(), bytes(it.next()), bytes(it.next()));
    let channel = String::from_utf8_lossy(&channel).into_owned();
    let raw = keys::event_of_channel(&store.cfg.name, &channel).unwrap_or_default();
    let refused = match EventName::new(raw) {
        Err(e) => Some(format!(
            "refused PUBLISH on {:?}: {e}",
            shown(channel.as_bytes())
        )),
        Ok(_) if payload.len() > store.cfg.max_payload => Some(format!(
            "refused PUBLISH on {channel}: payload is {} bytes, the limit is {}",
            payload.len(),
            store.cfg.max_payload
        )),
        Ok(event) => match store.enqueue_published(event.as_str(), &payload).await? {
            Some(id) => {
                tracing::debug!(%event, run = %id, "queued published event");
                None
            }
            None => Some(format!(
                "refused PUBLISH on {channel}: queue holds {} entries already",
                store.cfg.max_queue
            )),
        },
    };
    if let Some(message) = refused {
        tracing::warn!("{message}");
        store
            .journal(&refusal(shown(raw.as_bytes()), message))
            .await?;
    }
    Ok(())
}

/// `message` data on `cancel/<agent>`: channel, run id.
async fn on_cancel(store: &Store, running: &Running, data: Vec<Value>) -> Result<()> {
    let payload = bytes(data.into_iter().nth(1));
    let raw = String::from_utf8_lossy(&payload).into_owned();
    let run = match RunId::new(raw.trim()) {
        Ok(r) => r,
        Err(e) => {
            return store
                .journal(&refusal(String::new(), format!("refused cancel: {e}")))
                .await;
        }
    };
    if let Some(handle) = running.lock().expect("running lock").get(run.as_str()) {
        tracing::info!(%run, "cancel requested");
        handle.cancel();
        return Ok(());
    }
    let now = now_rfc3339();
    match store.find_queued(&run).await? {
        Some((stream_id, event)) => {
            let record = RunRecord {
                event: event.clone(),
                status: Some(RunStatus::Cancelled),
                exit_code: Some(core_events::exit::CANCELLED),
                ended: Some(now.clone()),
                error: Some("cancelled before it started".into()),
                ..Default::default()
            };
            let j = JournalEntry::new(run.as_str(), event, RunStatus::Cancelled.as_str(), 0, now)
                .with_exit_code(core_events::exit::CANCELLED)
                .with_message(format!(
                    "cancelled before it started (queue entry {stream_id})"
                ));
            tracing::info!(%run, "queued run cancelled");
            store.cancel_queued(&run, &record, &j).await
        }
        None => {
            let j = JournalEntry::new(run.as_str(), "", journal_status::WARNING, 0, now)
                .with_message(format!("cancel of {run}: no such queued or running run"));
            store.journal(&j).await
        }
    }
}
