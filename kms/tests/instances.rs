//! Several `kms serve` processes on one database and one token, each appending
//! to an audit chain of its own: card sessions move between instances,
//! concurrent officers' changes on both stay consistent, a SIGKILL in the middle
//! of a load loses no acknowledged request, and a crash between the audit
//! writer's steps leaves every chain verifiable. The two-instance tests need
//! PostgreSQL (skipped without it, never under CI); the crash tests run on SQLite
//! and, when it is given, PostgreSQL. Tests of what fails today are ignored,
//! with the reason. A test binary of its own: it opens the development token the
//! processes share.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use brandkms::audit::ANCHOR_APPLICATION;
use brandkms::clock::Clock;
use brandkms::commands::dev::CONFIG_FILE;
use brandkms::config::{ProcessEnv, Settings};
use brandkms::hsm::Hsm;
use brandkms::server::Server;
use brandkms::store::Store;
use brandkms::testing::{self, TestDb};
use brandkms_clients::card::{self, Card, CardKeyEntry};
use brandkms_clients::terminal::TransactionError;
use brandkms_clients::{Client, ClientError, ConnectOptions};
use brandkms_proto::v1 as pb;
use futures_util::future::join_all;

const KMS: &str = env!("CARGO_BIN_EXE_kms");
/// The card-access master of `key-k` (docs/protocol.md's `K_M`), imported so that the
/// simulated cards can be personalised in software.
const KM: &str = "0123456789ABCDEFFEDCBA9876543210";
const SERVICE_K: u16 = 0x0A02;
const SEAL: &str = "CardAuthentication/SealCommand";
const VERIFY: &str = "CardAuthentication/VerifyReceipt";

/// The tests run one at a time: each starts several processes on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One development deployment (token, PKI, config) for the whole binary: a
/// process reads one SoftHSM2 configuration only. Each test initialises a
/// database of its own on it (anchors name their database's audit key, so the
/// databases keep to their own chains).
struct Deployment {
    /// Logs of the processes started.
    root: PathBuf,
    /// The deployment written by `kms init --dev`.
    dir: PathBuf,
}

fn deployment() -> &'static Deployment {
    static DEPLOYMENT: OnceLock<Deployment> = OnceLock::new();
    DEPLOYMENT.get_or_init(|| {
        let base = std::env::temp_dir().join("brandkms-instances-tests");
        sweep(&base);
        let root = base.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dir = root.join("dev");
        init(&dir, None);
        Deployment { root, dir }
    })
}

