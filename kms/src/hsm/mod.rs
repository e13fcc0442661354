//! The HSM layer: one PKCS#11 context per process, a bounded pool of sessions that
//! share one login held for the life of the process, every call off the async
//! runtime. Knows nothing of gRPC, policy or the database.

mod cipher;
mod data;
mod error;
mod hardening;
mod import;
mod keygen;
mod mac;
mod raw;
mod rsa;
mod session;
mod spec;
mod wrap;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use tokio::sync::Semaphore;
use tracing::Instrument;
use zeroize::Zeroizing;

pub use data::DataObject;
pub use error::HsmError;
pub use hardening::Finding;
pub use import::{IMPORT_KEY_BITS, ImportError, ImportWrapping};
pub use keygen::GeneratedRsa;
pub use raw::{CMAC_LEN, EcbDerive};
pub use rsa::OaepHash;
pub use session::{GeneratedKey, HsmSession, Kcv, SessionKey, TokenObject};
pub use spec::{Exportability, KeyRole, KeySpec, OBJECT_ID_LEN, ObjectId, SecretAlgorithm};

/// How to reach the token.
#[derive(Clone)]
pub struct HsmParams {
    /// Path of the vendor's PKCS#11 module.
    pub module: PathBuf,
    /// Label of the token to use.
    pub token_label: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// Maximum number of sessions, and of HSM calls under way at once.
    pub sessions: usize,
    /// Benchmarks only: a fixed delay added to every token round trip, as a
    /// networked HSM's. Honoured only by a build with the `bench-delay` feature
    /// (the configuration refuses it otherwise); zero everywhere else.
    pub benchmark_token_delay: Duration,
}

impl std::fmt::Debug for HsmParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmParams")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("sessions", &self.sessions)
            .field("benchmark_token_delay", &self.benchmark_token_delay)
            .finish()
    }
}

/// The process's connection to the token. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Hsm {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters for drop: sessions close before the context finalises.
    /// Idle sessions, each with the pool generation it was opened in.
    idle: Mutex<Vec<(u64, Session)>>,
    /// The session that holds the login; replaced when the token loses it.
    _login: Mutex<Session>,
    /// Moves on each recovery: sessions of an older generation are never used
    /// again, and their failures start no second recovery.
    generation: std::sync::atomic::AtomicU64,
    handles: Mutex<HashMap<ObjectId, ObjectHandle>>,
    data_handles: Mutex<HashMap<String, ObjectHandle>>,
    permits: Arc<Semaphore>,
    /// How many permits `permits` has: all of them stop every other call.
    sessions: usize,
    /// The user PIN, to log in again after a security-officer call.
    pin: Zeroizing<String>,
    /// A health probe is waiting for the token.
    probing: std::sync::atomic::AtomicBool,
    /// Recovery: one at a time, no new attempt within a second of a failed
    /// one, and none at all once the token refused the PIN (each attempt
    /// would spend a PIN try: a real HSM locks the PIN after a few).
    recovery: Mutex<RecoveryState>,
    /// The token's serial number when opened: a token found again by label
    /// must be the same token.
    serial: String,
    raw: raw::RawFunctions,
    /// The token's slot, found again by label when the token comes back.
    slot: Mutex<Slot>,
    pkcs11: Pkcs11,
    token_label: String,
    #[cfg(feature = "bench-delay")]
    token_delay: Duration,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("slot", &*lock(&self.slot))
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

