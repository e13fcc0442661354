//! The process's audit writer: one task, one dedicated database connection, one
//! chain. Requests hand it their audit event and the state change to make with
//! it; it takes whatever is queued as one batch: one transaction, a savepoint per
//! request (a request whose change fails is rolled back alone and gets no record
//! here), one token MAC on the batch's newest record, one commit (one fsync),
//! then the chain's anchor in the token, and only then the answers. A request is
//! therefore acknowledged only when its record is durable and anchored.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::{AnyConnection, Connection};
use tokio::sync::{mpsc, oneshot};

use super::anchor::{ANCHOR_APPLICATION, Anchor};
use super::{AuditError, AuditEvent, GENESIS_HASH, record_hash};
use crate::hsm::{Hsm, ObjectId};
use crate::store::audit::{self as rows, AuditRow, ChainRow};
use crate::store::{Backend, Conn, Store, StoreError, approvals, now_ms};

/// Most requests one batch carries.
pub const MAX_BATCH: usize = 128;
/// Requests waiting for the writer before callers wait to queue.
const QUEUE: usize = 4096;
/// The chain format this writer appends (see [`super::record_hash`]).
pub const FORMAT: u32 = 3;

/// A request's change: `None` when it failed (rolled back), else what it adds
/// to its record's reason.
type Work = Box<dyn for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Option<Option<String>>> + Send>;

struct Job {
    event: AuditEvent,
    serial: bool,
    work: Option<Work>,
    done: Reply,
}

/// This process's audit trail: a handle on its chain's writer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Auditor {
    pub(super) hsm: Hsm,
    pub(super) key: ObjectId,
    chain: Arc<str>,
    jobs: mpsc::Sender<Job>,
}

impl Auditor {
    /// Registers a new chain for this process (its anchor in the token first,
    /// then its row), adopts the pre-migration chain into the token when it has
    /// no anchor yet, and starts the writer on a dedicated connection. `key` is
    /// the token's audit MAC key.
    pub async fn start(store: &Store, hsm: Hsm, key: ObjectId) -> Result<Auditor, AuditError> {
        adopt_unanchored_legacy(store, &hsm, key).await?;
        let chain = hsm
            .run(move |s| {
                let chain = s.new_object_id()?.to_hex();
                for slot in [0, 1] {
                    s.create_data(
                        ANCHOR_APPLICATION,
                        &Anchor::name(&chain, slot),
                        &Anchor::label(&key, &chain, 0, GENESIS_HASH),
                    )?;
                }
                Ok(chain)
            })
            .await?;
        let mut conn = store.dedicated().await?;
        rows::insert_chain(
            &mut conn,
            &ChainRow {
                id: chain.clone(),
                format: FORMAT,
                instance: instance_name(),
                started_at: now_ms(),
            },
        )
        .await?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        let writer = Writer {
            conn,
            store: store.clone(),
            began: false,
            backend: store.backend(),
            hsm: hsm.clone(),
            key,
            chain: chain.clone(),
            next_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
        };
        tokio::spawn(writer.run(queue));
        tracing::info!(chain = %chain, "audit chain started");
        Ok(Auditor {
            hsm,
            key,
            chain: chain.into(),
            jobs,
        })
    }

    /// The token's audit MAC key.
    pub fn key(&self) -> &ObjectId {
        &self.key
    }

    /// This process's chain.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Appends `event` after `work` made its change, in one batch transaction:
    /// both commit, or neither. When `work` fails its change is rolled back,
    /// nothing is recorded, and its error is returned (the caller records the
    /// failure). `serial` changes first take the row that serialises
    /// read-check-write changes across instances.
    pub async fn commit<T, E, F>(&self, event: AuditEvent, serial: bool, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<AuditError> + Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
    {
        self.run_work(
            event,
            serial,
            move |conn: &mut Conn| -> BoxFuture<'_, Result<(T, Option<String>), E>> {
                Box::pin(async move { work(conn).await.map(|t| (t, None)) })
            },
        )
        .await
    }

    /// As [`Auditor::commit`], for a change whose record says what it did: the
    /// text `work` returns is the record's reason (after the event's own).
    pub async fn commit_described<T, E, F>(
        &self,
        event: AuditEvent,
        serial: bool,
        work: F,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<AuditError> + Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<(T, String), E>> + Send + 'static,
    {
        self.run_work(
            event,
            serial,
            move |conn: &mut Conn| -> BoxFuture<'_, Result<(T, Option<String>), E>> {
                Box::pin(async move { work(conn).await.map(|(t, note)| (t, Some(note))) })
            },
        )
        .await
    }