/// Removes what test processes that have exited left behind (their logs are
/// kept until then).
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !Path::new("/proc").join(&pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `kms init --dev DIR`: the deployment when it is missing, then the database
/// (`url`, or the deployment's own SQLite file) initialised with the officers.
fn init(dir: &Path, url: Option<&str>) {
    let mut cmd = Command::new(KMS);
    cmd.args(["init", "--dev"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .env_remove("SOFTHSM2_CONF")
        .env_remove("OPENSSL_CONF")
        .env_remove("BRANDKMS_FAILPOINT");
    match url {
        Some(url) => cmd.env("BRANDKMS_DATABASE_URL", url),
        None => cmd.env_remove("BRANDKMS_DATABASE_URL"),
    };
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Initialises the test's database on the shared deployment.
fn init_database(db: &TestDb) {
    init(&deployment().dir, Some(&db.settings.url));
}

/// This process's connection to the shared token.
fn token() -> Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| testing::open_deployment_token(&deployment().dir))
        .clone()
}

/// Imports `key-k` with the known master into the test's database (through a
/// service built in this process, so with an audit chain of its own).
async fn import_key_k(db: &TestDb) {
    let mut settings = Settings::load(&deployment().dir.join(CONFIG_FILE), &ProcessEnv).unwrap();
    settings.database = db.settings.clone();
    // SoftHSM2 re-reads the token's objects on a search only when the token's
    // generation moved since this process last looked, and a process that creates
    // an object adopts the new generation without looking: search once before the
    // service below creates its chain's anchor, or the audit key that `kms init`
    // has just made stays invisible to this process.
    token()
        .run(|s| s.list_data(ANCHOR_APPLICATION))
        .await
        .unwrap();
    let server = Server::build_with_hsm(&settings, token(), Clock::default())
        .await
        .unwrap();
    testing::import_card_master(
        server.state(),
        "key-k",
        SERVICE_K,
        &hex::decode(KM).unwrap(),
    )
    .await;
    server.state().store.close().await;
}

/// What a `kms serve` process has said: its port (stdout), the failpoints it
/// reached (stderr), and whether its stdout closed (it exited).
#[derive(Default)]
struct Seen {
    port: Option<u16>,
    failpoints: Vec<String>,
    exited: bool,
}

/// A `kms serve` process on the shared deployment, killed (SIGKILL) when dropped.
struct Kms {
    name: String,
    child: Child,
    log: PathBuf,
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl Kms {
    /// Starts `kms serve` on the database at `url` on a port of its own, with
    /// `failpoint` armed, and waits until it reports itself serving.
    async fn start(name: &str, url: &str, failpoint: Option<&str>) -> Kms {
        let d = deployment();
        let log = d.root.join(format!("{name}.log"));
        let mut cmd = Command::new(KMS);
        cmd.args(["serve", "--config"])
            .arg(d.dir.join(CONFIG_FILE))
            .env("BRANDKMS_DATABASE_URL", url)
            .env("BRANDKMS_LISTEN", "127.0.0.1:0")
            .env("BRANDKMS_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env_remove("SOFTHSM2_CONF")
            .env_remove("OPENSSL_CONF")
            .env_remove("BRANDKMS_FAILPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(f) = failpoint {
            cmd.env("BRANDKMS_FAILPOINT", f);
        }
        let mut child = cmd.spawn().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stdout, out_seen) = (child.stdout.take().unwrap(), Arc::clone(&seen));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("kms listening on ") {
                    let port = addr.trim().parse::<SocketAddr>().map(|a| a.port()).ok();
                    out_seen.lock().unwrap().port = port;
                }
            }
            out_seen.lock().unwrap().exited = true;
        });
        let (stderr, err_seen) = (child.stderr.take().unwrap(), Arc::clone(&seen));
        let mut file = std::fs::File::create(&log).unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                let reached = line
                    .strip_prefix("failpoint ")
                    .and_then(|l| l.strip_suffix(" reached"));
                if let Some(name) = reached {
                    err_seen.lock().unwrap().failpoints.push(name.to_string());
                }
            }
        });
        let mut kms = Kms {
            name: name.to_string(),
            child,
            log,
            port: 0,
            seen,
        };
        kms.port = kms.until("it listens", |s| s.port).await;
        let probe = kms.client("officer-1").await;
        wait_for(&format!("{name} to serve"), || async {
            probe.healthy().await.ok().filter(|h| *h)
        })
        .await;
        kms
    }

    /// Polls what the process said until `check` gives a value; fails when the
    /// process exits first, or after 30 s.
    async fn until<T>(&self, what: &str, check: impl Fn(&Seen) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let exited = {
                let seen = self.seen.lock().unwrap();
                if let Some(v) = check(&seen) {
                    return v;
                }
                seen.exited
            };
            assert!(
                !exited && Instant::now() < deadline,
                "{}: no sign that {what} (exited: {exited}); log {}:\n{}",
                self.name,
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the process announces that it stopped at `failpoint`.
    async fn reached(&self, failpoint: &str) {
        self.until(&format!("failpoint {failpoint} is reached"), |s| {
            s.failpoints.iter().any(|f| f == failpoint).then_some(())
        })
        .await;
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connection as `entity`, with its dev PKI certificate.
    async fn client(&self, entity: &str) -> Client {
        let pki = deployment().dir.join("pki");
        Client::connect(&ConnectOptions {
            endpoint: format!("https://127.0.0.1:{}", self.port),
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{entity}.pem")),
            key: pki.join(format!("{entity}-key.pem")),
            domain: None,
        })
        .await
        .unwrap()
    }

    /// SIGKILL.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Kms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it gives a value; fails after 30 s.
async fn wait_for<T, Fut>(what: &str, check: impl Fn() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh PostgreSQL database, or `None` (the test is skipped; never under CI).
async fn postgres() -> Option<TestDb> {
    let db = testing::postgres_db().await;
    if db.is_none() {
        eprintln!("skipped: {} is not set", testing::PG_URL_ENV);
    }
    db
}

async fn register(officer: &Client, id: &str) -> Result<pb::Entity, ClientError> {
    officer
        .admin()
        .register_entity(pb::RegisterEntityRequest {
            id: id.to_string(),
            kind: pb::EntityKind::Cybershop as i32,
            name: format!("Cybershop {id}"),
            online: false,
            tamper_resistant: false,
        })
        .await
}

async fn hold_tie_up(
    officer: &Client,
    entity: &str,
    alias: &str,
) -> Result<pb::TieUpChange, ClientError> {
    officer
        .admin()
        .create_tie_up(pb::CreateTieUpRequest {
            entity_id: entity.to_string(),
            keys: vec![pb::TieUpKey {
                alias: alias.to_string(),
                mode: pb::TieUpMode::Hold as i32,
            }],
            per_transaction_limit: Some(10_000),
            ..Default::default()
        })
        .await
}

/// A TDES2 card-access key, made through `officer`.
async fn create_card_key(officer: &Client, alias: &str, service_code: u32) {
    officer
        .admin()
        .create_key(pb::CreateKeyRequest {
            alias: alias.to_string(),
            service_code,
            purpose: pb::Purpose::Purchase as i32,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Cybershop K, holding key-k (imported first with [`import_key_k`]).
async fn provision_shop(officer: &Client) {
    register(officer, "cybershop-k").await.unwrap();
    let change = hold_tie_up(officer, "cybershop-k", "key-k").await.unwrap();
    assert!(
        matches!(change.result, Some(pb::tie_up_change::Result::TieUp(_))),
        "{change:?}"
    );
}

/// A card personalised with key-k's diversified key.
fn card(n: u8) -> Card {
    let cid = [0x01, 0x23, 0x45, 0x67, 0x89, 0x01, 0x23, n];
    let kc = card::diversify(&hex::decode(KM).unwrap(), &cid).unwrap();
    Card::personalise(
        cid,
        vec![CardKeyEntry {
            service_code: SERVICE_K,
            version: 1,
            key: hex::encode_upper(kc.as_slice()),
        }],
        100_000,
        100_000,
        "JPY",
    )
}

/// What the service acknowledged: challenge ids and SealCommand transaction ids
/// (upper-case hex, as the audit records name them).
#[derive(Debug, Default)]
struct Acks {
    challenges: Vec<String>,
    txns: Vec<String>,
}

impl Acks {
    fn add(&mut self, other: Acks) {
        self.challenges.extend(other.challenges);
        self.txns.extend(other.txns);
    }
}

/// One whole card transaction (a DEBIT of 1), each step on its own instance:
/// `[begin, complete, seal, verify]`.
struct Purchase {
    session_id: String,
    txn_id: String,
    receipt: pb::ReceiptVerification,
}

async fn purchase(
    on: [&Client; 4],
    card: &mut Card,
    acks: &mut Acks,
) -> Result<Purchase, TransactionError> {
    let [begin_on, complete_on, seal_on, verify_on] = on;
    let ch = begin_on
        .cards()
        .begin_authentication(pb::BeginAuthenticationRequest {
            alias: "key-k".into(),
            key_version: 1,
            card_id: card.cid()?.to_vec(),
        })
        .await?;
    acks.challenges.push(ch.challenge_id.clone());
    let rb: [u8; 8] = ch.rb.as_slice().try_into().unwrap();
    let c1 = card.answer_challenge(SERVICE_K, 1, &rb)?;
    let r = complete_on
        .cards()
        .complete_authentication(pb::CompleteAuthenticationRequest {
            challenge_id: ch.challenge_id,
            c1: c1.to_vec(),
        })
        .await?;
    if !r.authenticated {
        return Err(TransactionError::CardRejected);
    }
    card.accept_service(&r.c2.as_slice().try_into().unwrap())?;
    let sealed = seal_on
        .cards()
        .seal_command(pb::SealCommandRequest {
            session_id: r.session_id.clone(),
            op: pb::CardOp::Debit as i32,
            amount: 1,
            currency: "JPY".into(),
        })
        .await?;
    let txn_id = hex::encode_upper(&sealed.txn_id);
    acks.txns.push(txn_id.clone());
    let (payload, mac) = card.process(sealed.counter, &sealed.payload, &sealed.mac)?;
    let receipt = verify_on
        .cards()
        .verify_receipt(pb::VerifyReceiptRequest {
            session_id: r.session_id.clone(),
            counter: sealed.counter,
            payload: payload.to_vec(),
            mac: mac.to_vec(),
        })
        .await?;
    Ok(Purchase {
        session_id: r.session_id,
        txn_id,
        receipt,
    })
}

/// A genuine OK receipt for the sealed transaction, the card's new balance.
fn assert_genuine(p: &Purchase, balance: u64) {
    let r = &p.receipt;
    assert!(r.genuine, "{r:?}");
    assert_eq!(r.status, pb::ReceiptStatus::Ok as i32, "{r:?}");
    assert_eq!(hex::encode_upper(&r.txn_id), p.txn_id);
    assert_eq!(r.balance, balance);
}

/// An audit record as stored, with the process that wrote its chain.
#[derive(Debug)]
struct Stored {
    chain: String,
    instance: String,
    seq: i64,
    reason: String,
}

/// Every record of `operation`, read from the database.
async fn stored(store: &Store, operation: &str) -> Vec<Stored> {
    let rows: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT r.chain, c.instance, r.seq, r.reason FROM audit_records r \
         JOIN audit_chains c ON c.id = r.chain WHERE r.operation = $1",
    )
    .bind(operation)
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(chain, instance, seq, reason)| Stored {
            chain,
            instance,
            seq,
            reason: reason.unwrap_or_default(),
        })
        .collect()
}

/// The records whose reason contains `needle`.
fn naming<'a>(records: &'a [Stored], needle: &str) -> Vec<&'a Stored> {
    records
        .iter()
        .filter(|r| r.reason.contains(needle))
        .collect()
}

/// `host:pid` names process `pid`.
fn written_by(instance: &str, pid: u32) -> bool {
    instance.rsplit(':').next() == Some(pid.to_string().as_str())
}

/// VerifyAudit through `client`.
async fn verify(client: &Client) -> pb::VerifyAuditResponse {
    client
        .admin()
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
}

/// VerifyAudit through `client`; it must be intact.
async fn verify_intact(client: &Client) -> pb::VerifyAuditResponse {
    let report = verify(client).await;
    assert!(report.intact, "{report:#?}");
    assert!(report.chains.iter().all(|c| c.intact), "{report:#?}");
    report
}

/// The chain process `pid` wrote.
fn chain_of(report: &pb::VerifyAuditResponse, pid: u32) -> &pb::AuditChainReport {
    let mine: Vec<_> = report
        .chains
        .iter()
        .filter(|c| written_by(&c.instance, pid))
        .collect();
    assert_eq!(mine.len(), 1, "one chain of process {pid}: {report:#?}");
    mine[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_sessions_alternate_between_two_instances() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else {
        return;
    };
    let url = db.settings.url.clone();
    init_database(&db);
    import_key_k(&db).await;
    let a = Kms::start("sessions-a", &url, None).await;
    let b = Kms::start("sessions-b", &url, None).await;
    provision_shop(&a.client("officer-1").await).await;
    let (shop_a, shop_b) = (a.client("cybershop-k").await, b.client("cybershop-k").await);

    // Four cards at once; each pays twice, once begun on A and once on B, every
    // step on the other instance than the step before.
    let runs = (0..4u8).map(|n| {
        let (shop_a, shop_b) = (shop_a.clone(), shop_b.clone());
        async move {
            let mut card = card(n);
            let mut acks = Acks::default();
            let mut done = Vec::new();
            for round in 0..2u8 {
                let a_first = (n + round) % 2 == 0;
                let (x, y) = if a_first {
                    (&shop_a, &shop_b)
                } else {
                    (&shop_b, &shop_a)
                };
                let p = purchase([x, y, x, y], &mut card, &mut acks)
                    .await
                    .unwrap_or_else(|e| panic!("card {n} round {round}: {e}"));
                assert_genuine(&p, 100_000 - u64::from(round) - 1);
                assert_eq!(card.balance, p.receipt.balance);
                done.push((a_first, p));
            }
            done
        }
    });
    let done: Vec<(bool, Purchase)> = join_all(runs).await.into_iter().flatten().collect();
    assert_eq!(done.len(), 8);
    assert_eq!(done.iter().filter(|(a_first, _)| *a_first).count(), 4);

    // Each step's record is in the chain of the instance that did it: the seal
    // on the first instance, the receipt's verification on the other.
    let store = Store::connect(&db.settings).await.unwrap();
    let (seals, verifications) = (stored(&store, SEAL).await, stored(&store, VERIFY).await);
    for (a_first, p) in &done {
        let (sealer, verifier) = if *a_first {
            (a.pid(), b.pid())
        } else {
            (b.pid(), a.pid())
        };
        let seal = naming(&seals, &format!("txn {}", p.txn_id));
        assert_eq!(seal.len(), 1, "{seal:?}");
        assert!(written_by(&seal[0].instance, sealer), "{seal:?}");
        let verified = naming(
            &verifications,
            &format!("session {} counter 0", p.session_id),
        );
        assert_eq!(verified.len(), 1, "{verified:?}");
        assert!(written_by(&verified[0].instance, verifier), "{verified:?}");
    }

    // Either instance verifies every chain, and every step's record is within
    // what its chain's anchor vouches for.
    let officer_b = b.client("officer-1").await;
    for officer in [a.client("officer-1").await, officer_b] {
        let report = verify_intact(&officer).await;
        for pid in [a.pid(), b.pid()] {
            assert!(chain_of(&report, pid).records >= 8, "{report:#?}");
        }
        for r in seals.iter().chain(&verifications) {
            let chain = report.chains.iter().find(|c| c.chain == r.chain).unwrap();
            assert!(
                u64::try_from(r.seq).unwrap() <= chain.anchored_seq.unwrap(),
                "{r:?} {chain:?}"
            );
        }
    }
    store.close().await;
}

/// Begins an authentication of card 0 with key-k; the refusal's (code, rule).
async fn begin_refusal(shop: &Client) -> Option<(tonic::Code, Option<String>)> {
    let r = shop
        .cards()
        .begin_authentication(pb::BeginAuthenticationRequest {
            alias: "key-k".into(),
            key_version: 1,
            card_id: card(0).cid().unwrap().to_vec(),
        })
        .await;
    match r {
        Ok(_) => None,
        Err(ClientError::Status { code, reason, .. }) => Some((code, reason)),
        Err(e) => panic!("{e}"),
    }
}

/// Each instance keeps the facts its decisions read (entities, tie-ups, key
/// versions) per admin generation: a change made through one instance must
/// still refuse the very next request on the other, whose cache holds the
/// facts from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_instance_decides_the_next_request_on_the_other() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else {
        return;
    };
    let url = db.settings.url.clone();
    init_database(&db);
    import_key_k(&db).await;
    let a = Kms::start("facts-a", &url, None).await;
    let b = Kms::start("facts-b", &url, None).await;
    let officer = a.client("officer-1").await;
    register(&officer, "cybershop-k").await.unwrap();
    let change = hold_tie_up(&officer, "cybershop-k", "key-k").await.unwrap();
    let Some(pb::tie_up_change::Result::TieUp(tie_up)) = change.result else {
        panic!("{change:?}");
    };
    let shop = b.client("cybershop-k").await;
    // B has decided on these facts (and keeps them) before each change.
    assert_eq!(begin_refusal(&shop).await, None);
    assert_eq!(begin_refusal(&shop).await, None);

    let shop_ref = pb::EntityRef {
        id: "cybershop-k".into(),
    };
    officer
        .admin()
        .suspend_entity(shop_ref.clone())
        .await
        .unwrap();
    assert_eq!(
        begin_refusal(&shop).await,
        Some((
            tonic::Code::PermissionDenied,
            Some("entity_suspended".into())
        ))
    );
    officer.admin().resume_entity(shop_ref).await.unwrap();
    assert_eq!(begin_refusal(&shop).await, None);

    officer
        .admin()
        .terminate_tie_up(pb::TieUpRef { id: tie_up.id })
        .await
        .unwrap();
    let (code, rule) = begin_refusal(&shop)
        .await
        .expect("refused after termination");
    assert_eq!(code, tonic::Code::PermissionDenied, "{rule:?}");
    assert!(rule.is_some(), "a denial names its rule");

    // And the other way: a tie-up made through B is used at once through A.
    let officer_b = b.client("officer-1").await;
    hold_tie_up(&officer_b, "cybershop-k", "key-k")
        .await
        .unwrap();
    assert_eq!(begin_refusal(&a.client("cybershop-k").await).await, None);
    assert_eq!(begin_refusal(&shop).await, None);
}

/// The key's versions: (version, state).
async fn versions(officer: &Client, alias: &str) -> Vec<(u32, i32)> {
    let key = officer
        .admin()
        .get_key(pb::GetKeyRequest {
            alias: alias.to_string(),
        })
        .await
        .unwrap();
    key.versions.iter().map(|v| (v.version, v.state)).collect()
}

fn active(versions: &[(u32, i32)]) -> Vec<u32> {
    versions
        .iter()
        .filter(|(_, s)| *s == pb::KeyState::Active as i32)
        .map(|(v, _)| *v)
        .collect()
}

async fn set_state(
    officer: &Client,
    alias: &str,
    version: u32,
    state: pb::KeyState,
) -> Result<pb::Key, ClientError> {
    officer
        .admin()
        .set_key_version_state(pb::SetKeyVersionStateRequest {
            alias: alias.to_string(),
            version,
            state: state as i32,
        })
        .await
}

/// Exactly one of the results is a success.
fn one_wins<T: std::fmt::Debug>(what: &str, results: &[Result<T, ClientError>]) {
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{what}: {results:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_officers_on_two_instances_keep_the_state_consistent() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else {
        return;
    };
    let url = db.settings.url.clone();
    init_database(&db);
    let a = Kms::start("admin-a", &url, None).await;
    let b = Kms::start("admin-b", &url, None).await;
    let (o1a, o1b) = (a.client("officer-1").await, b.client("officer-1").await);
    let (o2a, o2b) = (a.client("officer-2").await, b.client("officer-2").await);
    // Both chains are there, anchored, before anything happens. (This first look at
    // the token also lets A see B's anchor before A makes a key itself: see
    // SOFTHSM_GENERATION.)
    for officer in [&o1a, &o1b] {
        let report = verify_intact(officer).await;
        for pid in [a.pid(), b.pid()] {
            let chain = chain_of(&report, pid);
            assert_eq!(chain.anchored_seq, Some(chain.records), "{report:#?}");
        }
    }
    create_card_key(&o1a, "key-r", 0x0B01).await;

    // Registrations at once on both: distinct ids all succeed; an id sent to both
    // instances at the same moment is registered once.
    let mut calls = Vec::new();
    for i in 0..12 {
        calls.push((format!("shop-a-{i}"), &o1a));
        calls.push((format!("shop-b-{i}"), &o1b));
    }
    for i in 0..6 {
        calls.push((format!("both-{i}"), &o1a));
        calls.push((format!("both-{i}"), &o1b));
    }
    let results = join_all(
        calls
            .iter()
            .map(|(id, o)| async move { (id.clone(), register(o, id).await) }),
    )
    .await;
    let mut by_id: HashMap<String, Vec<Result<pb::Entity, ClientError>>> = HashMap::new();
    for (id, r) in results {
        by_id.entry(id).or_default().push(r);
    }
    for (id, rs) in &by_id {
        one_wins(id, rs);
        for r in rs {
            if let Err(e) = r {
                assert_eq!(e.code(), Some(tonic::Code::AlreadyExists), "{id}: {e}");
            }
        }
    }
    let entities = o1b
        .admin()
        .list_entities_all(pb::ListEntitiesRequest::default())
        .await
        .unwrap();
    let shops: Vec<&str> = entities
        .iter()
        .map(|e| e.id.as_str())
        .filter(|id| by_id.contains_key(*id))
        .collect();
    assert_eq!(shops.len(), 30, "each registered once: {shops:?}");
    assert_eq!(shops.iter().collect::<HashSet<_>>().len(), 30);

    // A tie-up for every shop, alternately through A and B, all at once.
    let mut ids: Vec<&String> = by_id.keys().collect();
    ids.sort();
    let tie_ups = join_all(ids.iter().enumerate().map(|(i, id)| {
        let o = if i % 2 == 0 { &o1a } else { &o1b };
        hold_tie_up(o, id, "key-r")
    }))
    .await;
    for t in &tie_ups {
        let change = t.as_ref().unwrap();
        assert!(
            matches!(change.result, Some(pb::tie_up_change::Result::TieUp(_))),
            "{change:?}"
        );
    }
    let listed = o1a
        .admin()
        .list_tie_ups_all(pb::ListTieUpsRequest::default())
        .await
        .unwrap();
    for id in &ids {
        let theirs = listed.iter().filter(|t| &&t.entity_id == id).count();
        assert_eq!(theirs, 1, "{id}: {listed:#?}");
    }

    // Rotations under dual control: officer 1 proposes four at once on both
    // instances; officer 2 approves each through both instances at the same
    // moment: each runs exactly once.
    let proposals = join_all((0..4).map(|i| {
        let o = if i % 2 == 0 { &o1a } else { &o1b };
        async move {
            o.admin()
                .rotate_key(pb::RotateKeyRequest {
                    alias: "key-r".into(),
                })
                .await
                .unwrap()
        }
    }))
    .await;
    let approvals: Vec<String> = proposals
        .into_iter()
        .map(|change| match change.result {
            Some(pb::key_change::Result::Pending(ap)) => ap.id,
            other => panic!("rotation not held for a second officer: {other:?}"),
        })
        .collect();
    for id in &approvals {
        let both =
            join_all([&o2a, &o2b].map(|o| async move {
                o.admin().approve(pb::ApprovalRef { id: id.clone() }).await
            }))
            .await;
        one_wins(id, &both);
    }
    let after_rotations = versions(&o1a, "key-r").await;
    let mut numbers: Vec<u32> = after_rotations.iter().map(|(v, _)| *v).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2, 3, 4, 5], "{after_rotations:?}");
    assert_eq!(active(&after_rotations), [5], "{after_rotations:?}");

    // State changes racing on both instances: demoting the active version, then
    // activating one of two other versions; each time exactly one succeeds and
    // one version is active at the end.
    for round in 0..4u32 {
        let demoted =
            join_all([&o1a, &o1b].map(|o| set_state(o, "key-r", 0, pb::KeyState::AuthOnly))).await;
        one_wins("demote the active version", &demoted);
        assert!(active(&versions(&o1b, "key-r").await).is_empty());
        let (x, y) = (1 + round % 5, 1 + (round + 2) % 5);
        let activated = join_all(
            [(&o1a, x), (&o1b, y)].map(|(o, v)| set_state(o, "key-r", v, pb::KeyState::Active)),
        )
        .await;
        one_wins("activate a version", &activated);
        let now = versions(&o1a, "key-r").await;
        assert_eq!(active(&now).len(), 1, "round {round}: {now:?}");
    }

    // Every key (internal ones too) has exactly one active version.
    let keys = o1b
        .admin()
        .list_keys_all(pb::ListKeysRequest::default())
        .await
        .unwrap();
    assert!(keys.len() >= 3, "{keys:#?}");
    for k in &keys {
        let states: Vec<(u32, i32)> = k.versions.iter().map(|v| (v.version, v.state)).collect();
        assert_eq!(active(&states).len(), 1, "{}: {states:?}", k.alias);
    }

    // The trail verifies through either instance; both instances wrote to
    // chains of their own.
    for officer in [&o2a, &o2b] {
        let report = verify_intact(officer).await;
        assert!(report.chains.len() >= 2, "{report:#?}");
        for pid in [a.pid(), b.pid()] {
            assert!(chain_of(&report, pid).records >= 20, "{report:#?}");
        }
    }
}

/// Why the two tests below are ignored: they fail today.
const SOFTHSM_GENERATION: &str = "on SoftHSM2 2.6.1 a process that creates a token object \
     adopts the token's new generation without re-reading the token (Generation::commit), so \
     objects other processes created since its last search stay invisible to it";

#[ignore = "fails on SoftHSM2 2.6.1: see SOFTHSM_GENERATION"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_one_instance_is_usable_on_the_other_after_that_made_a_key_too() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else {
        return;
    };
    eprintln!("known failure: {SOFTHSM_GENERATION}");
    let url = db.settings.url.clone();
    init_database(&db);
    let a = Kms::start("new-key-a", &url, None).await;
    let b = Kms::start("new-key-b", &url, None).await;
    let (o1a, o1b) = (a.client("officer-1").await, b.client("officer-1").await);
    create_card_key(&o1a, "key-x", 0x0C01).await;
    // B makes a token object of its own before it next looks for one.
    create_card_key(&o1b, "key-y", 0x0C02).await;
    register(&o1a, "cybershop-k").await.unwrap();
    hold_tie_up(&o1a, "cybershop-k", "key-x").await.unwrap();

    // Completing on B derives the card key from key-x's master in the token:
    // a wrong C1 is refused as such. (Today: Internal, B's log saying "hsm: no
    // token object has CKA_ID <key-x v1's>"; without B's own CreateKey it works.)
    let shop = b.client("cybershop-k").await;
    let ch = shop
        .cards()
        .begin_authentication(pb::BeginAuthenticationRequest {
            alias: "key-x".into(),
            key_version: 1,
            card_id: vec![1; 8],
        })
        .await
        .unwrap();
    let completed = shop
        .cards()
        .complete_authentication(pb::CompleteAuthenticationRequest {
            challenge_id: ch.challenge_id,
            c1: vec![0; 16],
        })
        .await;
    match completed {
        Ok(r) => assert!(!r.authenticated, "{r:?}"),
        Err(e) => panic!("{e} (log {})", b.log.display()),
    }
}