impl Hsm {
    /// Loads the module, finds the token by label and logs in. Blocking: call it
    /// before the runtime starts or from a blocking task.
    pub fn open(params: &HsmParams) -> Result<Hsm, HsmError> {
        let module_error = |source| HsmError::Module {
            path: params.module.clone(),
            source,
        };
        let pkcs11 = Pkcs11::new(&params.module).map_err(module_error)?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(module_error(e)),
        }
        let slot = find_slot(&pkcs11, &params.token_label)?;
        let login = pkcs11.open_rw_session(slot)?;
        user_login(&login, &params.pin)?;
        let raw = raw::RawFunctions::bind(&params.module)?;
        let sessions = params.sessions.max(1);
        let serial = pkcs11
            .get_token_info(slot)?
            .serial_number()
            .trim()
            .to_string();
        Ok(Hsm {
            inner: Arc::new(Inner {
                idle: Mutex::new(Vec::with_capacity(sessions)),
                _login: Mutex::new(login),
                generation: std::sync::atomic::AtomicU64::new(0),
                handles: Mutex::new(HashMap::new()),
                data_handles: Mutex::new(HashMap::new()),
                permits: Arc::new(Semaphore::new(sessions)),
                sessions,
                pin: Zeroizing::new(params.pin.as_str().to_string()),
                probing: std::sync::atomic::AtomicBool::new(false),
                recovery: Mutex::new(RecoveryState::default()),
                serial,
                raw,
                slot: Mutex::new(slot),
                pkcs11,
                token_label: params.token_label.clone(),
                #[cfg(feature = "bench-delay")]
                token_delay: params.benchmark_token_delay,
            }),
        })
    }

    /// The label of the token in use.
    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }

    /// Runs `f` with a pooled, logged-in session, with at most `sessions` calls
    /// under way at once, on the calling worker thread: a token call takes tens
    /// to hundreds of microseconds, and handing it to a blocking thread and back
    /// costs two thread wake-ups, which cost more than the call on a virtual
    /// machine (measured: card transactions 140.6 -> 233.3 tx/s with 8 clients).
    /// Long calls (RSA private-key operations, key generation) use
    /// [`Hsm::run_long`]. In a `bench-delay` build with a delay configured, every
    /// call goes to a blocking thread, which sleeps the delay first.
    pub async fn run<T, F>(&self, f: F) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: FnOnce(&HsmSession<'_>) -> Result<T, HsmError> + Send + 'static,
    {
        #[cfg(feature = "bench-delay")]
        if !self.inner.token_delay.is_zero() {
            return self.run_long(f).await;
        }
        let permit = self.permit().await?;
        let started = std::time::Instant::now();
        let result = self.inner.with_session(f);
        drop(permit);
        metrics::histogram!("brandkms_hsm_call_seconds", "kind" => "short")
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// The pool's size and the sessions in use now.
    pub fn pool_use(&self) -> (usize, usize) {
        let free = self.inner.permits.available_permits();
        (
            self.inner.sessions,
            self.inner.sessions.saturating_sub(free),
        )
    }

    /// One of the `sessions` permits: at most that many calls under way at once.
    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, HsmError> {
        let asked = std::time::Instant::now();
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|e| HsmError::Worker(e.to_string()));
        metrics::histogram!("brandkms_hsm_wait_seconds").record(asked.elapsed().as_secs_f64());
        permit
    }

    /// As [`Hsm::run`], on a blocking thread, so that a call of milliseconds
    /// (an RSA decryption or signature, a key generation) does not hold up the
    /// requests sharing the worker. The caller's tracing span is kept.
    pub async fn run_long<T, F>(&self, f: F) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: FnOnce(&HsmSession<'_>) -> Result<T, HsmError> + Send + 'static,
    {
        let permit = self.permit().await?;
        let inner = Arc::clone(&self.inner);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let started = std::time::Instant::now();
            let result = inner.with_session(f);
            drop(permit);
            metrics::histogram!("brandkms_hsm_call_seconds", "kind" => "long")
                .record(started.elapsed().as_secs_f64());
            result
        })
        .in_current_span()
        .await
        .map_err(|e| HsmError::Worker(e.to_string()))?
    }
}

