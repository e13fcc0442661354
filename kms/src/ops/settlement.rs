//! Settlement RSA keys (brand-wide, or owned by one entity): generated in the
//! token, private half never extractable; public key read from the token;
//! RSA-OAEP decryption for clearing houses (or the owner), PSS signatures.
//! Every decryption failure is the same error, so that none is an oracle.

use brandkms_policy::{Action, Algorithm, KeyClass, KeyState};
use zeroize::Zeroizing;

use crate::hsm::OaepHash;
use crate::ops::authorize::{
    authorize, participant_key_version, policy_key, uniform_to_participant,
};
use crate::ops::facts::FactView;
use crate::ops::generate::generator;
use crate::ops::keys::{KeyView, get};
use crate::ops::rsa_public::{self, PublicKeyInfo};
use crate::ops::versions::{AuditKey, NewVersion, create_version, key_version};
use crate::ops::{AppState, Caller, OpsError, invalid};
use crate::store::keys::{self as rows, KeyRecord, KeyVersionRecord};
use crate::store::{Conn, entities};

/// The one answer to a ciphertext that does not decrypt, whatever the cause.
pub const DECRYPTION_FAILED: &str = "decryption failed";

/// A request to create a settlement key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateSettlementKey {
    /// Alias (validated).
    pub alias: String,
    /// RSA 2048, 3072 or 4096.
    pub algorithm: Algorithm,
    /// The owner of an entity-owned key (only it may decrypt).
    pub owner: Option<String>,
}

/// Creates a settlement key with version 1, active, recording the OAEP hash the
/// token supports.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    input: CreateSettlementKey,
) -> Result<KeyView, OpsError> {
    let record = KeyRecord {
        alias: input.alias.clone(),
        class: KeyClass::Settlement,
        algorithm: input.algorithm,
        purpose: None,
        service_code: None,
        exportable: false,
        owner_entity: input.owner.clone(),
        created_at: state.clock.now_ms(),
    };
    let generate = generator(&record)?;
    let mut conn = state.store.conn().await?;
    if rows::key(&mut conn, &input.alias).await?.is_some() {
        return Err(OpsError::AlreadyExists(format!(
            "key {:?} exists",
            input.alias
        )));
    }
    if let Some(owner) = &input.owner
        && entities::get(&mut conn, owner).await?.is_none()
    {
        return Err(invalid(format!("unknown owner entity {owner:?}")));
    }
    drop(conn);
    create_version(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        generate,
        NewVersion {
            key: Some(record),
            alias: input.alias.clone(),
            version: 1,
            state: KeyState::Active,
            weak: false,
            demote_active_to: None,
            oaep_hash: Some(state.oaep_hash),
            period: Default::default(),
        },
        caller.event("Admin/CreateKey"),
    )
    .await?;
    get(state, &input.alias).await
}

/// A settlement key version and its public key, read from the token.
#[derive(Clone, Debug)]
pub struct PublicKey {
    /// The key.
    pub key: KeyRecord,
    /// The version.
    pub version: KeyVersionRecord,
    /// SPKI DER and PEM, fingerprint.
    pub info: PublicKeyInfo,
    /// The OAEP hash its ciphertexts use.
    pub oaep_hash: OaepHash,
}

async fn settlement_version(
    conn: &mut Conn,
    alias: &str,
    version: Option<u32>,
) -> Result<(KeyRecord, KeyVersionRecord, OaepHash), OpsError> {
    let (key, v) = key_version(conn, alias, version).await?;
    if key.class != KeyClass::Settlement {
        return Err(OpsError::FailedPrecondition(format!(
            "{alias:?} is a {} key, not a settlement key",
            key.class
        )));
    }
    let hash = rows::rsa_oaep_hash(conn, alias)
        .await?
        .as_deref()
        .and_then(OaepHash::parse)
        .ok_or_else(|| OpsError::Internal(format!("settlement key {alias} has no OAEP hash")))?;
    Ok((key, v, hash))
}

/// Whether `caller` may have ciphertexts of this version decrypted now: the
/// policy decides, the version's state included (`active` or `decrypt_only`,
/// else the key-state rule).
async fn may_decrypt(
    conn: &mut Conn,
    caller: &Caller,
    key: &KeyRecord,
    v: &KeyVersionRecord,
    now: i64,
) -> Result<(), OpsError> {
    authorize(conn, caller, key, v, Action::Decrypt, now).await?;
    Ok(())
}

