//! Helpers for the end-to-end tests: a real `kms` server (real SoftHSM2 token,
//! SQLite or PostgreSQL, mTLS with certificates generated for the run) on a
//! pre-bound port-0 listener, driven through the public SDK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brandkms::clock::Clock;
use brandkms::commands::init::{self, OfficerSeed};
use brandkms::config::{ServiceSettings, Settings, TlsSettings};
use brandkms::ops::Shared;
use brandkms::server::Server;
use brandkms::store::Store;
use brandkms::testing::{self, TestDb};
use brandkms_clients::{Client, ConnectOptions};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A running server for one test.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its Prometheus endpoint listens.
    pub metrics_addr: SocketAddr,
    /// The PKI directory (`ca.pem`, `<entity>.pem`, `<entity>-key.pem`, and a
    /// foreign CA's `foreign-<entity>.pem`).
    pub pki: PathBuf,
    /// Its shared state (clock, store).
    pub state: Shared,
    /// Which database.
    pub backend: &'static str,
    settings: Settings,
    _db: TestDb,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestServer({}, {})", self.addr, self.backend)
    }
}

/// The officers every test server starts with.
pub const OFFICERS: &[&str] = &["officer-1", "officer-2"];

impl TestServer {
    /// Starts a server on `db`, initialised with [`OFFICERS`], and waits until it
    /// reports itself healthy. Dual control is off, so that tests of other
    /// features act with one officer; `tests/tests/dual_control.rs` runs with the
    /// production default (every sensitive operation held).
    pub async fn start(db: TestDb) -> TestServer {
        Self::start_with(db, Self::single_officer()).await
    }

    /// The default timings with dual control off.
    pub fn single_officer() -> ServiceSettings {
        ServiceSettings {
            dual_control: Vec::new(),
            ..ServiceSettings::default()
        }
    }

    /// As [`TestServer::start`], with other timings.
    pub async fn start_with(db: TestDb, service: ServiceSettings) -> TestServer {
        Self::start_configured(db, service, |_, _| {}).await
    }

    /// As [`TestServer::start_with`]; `tls` may change the TLS settings once the
    /// PKI directory (its first argument) is written.
    pub async fn start_configured(
        db: TestDb,
        service: ServiceSettings,
        tls: impl FnOnce(&Path, &mut TlsSettings),
    ) -> TestServer {
        if std::env::var_os("BRANDKMS_TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        brandkms::commands::dev::write_pki(&pki).unwrap();
        write_foreign_pki(&pki);
        let token = testing::token();
        let mut tls_settings = TlsSettings {
            ca: pki.join("ca.pem"),
            cert: pki.join("server.pem"),
            key: pki.join("server-key.pem"),
            crl: None,
        };
        tls(&pki, &mut tls_settings);
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            hsm: token.params(),
            module_env: Vec::new(),
            database: db.settings.clone(),
            tls: Some(tls_settings),
            service,
        };
        let hsm = testing::hsm();
        let store = Store::connect(&settings.database).await.unwrap();
        let seeds: Vec<OfficerSeed> = OFFICERS
            .iter()
            .map(|id| OfficerSeed {
                id: id.to_string(),
                name: format!("officer {id}"),
            })
            .collect();
        init::run(
            &hsm,
            &store,
            "local:test",
            &seeds,
            &settings.service.dual_control,
        )
        .await
        .unwrap();
        store.close().await;
        Self::serve(db, dir, pki, settings).await
    }

    /// Starts serving an initialised deployment.
    async fn serve(db: TestDb, dir: tempfile::TempDir, pki: PathBuf, settings: Settings) -> Self {
        let backend = db.backend;
        let server = Server::build_with_hsm(&settings, testing::hsm(), Clock::default())
            .await
            .unwrap();
        let state = server.state().clone();
        let metrics_addr = server.metrics_addr().expect("test servers serve metrics");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let s = TestServer {
            addr,
            metrics_addr,
            pki,
            state,
            backend,
            settings,
            _db: db,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        };
        s.wait_healthy().await;
        s
    }