impl Hsm {
    /// Runs `f` in a session logged in as the token's security officer, for a
    /// ceremony step only the SO may take (marking a key `CKA_TRUSTED`). PKCS#11
    /// logs a whole application in or out, so every other token call of this
    /// process is held back meanwhile: the user is logged out, the SO logged in
    /// with `so_pin` (used for this call only, never kept), then out, and the
    /// user logged in again. Cached object handles are dropped (a logout
    /// invalidates those of private objects) and found again when next used.
    pub async fn as_security_officer<T, F>(
        &self,
        so_pin: Zeroizing<String>,
        f: F,
    ) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: FnOnce(&HsmSession<'_>) -> Result<T, HsmError> + Send + 'static,
    {
        let all = u32::try_from(self.inner.sessions).unwrap_or(u32::MAX);
        let permits = Arc::clone(&self.inner.permits)
            .acquire_many_owned(all)
            .await
            .map_err(|e| HsmError::Worker(e.to_string()))?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let login = lock(&inner._login);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                as_so(&login, &inner, &so_pin, f)
            }));
            // Whatever happened, the user is logged in again before any other
            // call runs; handles of private objects went stale with the logout.
            let relogin = relogin_user(&login, &inner.pin);
            inner.forget_handles();
            drop(login);
            drop(permits);
            match (relogin, result) {
                (Err(e), _) => {
                    tracing::error!(error = %e, "could not log the user in again after a security-officer call: token calls fail until a recovery (the health probe's) succeeds");
                    Err(e)
                }
                (Ok(()), Ok(done)) => done,
                (Ok(()), Err(_)) => Err(HsmError::Worker(
                    "a security-officer call panicked; the user is logged in again".into(),
                )),
            }
        })
        .await
        .map_err(|e| HsmError::Worker(e.to_string()))?
    }
}

impl Hsm {
    /// The health probe: is the user still logged in to the token? One
    /// `C_GetSessionInfo` on the login session, no pool session taken. When
    /// the login was lost (another application logged out, the token was
    /// re-inserted), the user is logged in again with the PIN the process
    /// holds and the cached object handles are dropped (they are found again
    /// on their next use); the answer is still the failure, so that the
    /// caller reports what it saw.
    pub async fn probe(&self) -> Result<(), HsmError> {
        // One probe at a time: one stuck in a hung token is not joined by
        // another blocking thread every period.
        if self
            .inner
            .probing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Err(HsmError::LoginLost(
                "the previous probe is still waiting for the token".into(),
            ));
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _done = ProbeDone(&inner.probing);
            let generation = inner.generation();
            let state = lock(&inner._login)
                .get_session_info()
                .map(|i| i.session_state());
            match state {
                Ok(SessionState::RwUser) => Ok(()),
                other => {
                    let why = match other {
                        Ok(s) => HsmError::LoginLost(format!("{s:?}")),
                        Err(e) => e.into(),
                    };
                    inner.recover(generation, &why);
                    Err(why)
                }
            }
        })
        .await
        .map_err(|e| HsmError::Worker(e.to_string()))?
    }

    /// Logs the user out of the token, as another application sharing it
    /// could. Tests only (the health probe and recovery tests).
    #[cfg(any(test, feature = "testing"))]
    pub async fn logout_for_tests(&self) -> Result<(), HsmError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || Ok(lock(&inner._login).logout()?))
            .await
            .map_err(|e| HsmError::Worker(e.to_string()))?
    }

    /// Closes every session of this process on the token (`C_CloseAllSessions`),
    /// the login's too, as a token reset or a removal would. Tests only (the
    /// recovery test).
    #[cfg(any(test, feature = "testing"))]
    pub async fn close_all_sessions_for_tests(&self) -> Result<(), HsmError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let slot = *lock(&inner.slot);
            inner.raw.close_all_sessions(slot.id())
        })
        .await
        .map_err(|e| HsmError::Worker(e.to_string()))?
    }
}

/// What recovery remembers between attempts.
#[derive(Debug, Default)]
struct RecoveryState {
    /// When the last attempt failed (none since one succeeded).
    failed_at: Option<std::time::Instant>,
    /// The token refused the PIN: no more attempts until a restart.
    pin_refused: bool,
}

