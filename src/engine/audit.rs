//! The audit event stream: one JSON object a line for every token minted and
//! every policy refusal, on a destination of its own (standard output and/or
//! a file, `config::AuditConfig`), whatever `RUST_LOG` says. The schema is
//! documented in the README ("Audit events") and versioned (`version`).
//!
//! Events are serialized on the request's thread and written by one thread of
//! their own, fed by a bounded queue: a request never waits for a disk. When
//! the queue is full a plain exchange's event is dropped and counted; any
//! other event (delegation, impersonation, re-exchange, refusal) waits for
//! room instead, so that who acted as whom is never lost.
//!
//! A token answered from the minted-token cache writes nothing: it is the
//! same token (same `jti`) whose minting was written. Impersonation is never
//! cached, so each one is written.
//!
//! Never token material: no token, signature, secret or assertion; only
//! names (subjects, issuers, clients, rules) and the minted `jti`.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::ExchangeRequest;
use super::mint::{Exchanged, json_number as number, json_string as string, json_sub_id as sub_id};
use crate::config::{AuditConfig, Outcome};
use crate::metrics::AuditMetrics;
use crate::rules::{Actor, Denied, SubId};
use crate::trust::validator::Validated;

/// The schema's version: a field removed or changed in meaning raises it;
/// fields may be added without.
pub const VERSION: u32 = 1;

/// Events written in one go, at most.
const BATCH: usize = 256;
/// How often the writer looks whether the file was moved away, and retries a
/// file it could not open.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// While events keep coming, the writer collects them this often instead of
/// being woken for each: waking it costs the request that sends an event a
/// futex call and a context switch (a quarter of a cold Check's wall time in
/// `check_cold`). An idle writer blocks, and the first event wakes it.
const COLLECT_EVERY: Duration = Duration::from_millis(5);
/// Write errors are logged at most this often (each is counted).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The front door a request came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    ExtAuthz,
    Token,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::ExtAuthz => "ext_authz",
            Door::Token => "token",
        }
    }
}

/// Who asked, as the front door knows it: written into the events.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// `None`: not a front door (a test, a bench).
    pub door: Option<Door>,
    /// The ext_authz Check caller's identity, when it proved one.
    pub caller: Option<&'a str>,
}

/// A refusal a front door made itself (a Check caller not allowed, a
/// client's grant, conflicting actors): the engine never saw a subject.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DoorRefusal<'a> {
    pub(crate) door: Door,
    pub(crate) caller: Option<&'a str>,
    pub(crate) client: Option<&'a str>,
    pub(crate) audience: Option<&'a str>,
    pub(crate) actor: Option<&'a str>,
    pub(crate) reason: &'static str,
    pub(crate) description: &'a str,
}

/// One line of the stream (see the README for each field). Everything is
/// borrowed and written straight into the line (`Event::write`): no JSON
/// values are built. The tests serialise it with serde as well, and compare.
#[derive(Debug)]
#[cfg_attr(test, derive(serde::Serialize))]
struct Event<'a> {
    /// Always 1: lets a log shipper tell audit lines from anything else on stdout.
    stsgate_audit: u8,
    version: u32,
    time: Time,
    event: &'static str,
    decision: Option<&'static str>,
    outcome: Option<&'static str>,
    door: Option<&'static str>,
    rule: Option<&'a str>,
    subject: Option<Party<'a>>,
    sub_id: Option<&'a SubId>,
    actor_chain: Vec<Party<'a>>,
    requested_subject: Option<&'a str>,
    client: Option<&'a str>,
    client_id: Option<&'a str>,
    caller: Option<&'a str>,
    audience: Option<&'a str>,
    scopes: Option<Scopes<'a>>,
    jti: Option<&'a str>,
    exp: Option<i64>,
    reason: Option<&'static str>,
    description: Option<&'a str>,
}

/// `time`: RFC 3339, UTC, milliseconds, formatted straight into the line.
#[derive(Debug)]
struct Time(SystemTime);

/// `scopes`: the minted `scope` claim as a list, split while written.
#[derive(Debug)]
struct Scopes<'a>(&'a str);

impl<'a> Scopes<'a> {
    fn iter(&self) -> impl Iterator<Item = &'a str> {
        self.0.split(' ').filter(|s| !s.is_empty())
    }
}

