//! The subscription side of an agent: PUBLISHed events become queue entries, cancels reach runs.
//!
//! Pub/sub has no replay and a subscription dies silently with its connection, so this task owns one
//! RESP3 connection, watches it (a `Disconnection` push or a failed PING), and on loss reconnects with
//! backoff and subscribes again. Events published while it was away were never received by anyone
//! (PUBLISH returned 0 to the sender), which is the documented contract; queued events are unaffected.
//!
//! **Memory under a flood.** Redis pushes every message as it is published, acknowledged to the
//! publisher (PUBLISH returned 1) before the agent has even read it, at whatever rate publishers
//! manage, and the listener handles one at a time (a round trip each). The messages received and not
//! yet handled wait in a [`PushBuffer`], bounded by bytes (`--listen-buffer`, charging each message its
//! channel, its payload and a fixed overhead) and by count (the queue's bound, at least 1024); one that
//! finds it full is dropped and counted, and so is a payload above `--max-payload` (refused anyway, so
//! never buffered). Refusals are journaled (`refused`, exit 65) at a bounded rate, so the accounting
//! is bounded work too: up to [`REFUSALS_ONE_BY_ONE`] entries a second as they come (the listener's
//! own refusals — bad name or data, full queue — one by one, the buffer's counts when it is idle),
//! beyond that one summary per reason a second (`N published events refused: <reason>`). Cancel
//! requests have a buffer of their own, served first, so events never push one out; one that finds
//! it full is counted and journaled the same way (`N cancel requests refused: …`).
//!
//! Why not stop reading the connection when full (back-pressure)? The backlog would then build up in
//! Redis's output buffer for this client, and past `client-output-buffer-limit pubsub` (32 MB hard,
//! 8 MB for 60 s by default) Redis closes the subscription: everything in that buffer is lost with no
//! account anywhere, and events published until the listener has subscribed again are lost too
//! (PUBLISH returns 0). Reading everything and dropping what does not fit keeps the subscription and
//! accounts for every message.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_redis::{is_transient, Backoff, Target};
use core_events::record::EntryError;
use core_events::JournalStatus;
use core_events::{keys, EventName, JournalEntry, RunId, RunRecord, RunStatus};
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{oneshot, Notify};

use crate::config::EngineConfig;
use crate::context::AgentCtx;
use crate::error::{Error, Result};
use crate::runner::CancelHandle;
use crate::shown;
use crate::time::now_rfc3339;

/// Cancel handles of the runs executing now, by run id.
pub(crate) type Running = Arc<Mutex<HashMap<String, CancelHandle>>>;

const PING_EVERY: Duration = Duration::from_secs(5);

/// What a buffered message costs beyond its channel and payload bytes: its slot in the buffer and the
/// allocator's share of its two allocations (an estimate on the high side). It makes the byte bound
/// a bound on the count of tiny messages too.
const MSG_OVERHEAD: usize = 128;
/// The buffer holds at least this many PUBLISHed events, however small the queue (`--max-queue`), so a
/// burst into a small queue that drains fast is not cut short here.
const MIN_BUFFERED_EVENTS: usize = 1024;
/// The buffer of cancel requests: this many, this many bytes. A valid request is a run id (at most
/// 64 bytes), and there are never many at once.
const MAX_BUFFERED_CANCELS: usize = 1024;
const CANCEL_BUFFER: usize = 256 * 1024;
/// Journal entries about refusals the listener writes within a second as they come (one per refused
/// message, or the buffer's counts when it is idle); beyond that, refusals are counted and journaled
/// as one summary per reason once the second is over. So a flood costs at most this many journal
/// writes a second plus a few summaries.
const REFUSALS_ONE_BY_ONE: u32 = 100;
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// A tally keeps the event name of what it counts up to this length (a valid name is shorter).
const TALLY_EVENT_MAX: usize = 256;