/// Clears the probe-in-flight flag when the probe's blocking call ends.
struct ProbeDone<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for ProbeDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// The security officer's step on the login session: the user out, the SO in
/// (a refused PIN is [`HsmError::SoPinRefused`], nothing done), `f`, the SO out.
fn as_so<T>(
    login: &Session,
    inner: &Inner,
    so_pin: &str,
    f: impl FnOnce(&HsmSession<'_>) -> Result<T, HsmError>,
) -> Result<T, HsmError> {
    match login.logout() {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserNotLoggedIn, _)) => {}
        Err(e) => return Err(e.into()),
    }
    match login.login(UserType::So, Some(&AuthPin::from(so_pin))) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(
            rv @ (RvError::PinIncorrect
            | RvError::PinInvalid
            | RvError::PinLenRange
            | RvError::PinLocked),
            _,
        )) => return Err(HsmError::SoPinRefused(rv)),
        Err(e) => return Err(e.into()),
    }
    let done = f(&HsmSession::new(login, inner));
    let out = login.logout();
    match (done, out) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), _) => Err(e),
    }
}

/// Logs the user in; already logged in is fine, a refused PIN is
/// [`HsmError::PinRefused`].
fn user_login(login: &Session, pin: &str) -> Result<(), HsmError> {
    match login.login(UserType::User, Some(&AuthPin::from(pin))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(cryptoki::error::Error::Pkcs11(
            rv @ (RvError::PinIncorrect
            | RvError::PinInvalid
            | RvError::PinLenRange
            | RvError::PinLocked
            | RvError::PinExpired),
            _,
        )) => Err(HsmError::PinRefused(rv)),
        Err(e) => Err(e.into()),
    }
}

/// Logs whoever is in out and the user in, trying three times; a refused
/// PIN is never tried again (it would count against the PIN's tries).
fn relogin_user(login: &Session, pin: &str) -> Result<(), HsmError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match user_login(login, pin) {
            Ok(()) => return Ok(()),
            Err(e @ HsmError::PinRefused(_)) => return Err(e),
            Err(e) if attempt >= 3 => return Err(e),
            Err(_) => {
                let _ = login.logout();
                std::thread::sleep(Duration::from_millis(10 * attempt));
            }
        }
    }
}