    async fn run_work<T, E, F>(&self, event: AuditEvent, serial: bool, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<AuditError> + Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<(T, Option<String>), E>>
            + Send
            + 'static,
    {
        let slot: Arc<Mutex<Option<Result<T, E>>>> = Arc::new(Mutex::new(None));
        let out = Arc::clone(&slot);
        let work: Work = Box::new(
            move |conn: &mut Conn| -> BoxFuture<'_, Option<Option<String>>> {
                Box::pin(async move {
                    let (result, note) = match work(conn).await {
                        Ok((t, note)) => (Ok(t), Some(note)),
                        Err(e) => (Err(e), None),
                    };
                    *out.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                    note
                })
            },
        );
        self.submit(event, serial, Some(work)).await?;
        let result = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        result.unwrap_or_else(|| Err(E::from(AuditError::Batch("the change did not run".into()))))
    }

    /// Appends `event` alone (a read, a refusal, a failure).
    pub async fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.submit(event.clone(), false, None).await
    }

    async fn submit(
        &self,
        event: AuditEvent,
        serial: bool,
        work: Option<Work>,
    ) -> Result<(), AuditError> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                event,
                serial,
                work,
                done,
            })
            .await
            .map_err(|_| AuditError::WriterStopped)?;
        answer.await.map_err(|_| AuditError::WriterStopped)?
    }
}

/// `host:pid`: which process wrote a chain, or holds a lease.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

/// A format-1 chain (the trail from before per-instance chains) gets an anchor
/// at its current end the first time a process starts after the migration.
async fn adopt_unanchored_legacy(
    store: &Store,
    hsm: &Hsm,
    key: ObjectId,
) -> Result<(), AuditError> {
    let mut conn = store.conn().await?;
    let legacy: Vec<ChainRow> = rows::chains(&mut conn)
        .await?
        .into_iter()
        .filter(|c| c.format == 1)
        .collect();
    if legacy.is_empty() {
        return Ok(());
    }
    let anchors = hsm.run(|s| s.list_data(ANCHOR_APPLICATION)).await?;
    for c in legacy {
        if anchors
            .iter()
            .filter_map(Anchor::parse)
            .any(|a| a.key == key && a.chain == c.id)
        {
            continue;
        }
        let (seq, hash) = rows::tail(&mut conn, &c.id)
            .await?
            .unwrap_or((0, GENESIS_HASH.to_string()));
        let chain = c.id.clone();
        hsm.run(move |s| {
            s.create_data(
                ANCHOR_APPLICATION,
                &Anchor::name(&chain, 0),
                &Anchor::label(&key, &chain, seq, &hash),
            )
        })
        .await?;
        tracing::warn!(chain = %c.id, seq, "anchored the audit chain from before migration 0006 at its current end");
    }
    Ok(())
}

struct Writer {
    conn: AnyConnection,
    /// Where a new dedicated connection comes from when this one is lost.
    store: Store,
    /// Whether the last `write` got as far as beginning its transaction.
    began: bool,
    backend: Backend,
    hsm: Hsm,
    key: ObjectId,
    chain: String,
    next_seq: u64,
    prev_hash: String,
}

/// What the batch did with one request.
enum Applied {
    /// Its change kept; its record appended with this reason.
    Kept(Option<String>),
    /// Its change failed and was rolled back; the caller has the error.
    RolledBack,
}

/// Where a request's answer goes.
type Reply = oneshot::Sender<Result<(), AuditError>>;

/// A committed batch waiting for the chain's anchor to reach it.
struct Committed {
    /// The chain's newest record after the batch.
    seq: u64,
    hash: String,
    /// The batch's requests and their answers.
    answers: Vec<(Reply, Result<(), AuditError>)>,
}