/// `{iss, sub}` of one party; only these two, whatever else a claim holds.
/// The keys in this order (sorted, as the schema has always written them),
/// `iss` only when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
struct Party<'a> {
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    iss: Option<&'a str>,
    sub: &'a str,
}

impl Event<'_> {
    /// The line, keys in the schema's order. By hand rather than through
    /// serde (a third of the event's cost, issue 17): the keys are
    /// constants, and a string needing no escape is copied as it is; any
    /// other goes through serde_json, so every string is escaped exactly
    /// as before.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"stsgate_audit\":");
        number(out, i64::from(self.stsgate_audit));
        out.extend_from_slice(b",\"version\":");
        number(out, i64::from(self.version));
        out.extend_from_slice(b",\"time\":\"");
        // Digits, `-`, `:`, `.`, `T` and `Z`: nothing to escape.
        rfc3339_millis(out, self.time.0);
        out.extend_from_slice(b"\",\"event\":");
        string(out, self.event);
        out.extend_from_slice(b",\"decision\":");
        optional(out, self.decision, string);
        out.extend_from_slice(b",\"outcome\":");
        optional(out, self.outcome, string);
        out.extend_from_slice(b",\"door\":");
        optional(out, self.door, string);
        out.extend_from_slice(b",\"rule\":");
        optional(out, self.rule, string);
        out.extend_from_slice(b",\"subject\":");
        optional(out, self.subject.as_ref(), Party::write);
        out.extend_from_slice(b",\"sub_id\":");
        optional(out, self.sub_id, sub_id);
        out.extend_from_slice(b",\"actor_chain\":");
        list(out, self.actor_chain.iter(), Party::write);
        out.extend_from_slice(b",\"requested_subject\":");
        optional(out, self.requested_subject, string);
        out.extend_from_slice(b",\"client\":");
        optional(out, self.client, string);
        out.extend_from_slice(b",\"client_id\":");
        optional(out, self.client_id, string);
        out.extend_from_slice(b",\"caller\":");
        optional(out, self.caller, string);
        out.extend_from_slice(b",\"audience\":");
        optional(out, self.audience, string);
        out.extend_from_slice(b",\"scopes\":");
        optional(out, self.scopes.as_ref(), |out, s| list(out, s.iter(), string));
        out.extend_from_slice(b",\"jti\":");
        optional(out, self.jti, string);
        out.extend_from_slice(b",\"exp\":");
        optional(out, self.exp, number);
        out.extend_from_slice(b",\"reason\":");
        optional(out, self.reason, string);
        out.extend_from_slice(b",\"description\":");
        optional(out, self.description, string);
        out.push(b'}');
    }
}

/// `humantime::format_rfc3339_millis`, by hand (`fmt` took ~700
/// instructions an event, issue 17). A clock outside the years 1970 to 9999
/// (which RFC 3339 and humantime cannot write: humantime panics before 1970
/// and writes nothing after 9999) is written as the nearest edge, so that the
/// line stays valid JSON. Days to a civil date: the proleptic Gregorian
/// calendar in 400-year eras of 146,097 days, years from March on (so that
/// the leap day ends the year).
fn rfc3339_millis(out: &mut Vec<u8>, time: SystemTime) {
    /// 10000-01-01T00:00:00Z less a millisecond.
    const LAST: Duration = Duration::from_millis(253_402_300_800_000 - 1);
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).min(LAST);
    let (days, secs) = (since.as_secs() / 86_400, since.as_secs() % 86_400);
    // Days since 0000-03-01.
    let z = days + 719_468;
    let (era, day_of_era) = (z / 146_097, z % 146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    // Two digits of n < 100.
    let two = |n: u64| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    let [y1, y2] = two(year / 100);
    let [y3, y4] = two(year % 100);
    let [mo1, mo2] = two(month);
    let [d1, d2] = two(day);
    let [h1, h2] = two(secs / 3600);
    let [mi1, mi2] = two(secs / 60 % 60);
    let [s1, s2] = two(secs % 60);
    let ms = u64::from(since.subsec_millis());
    let [ms2, ms3] = two(ms % 100);
    let ms1 = b'0' + (ms / 100) as u8;
    out.extend_from_slice(&[
        y1, y2, y3, y4, b'-', mo1, mo2, b'-', d1, d2, b'T', h1, h2, b':', mi1, mi2, b':', s1, s2, b'.', ms1, ms2, ms3,
        b'Z',
    ]);
}