    /// Stops this server and starts another on the same database, token and
    /// PKI (not initialised again) with the service settings `service`, as an
    /// instance started with another configuration would be.
    pub async fn restart_with(mut self, service: ServiceSettings) -> TestServer {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let settings = Settings {
            service,
            ..self.settings.clone()
        };
        let (db, dir, pki) = (self._db, self._dir, self.pki);
        Self::serve(db, dir, pki, settings).await
    }

    async fn wait_healthy(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(c) = Client::connect(&self.options("officer-1")).await
                && c.healthy().await.unwrap_or(false)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connection options as `entity`, with the brand PKI.
    pub fn options(&self, entity: &str) -> ConnectOptions {
        ConnectOptions {
            endpoint: format!("https://{}", self.addr),
            ca: self.pki.join("ca.pem"),
            cert: self.pki.join(format!("{entity}.pem")),
            key: self.pki.join(format!("{entity}-key.pem")),
            domain: Some("localhost".to_string()),
        }
    }

    /// A client connected as `entity`.
    pub async fn client(&self, entity: &str) -> Client {
        Client::connect(&self.options(entity)).await.unwrap()
    }

    /// The database URL (a second server process can share it).
    pub fn database_url(&self) -> &str {
        &self.settings.database.url
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// A CA that is not the brand's, and a client certificate from it that claims to
/// be `officer-1`: `foreign-officer-1.pem` / `foreign-officer-1-key.pem`.
fn write_foreign_pki(pki: &Path) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "not the brand CA");
    let issuer = Issuer::new(params, key);
    let (cert, key) = brandkms::commands::dev::client_certificate("officer-1", &issuer).unwrap();
    std::fs::write(pki.join("foreign-officer-1.pem"), cert).unwrap();
    std::fs::write(pki.join("foreign-officer-1-key.pem"), key).unwrap();
}

/// Runs `f` against a fresh server on every test database (SQLite, and
/// PostgreSQL when configured).
pub async fn on_each_database<F, Fut>(f: F)
where
    F: Fn(TestServer) -> Fut,
    Fut: std::future::Future<Output = TestServer>,
{
    for db in testing::databases().await {
        let server = TestServer::start(db).await;
        let server = f(server).await;
        server.stop().await;
    }
}

/// The gRPC code and message of a call that must fail.
pub fn status_of<T: std::fmt::Debug>(
    r: Result<T, brandkms_clients::ClientError>,
) -> (tonic::Code, String) {
    match r {
        Err(brandkms_clients::ClientError::Status { code, message, .. }) => (code, message),
        other => panic!("expected a status, got {other:?}"),
    }
}

/// The policy rule code (`google.rpc.ErrorInfo` reason) of a call that must be
/// refused by the policy, with its gRPC code.
pub fn refusal_of<T: std::fmt::Debug>(
    r: Result<T, brandkms_clients::ClientError>,
) -> (tonic::Code, String) {
    match r {
        Err(e @ brandkms_clients::ClientError::Status { .. }) => {
            let reason = e.reason().map(str::to_string);
            (e.code().unwrap(), reason.unwrap_or_default())
        }
        other => panic!("expected a status, got {other:?}"),
    }
}

/// Every audit record, oldest first, optionally of one operation.
pub async fn audit_records(
    officer: &Client,
    operation: &str,
) -> Vec<brandkms_proto::v1::AuditRecord> {
    let mut records = officer
        .admin()
        .list_audit_all(brandkms_proto::v1::ListAuditRequest {
            operation: operation.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    records.reverse();
    records
}

/// Registers an entity (offline, not tamper-resistant) as `officer`.
pub async fn register(officer: &Client, id: &str, kind: brandkms_proto::v1::EntityKind) {
    officer
        .admin()
        .register_entity(brandkms_proto::v1::RegisterEntityRequest {
            id: id.into(),
            kind: kind as i32,
            name: id.into(),
            online: false,
            tamper_resistant: false,
        })
        .await
        .unwrap();
}

/// Records a one-key tie-up as `officer`; it must run (dual control off).
pub async fn tie_up(
    officer: &Client,
    entity: &str,
    alias: &str,
    mode: brandkms_proto::v1::TieUpMode,
    limit: Option<u64>,
) {
    officer
        .admin()
        .create_tie_up(brandkms_proto::v1::CreateTieUpRequest {
            entity_id: entity.into(),
            keys: vec![brandkms_proto::v1::TieUpKey {
                alias: alias.into(),
                mode: mode as i32,
            }],
            per_transaction_limit: limit,
            ..Default::default()
        })
        .await
        .unwrap()
        .done()
        .unwrap();
}

/// A participant's RSA key pair in the test token (standing for the
/// participant's own): the private half's id and the SPKI DER.
pub async fn participant_rsa(s: &TestServer, bits: u64) -> (brandkms::hsm::ObjectId, Vec<u8>) {
    use rsa::pkcs8::EncodePublicKey;
    let (private, n, e) = s
        .state
        .hsm
        .run(move |h| h.generate_rsa_for_tests(bits))
        .await
        .unwrap();
    let public = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    )
    .unwrap();
    (
        private,
        public.to_public_key_der().unwrap().as_bytes().to_vec(),
    )
}

/// The key ceremony through `officer`: `entity`'s RSA public key `spki` (DER)
/// marked trusted with the test token's SO PIN; the `trusted.<entity>` key.
pub async fn trust_key(officer: &Client, entity: &str, spki: Vec<u8>) -> brandkms_proto::v1::Key {
    use sha2::Digest;
    officer
        .admin()
        .trust_participant_key(brandkms_proto::v1::TrustParticipantKeyRequest {
            entity_id: entity.into(),
            fingerprint_sha256: hex::encode(sha2::Sha256::digest(&spki)),
            spki_der: spki,
            so_pin: brandkms::testing::TEST_SO_PIN.into(),
        })
        .await
        .unwrap()
}

/// A second `kms serve` process on a test server's database and token (the
/// binary cargo builds for the workspace's tests), killed when dropped.
#[derive(Debug)]
pub struct ServeProcess {
    child: std::process::Child,
    /// Where it listens.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `kms` binary next to the test binaries (`bash tests/run.sh` or
/// `cargo build -p brandkms` builds it).
pub fn kms_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let kms = exe.parent().unwrap().parent().unwrap().join("kms");
    assert!(
        kms.exists(),
        "{} is missing: run the whole workspace's tests (bash tests/run.sh) or cargo build -p brandkms",
        kms.display()
    );
    kms
}

impl TestServer {
    /// Writes `dir/kms.toml` for a `kms` process on this server's database and
    /// token (and PKI), listening on `port`; the PIN comes from `BRANDKMS_PIN`.
    pub fn write_config(&self, dir: &Path, port: u16) -> PathBuf {
        let token = testing::token();
        let config = dir.join("kms.toml");
        let env: String = token
            .child_env()
            .iter()
            .map(|(k, v)| format!("{k} = \"{}\"\n", v.display()))
            .collect();
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\n[hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\nsessions = 2\n[hsm.env]\n{env}[database]\nurl = \"{}\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                token.env.module.display(),
                testing::TEST_TOKEN_LABEL,
                self.database_url(),
                self.pki.join("ca.pem").display(),
                self.pki.join("server.pem").display(),
                self.pki.join("server-key.pem").display(),
            ),
        )
        .unwrap();
        config
    }

    /// Starts another `kms serve` process on this server's database and token
    /// and returns it with a client of `entity` connected to it, once healthy.
    pub async fn second_process(&self, entity: &str) -> (ServeProcess, Client) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let config = self.write_config(dir.path(), port);
        let child = std::process::Command::new(kms_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("BRANDKMS_PIN", testing::TEST_PIN)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let process = ServeProcess {
            child,
            port,
            _dir: dir,
        };
        let options = ConnectOptions {
            endpoint: format!("https://127.0.0.1:{port}"),
            ..self.options(entity)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = Client::connect(&options).await
                && c.healthy().await.unwrap_or(false)
            {
                return (process, c);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second kms never served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// docs/protocol.md's two-key card-access master `K_M`, its KCV and the card id of
/// its vectors.
pub const PROTOCOL_KM: &str = "0123456789ABCDEFFEDCBA9876543210";
/// `K_M`'s check value.
pub const PROTOCOL_KM_KCV: &str = "08D7B4";
/// The card id of docs/protocol.md's vectors.
pub const PROTOCOL_CID: &str = "0123456789012345";

/// A card personalised from `master` outside the service (its key version 1
/// for `service_code`), with `balance` JPY.
pub fn card_with(
    master: &[u8],
    service_code: u16,
    cid: [u8; 8],
    balance: u64,
) -> brandkms_clients::card::Card {
    use brandkms_clients::card::{self, Card, CardKeyEntry};
    let kc = card::diversify(master, &cid).unwrap();
    Card::personalise(
        cid,
        vec![CardKeyEntry {
            service_code,
            version: 1,
            key: hex::encode_upper(kc.as_slice()),
        }],
        balance,
        100_000,
        "JPY",
    )
}

/// A card personalised from `K_M` (docs/protocol.md's card id), with 5,000 JPY.
pub fn protocol_card(service_code: u16) -> brandkms_clients::card::Card {
    let cid: [u8; 8] = hex::decode(PROTOCOL_CID).unwrap().try_into().unwrap();
    card_with(&hex::decode(PROTOCOL_KM).unwrap(), service_code, cid, 5000)
}

/// Makes the service's import key and returns its parameters.
pub async fn import_parameters(officer: &Client) -> brandkms_proto::v1::ImportParameters {
    use brandkms_proto::v1 as pb;
    officer
        .admin()
        .create_import_key(pb::CreateImportKeyRequest {})
        .await
        .unwrap();
    officer
        .admin()
        .get_import_parameters(pb::GetImportParametersRequest {})
        .await
        .unwrap()
}

/// Runs `tests/old_hsm.py` (the brand's old HSM, Python `cryptography`) with
/// `args` and `stdin`; its standard output.
pub fn old_hsm(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("old_hsm.py"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (with python3-cryptography; tests/run.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "old_hsm.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Health checks for the tests of issue 14's items 3 and 4.
pub mod health {
    use std::time::Duration;

    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

    /// Dual control off and the health probe every 200 ms.
    pub fn fast_probe() -> brandkms::config::ServiceSettings {
        brandkms::config::ServiceSettings {
            health_probe_ms: 200,
            ..super::TestServer::single_officer()
        }
    }

    /// The names the health service answers for.
    pub const SERVICES: &[&str] = &[
        "",
        "brandkms.v1.Admin",
        "brandkms.v1.KeyDistribution",
        "brandkms.v1.CardAuthentication",
        "brandkms.v1.ProxyLoading",
        "brandkms.v1.Settlement",
    ];

    /// One service's status.
    pub async fn status(
        health: &mut HealthClient<tonic::transport::Channel>,
        service: &str,
    ) -> i32 {
        health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    }

    /// Waits (at most `within`) until every service reports `want`.
    pub async fn all_become(
        health: &mut HealthClient<tonic::transport::Channel>,
        want: ServingStatus,
        within: Duration,
    ) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let mut all = true;
            for name in SERVICES {
                all &= status(health, name).await == want as i32;
            }
            if all {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not every service became {want:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn next_status(
        watch: &mut tonic::Streaming<HealthCheckResponse>,
        within: Duration,
    ) -> ServingStatus {
        let message = tokio::time::timeout(within, watch.message())
            .await
            .expect("a status change in time")
            .unwrap()
            .unwrap();
        ServingStatus::try_from(message.status).unwrap()
    }
}