fn usable(v: &KeyVersionRecord, alias: &str) -> Result<(), OpsError> {
    if matches!(v.state, KeyState::Destroyed | KeyState::PendingDestruction) {
        return Err(OpsError::FailedPrecondition(format!(
            "version {} of key {alias:?} is {}",
            v.version, v.state
        )));
    }
    Ok(())
}

/// The key-lifecycle rules for uses outside the tie-ups (`new_work`: the
/// public half handed out to encrypt under; else checking earlier work).
fn lifecycle_allows(
    state: &AppState,
    key: &KeyRecord,
    v: &KeyVersionRecord,
    new_work: bool,
) -> Result<(), OpsError> {
    match policy_key(key, v).lifecycle(new_work, state.clock.now_ms()) {
        Some(reason) => Err(OpsError::Denied(reason)),
        None => Ok(()),
    }
}

/// The public key of a version (default: the active one); any caller.
pub async fn public_key(
    state: &AppState,
    alias: &str,
    version: Option<u32>,
) -> Result<PublicKey, OpsError> {
    let mut conn = state.store.conn().await?;
    let (key, v, oaep_hash) = settlement_version(&mut conn, alias, version).await?;
    drop(conn);
    usable(&v, alias)?;
    // Encrypting under it is new work: not with a compromised version, nor
    // outside its cryptoperiod.
    lifecycle_allows(state, &key, &v, true)?;
    let id = v.cka_id;
    let (modulus, exponent) = state.hsm.run(move |s| s.rsa_public(&id)).await?;
    let info = rsa_public::encode(&modulus, &exponent)
        .map_err(|e| OpsError::Internal(format!("public key of {alias}: {e}")))?;
    if hex::encode(info.fingerprint) != v.kcv {
        return Err(OpsError::Internal(format!(
            "public key of {alias} v{} does not match its recorded fingerprint",
            v.version
        )));
    }
    Ok(PublicKey {
        key,
        version: v,
        info,
        oaep_hash,
    })
}

/// RSA-OAEP decryption in the token for a clearing house with a tie-up on the
/// key, or the owner of an entity-owned key. A version that is not `active` or
/// `decrypt_only` is refused (`FailedPrecondition`); a ciphertext that does not
/// decrypt, for whatever reason, gets [`DECRYPTION_FAILED`]. Answers the
/// version used and the plaintext.
pub async fn decrypt(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: Option<u32>,
    ciphertext: Vec<u8>,
) -> Result<(u32, Zeroizing<Vec<u8>>), OpsError> {
    let now = state.clock.now_ms();
    let mut conn = state.store.conn().await?;
    let found = settlement_version(&mut conn, alias, version).await;
    let (key, v, hash) = uniform_to_participant(&mut conn, caller, alias, found).await?;
    may_decrypt(&mut conn, caller, &key, &v, now).await?;
    drop(conn);
    let id = v.cka_id;
    let plain = state
        .hsm
        .run_long(move |s| s.rsa_oaep_decrypt(&id, hash, &ciphertext))
        .await?;
    Ok((v.version, plain.ok_or_else(|| invalid(DECRYPTION_FAILED))?))
}

/// A PSS (SHA-256) signature with the active version, for a clearing house with
/// a tie-up on the key.
pub async fn sign(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    data: Vec<u8>,
) -> Result<(u32, Vec<u8>), OpsError> {
    let now = state.clock.now_ms();
    let mut conn = state.store.conn().await?;
    let found = settlement_version(&mut conn, alias, None).await;
    let (key, v, _) = uniform_to_participant(&mut conn, caller, alias, found).await?;
    // The policy first, so that a caller with no standing on the key learns
    // nothing of what it is.
    authorize(&mut conn, caller, &key, &v, Action::Sign, now).await?;
    if key.owner_entity.is_some() {
        return Err(OpsError::FailedPrecondition(format!(
            "{alias:?} is an entity-owned identifier key: it decrypts, it does not sign"
        )));
    }
    drop(conn);
    let id = v.cka_id;
    let signature = state
        .hsm
        .run_long(move |s| s.rsa_pss_sign(&id, &data))
        .await?;
    Ok((v.version, signature))
}