impl Inner {
    /// Drops the cached object handles (a logout makes those of private
    /// objects stale); they are found again on their next use.
    fn forget_handles(&self) {
        lock(&self.handles).clear();
        lock(&self.data_handles).clear();
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A pooled session of the current generation, or a new one.
    fn checkout(&self) -> Result<(u64, Session), HsmError> {
        let current = self.generation();
        loop {
            let pooled = lock(&self.idle).pop();
            match pooled {
                Some((generation, session)) if generation == current => {
                    return Ok((generation, session));
                }
                // Opened before a recovery: closed, never used again.
                Some(old) => drop(old),
                None => break,
            }
        }
        let slot = *lock(&self.slot);
        Ok((current, self.pkcs11.open_rw_session(slot)?))
    }

    fn with_session<T>(
        &self,
        f: impl FnOnce(&HsmSession<'_>) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let before = self.generation();
        let (generation, session) = match self.checkout() {
            Ok(s) => s,
            Err(e) if e.is_session_lost() => {
                self.recover(before, &e);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        #[cfg(feature = "bench-delay")]
        if !self.token_delay.is_zero() {
            std::thread::sleep(self.token_delay);
        }
        let result = f(&HsmSession::new(&session, self));
        match &result {
            // The token lost its sessions or the login (reset, removal, another
            // application's logout): every session of this generation is
            // given up, the login restored, handles found again on next use.
            // This call answers its error (it did nothing in the token: the
            // caller may retry); the next ones run on fresh sessions.
            Err(e) if e.is_session_lost() => {
                drop(session);
                self.recover(generation, e);
            }
            // Cached object handles the token no longer knows.
            Err(e) if e.is_stale_handle() => {
                self.forget_handles();
                drop(session);
            }
            // Sessions opened before a recovery are not kept.
            _ if generation != self.generation() => drop(session),
            _ => lock(&self.idle).push((generation, session)),
        }
        result
    }

    /// Recovers from a lost session or login seen on a session of
    /// `generation`, unless a recovery since has done it: the pool's sessions
    /// are given up, cached handles dropped, and the login checked — logged in
    /// again on the login session, or, when that session is gone too (every
    /// session closed, the token removed and back), a new login session opened
    /// on the slot that now holds the token with this label. Failures are
    /// logged; the health probe tries again on its next period.
    fn recover(&self, generation: u64, why: &HsmError) {
        use std::sync::atomic::Ordering;
        // One recovery at a time; a failure seen on a session of an older
        // generation was dealt with by the recovery that moved it on.
        let mut state = lock(&self.recovery);
        if self.generation() != generation || state.pin_refused {
            return;
        }
        if state
            .failed_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        // Sessions of this generation are given up; calls from now on open
        // new ones (and may fail until the login is back: they start no second
        // recovery while this one holds the lock, nor after it succeeded).
        self.generation.fetch_add(1, Ordering::AcqRel);
        lock(&self.idle).clear();
        let mut login = lock(&self._login);
        let restored = match login.get_session_info().map(|i| i.session_state()) {
            Ok(SessionState::RwUser) => Ok("sessions reopened"),
            Ok(_) => relogin_user(&login, &self.pin).map(|()| "logged in again"),
            Err(_) => self.new_login().map(|fresh| {
                *login = fresh;
                "login session reopened and logged in again"
            }),
        };
        drop(login);
        // Handles found while the login was gone go with the rest.
        self.forget_handles();
        metrics::counter!("brandkms_hsm_recoveries_total").increment(1);
        match restored {
            Ok(done) => {
                if state.failed_at.take().is_some() {
                    tracing::warn!(error = %why, "token recovered: {done}");
                } else {
                    tracing::warn!(error = %why, "token session or login lost: {done}");
                }
            }
            Err(HsmError::PinRefused(rv)) => {
                state.pin_refused = true;
                tracing::error!(?rv, lost = %why, "token login lost and the token refuses the PIN: no further login attempts (each would spend a PIN try); restart kms with the right PIN");
            }
            Err(e) => {
                // Logged once per outage, not per attempt.
                if state.failed_at.replace(std::time::Instant::now()).is_none() {
                    tracing::error!(error = %e, lost = %why, "token session or login lost; recovery failed, tried again at most every second");
                }
            }
        }
    }

    /// A new read-write session logged in as the user, on the slot that holds
    /// the token labelled as configured now.
    fn new_login(&self) -> Result<Session, HsmError> {
        let slot = find_slot(&self.pkcs11, &self.token_label)?;
        let serial = self
            .pkcs11
            .get_token_info(slot)?
            .serial_number()
            .trim()
            .to_string();
        if serial != self.serial {
            return Err(HsmError::LoginLost(format!(
                "the token labelled {} now has serial {serial}, not {}: not logging in to another token",
                self.token_label, self.serial
            )));
        }
        let fresh = self.pkcs11.open_rw_session(slot)?;
        relogin_user(&fresh, &self.pin)?;
        *lock(&self.slot) = slot;
        Ok(fresh)
    }
}

fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let mut present = Vec::new();
    let mut matching = Vec::new();
    for slot in pkcs11.get_slots_with_token()? {
        let info = pkcs11.get_token_info(slot)?;
        let this = info.label().trim_end().to_string();
        if this == label {
            matching.push(slot);
        }
        present.push(this);
    }
    match matching.as_slice() {
        [one] => return Ok(*one),
        [] => {}
        _ => {
            return Err(HsmError::AmbiguousToken {
                label: label.to_string(),
                count: matching.len(),
            });
        }
    }
    Err(HsmError::TokenNotFound {
        label: label.to_string(),
        present: if present.is_empty() {
            "none".to_string()
        } else {
            present.join(", ")
        },
    })
}

/// Locks a mutex; a poisoned one is still usable because every holder leaves the
/// data consistent (it only pushes, pops or inserts).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