impl Party<'_> {
    fn write(out: &mut Vec<u8>, p: &Party<'_>) {
        out.push(b'{');
        if let Some(iss) = p.iss {
            out.extend_from_slice(b"\"iss\":");
            string(out, iss);
            out.push(b',');
        }
        out.extend_from_slice(b"\"sub\":");
        string(out, p.sub);
        out.push(b'}');
    }
}

fn optional<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        Some(v) => write(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn list<T>(out: &mut Vec<u8>, items: impl Iterator<Item = T>, write: impl Fn(&mut Vec<u8>, T)) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

impl Event<'_> {
    fn new(event: &'static str) -> Self {
        Event {
            stsgate_audit: 1,
            version: VERSION,
            time: Time(SystemTime::now()),
            event,
            decision: None,
            outcome: None,
            door: None,
            rule: None,
            subject: None,
            sub_id: None,
            actor_chain: Vec::new(),
            requested_subject: None,
            client: None,
            client_id: None,
            caller: None,
            audience: None,
            scopes: None,
            jti: None,
            exp: None,
            reason: None,
            description: None,
        }
    }
}

/// A party of a claim (`act`): its `sub` must be a string.
fn party<'a>(sub: Option<&'a Value>, iss: Option<&'a Value>) -> Option<Party<'a>> {
    Some(Party { sub: sub?.as_str()?, iss: iss.and_then(Value::as_str) })
}

fn actor_party(a: &Actor) -> Party<'_> {
    Party { sub: &a.sub, iss: a.iss.as_deref() }
}

fn subject_party(v: &Validated) -> Party<'_> {
    Party { sub: &v.sub, iss: Some(&v.issuer) }
}

/// The actors an `act` claim nests, current first (RFC 8693 §4.1).
fn act_chain<'a>(mut act: Option<&'a Value>, out: &mut Vec<Party<'a>>) {
    // The depth is bounded by the rules (`max_chain_depth`); this bound only
    // keeps a malformed claim from looping.
    for _ in 0..64 {
        let Some(level) = act.filter(|a| a.is_object()) else { return };
        out.extend(party(level.get("sub"), level.get("iss")));
        act = level.get("act");
    }
}

/// Keeps exactly ⌊n·rate⌋ of the first n plain exchanges, spread evenly,
/// without a random number per request.
#[derive(Debug)]
struct Sampler {
    rate: f64,
    seen: AtomicU64,
}

impl Sampler {
    fn keep(&self) -> bool {
        if self.rate >= 1.0 {
            return true;
        }
        if self.rate <= 0.0 {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.rate).floor() > (n * self.rate).floor()
    }
}

enum Msg {
    /// One event's JSON, without its newline. Bytes: the writer only copies
    /// them out, and their text is UTF-8 by construction (`Event::write`
    /// writes `str`s, escaped by serde where they need it).
    Line(Box<[u8]>),
    /// Answered once every line queued before it was written.
    Flush(Sender<()>),
}

/// Why a stream cannot start, with the configuration key it concerns.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {message}")]
pub struct StartError {
    pub path: &'static str,
    pub message: String,
}