/// Verifies a PSS (SHA-256) signature under a version's public key; anyone.
/// Answers the version used and whether the signature is valid.
pub async fn verify(
    state: &AppState,
    alias: &str,
    version: Option<u32>,
    data: Vec<u8>,
    signature: Vec<u8>,
) -> Result<(u32, bool), OpsError> {
    let mut conn = state.store.conn().await?;
    let (key, v, _) = settlement_version(&mut conn, alias, version).await?;
    drop(conn);
    usable(&v, alias)?;
    // A signature made before the not-after still verifies; none made with
    // a compromised key is to be trusted.
    lifecycle_allows(state, &key, &v, false)?;
    let id = v.cka_id;
    let valid = state
        .hsm
        .run(move |s| {
            let (modulus, exponent) = s.rsa_public(&id)?;
            s.rsa_pss_verify(&modulus, &exponent, &data, &signature)
        })
        .await?;
    Ok((v.version, valid))
}

/// A settlement key version ready to decrypt for one caller.
#[derive(Clone, Copy, Debug)]
struct Prepared {
    id: crate::hsm::ObjectId,
    hash: OaepHash,
}

/// A decision for one key version, and what it rests on.
#[derive(Clone, Copy, Debug)]
struct Decided {
    prepared: Prepared,
    /// The admin generation read before the decision.
    generation: i64,
    /// When it was made.
    at: i64,
}

/// How long a decision stands, at most, while nothing changed: tie-ups also end
/// by their window, which no write announces.
const DECISION_MS: i64 = 1_000;

/// Decrypts the sealed blobs of one `DecryptStream` for one caller. The caller's
/// standing (the entity's status as stored now, the version's state, the policy)
/// is decided anew for a blob whenever any entity, tie-up, consent or key changed
/// since the last decision (every such change, on any instance, moves the admin
/// generation, read once per blob) and at least every second, so a suspension,
/// a terminated tie-up or a retired version stops the stream's next item, on
/// whichever instance it runs.
/// What never changes once a key exists (its record and OAEP hash) is read once
/// per (alias, version) of the stream.
#[derive(Debug)]
pub struct StreamDecryptor {
    state: std::sync::Arc<AppState>,
    caller: Caller,
    keys: std::sync::Mutex<std::collections::HashMap<(String, u32), (KeyRecord, OaepHash)>>,
    decided: std::sync::Mutex<std::collections::HashMap<(String, u32), Decided>>,
}

impl StreamDecryptor {
    /// A decryptor for `caller`.
    pub fn new(state: std::sync::Arc<AppState>, caller: Caller) -> StreamDecryptor {
        StreamDecryptor {
            state,
            caller,
            keys: std::sync::Mutex::default(),
            decided: std::sync::Mutex::default(),
        }
    }

    /// The key, the version as stored now, and the OAEP hash.
    async fn version(
        &self,
        conn: &mut Conn,
        alias: &str,
        version: u32,
    ) -> Result<(KeyRecord, KeyVersionRecord, OaepHash), OpsError> {
        let known = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(alias.to_string(), version))
            .cloned();
        if let Some((key, hash)) = known {
            let v = rows::version(conn, alias, version).await?.ok_or_else(|| {
                OpsError::NotFound(format!("key {alias:?} has no version {version}"))
            })?;
            return Ok((key, v, hash));
        }
        let (key, v, hash) = settlement_version(conn, alias, Some(version)).await?;
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((alias.to_string(), version), (key.clone(), hash));
        Ok((key, v, hash))
    }

    /// The caller's standing for this key version: decided anew when any
    /// entity, tie-up, consent or key changed since the last decision (one read of
    /// the admin generation per blob), or when that decision is a second old.
    async fn prepare(&self, alias: &str, version: u32) -> Result<Prepared, OpsError> {
        let now = self.state.clock.now_ms();
        let mut conn = self.state.store.conn().await?;
        let generation = crate::store::audit::admin_generation(&mut conn).await?;
        let slot = (alias.to_string(), version);
        let known = self
            .decided
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&slot)
            .copied();
        if let Some(d) = known
            && d.generation == generation
            && now.saturating_sub(d.at) < DECISION_MS
        {
            return Ok(d.prepared);
        }
        let view = self.state.facts.view(generation);
        let prepared = self.decide(&mut conn, view, alias, version, now).await;
        let mut decided = self
            .decided
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match prepared {
            Ok(prepared) => {
                decided.insert(
                    slot,
                    Decided {
                        prepared,
                        generation,
                        at: now,
                    },
                );
                Ok(prepared)
            }
            Err(e) => {
                decided.remove(&slot);
                Err(e)
            }
        }
    }

    async fn decide(
        &self,
        conn: &mut Conn,
        view: FactView,
        alias: &str,
        version: u32,
        now: i64,
    ) -> Result<Prepared, OpsError> {
        let entity = view
            .entity(conn, &self.caller.entity.id)
            .await?
            .ok_or(OpsError::Denied(
                brandkms_policy::DenyReason::EntitySuspended,
            ))?;
        let caller = Caller {
            entity,
            view,
            ..self.caller.clone()
        };
        let found = self.version(conn, alias, version).await;
        let (key, v, hash) = uniform_to_participant(conn, &caller, alias, found).await?;
        may_decrypt(conn, &caller, &key, &v, now).await?;
        Ok(Prepared { id: v.cka_id, hash })
    }

    /// Decrypts one blob; every ciphertext that does not decrypt gets the same
    /// `InvalidArgument` [`DECRYPTION_FAILED`].
    pub async fn decrypt_blob(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpsError> {
        use brandkms_proto::blob::{BlobError, SealedBlob};
        // A blob cut short is a ciphertext that does not decrypt, like any other.
        let blob = SealedBlob::decode(blob).map_err(|e| match e {
            BlobError::Length => invalid(DECRYPTION_FAILED),
            other => invalid(other.to_string()),
        })?;
        let prepared = self.prepare(&blob.alias, blob.version).await?;
        let wanted = match prepared.hash {
            OaepHash::Sha1 => 1,
            OaepHash::Sha256 => 2,
        };
        if blob.oaep_hash != wanted {
            return Err(invalid(DECRYPTION_FAILED));
        }
        let ciphertext = blob.ciphertext;
        self.state
            .hsm
            .run_long(move |s| s.rsa_oaep_decrypt(&prepared.id, prepared.hash, &ciphertext))
            .await?
            .ok_or_else(|| invalid(DECRYPTION_FAILED))
    }
}