pub(crate) async fn listen(
    target: Target,
    ctx: AgentCtx,
    running: Running,
    ready: oneshot::Sender<()>,
) -> Result<()> {
    let mut ready = Some(ready);
    let mut backoff = Backoff::default();
    let shutdown = ctx.shutdown.clone();
    let io = IoThread::start()?;
    loop {
        // Subscribed before (`ready` is taken then): this is a new subscription after a loss.
        let again = ready.is_none();
        let served = subscribe_and_serve(
            &target,
            &io,
            &ctx,
            &running,
            &mut ready,
            &mut backoff,
            again,
        );
        match served.await {
            Err(Error::Shutdown) => return Ok(()),
            Err(Error::Redis(e)) if is_transient(&e) => {
                tracing::warn!(error = %e, "subscription lost, reconnecting");
            }
            Err(e) => return Err(e),
            Ok(()) => tracing::warn!("subscription connection closed, reconnecting"),
        }
        if !backoff.wait(&shutdown).await {
            return Ok(());
        }
    }
}

/// The thread the subscription's connection runs on, with a current-thread runtime of its own: the
/// connection's reader then takes what Redis pushes as it comes, whatever the agent's own thread is
/// busy with (runs, the listener's round trips). A reader that falls behind leaves the backlog in
/// Redis's output buffer for the connection, and past `client-output-buffer-limit pubsub` Redis
/// closes the connection, losing that backlog without account: with the reader on the agent's thread,
/// a debug build lost its subscription under a flood of 100 KiB payloads (tests/tests/engine_flood.rs).
/// The thread stops when this is dropped.
struct IoThread {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl IoThread {
    fn start() -> Result<Self> {
        let failed =
            |e: std::io::Error| Error::Config(format!("cannot start the listener's thread: {e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(failed)?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("listener-io".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })
            .map_err(failed)?;
        Ok(IoThread {
            handle,
            _stop: stop,
        })
    }
}

async fn subscribe_and_serve(
    target: &Target,
    io: &IoThread,
    ctx: &AgentCtx,
    running: &Running,
    ready: &mut Option<oneshot::Sender<()>>,
    backoff: &mut Backoff,
    lost_before: bool,
) -> Result<()> {
    let store = &ctx.store;
    let cfg = ctx.cfg.clone();
    let buffer = Arc::new(PushBuffer::new(&cfg));
    // Connected on the I/O thread, so the connection's driver task runs there; this task talks to it
    // through the handle (channels), from the agent's runtime.
    let connect = {
        let (target, buffer) = (target.clone(), buffer.clone());
        io.handle
            .spawn(async move { target.subscriber(buffer).await })
    };
    let mut conn = tokio::select! {
        c = connect => c.map_err(|e| Error::Config(format!("the listener's thread failed: {e}")))??,
        _ = ctx.shutdown.cancelled() => return Err(Error::Shutdown),
    };
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
    if lost_before {
        // The only trace of what Redis still held for the old connection when it closed it.
        let j = JournalEntry::new("", "", JournalStatus::Warning, 0, now_rfc3339()).with_message(
            "subscribed again after the subscription was lost: events published in between were \
             not received (PUBLISH returned 0), and those Redis held for the lost connection are lost",
        );
        store.journal(&j).await?;
    }
    let mut refusals = Refusals::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    // A failed PING ends the connection once what it delivered is handled.
    let mut lost = None;
    loop {
        if ctx.shutdown.is_cancelled() {
            refusals.at_shutdown(ctx, &buffer).await;
            return Err(Error::Shutdown);
        }
        if refusals.second_over() {
            refusals.flush(ctx, &buffer).await?;
        }
        match buffer.next() {
            Next::Cancel(msg) => on_cancel(ctx, running, msg.payload).await?,
            Next::Event(msg) => {
                if let Some(r) = on_event(ctx, msg).await? {
                    refusals.add(ctx, r).await?;
                }
            }
            // Everything it delivered is handled (those messages were acknowledged to their
            // publishers): write what was counted, then connect again.
            Next::Disconnected => {
                refusals.flush(ctx, &buffer).await?;
                return Ok(());
            }
            Next::Idle => {
                if let Some(e) = lost.take() {
                    refusals.flush(ctx, &buffer).await?;
                    return Err(Error::Redis(e));
                }
                // What was counted is written now while this second allows, else once it is over
                // (at the top of the loop).
                let mut pending = refusals.pending() || buffer.dropped_any();
                if pending && refusals.may_write() {
                    refusals.flush(ctx, &buffer).await?;
                    pending = false;
                }
                tokio::select! {
                    _ = buffer.wake.notified() => {}
                    _ = tokio::time::sleep_until(refusals.next_summary()), if pending => {}
                    _ = ping.tick() => {
                        // Given up at shutdown: a PING to a server that died (an old leader)
                        // would hold the agent's stop for a whole command timeout.
                        let ping = redis::cmd("PING");
                        tokio::select! {
                            r = ping.query_async::<()>(&mut conn) => lost = r.err(),
                            _ = ctx.shutdown.cancelled() => {}
                        }
                    }
                    _ = ctx.shutdown.cancelled() => {}
                }
            }
        }
        // A refusal that needs no round trip yields nothing otherwise: let the connection's reader
        // and the runs have their turn.
        tokio::task::coop::consume_budget().await;
    }
}

/// One message as received: its channel and its payload (moved out of the client's reply, no copy).
struct Msg {
    channel: Vec<u8>,
    payload: Vec<u8>,
}

impl Msg {
    fn cost(&self) -> usize {
        self.channel.len() + self.payload.len() + MSG_OVERHEAD
    }
}

/// A count of messages refused for one reason, with what a journal entry says about them.
#[derive(Default)]
struct Tally {
    count: u64,
    /// The event they were all for, while there is one (raw bytes, shown safely when written).
    event: Option<Vec<u8>>,
    mixed: bool,
    /// The largest payload among them, in bytes.
    largest: usize,
    /// The journal message of the first, when it was made (the listener's own refusals).
    first: Option<String>,
}

impl Tally {
    fn add(&mut self, event: &[u8], payload: usize) {
        self.count += 1;
        self.largest = self.largest.max(payload);
        match &self.event {
            _ if self.mixed => {}
            Some(e) if e.as_slice() == event => {}
            None if self.count == 1 && event.len() <= TALLY_EVENT_MAX => {
                self.event = Some(event.to_vec())
            }
            _ => {
                self.mixed = true;
                self.event = None;
            }
        }
    }

    fn event(&self) -> String {
        self.event.as_deref().map(shown).unwrap_or_default()
    }
}

/// What the buffer dropped since it was last asked.
#[derive(Default)]
struct Dropped {
    /// Events that found the buffer full.
    full: Tally,
    /// Events whose payload is above `max_payload`: refused as they arrive, never buffered.
    oversized: Tally,
    /// Cancel requests that found their buffer full.
    cancels: u64,
}

#[derive(Default)]
struct Buffered {
    events: VecDeque<Msg>,
    event_bytes: usize,
    cancels: VecDeque<Msg>,
    cancel_bytes: usize,
    dropped: Dropped,
    /// The client said the connection is gone (it says so once).
    disconnected: bool,
}

enum Next {
    Cancel(Msg),
    Event(Msg),
    Idle,
    Disconnected,
}

/// The subscription's push sender: the messages Redis pushed and the listener has not handled yet,
/// bounded (see the module's documentation). The client calls [`AsyncPushSender::send`] from its
/// connection's reader, which must never wait, so a message that does not fit is dropped and counted
/// there; the listener journals the counts ([`Refusals::flush`]).
struct PushBuffer {
    state: Mutex<Buffered>,
    wake: Notify,
    /// `<agent>:`, to tell the event of a dropped message.
    event_prefix: Vec<u8>,
    max_events: usize,
    max_bytes: usize,
    max_payload: usize,
}

impl PushBuffer {
    fn new(cfg: &EngineConfig) -> Self {
        PushBuffer {
            state: Mutex::default(),
            wake: Notify::new(),
            event_prefix: format!("{}:", cfg.name).into_bytes(),
            max_events: cfg.max_queue.max(MIN_BUFFERED_EVENTS),
            max_bytes: cfg.listen_buffer,
            max_payload: cfg.max_payload,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Buffered> {
        self.state.lock().expect("push buffer lock")
    }

    fn event_of<'a>(&self, channel: &'a [u8]) -> &'a [u8] {
        channel
            .strip_prefix(self.event_prefix.as_slice())
            .unwrap_or(b"")
    }

    /// The next message to handle: cancels first (a cancel can only name a run that is queued
    /// already, so it never needs an event still buffered), then events in order; once both are
    /// empty, whether the connection is gone.
    fn next(&self) -> Next {
        let mut st = self.state();
        if let Some(m) = st.cancels.pop_front() {
            st.cancel_bytes -= m.cost();
            return Next::Cancel(m);
        }
        if let Some(m) = st.events.pop_front() {
            st.event_bytes -= m.cost();
            return Next::Event(m);
        }
        if st.disconnected {
            Next::Disconnected
        } else {
            Next::Idle
        }
    }

    fn dropped_any(&self) -> bool {
        let st = self.state();
        st.dropped.full.count + st.dropped.oversized.count + st.dropped.cancels > 0
    }

    fn take_dropped(&self) -> Dropped {
        std::mem::take(&mut self.state().dropped)
    }

    /// Empties the buffer (the agent is stopping): what it held, counted.
    fn drain(&self) -> (Tally, u64) {
        let mut st = self.state();
        let mut events = Tally::default();
        for m in std::mem::take(&mut st.events) {
            events.add(self.event_of(&m.channel), m.payload.len());
        }
        let cancels = std::mem::take(&mut st.cancels).len() as u64;
        (st.event_bytes, st.cancel_bytes) = (0, 0);
        (events, cancels)
    }
}

/// A pushed message's part as bytes (also for the triggers' subscription).
pub(crate) fn bulk(v: Option<Value>) -> Vec<u8> {
    match v {
        Some(Value::BulkString(b)) => b,
        Some(v) => redis::from_redis_value::<Vec<u8>>(v).unwrap_or_default(),
        None => Vec::new(),
    }
}

impl AsyncPushSender for PushBuffer {
    fn send(&self, info: PushInfo) -> std::result::Result<(), SendError> {
        let PushInfo { kind, data } = info;
        let mut data = data.into_iter();
        let mut st = self.state();
        match kind {
            // pattern, channel, payload
            PushKind::PMessage => {
                let _pattern = data.next();
                let m = Msg {
                    channel: bulk(data.next()),
                    payload: bulk(data.next()),
                };
                let cost = m.cost();
                if m.payload.len() > self.max_payload {
                    st.dropped
                        .oversized
                        .add(self.event_of(&m.channel), m.payload.len());
                } else if st.events.len() >= self.max_events
                    || st.event_bytes + cost > self.max_bytes
                {
                    st.dropped
                        .full
                        .add(self.event_of(&m.channel), m.payload.len());
                } else {
                    st.event_bytes += cost;
                    st.events.push_back(m);
                }
            }
            // channel (`cancel/<agent>`, the only one subscribed), payload
            PushKind::Message => {
                let m = Msg {
                    channel: bulk(data.next()),
                    payload: bulk(data.next()),
                };
                let cost = m.cost();
                if st.cancels.len() >= MAX_BUFFERED_CANCELS
                    || st.cancel_bytes + cost > CANCEL_BUFFER
                {
                    st.dropped.cancels += 1;
                } else {
                    st.cancel_bytes += cost;
                    st.cancels.push_back(m);
                }
            }
            PushKind::Disconnection => st.disconnected = true,
            // Subscription confirmations (their replies go to the caller too) and the like.
            _ => return Ok(()),
        }
        drop(st);
        // Also for a dropped message: the listener may be idle with a count to write.
        self.wake.notify_one();
        // A dropped message is handled too (counted); the client ignores the result anyway.
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Reason {
    /// Bad event name or data.
    Invalid,
    QueueFull,
}

/// A refusal by [`on_event`]: why, the event (raw), the journal message.
struct Refused {
    reason: Reason,
    event: String,
    message: String,
}

/// The listener's refusals and the buffer's counts, turned into journal entries at a bounded rate:
/// up to [`REFUSALS_ONE_BY_ONE`] entries a second as they come (a refusal by [`on_event`] with its own
/// message; the buffer's counts when the listener is idle), the rest counted and summarised per
/// reason by [`Refusals::flush`] once the second is over.
struct Refusals {
    /// The start of this second.
    since: Instant,
    /// Journal entries written this second.
    written: u32,
    invalid: Tally,
    queue_full: Tally,
}

fn published(n: u64) -> String {
    match n {
        1 => "1 published event".into(),
        n => format!("{n} published events"),
    }
}

impl Refusals {
    fn new() -> Self {
        Refusals {
            since: Instant::now(),
            written: 0,
            invalid: Tally::default(),
            queue_full: Tally::default(),
        }
    }

    /// Starts the next second when this one is over; true then (a summary is due).
    fn second_over(&mut self) -> bool {
        if self.since.elapsed() < SUMMARY_EVERY {
            return false;
        }
        (self.since, self.written) = (Instant::now(), 0);
        true
    }

    /// Whether this second allows another journal write now.
    fn may_write(&self) -> bool {
        self.written < REFUSALS_ONE_BY_ONE
    }

    fn pending(&self) -> bool {
        self.invalid.count + self.queue_full.count > 0
    }

    /// When the next summary is due: the end of this second.
    fn next_summary(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.since + SUMMARY_EVERY)
    }

    async fn add(&mut self, ctx: &AgentCtx, r: Refused) -> Result<()> {
        let store = &ctx.store;
        if self.may_write() {
            self.written += 1;
            tracing::warn!("{}", r.message);
            return store
                .journal(&refusal(shown(r.event.as_bytes()), r.message))
                .await;
        }
        let tally = match r.reason {
            Reason::Invalid => &mut self.invalid,
            Reason::QueueFull => &mut self.queue_full,
        };
        if tally.count == 0 {
            tally.first = Some(r.message);
        }
        tally.add(r.event.as_bytes(), 0);
        Ok(())
    }

    /// The journal entries (event, message) for what was counted, without writing them.
    fn summaries(&mut self, cfg: &EngineConfig, dropped: Dropped) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut one = |t: Tally, summary: &dyn Fn(&Tally) -> String| {
            if t.count == 0 {
                return;
            }
            let message = match (&t.first, t.count) {
                (Some(first), 1) => first.clone(),
                _ => summary(&t),
            };
            out.push((t.event(), message));
        };
        one(std::mem::take(&mut self.invalid), &|t| {
            format!(
                "{} refused as invalid (event name or data), the first: {}",
                published(t.count),
                t.first.as_deref().unwrap_or_default()
            )
        });
        one(std::mem::take(&mut self.queue_full), &|t| {
            format!(
                "{} refused: queue holds {} entries already",
                published(t.count),
                cfg.max_queue
            )
        });
        let max_events = cfg.max_queue.max(MIN_BUFFERED_EVENTS);
        one(dropped.full, &|t| {
            format!(
                "{} refused: the listener's buffer was full ({max_events} events or {} bytes, --listen-buffer)",
                published(t.count),
                cfg.listen_buffer
            )
        });
        one(dropped.oversized, &|t| {
            let too_large = EntryError::PayloadTooLarge {
                len: t.largest,
                max: cfg.max_payload,
            };
            match t.count {
                1 => format!("refused PUBLISH on {}:{}: {too_large}", cfg.name, t.event()),
                n => format!(
                    "{} refused: payload above the limit (the largest: {too_large})",
                    published(n)
                ),
            }
        });
        if dropped.cancels > 0 {
            out.push((
                String::new(),
                format!(
                    "{} cancel requests refused: the listener's buffer for cancels was full ({MAX_BUFFERED_CANCELS} requests or {CANCEL_BUFFER} bytes)",
                    dropped.cancels
                ),
            ));
        }
        out
    }

    /// Journals what was counted (with the buffer's counts): one `refused` entry per reason.
    async fn flush(&mut self, ctx: &AgentCtx, buffer: &PushBuffer) -> Result<()> {
        let store = &ctx.store;
        for (event, message) in self.summaries(&ctx.cfg, buffer.take_dropped()) {
            tracing::warn!("{message}");
            self.written = self.written.saturating_add(1);
            store.journal(&refusal(event, message)).await?;
        }
        Ok(())
    }

    /// The agent is stopping: what is still buffered will not be handled; it is counted as refused
    /// with the rest (best effort: Redis may be gone).
    async fn at_shutdown(&mut self, ctx: &AgentCtx, buffer: &PushBuffer) {
        let store = &ctx.store;
        let (events, cancels) = buffer.drain();
        let mut entries = self.summaries(&ctx.cfg, buffer.take_dropped());
        if events.count > 0 {
            entries.push((
                events.event(),
                format!(
                    "{} refused: the agent stopped before it queued them",
                    published(events.count)
                ),
            ));
        }
        if cancels > 0 {
            entries.push((
                String::new(),
                format!("{cancels} cancel requests refused: the agent stopped before it read them"),
            ));
        }
        for (event, message) in entries {
            tracing::warn!("{message}");
            if let Err(e) = store.journal(&refusal(event, message)).await {
                tracing::warn!(error = %e, "refusals not journaled at shutdown");
                return;
            }
        }
    }
}

fn refusal(event: String, message: String) -> JournalEntry {
    JournalEntry::new("", event, JournalStatus::Refused, 0, now_rfc3339())
        .with_exit_code(core_events::exit::INVALID)
        .with_message(message)
}

/// A PUBLISHed event: queued, or refused (the caller journals the refusal, see [`Refusals`]). The
/// payload is only borrowed from here on (the enqueue script's arguments are its copy).
async fn on_event(ctx: &AgentCtx, msg: Msg) -> Result<Option<Refused>> {
    let store = &ctx.store;
    let Msg { channel, payload } = msg;
    let channel = String::from_utf8(channel)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let mut queue_full = false;
    let raw = keys::event_of_channel(&ctx.cfg.name, &channel).unwrap_or_default();
    let refused = match EventName::new(raw) {
        Err(e) => Some(format!(
            "refused PUBLISH on {:?}: {e}",
            shown(channel.as_bytes())
        )),
        Ok(event) => match core_events::record::check_data(&payload, ctx.cfg.max_payload) {
            Err(e) => Some(format!("refused PUBLISH on {channel}: {e}")),
            Ok(_) => match store.enqueue_published(event.as_str(), &payload).await? {
                Some(id) => {
                    tracing::debug!(%event, run = %id, "queued published event");
                    None
                }
                None => {
                    queue_full = true;
                    Some(format!(
                        "refused PUBLISH on {channel}: queue holds {} entries already",
                        ctx.cfg.max_queue
                    ))
                }
            },
        },
    };
    Ok(refused.map(|message| Refused {
        reason: if queue_full {
            Reason::QueueFull
        } else {
            Reason::Invalid
        },
        event: raw.to_owned(),
        message,
    }))
}

/// A message on `cancel/<agent>`: its payload is a run id.
async fn on_cancel(ctx: &AgentCtx, running: &Running, payload: Vec<u8>) -> Result<()> {
    let store = &ctx.store;
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
            let j = JournalEntry::new(run.as_str(), event, RunStatus::Cancelled, 0, now)
                .with_exit_code(core_events::exit::CANCELLED)
                .with_message(format!(
                    "cancelled before it started (queue entry {stream_id})"
                ));
            tracing::info!(%run, "queued run cancelled");
            store.cancel_queued(&run, &record, &j).await
        }
        None => {
            let j = JournalEntry::new(run.as_str(), "", JournalStatus::Warning, 0, now)
                .with_message(format!("cancel of {run}: no such queued or running run"));
            store.journal(&j).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_events::{AgentKind, AgentName};

    fn buffer(max_queue: usize, listen_buffer: usize, max_payload: usize) -> PushBuffer {
        let mut cfg = EngineConfig::new(AgentKind::Module, AgentName::new("a0").unwrap());
        (cfg.max_queue, cfg.listen_buffer, cfg.max_payload) =
            (max_queue, listen_buffer, max_payload);
        PushBuffer::new(&cfg)
    }

    fn bulk_of(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    fn publish(b: &PushBuffer, event: &str, payload: &[u8]) {
        let channel = format!("a0:{event}");
        let data = vec![
            bulk_of(b"a0:*"),
            bulk_of(channel.as_bytes()),
            bulk_of(payload),
        ];
        b.send(PushInfo {
            kind: PushKind::PMessage,
            data,
        })
        .unwrap();
    }

    fn cancel(b: &PushBuffer, run: &str) {
        let data = vec![bulk_of(b"cancel/a0"), bulk_of(run.as_bytes())];
        b.send(PushInfo {
            kind: PushKind::Message,
            data,
        })
        .unwrap();
    }

    #[test]
    fn the_buffer_is_bounded_by_count_and_by_bytes_and_counts_what_it_drops() {
        // By count: at least MIN_BUFFERED_EVENTS, else the queue's bound.
        let b = buffer(10, 1 << 30, 1000);
        for _ in 0..MIN_BUFFERED_EVENTS + 5 {
            publish(&b, "ev", b"x");
        }
        let d = b.take_dropped();
        assert_eq!((d.full.count, d.full.event()), (5, "ev".to_string()));
        let mut n = 0;
        while let Next::Event(m) = b.next() {
            assert_eq!(
                (m.channel.as_slice(), m.payload.as_slice()),
                (&b"a0:ev"[..], &b"x"[..])
            );
            n += 1;
        }
        assert_eq!(n, MIN_BUFFERED_EVENTS);
        // By bytes: payload, channel and the fixed overhead of each.
        let cost = 500 + "a0:ev".len() + MSG_OVERHEAD;
        let b = buffer(10_000, 3 * cost, 1000);
        for _ in 0..4 {
            publish(&b, "ev", &[b'y'; 500]);
        }
        publish(&b, "other", &[b'y'; 500]);
        let d = b.take_dropped();
        assert_eq!(d.full.count, 2);
        assert_eq!(d.full.largest, 500);
        assert_eq!(d.full.event(), "", "two events: none is named");
        assert_eq!(b.state().event_bytes, 3 * cost);
        // An oversized payload is refused at once and never buffered.
        publish(&b, "big", &[b'z'; 1001]);
        let d = b.take_dropped();
        assert_eq!(
            (d.full.count, d.oversized.count, d.oversized.largest),
            (0, 1, 1001)
        );
        assert_eq!(d.oversized.event(), "big");
        // Handled ones free their room.
        assert!(matches!(b.next(), Next::Event(_)));
        publish(&b, "ev", &[b'y'; 500]);
        assert_eq!(b.take_dropped().full.count, 0);
        assert_eq!(b.state().event_bytes, 3 * cost);
    }

    #[test]
    fn cancels_have_their_own_room_and_come_first_and_a_disconnection_comes_last() {
        let b = buffer(10, 2000, 1000);
        publish(&b, "ev", &[b'y'; 1000]);
        publish(&b, "ev", &[b'y'; 1000]);
        assert_eq!(b.take_dropped().full.count, 1, "the event buffer is full");
        cancel(&b, "run1");
        b.send(PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        })
        .unwrap();
        assert!(matches!(b.next(), Next::Cancel(m) if m.payload == b"run1"));
        assert!(matches!(b.next(), Next::Event(_)));
        assert!(matches!(b.next(), Next::Disconnected));
        for _ in 0..MAX_BUFFERED_CANCELS + 3 {
            cancel(&b, "r");
        }
        assert_eq!(b.take_dropped().cancels, 3);
        let (events, cancels) = b.drain();
        assert_eq!((events.count, cancels), (0, MAX_BUFFERED_CANCELS as u64));
        assert_eq!(b.state().cancel_bytes, 0);
    }

    #[test]
    fn summaries_say_how_many_and_why() {
        let mut cfg = EngineConfig::new(AgentKind::Module, AgentName::new("a0").unwrap());
        (cfg.max_queue, cfg.listen_buffer, cfg.max_payload) = (10, 8192, 1000);
        let mut r = Refusals::new();
        r.queue_full.add(b"ev", 0);
        r.queue_full.first =
            Some("refused PUBLISH on a0:ev: queue holds 10 entries already".into());
        let mut dropped = Dropped::default();
        dropped.oversized.add(b"ev", 2000);
        for _ in 0..3 {
            dropped.full.add(b"ev", 1);
        }
        dropped.cancels = 2;
        let s = r.summaries(&cfg, dropped);
        let messages: Vec<&str> = s.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            messages,
            [
                "refused PUBLISH on a0:ev: queue holds 10 entries already",
                "3 published events refused: the listener's buffer was full (1024 events or 8192 bytes, --listen-buffer)",
                "refused PUBLISH on a0:ev: payload is 2000 bytes, the limit is 1000",
                "2 cancel requests refused: the listener's buffer for cancels was full (1024 requests or 262144 bytes)",
            ]
        );
        assert_eq!(s[1].0, "ev");
        assert!(!r.pending(), "the counts were taken");
    }
}