/// The stream of one configuration: kept across reloads while `audit:` does
/// not change.
pub struct Audit {
    cfg: AuditConfig,
    tx: SyncSender<Msg>,
    reopen: Arc<AtomicBool>,
    sampler: Sampler,
    metrics: AuditMetrics,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Audit {
    /// The running stream when the settings are the same, else a new one
    /// (its file opened now: an audit file that cannot be opened fails the
    /// start or the reload). The metrics carry on either way.
    pub(crate) fn for_config(cfg: &AuditConfig, running: Option<&Arc<Audit>>) -> Result<Arc<Audit>, StartError> {
        if let Some(running) = running.filter(|r| r.cfg == *cfg) {
            return Ok(running.clone());
        }
        let metrics = running.map(|r| r.metrics.clone()).unwrap_or_default();
        Audit::start(cfg, metrics).map(Arc::new)
    }

    fn start(cfg: &AuditConfig, metrics: AuditMetrics) -> Result<Audit, StartError> {
        let file = match &cfg.file {
            Some(path) => Some(FileDest::open(path).map_err(|e| StartError {
                path: "audit.file",
                message: format!("cannot open {} for appending: {e}", path.display()),
            })?),
            None => None,
        };
        let (tx, rx) = sync_channel(cfg.queue);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            stdout: cfg.stdout(),
            file,
            reopen: reopen.clone(),
            metrics: metrics.clone(),
            last_error_log: None,
            unlogged_errors: 0,
        };
        std::thread::Builder::new()
            .name("stsgate-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StartError { path: "audit", message: format!("cannot start the audit writer: {e}") })?;
        let sampler = Sampler { rate: cfg.sample_exchanges, seen: AtomicU64::new(0) };
        Ok(Audit { cfg: cfg.clone(), tx, reopen, sampler, metrics })
    }

    pub fn metrics(&self) -> &AuditMetrics {
        &self.metrics
    }

    /// Reopens the file before the next write (SIGHUP: the file was rotated).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Waits until every event queued so far is written, at most `within`;
    /// says whether they were.
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (done, wait) = std::sync::mpsc::channel();
        let mut msg = Msg::Flush(done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok()
    }

    /// A token was minted for `req` from `subject`.
    pub(crate) fn minted(&self, subject: &Validated, req: &ExchangeRequest<'_>, done: &Exchanged<'_>) {
        let outcome = done.outcome();
        // A token of stsgate's own passed on (always by a workload, the rules
        // see to it) is a re-exchange; `outcome` still says what the rule granted.
        let decision = match outcome {
            Outcome::Impersonation => "impersonation",
            _ if subject.is_own() => "re-exchange",
            o => o.as_str(),
        };
        // The claims as minting had them (not the payload parsed back).
        let claims = done.claims();
        let claims = claims.as_deref();
        let mut chain = Vec::new();
        if outcome == Outcome::Impersonation {
            // Nothing in the token names the actor: the stream does.
            chain.extend(req.actor.as_ref().map(actor_party));
        } else if let Some((c, act_as)) = claims.and_then(|c| Some((c, c.act_as.as_ref()?))) {
            // `delegation_shape: act_as`: the actor is `sub`, the subject in `act_as`.
            let iss = match &c.sub_id {
                SubId::IssSub { iss, .. } => Some(iss.as_str()),
                SubId::Uri { .. } | SubId::Opaque { .. } => None,
            };
            chain.push(Party { sub: &c.sub, iss });
            act_chain(act_as.get("act"), &mut chain);
        } else {
            act_chain(claims.and_then(|c| c.act.as_ref()), &mut chain);
        }
        // Only a plain exchange is sampled: one that carries an actor chain
        // along says who acted, like a delegation.
        let plain = decision == "exchange" && chain.is_empty();
        if plain && !self.sampler.keep() {
            return;
        }
        let mut e = Event::new("minted");
        e.decision = Some(decision);
        e.outcome = Some(outcome.as_str());
        e.door = req.origin.door.map(Door::as_str);
        e.rule = Some(done.rule());
        e.subject = Some(subject_party(subject));
        e.sub_id = claims.map(|c| &c.sub_id);
        e.actor_chain = chain;
        e.requested_subject = req.requested_subject;
        e.client = req.client;
        e.client_id = claims.map(|c| c.client_id.as_str());
        e.caller = req.origin.caller;
        e.audience = Some(req.audience);
        e.scopes = Some(Scopes(claims.and_then(|c| c.scope.as_deref()).unwrap_or("")));
        e.jti = claims.map(|c| c.jti.as_str());
        e.exp = Some(done.exp());
        self.send(&e, plain);
    }

    /// The rules refused `req` for the validated `subject`.
    pub(crate) fn refused_by_rules(&self, subject: &Validated, req: &ExchangeRequest<'_>, denied: &Denied) {
        let description = denied.to_string();
        let mut e = Event::new("refused");
        e.door = req.origin.door.map(Door::as_str);
        e.subject = Some(subject_party(subject));
        e.actor_chain.extend(req.actor.as_ref().map(actor_party));
        e.requested_subject = req.requested_subject;
        e.client = req.client;
        e.caller = req.origin.caller;
        e.audience = Some(req.audience).filter(|a| !a.is_empty());
        e.reason = Some(denied.label());
        e.description = Some(&description);
        self.send(&e, false);
    }

    /// A front door refused the request by policy before the engine decided.
    pub(crate) fn refused_at_door(&self, r: &DoorRefusal<'_>) {
        let mut e = Event::new("refused");
        e.door = Some(r.door.as_str());
        e.actor_chain.extend(r.actor.map(|sub| Party { sub, iss: None }));
        e.client = r.client;
        e.caller = r.caller;
        e.audience = r.audience;
        e.reason = Some(r.reason);
        e.description = Some(r.description);
        self.send(&e, false);
    }

    /// Queues one event: a droppable one only when there is room.
    fn send(&self, e: &Event<'_>, droppable: bool) {
        let line = encode(e);
        tracing::debug!(target: "stsgate::audit", "{}", String::from_utf8_lossy(&line));
        let sent = if droppable {
            match self.tx.try_send(Msg::Line(line)) {
                Err(TrySendError::Full(_)) => {
                    self.metrics.dropped();
                    return;
                }
                other => other.is_ok(),
            }
        } else {
            // Backpressure: waits while the writer catches up.
            self.tx.send(Msg::Line(line)).is_ok()
        };
        if sent {
            self.metrics.queued(e.event);
        } else {
            self.metrics.write_errors(1);
            tracing::error!("the audit writer is gone: an audit event was lost");
        }
    }
}

/// The JSON line of an event, in an allocation of its exact size: written
/// into a buffer each thread reuses (a fresh `String` would be regrown
/// several times over an event's ~500 bytes), then copied once.
fn encode(e: &Event<'_>) -> Box<[u8]> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        // A nested `send` (never expected) gets a buffer of its own.
        let mut own = Vec::new();
        let mut borrowed = buf.try_borrow_mut();
        let buf = borrowed.as_deref_mut().unwrap_or(&mut own);
        buf.clear();
        e.write(buf);
        let line: Box<[u8]> = buf.as_slice().into();
        // A rare huge event (a long refusal text) does not keep its buffer.
        if buf.capacity() > 16 * 1024 {
            *buf = Vec::new();
        }
        line
    })
}