/// Creates an authenticator key (HMAC-SHA-256) with version 1, active.
pub async fn create_authenticator(
    state: &AppState,
    caller: &Caller,
    alias: String,
) -> Result<KeyView, OpsError> {
    let mut conn = state.store.conn().await?;
    if rows::key(&mut conn, &alias).await?.is_some() {
        return Err(OpsError::AlreadyExists(format!("key {alias:?} exists")));
    }
    drop(conn);
    let record = KeyRecord {
        alias: alias.clone(),
        class: KeyClass::Authenticator,
        algorithm: Algorithm::HmacSha256,
        purpose: None,
        service_code: None,
        exportable: false,
        owner_entity: None,
        created_at: state.clock.now_ms(),
    };
    create_version(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        generator(&record)?,
        NewVersion {
            key: Some(record),
            alias: alias.clone(),
            version: 1,
            state: KeyState::Active,
            weak: false,
            demote_active_to: None,
            oaep_hash: None,
            period: Default::default(),
        },
        caller.event("Admin/CreateKey"),
    )
    .await?;
    get(state, &alias).await
}

/// HMAC-SHA-256 of a settlement result with the active version (clearing houses).
pub async fn generate_mac(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    data: Vec<u8>,
) -> Result<(u32, Vec<u8>), OpsError> {
    let now = state.clock.now_ms();
    let mut conn = state.store.conn().await?;
    let (key, v) = participant_key_version(&mut conn, caller, alias, None).await?;
    authorize(&mut conn, caller, &key, &v, Action::GenerateMac, now).await?;
    drop(conn);
    let id = v.cka_id;
    let mac = state.hsm.run(move |s| s.hmac_sha256(&id, &data)).await?;
    Ok((v.version, mac))
}

/// Checks a MAC in the token (an entity with a tie-up on the key, e.g. a store).
/// Answers the version used and whether the MAC is valid.
pub async fn verify_mac(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: Option<u32>,
    data: Vec<u8>,
    mac: Vec<u8>,
) -> Result<(u32, bool), OpsError> {
    let now = state.clock.now_ms();
    let mut conn = state.store.conn().await?;
    let (key, v) = participant_key_version(&mut conn, caller, alias, version).await?;
    authorize(&mut conn, caller, &key, &v, Action::VerifyMac, now).await?;
    drop(conn);
    if mac.len() != 32 {
        return Ok((v.version, false));
    }
    let id = v.cka_id;
    let valid = state
        .hsm
        .run(move |s| s.hmac_sha256_verify(&id, &data, &mac))
        .await?;
    Ok((v.version, valid))
}