/// Moves the chain's anchor in the token and only then answers, batch after
/// batch in commit order; while the token works, the writer commits the next
/// batch. Batches that queue up meanwhile are anchored by one token call (the
/// newest anchor vouches for every record before it).
async fn anchor_task(
    hsm: Hsm,
    key: ObjectId,
    chain: String,
    mut committed: mpsc::UnboundedReceiver<Committed>,
) {
    let mut slot = 0u8;
    while let Some(first) = committed.recv().await {
        let mut batches = vec![first];
        while let Ok(more) = committed.try_recv() {
            batches.push(more);
        }
        let (seq, hash) = batches
            .last()
            .map(|b| (b.seq, b.hash.clone()))
            .unwrap_or_default();
        let (name, label) = (
            Anchor::name(&chain, slot),
            Anchor::label(&key, &chain, seq, &hash),
        );
        slot = 1 - slot;
        let moved = hsm
            .run(move |s| s.relabel_data(ANCHOR_APPLICATION, &name, &label))
            .await;
        crate::failpoint::hit("audit-batch-anchored");
        if let Err(e) = &moved {
            tracing::error!(chain = %chain, error = %e, "audit batches committed but the anchor did not move; their requests are answered with an error");
        }
        for batch in batches {
            for (done, answer) in batch.answers {
                let answer = match (&moved, answer) {
                    (Err(e), Ok(())) => Err(AuditError::Batch(format!(
                        "record committed, anchor not updated: {e}"
                    ))),
                    (_, answer) => answer,
                };
                let _ = done.send(answer);
            }
        }
    }
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let (to_anchor, committed) = mpsc::unbounded_channel();
        tokio::spawn(anchor_task(
            self.hsm.clone(),
            self.key,
            self.chain.clone(),
            committed,
        ));
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(job) = queue.recv().await {
            batch.push(job);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit_batch(std::mem::take(&mut batch), &to_anchor)
                .await;
        }
        tracing::info!(chain = %self.chain, "audit writer stopped");
    }

    async fn commit_batch(
        &mut self,
        mut jobs: Vec<Job>,
        to_anchor: &mpsc::UnboundedSender<Committed>,
    ) {
        let (seq0, hash0) = (self.next_seq, self.prev_hash.clone());
        let started = std::time::Instant::now();
        let mut written = self.write(&mut jobs).await;
        if written.is_err()
            && !self.began
            && self.conn.ping().await.is_err()
            && self.reconnect().await
        {
            // Its connection was lost (the database restarted, or dropped
            // it; a busy database answers the ping): no request's change
            // ran yet, so the batch runs again on a new one.
            written = self.write(&mut jobs).await;
        }
        tracing::debug!(
            requests = jobs.len(),
            records = self.next_seq - seq0,
            committed_us = started.elapsed().as_micros(),
            "audit batch"
        );
        metrics::histogram!("brandkms_audit_batch_requests").record(jobs.len() as f64);
        metrics::histogram!("brandkms_audit_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        match written {
            Ok(answers) if self.next_seq > seq0 => {
                let answers = jobs.into_iter().map(|j| j.done).zip(answers).collect();
                let batch = Committed {
                    seq: self.next_seq - 1,
                    hash: self.prev_hash.clone(),
                    answers,
                };
                if let Err(mpsc::error::SendError(batch)) = to_anchor.send(batch) {
                    for (done, _) in batch.answers {
                        let _ = done.send(Err(AuditError::WriterStopped));
                    }
                }
            }
            Ok(answers) => {
                // Nothing appended (every change rolled back): nothing to anchor.
                for (job, answer) in jobs.into_iter().zip(answers) {
                    let _ = job.done.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(chain = %self.chain, error = %e, "audit batch failed");
                self.next_seq = seq0;
                self.prev_hash = hash0;
                self.reload_tail().await;
                for job in jobs {
                    let _ = job.done.send(Err(AuditError::Batch(format!(
                        "the transaction did not commit: {e}"
                    ))));
                }
            }
        }
    }

    /// A new dedicated connection in place of a lost one; whether it worked.
    async fn reconnect(&mut self) -> bool {
        match self.store.dedicated().await {
            Ok(conn) => {
                self.conn = conn;
                tracing::warn!(chain = %self.chain, "audit writer: the database connection was lost; reconnected");
                self.reload_tail().await;
                true
            }
            Err(e) => {
                tracing::error!(chain = %self.chain, error = %e, "audit writer: cannot reconnect to the database");
                false
            }
        }
    }

    /// One transaction for the batch; an answer per job, in order.
    async fn write(&mut self, jobs: &mut [Job]) -> Result<Vec<Result<(), AuditError>>, AuditError> {
        self.began = false;
        let mut tx = match self.backend {
            Backend::Sqlite => self.conn.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.conn.begin().await,
        }
        .map_err(StoreError::from)?;
        self.began = true;
        let mut answers = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        // A savepoint per request that changes something, so that its failure
        // undoes it alone; a request alone in its batch uses the transaction.
        let solo = jobs.len() == 1;
        let mut newest_hash = None;
        for job in jobs.iter_mut() {
            let changes = job.work.is_some() || job.serial || job.event.closes_approval.is_some();
            let applied = if changes && !solo {
                let mut savepoint = Connection::begin(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                let applied = apply(&mut savepoint, job).await;
                match applied {
                    Ok(Applied::Kept(_)) => savepoint.commit().await,
                    _ => savepoint.rollback().await,
                }
                .map_err(StoreError::from)?;
                applied
            } else {
                apply(&mut tx, job).await
            };
            match applied {
                Ok(Applied::Kept(reason)) => {
                    let row = AuditRow {
                        chain: self.chain.clone(),
                        seq: self.next_seq,
                        at: now_ms(),
                        caller: job.event.caller.clone(),
                        cert_fingerprint: job.event.cert_fingerprint.clone(),
                        operation: job.event.operation.clone(),
                        key_alias: job.event.key_alias.clone(),
                        key_version: job.event.key_version,
                        outcome: job.event.outcome.as_str().to_string(),
                        reason,
                        prev_hash: std::mem::take(&mut self.prev_hash),
                        hash: String::new(),
                        mac: None,
                        request_id: job.event.request_id.clone(),
                    };
                    let raw = record_hash(&row, FORMAT);
                    newest_hash = Some(raw);
                    let hash = hex::encode(raw);
                    self.prev_hash = hash.clone();
                    self.next_seq += 1;
                    records.push(AuditRow { hash, ..row });
                    answers.push(Ok(()));
                }
                Ok(Applied::RolledBack) | Err(_) if solo => {
                    tx.rollback().await.map_err(StoreError::from)?;
                    answers.push(applied.map(|_| ()));
                    return Ok(answers);
                }
                Ok(Applied::RolledBack) => answers.push(Ok(())),
                Err(e) => answers.push(Err(e)),
            }
        }
        if let (Some(newest), Some(hash)) = (records.last_mut(), newest_hash) {
            let key = self.key;
            let mac = self.hsm.run(move |s| s.hmac_sha256(&key, &hash)).await?;
            newest.mac = Some(hex::encode(mac));
            rows::insert(&mut tx, &records).await?;
        }
        crate::failpoint::hit("audit-batch-before-commit");
        tx.commit().await.map_err(StoreError::from)?;
        crate::failpoint::hit("audit-batch-committed");
        Ok(answers)
    }

    /// After a failed batch, the chain's end as the database has it (a commit
    /// whose answer was lost may have gone through).
    async fn reload_tail(&mut self) {
        match rows::tail(&mut self.conn, &self.chain).await {
            Ok(Some((seq, hash))) => {
                self.next_seq = seq + 1;
                self.prev_hash = hash;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(chain = %self.chain, error = %e, "cannot read the audit chain's end")
            }
        }
    }
}

/// One request inside its savepoint: the cross-instance lock when asked, the
/// approval it closes, then its change.
async fn apply(conn: &mut Conn, job: &mut Job) -> Result<Applied, AuditError> {
    if job.serial {
        rows::lock_admin(conn).await?;
    }
    let event = &job.event;
    let mut reason = event.reason.clone();
    if let Some(closing) = &event.closes_approval {
        let closed = approvals::decide(
            conn,
            &closing.id,
            approvals::StoredState::Approved,
            &event.caller,
            now_ms(),
            None,
        )
        .await?;
        if !closed {
            return Err(AuditError::ApprovalNotPending(closing.id.clone()));
        }
        let note = format!("approves {} proposed by {}", closing.id, closing.proposer);
        reason = Some(with_note(reason, note));
    }
    if let Some(work) = job.work.take() {
        match AssertUnwindSafe(work(conn)).catch_unwind().await {
            Ok(Some(None)) => {}
            Ok(Some(Some(note))) => reason = Some(with_note(reason, note)),
            Ok(None) => return Ok(Applied::RolledBack),
            Err(_) => {
                tracing::error!(operation = %event.operation, "a change panicked inside the audit batch; rolled back");
                return Err(AuditError::Batch("the change panicked".into()));
            }
        }
    }
    Ok(Applied::Kept(reason))
}

/// A record's reason with `note` after it.
fn with_note(reason: Option<String>, note: String) -> String {
    match reason {
        Some(r) => format!("{r}; {note}"),
        None => note,
    }
}