#[ignore = "fails on SoftHSM2 2.6.1: see SOFTHSM_GENERATION"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_audit_sees_the_anchor_of_an_instance_started_later_after_making_a_key() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else {
        return;
    };
    eprintln!("known failure: {SOFTHSM_GENERATION}");
    let url = db.settings.url.clone();
    init_database(&db);
    let a = Kms::start("anchors-a", &url, None).await;
    let b = Kms::start("anchors-b", &url, None).await;
    let officer = a.client("officer-1").await;
    // A makes a token object after B created its chain's anchor, before A next
    // looks at the token.
    create_card_key(&officer, "key-x", 0x0C01).await;

    // (Today: intact, since B's records verify by their hashes and MACs, but
    // A does not see B's anchor, so B's newest records are not vouched for
    // through A.)
    let report = verify_intact(&officer).await;
    assert_eq!(chain_of(&report, b.pid()).anchored_seq, Some(0));
}

const BEGIN: &str = "CardAuthentication/BeginAuthentication";

/// Why each chain has two anchor objects: on SoftHSM2 2.6.1 a SIGKILL while the
/// token rewrites an anchor (C_SetAttributeValue on its data object) can leave
/// the object's file empty (ObjectFile::store truncates the file, then writes it
/// through a buffered stream); the writer moves the two in turn, so the other
/// survives, one batch behind.
const SOFTHSM_TORN_ANCHOR: &str = "a SIGKILL during an anchor's rewrite can empty its object file";