/// The audit file, reopened when asked (SIGHUP) or when its path no longer
/// names the file held open (rotated away).
struct FileDest {
    path: PathBuf,
    file: Option<File>,
    /// (device, inode) of the open file.
    id: Option<(u64, u64)>,
    checked: Instant,
}

impl FileDest {
    fn open(path: &Path) -> std::io::Result<FileDest> {
        let mut dest = FileDest { path: path.to_owned(), file: None, id: None, checked: Instant::now() };
        dest.reopen()?;
        Ok(dest)
    }

    /// On failure the file held stays in use: events go on to the moved
    /// file rather than nowhere.
    fn reopen(&mut self) -> std::io::Result<()> {
        self.checked = Instant::now();
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Who acted as whom is for operators, not for every local user.
            opts.mode(0o640);
        }
        let file = opts.open(&self.path)?;
        self.id = file_id(&file.metadata()?);
        self.file = Some(file);
        Ok(())
    }

    /// Whether the path now names another file, or none.
    fn moved(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(m) => file_id(&m) != self.id,
            Err(_) => true,
        }
    }
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

struct Writer {
    stdout: bool,
    file: Option<FileDest>,
    reopen: Arc<AtomicBool>,
    metrics: AuditMetrics,
    last_error_log: Option<Instant>,
    unlogged_errors: u64,
}

impl Writer {
    /// Until every `Audit` holding the queue is gone and the queue is empty.
    fn run(mut self, rx: Receiver<Msg>) {
        let mut buf = Vec::new();
        let mut flushed = Vec::new();
        // Whether the last round wrote something (more is likely coming), and
        // whether it stopped at BATCH (more is surely waiting).
        let (mut busy, mut full) = (false, false);
        loop {
            let mut next = if busy {
                if !full {
                    std::thread::sleep(COLLECT_EVERY);
                }
                match rx.try_recv() {
                    Ok(msg) => Some(msg),
                    Err(TryRecvError::Empty) => {
                        busy = false;
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.recv_timeout(CHECK_EVERY) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => {
                        self.maintain(false);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut lines = 0;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Line(line) => {
                        buf.extend_from_slice(&line);
                        buf.push(b'\n');
                        lines += 1;
                    }
                    Msg::Flush(done) => flushed.push(done),
                }
                if lines < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            (busy, full) = (lines > 0, lines >= BATCH);
            self.maintain(lines > 0);
            self.write(&buf, lines);
            buf.clear();
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// Reopens the file when asked to (SIGHUP), when it could not be opened
    /// before, or, about to `write`, when it was moved away: a rotation
    /// without the signal loses nothing either (what was written between the
    /// move and the next check went to the moved file).
    fn maintain(&mut self, write: bool) {
        let asked = self.reopen.swap(false, Ordering::AcqRel);
        let Some(dest) = self.file.as_mut() else { return };
        let due = dest.checked.elapsed() >= CHECK_EVERY;
        let why = if asked {
            "SIGHUP"
        } else if due && dest.file.is_none() {
            "retry"
        } else if due && write && dest.moved() {
            "moved away"
        } else {
            if due && write {
                dest.checked = Instant::now();
            }
            return;
        };
        match dest.reopen() {
            Ok(()) => tracing::info!(file = %dest.path.display(), why, "audit file reopened"),
            Err(e) => {
                let why = format!("cannot reopen the audit file {}: {e}", dest.path.display());
                self.error(0, &why);
            }
        }
    }

    fn write(&mut self, buf: &[u8], lines: usize) {
        if lines == 0 {
            return;
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(buf).and_then(|()| out.flush()) {
                self.error(lines as u64, &format!("cannot write audit events to stdout: {e}"));
            }
        }
        let Some(dest) = self.file.as_mut() else { return };
        let result = match dest.file.as_mut() {
            Some(f) => f.write_all(buf),
            None => Err(std::io::Error::other("the file is not open")),
        };
        if let Err(e) = result {
            // Retried (reopened) with the next batch.
            dest.file = None;
            let why = format!("cannot write audit events to {}: {e}", dest.path.display());
            self.error(lines as u64, &why);
        }
    }

    /// Counts `lost` events and logs, at most every `ERROR_LOG_EVERY`.
    fn error(&mut self, lost: u64, why: &str) {
        self.metrics.write_errors(lost);
        self.unlogged_errors += 1;
        if self.last_error_log.is_some_and(|at| at.elapsed() < ERROR_LOG_EVERY) {
            return;
        }
        self.last_error_log = Some(Instant::now());
        let errors = std::mem::take(&mut self.unlogged_errors);
        tracing::error!(errors, lost, "{why}");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An event's line as text; it must be UTF-8.
    fn line_of(e: &Event<'_>) -> String {
        String::from_utf8(encode(e).into_vec()).expect("UTF-8")
    }

    /// The hand-written timestamp is humantime's: every day of 1970 to
    /// 2500 (leap years, centuries), the last second of 9999, the edges of
    /// each day and millisecond.
    #[test]
    fn timestamps_are_humantimes() {
        let check = |t: SystemTime| {
            let mut out = Vec::new();
            rfc3339_millis(&mut out, t);
            assert_eq!(String::from_utf8(out).unwrap(), humantime::format_rfc3339_millis(t).to_string(), "{t:?}");
        };
        let at = |secs: u64, nanos: u32| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        for day in 0..(2500 - 1970) * 366 {
            let secs = day * 86_400;
            for (s, n) in [(0, 0), (1, 999_999), (86_399, 999_999_999), (45_296, 7_000_000), (3_599, 1_000_000)] {
                check(at(secs + s, n));
            }
        }
        check(at(253_402_300_799, 999_999_999));
        check(at(951_782_400, 0)); // 2000-02-29
        check(at(4_107_542_400, 0)); // 2100-03-01
        let mut out = Vec::new();
        rfc3339_millis(&mut out, at(1_700_000_000, 123_456_789));
        assert_eq!(out, b"2023-11-14T22:13:20.123Z");
    }

    /// A clock before 1970 or after 9999 (humantime panics on the one and
    /// writes nothing for the other) gives the nearest edge: the line stays
    /// valid JSON and the event is not lost.
    #[test]
    fn timestamps_outside_rfc3339_are_clamped() {
        let written = |t: SystemTime| {
            let mut out = Vec::new();
            rfc3339_millis(&mut out, t);
            String::from_utf8(out).unwrap()
        };
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(written(epoch - Duration::from_secs(86_400)), "1970-01-01T00:00:00.000Z");
        assert_eq!(written(epoch + Duration::from_secs(253_402_300_800)), "9999-12-31T23:59:59.999Z");
        assert_eq!(written(epoch + Duration::from_secs(400_000_000_000)), "9999-12-31T23:59:59.999Z");
        let mut e = Event::new("refused");
        e.time = Time(epoch - Duration::from_secs(1));
        let line: Value = serde_json::from_str(&line_of(&e)).expect("a JSON line");
        assert_eq!(line["time"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn sampling_keeps_the_configured_share_evenly() {
        let kept = |rate: f64, n: usize| {
            let s = Sampler { rate, seen: AtomicU64::new(0) };
            (0..n).filter(|_| s.keep()).count()
        };
        assert_eq!(kept(1.0, 1000), 1000);
        assert_eq!(kept(0.0, 1000), 0);
        assert_eq!(kept(0.25, 1000), 250);
        assert_eq!(kept(0.1, 1000), 100);
        assert_eq!(kept(0.5, 3), 1);
    }

    /// A full queue drops a plain exchange's event (counted); any other
    /// event waits until the writer makes room.
    #[test]
    fn a_full_queue_drops_only_droppable_events_and_makes_the_others_wait() {
        let (tx, rx) = sync_channel(1);
        let metrics = AuditMetrics::default();
        let audit = Audit {
            cfg: AuditConfig::default(),
            tx,
            reopen: Arc::new(AtomicBool::new(false)),
            sampler: Sampler { rate: 1.0, seen: AtomicU64::new(0) },
            metrics: metrics.clone(),
        };
        let mut reg = prometheus_client::registry::Registry::default();
        metrics.register(&mut reg);
        let scrape = || crate::metrics::render(&reg);
        audit.send(&Event::new("minted"), true);
        audit.send(&Event::new("minted"), true);
        assert!(scrape().contains("stsgate_audit_events_dropped_total 1\n"), "{}", scrape());
        // The writer takes one line 200ms from now: the refusal waits for it.
        let drain = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let first = rx.recv().unwrap();
            (first, rx.recv().unwrap())
        });
        let started = Instant::now();
        audit.send(&Event::new("refused"), false);
        assert!(started.elapsed() >= Duration::from_millis(150), "it waited for room");
        let lines = match drain.join().unwrap() {
            (Msg::Line(a), Msg::Line(b)) => [a, b],
            _ => panic!("two lines"),
        };
        let refused = String::from_utf8_lossy(&lines[1]);
        assert!(refused.contains("\"event\":\"refused\""), "{refused}");
        assert!(scrape().contains("stsgate_audit_events_dropped_total 1\n"), "nothing else dropped");
        assert!(scrape().contains("stsgate_audit_events_total{event=\"refused\"} 1\n"), "{}", scrape());
    }

    // What the line was written with before `Event::write`: serde, which
    // the tests keep as the reference.
    impl serde::Serialize for Time {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&humantime::format_rfc3339_millis(self.0))
        }
    }

    impl serde::Serialize for Scopes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.iter())
        }
    }

    /// The hand-written line is serde's, byte for byte, whatever the
    /// strings hold (quotes, backslashes, control characters, non-ASCII)
    /// and whichever fields are set: no string can break out of its field.
    #[test]
    fn the_line_is_what_serde_writes_for_any_text() {
        let texts = [
            "",
            "plain",
            "quo\"te",
            "back\\slash",
            "new\nline",
            "tab\t",
            "\u{1}\u{1f}",
            "\u{7f}del",
            "ünï\u{2028}cødé",
            "</script>",
            "\"},\"injected\":{\"",
        ];
        let ids = |t: &str| {
            [
                SubId::IssSub { iss: t.into(), sub: format!("{t}-sub") },
                SubId::Uri { uri: t.into() },
                SubId::Opaque { id: t.into() },
            ]
        };
        for (i, t) in texts.iter().enumerate() {
            for (j, id) in ids(t).iter().enumerate() {
                let mut e = Event::new(if j == 0 { "minted" } else { "refused" });
                e.time = Time(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_495_249_007 + i as u64));
                let some = (i + j) % 2 == 0;
                e.decision = some.then_some("exchange");
                e.outcome = some.then_some("exchange");
                e.door = Some("token");
                e.rule = Some(t);
                e.subject = Some(Party { sub: t, iss: some.then_some(t) });
                e.sub_id = Some(id);
                e.actor_chain = vec![Party { sub: t, iss: None }, Party { sub: "b", iss: Some(t) }][..i % 3].to_vec();
                e.requested_subject = some.then_some(t);
                e.client = Some(t);
                e.client_id = (!some).then_some(t);
                e.caller = Some(t);
                e.audience = Some(t);
                e.scopes = some.then_some(Scopes(t));
                e.jti = Some(t);
                e.exp = Some(if some { i64::MAX } else { -1 - i as i64 });
                e.reason = (!some).then_some("no_rule");
                e.description = Some(t);
                assert_eq!(line_of(&e), serde_json::to_string(&e).unwrap(), "{e:?}");
            }
        }
        let e = Event::new("refused");
        assert_eq!(line_of(&e), serde_json::to_string(&e).unwrap());
        // `sub_id` as the minted token's claim carries it.
        for id in ids("x\"y") {
            let mut out = Vec::new();
            sub_id(&mut out, &id);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&id).unwrap());
        }
    }

    #[test]
    fn act_chains_are_read_current_actor_first_and_names_only() {
        let act = json!({"sub": "b", "iss": "https://i", "client_id": "x", "act": {"sub": "a", "act": "junk"}});
        let mut chain = Vec::new();
        act_chain(Some(&act), &mut chain);
        assert_eq!(chain, [Party { sub: "b", iss: Some("https://i") }, Party { sub: "a", iss: None }]);
    }

    /// The line is written from borrowed fields, not from JSON values: the
    /// bytes must stay what schema version 1 has always written (keys in
    /// this order, a party's `iss` before its `sub`, `sub_id` with its
    /// `format` first, escapes as serde_json writes them).
    #[test]
    fn a_minted_event_is_written_byte_for_byte_as_schema_1() {
        let sub_id = SubId::IssSub { iss: "https://idp.example".into(), sub: "alice".into() };
        let mut e = Event::new("minted");
        e.time = Time(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_495_249_123));
        e.decision = Some("delegation");
        e.outcome = Some("delegation");
        e.door = Some("ext_authz");
        e.rule = Some("r\"1");
        e.subject = Some(Party { sub: "alice", iss: Some("https://idp.example") });
        e.sub_id = Some(&sub_id);
        e.actor_chain = vec![Party { sub: "svc", iss: Some("https://idp.example") }, Party { sub: "edge", iss: None }];
        e.client_id = Some("web");
        e.caller = Some("spiffe://c/envoy");
        e.audience = Some("orders");
        e.scopes = Some(Scopes(" orders.read  profile"));
        e.jti = Some("abc");
        e.exp = Some(1_764_495_549);
        let line = line_of(&e);
        assert_eq!(
            line,
            concat!(
                r#"{"stsgate_audit":1,"version":1,"time":"2025-11-30T09:34:09.123Z","event":"minted","#,
                r#""decision":"delegation","outcome":"delegation","door":"ext_authz","rule":"r\"1","#,
                r#""subject":{"iss":"https://idp.example","sub":"alice"},"#,
                r#""sub_id":{"format":"iss_sub","iss":"https://idp.example","sub":"alice"},"#,
                r#""actor_chain":[{"iss":"https://idp.example","sub":"svc"},{"sub":"edge"}],"#,
                r#""requested_subject":null,"client":null,"client_id":"web","caller":"spiffe://c/envoy","#,
                r#""audience":"orders","scopes":["orders.read","profile"],"jti":"abc","exp":1764495549,"#,
                r#""reason":null,"description":null}"#
            )
        );
        // A refusal: no scopes (null, not []), an empty chain.
        let mut e = Event::new("refused");
        e.actor_chain.push(Party { sub: "x", iss: None });
        e.description = Some("no rule");
        let line: Value = serde_json::from_str(&line_of(&e)).unwrap();
        assert_eq!((&line["scopes"], &line["actor_chain"]), (&Value::Null, &json!([{"sub": "x"}])));
        // And the same again in the same buffer, reused.
        assert_eq!(line_of(&e), line_of(&e));
    }

    #[test]
    fn a_file_moved_away_is_noticed_and_reopened() {
        let dir = std::env::temp_dir().join(format!("stsgate-audit-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let mut dest = FileDest::open(&path).unwrap();
        assert!(!dest.moved());
        std::fs::rename(&path, dir.join("audit.jsonl.1")).unwrap();
        assert!(dest.moved());
        dest.reopen().unwrap();
        assert!(!dest.moved() && path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