/// Every chain is intact, and the chain of `killed` is still anchored (its
/// other anchor object survives a torn rewrite: SOFTHSM_TORN_ANCHOR). Returns
/// false (no torn anchor) for the callers' bookkeeping.
fn intact_but_for_a_torn_anchor(report: &pb::VerifyAuditResponse, killed: u32) -> bool {
    for c in &report.chains {
        assert!(c.intact, "{c:?} in {report:#?}");
    }
    assert!(report.intact, "{report:#?}");
    let c = chain_of(report, killed);
    assert!(
        c.records == 0 || c.anchored_seq.is_some(),
        "the killed process {killed}'s chain lost both anchors ({SOFTHSM_TORN_ANCHOR}): {c:?}"
    );
    false
}

/// A worker's closed loop of purchases on one instance until `stop`; its
/// acknowledgements go to `acks`. An error ends it: an error while `dying` is not
/// set is returned.
async fn worker(
    client: Client,
    mut card: Card,
    stop: Arc<AtomicBool>,
    dying: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    acks: Arc<Mutex<Acks>>,
) -> Result<(), String> {
    while !stop.load(Ordering::SeqCst) {
        let mut mine = Acks::default();
        let result = purchase([&client; 4], &mut card, &mut mine).await;
        acks.lock().unwrap().add(mine);
        match result {
            Ok(p) => {
                assert_genuine(&p, card.balance);
                done.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) if dying.load(Ordering::SeqCst) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Workers on one instance.
struct Load {
    done: Arc<AtomicU64>,
    dying: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Load {
    async fn start(
        kms: &Kms,
        first_card: u8,
        stop: &Arc<AtomicBool>,
        acks: &Arc<Mutex<Acks>>,
    ) -> Load {
        let (done, dying) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut tasks = Vec::new();
        for n in first_card..first_card + 3 {
            tasks.push(tokio::spawn(worker(
                kms.client("cybershop-k").await,
                card(n),
                Arc::clone(stop),
                Arc::clone(&dying),
                Arc::clone(&done),
                Arc::clone(acks),
            )));
        }
        Load { done, dying, tasks }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    async fn reaches(&self, what: &str, n: u64) {
        wait_for(what, || async { (self.done() >= n).then_some(()) }).await;
    }

    /// Waits for the workers: none failed (but by their instance's death).
    async fn finish(self) -> u64 {
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
        self.done.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_load_loses_no_acknowledged_request() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else {
        return;
    };
    let url = db.settings.url.clone();
    init_database(&db);
    import_key_k(&db).await;
    let mut a = Kms::start("load-a", &url, None).await;
    let b = Kms::start("load-b", &url, None).await;
    provision_shop(&b.client("officer-1").await).await;
    let (stop, acks) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Acks::default())),
    );
    let on_a = Load::start(&a, 10, &stop, &acks).await;
    let on_b = Load::start(&b, 20, &stop, &acks).await;
    on_a.reaches("transactions on A", 10).await;
    on_b.reaches("transactions on B", 10).await;

    // SIGKILL A with requests in flight; B carries on.
    let killed_pid = a.pid();
    on_a.dying.store(true, Ordering::SeqCst);
    a.kill();
    let on_b_at_kill = on_b.done();
    let on_a_total = on_a.finish().await;
    on_b.reaches("B to keep serving", on_b_at_kill + 15).await;

    // A again: a new process, a new chain.
    let a2 = Kms::start("load-a2", &url, None).await;
    let on_a2 = Load::start(&a2, 30, &stop, &acks).await;
    on_a2.reaches("transactions on the restarted A", 10).await;
    stop.store(true, Ordering::SeqCst);
    let (on_b_total, on_a2_total) = (on_b.finish().await, on_a2.finish().await);
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    eprintln!(
        "whole transactions: A {on_a_total} (killed), B {on_b_total} ({on_b_at_kill} before the kill), A again {on_a2_total}; acknowledged: {} challenges, {} sealed commands",
        acks.challenges.len(),
        acks.txns.len()
    );

    // Every acknowledged challenge and sealed command has its record, anchored
    // in its chain (an answer comes only after the anchor moved).
    let officer = b.client("officer-1").await;
    let report = verify(&officer).await;
    let torn = intact_but_for_a_torn_anchor(&report, killed_pid);
    let killed = chain_of(&report, killed_pid);
    assert!(killed.records > 0, "{killed:?}");
    if !torn {
        assert!(killed.anchored_seq.unwrap() <= killed.records, "{killed:?}");
    }
    let anchored: HashMap<&str, u64> = report
        .chains
        .iter()
        .filter_map(|c| Some((c.chain.as_str(), c.anchored_seq?)))
        .collect();
    assert!(chain_of(&report, b.pid()).records > 0);
    assert!(chain_of(&report, a2.pid()).records > 0);
    let store = Store::connect(&db.settings).await.unwrap();
    let (seals, begins) = (stored(&store, SEAL).await, stored(&store, BEGIN).await);
    for (records, needles) in [
        (
            &seals,
            acks.txns
                .iter()
                .map(|t| format!("txn {t}"))
                .collect::<Vec<_>>(),
        ),
        (
            &begins,
            acks.challenges
                .iter()
                .map(|c| format!("challenge {c}"))
                .collect(),
        ),
    ] {
        for needle in needles {
            let found = naming(records, &needle);
            assert_eq!(found.len(), 1, "acknowledged {needle}: {found:?}");
            let r = found[0];
            match anchored.get(r.chain.as_str()) {
                Some(&seq) => assert!(
                    u64::try_from(r.seq).unwrap() <= seq,
                    "acknowledged beyond its chain's anchor: {r:?} {report:#?}"
                ),
                None => assert!(torn && r.chain == killed.chain, "{r:?} {report:#?}"),
            }
        }
    }
    let by_killed = seals
        .iter()
        .filter(|r| written_by(&r.instance, killed_pid))
        .count();
    eprintln!(
        "sealed commands recorded by the killed process: {by_killed}; its chain: {} records, anchored at {:?}",
        killed.records, killed.anchored_seq
    );
    let again = verify(&a2.client("officer-1").await).await;
    assert_eq!(intact_but_for_a_torn_anchor(&again, killed_pid), torn);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_the_anchor_moves_leaves_the_chain_verifiable() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else {
        return;
    };
    let url = db.settings.url.clone();
    init_database(&db);
    import_key_k(&db).await;
    let b = Kms::start("torn-b", &url, None).await;
    let officer = b.client("officer-1").await;
    provision_shop(&officer).await;
    let (stop, acks) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Acks::default())),
    );
    // Six workers on B throughout; each round, three on a new process A (an
    // anchor move after every batch, the processes competing for the cores),
    // SIGKILL A, and VerifyAudit through B. A kill lands inside the anchor's
    // rewrite once in a few rounds.
    let on_b = [
        Load::start(&b, 200, &stop, &acks).await,
        Load::start(&b, 210, &stop, &acks).await,
    ];
    for round in 0..20u8 {
        let mut a = Kms::start(&format!("torn-a{round}"), &url, None).await;
        let load = Load::start(&a, 5 * round, &stop, &acks).await;
        load.reaches("transactions on A", 5).await;
        load.dying.store(true, Ordering::SeqCst);
        a.kill();
        load.finish().await;
        let report = verify(&officer).await;
        let killed = chain_of(&report, a.pid());
        assert!(
            report.intact && killed.anchored_seq.is_some(),
            "round {round}: the chain of the killed process {}: {killed:#?}",
            a.pid(),
        );
    }
    stop.store(true, Ordering::SeqCst);
    for load in on_b {
        load.finish().await;
    }
}

const REGISTER: &str = "Admin/RegisterEntity";

/// A RegisterEntity that changes the state and blocks in the audit batch at
/// `failpoint`; the process is SIGKILLed there and started again.
async fn crash_at(failpoint: &str, db: &TestDb) {
    let url = db.settings.url.clone();
    init_database(db);
    let name = format!("{failpoint}-{}", db.backend);

    // Acknowledged before the crash (by an earlier process, itself killed).
    let mut first = Kms::start(&format!("{name}-1"), &url, None).await;
    register(&first.client("officer-1").await, "before")
        .await
        .unwrap();
    first.kill();

    let mut crashing = Kms::start(&format!("{name}-2"), &url, Some(failpoint)).await;
    let officer = crashing.client("officer-1").await;
    let blocked = tokio::spawn(async move { register(&officer, "blocked").await });
    crashing.reached(failpoint).await;
    assert!(!blocked.is_finished(), "answered at {failpoint}");
    crashing.kill();
    let answer = tokio::time::timeout(Duration::from_secs(30), blocked)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.is_err(), "{answer:?}");

    let again = Kms::start(&format!("{name}-3"), &url, None).await;
    let officer = again.client("officer-1").await;
    register(&officer, "after").await.unwrap();
    let entities: Vec<String> = officer
        .admin()
        .list_entities_all(pb::ListEntitiesRequest::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let committed = failpoint != "audit-batch-before-commit";
    assert!(entities.iter().any(|e| e == "before"), "{entities:?}");
    assert!(entities.iter().any(|e| e == "after"), "{entities:?}");
    assert_eq!(
        entities.iter().any(|e| e == "blocked"),
        committed,
        "{entities:?}"
    );

    // The records: the acknowledged one, and the blocked one exactly when its
    // change committed; with the blocked change in the crashed chain.
    let store = Store::connect(&db.settings).await.unwrap();
    let registrations = stored(&store, REGISTER).await;
    let before = naming(&registrations, "entity before ");
    assert_eq!(before.len(), 1, "{registrations:?}");
    assert!(written_by(&before[0].instance, first.pid()));
    let blocked = naming(&registrations, "entity blocked ");
    assert_eq!(blocked.len(), usize::from(committed), "{registrations:?}");
    if let Some(r) = blocked.first() {
        assert!(written_by(&r.instance, crashing.pid()), "{r:?}");
    }
    store.close().await;

    // Every chain verifies, the crashed one too, its anchor lagging by the
    // unacknowledged batch when the crash came between commit and anchor.
    let report = verify_intact(&officer).await;
    let crashed = chain_of(&report, crashing.pid());
    let (records, anchored) = match failpoint {
        "audit-batch-before-commit" => (0, 0),
        "audit-batch-committed" => (1, 0),
        _ => (1, 1),
    };
    assert_eq!(
        (crashed.records, crashed.anchored_seq),
        (records, Some(anchored)),
        "{report:#?}"
    );
    let first_chain = chain_of(&report, first.pid());
    assert_eq!(first_chain.anchored_seq, Some(first_chain.records));
    assert!(chain_of(&report, again.pid()).records >= 1, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_batch_commits_loses_only_the_unanswered_change() {
    let _serial = SERIAL.lock().await;
    for db in testing::databases().await {
        crash_at("audit-batch-before-commit", &db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_anchor_leaves_a_lagging_anchor_that_verifies() {
    let _serial = SERIAL.lock().await;
    for db in testing::databases().await {
        crash_at("audit-batch-committed", &db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_anchor_moved_keeps_the_unanswered_change() {
    let _serial = SERIAL.lock().await;
    for db in testing::databases().await {
        crash_at("audit-batch-anchored", &db).await;
    }
}
