//! Key distribution: transport keys, wrapped deliveries decided by the policy,
//! entitlements, and issuers' consents.

use brandkms_policy::{
    Action, Algorithm, Decision, EntityKind, KeyClass, KeyState, TieUpMode, can_consent,
    may_hold_keys,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::audit::{AuditEvent, Outcome};
use crate::hsm::{Exportability, KeyRole, KeySpec, SecretAlgorithm};
use crate::ops::authorize::{
    TRUSTED_PREFIX, authorize, participant_key_version, policy_entity, policy_key, policy_tie_up,
    transport_alias, trusted_alias,
};
use crate::ops::keys::destroy_version;
use crate::ops::versions::{
    AuditKey, NewVersion, create_version_with, next_version, object_label, record_version,
};
use crate::ops::{AppState, Caller, OpsError, invalid};
use crate::store::distribution::{self as rows, ConsentRecord, DistributionRecord};
use crate::store::keys::{self as key_rows, KeyRecord, KeyVersionRecord};
use crate::store::tieups as tie_rows;
use crate::store::{Conn, entities};

/// Smallest RSA modulus accepted for a transport key's delivery.
pub const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// An RSA public key from SPKI DER: (modulus, exponent, bits).
pub fn parse_rsa_spki(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>, usize), OpsError> {
    let malformed =
        || invalid("rsa_public_key_spki_der is not a DER SubjectPublicKeyInfo of an RSA key");
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|_| malformed())?;
    if !rest.is_empty() {
        return Err(malformed());
    }
    let PublicKey::RSA(rsa) = spki.parsed().map_err(|_| malformed())? else {
        return Err(malformed());
    };
    let modulus: Vec<u8> = rsa
        .modulus
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    let exponent: Vec<u8> = rsa
        .exponent
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    let bits = modulus.first().map_or(0, |top| {
        (modulus.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
    });
    if bits < MIN_RSA_BITS {
        return Err(invalid(format!(
            "RSA key of {bits} bits: at least {MIN_RSA_BITS} are required"
        )));
    }
    if bits > MAX_RSA_BITS || exponent.is_empty() || exponent.len() > 8 {
        return Err(malformed());
    }
    Ok((modulus, exponent, bits))
}

/// What `EstablishTransportKey` returns.
#[derive(Debug, Clone)]
pub struct Established {
    /// The transport key's version record.
    pub version: KeyVersionRecord,
    /// The key, wrapped under the presented RSA key.
    pub wrapped: Vec<u8>,
}

/// Generates a new transport key for the caller and returns it wrapped under the
/// presented RSA public key; the previous version (if any) is retired in the same
/// transaction.
pub async fn establish_transport_key(
    state: &AppState,
    caller: &Caller,
    spki_der: &[u8],
) -> Result<Established, OpsError> {
    let (modulus, exponent, bits) = parse_rsa_spki(spki_der)?;
    let entity = policy_entity(&caller.entity);
    may_hold_keys(&entity).map_err(OpsError::Denied)?;
    state
        .transport_keys
        .take(&caller.entity.id, state.clock.now_ms())
        .map_err(|retry_after_ms| OpsError::ResourceExhausted {
            message: format!(
                "at most {} transport keys per hour per entity (service.transport_keys_per_hour); retry in {} s",
                state.settings.transport_keys_per_hour,
                (retry_after_ms + 999) / 1000
            ),
            retry_after_ms,
        })?;
    let new = next_own_version(
        state,
        &transport_alias(&caller.entity.id),
        &caller.entity.id,
        Algorithm::Aes256,
        true,
    )
    .await?;
    let alias = new.alias.clone();
    let spec = KeySpec {
        algorithm: SecretAlgorithm::Aes256,
        role: KeyRole::Transport,
        export: Exportability::WrappedOnly,
    };
    let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(spki_der));
    let (version, wrapped) = create_version_with(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        move |s, label| {
            let key = s.generate(&spec, label)?;
            // Delivered once, then never extractable again.
            let wrapped = s
                .import_rsa_public(&modulus, &exponent)
                .and_then(|public| s.wrap_rsa_oaep(&public, &key.id))
                .and_then(|w| s.seal_extraction(&key.id).map(|()| w));
            match wrapped {
                Ok(w) => Ok((key, w)),
                Err(e) => {
                    s.destroy(&key.id)?;
                    Err(e)
                }
            }
        },
        new,
        caller.event_about(
            "KeyDistribution/EstablishTransportKey",
            format!("RSA-{bits} public key sha256 {fingerprint}"),
        ),
    )
    .await?;
    retire_superseded(state, &alias, version.version).await;
    Ok(Established { version, wrapped })
}

/// The next version of a participant's own wrapping key (`transport.<entity>`
/// or `trusted.<entity>`): active, retiring the active one; the key record
/// comes with the first.
async fn next_own_version(
    state: &AppState,
    alias: &str,
    owner: &str,
    algorithm: Algorithm,
    exportable: bool,
) -> Result<NewVersion, OpsError> {
    let mut conn = state.store.conn().await?;
    let (existing, next) = next_version(&mut conn, alias).await?;
    Ok(NewVersion {
        key: existing.is_none().then(|| KeyRecord {
            alias: alias.to_string(),
            class: KeyClass::Transport,
            algorithm,
            purpose: None,
            service_code: None,
            exportable,
            owner_entity: Some(owner.to_string()),
            created_at: state.clock.now_ms(),
        }),
        alias: alias.to_string(),
        version: next,
        state: KeyState::Active,
        weak: false,
        demote_active_to: Some(KeyState::Retired),
        oaep_hash: None,
        period: Default::default(),
    })
}

/// What an officer brings to the ceremony that makes a participant's RSA public
/// key the trusted key its deliveries are wrapped under.
pub struct TrustKey {
    /// The participant.
    pub entity_id: String,
    /// Its RSA public key, SPKI DER.
    pub spki_der: Vec<u8>,
    /// The SHA-256 of `spki_der` (hex) the officer checked with the participant
    /// out of band.
    pub fingerprint: String,
    /// The token's security-officer PIN, for this call only.
    pub so_pin: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for TrustKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustKey")
            .field("entity_id", &self.entity_id)
            .field("fingerprint", &self.fingerprint)
            .field("so_pin", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The ceremony: the participant's RSA public key becomes a token object the
/// security officer marks `CKA_TRUSTED` (with `so_pin`, used for this call and
/// not kept), version N of `trusted.<entity>`; from then on its deliveries are
/// wrapped under it with RSA-OAEP, and only such a key can wrap an exportable
/// card-access master (`CKA_WRAP_WITH_TRUSTED`). A newer version supersedes
/// the older, whose object is destroyed.
pub async fn trust_participant_key(
    state: &AppState,
    caller: &Caller,
    request: TrustKey,
) -> Result<KeyVersionRecord, OpsError> {
    use subtle::ConstantTimeEq;
    let (modulus, exponent, bits) = parse_rsa_spki(&request.spki_der)?;
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&request.spki_der).into();
    let actual = hex::encode(digest);
    let given = request.fingerprint.to_ascii_lowercase();
    if !bool::from(actual.as_bytes().ct_eq(given.as_bytes())) {
        return Err(invalid(format!(
            "the public key's SHA-256 fingerprint is {actual}, not the one given: check it with the participant again, out of band"
        )));
    }
    let algorithm = match bits {
        2048 => Algorithm::Rsa2048,
        3072 => Algorithm::Rsa3072,
        4096 => Algorithm::Rsa4096,
        other => {
            return Err(invalid(format!(
                "a trusted participant key is RSA 2048, 3072 or 4096 bits, not {other}"
            )));
        }
    };
    let mut conn = state.store.conn().await?;
    let entity = entities::get(&mut conn, &request.entity_id)
        .await?
        .ok_or_else(|| {
            OpsError::NotFound(format!("entity {:?} is not registered", request.entity_id))
        })?;
    drop(conn);
    may_hold_keys(&policy_entity(&entity)).map_err(OpsError::Denied)?;
    let new = next_own_version(
        state,
        &trusted_alias(&entity.id),
        &entity.id,
        algorithm,
        false,
    )
    .await?;
    let (alias, label) = (new.alias.clone(), object_label(&new.alias, new.version));
    let generated = state
        .hsm
        .as_security_officer(request.so_pin, move |s| {
            s.import_trusted_rsa_public(&modulus, &exponent, digest, &label)
        })
        .await
        .map_err(|e| match e {
            crate::hsm::HsmError::SoPinRefused(rv @ cryptoki::error::RvError::PinLocked) => {
                OpsError::FailedPrecondition(format!(
                    "the token's security-officer PIN is locked ({rv}); nothing was changed"
                ))
            }
            crate::hsm::HsmError::SoPinRefused(rv) => invalid(format!(
                "the token refused the security officer's PIN ({rv}); nothing was changed"
            )),
            other => other.into(),
        })?;
    let version = record_version(
        &state.hsm,
        &state.store,
        AuditKey::Existing(&state.auditor),
        generated,
        new,
        caller.event_about(
            "Admin/TrustParticipantKey",
            format!(
                "RSA-{bits} public key of {} sha256 {actual}, marked trusted by the security officer",
                entity.id
            ),
        ),
    )
    .await?;
    retire_superseded(state, &alias, version.version).await;
    Ok(version)
}

/// [`destroy_superseded`] once the new version is recorded and in force: a
/// failure is logged (the objects stay for the destruction scheduler and
/// `kms reconcile`), not reported as the call's, which succeeded.
pub(crate) async fn retire_superseded(state: &AppState, alias: &str, newest: u32) {
    if let Err(e) = destroy_superseded(state, alias, newest).await {
        tracing::warn!(%alias, newest, error = %e, "could not destroy the superseded versions' objects");
    }
}

/// Destroys the objects of a wrapping key's versions (transport, trusted,
/// import) that `newest`
/// superseded (retired in its transaction): they wrap nothing any more, and an
/// entity that establishes keys again and again leaves one object, not one per
/// call. Their rows stay (state destroyed), so deliveries under them still name
/// them.
async fn destroy_superseded(state: &AppState, alias: &str, newest: u32) -> Result<(), OpsError> {
    let superseded: Vec<u32> = {
        let mut conn = state.store.conn().await?;
        key_rows::versions(&mut conn, alias)
            .await?
            .into_iter()
            .filter(|v| v.version < newest && v.state == KeyState::Retired)
            .map(|v| v.version)
            .collect()
    };
    for version in superseded {
        let event = AuditEvent::allowed("local:keys", "keys.destroy_superseded")
            .outcome(
                Outcome::Allowed,
                Some(format!("superseded by version {newest}")),
            )
            .key(alias, Some(version));
        let still = |v: &KeyVersionRecord| v.state == KeyState::Retired;
        destroy_version(state, event, alias, version, still).await?;
    }
    Ok(())
}

/// A delivery under a transport key: AES key wrap with padding.
pub const WRAPPING_AES_KWP: &str = "AES-KWP-RFC5649";
/// A delivery under a trusted participant key, and a transport key's: RSA-OAEP.
pub const WRAPPING_RSA_OAEP: &str = "RSA-OAEP-SHA1-MGF1-SHA1";

/// A delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The key.
    pub key: KeyRecord,
    /// The version delivered.
    pub version: KeyVersionRecord,
    /// Wrapped under the transport key (RFC 5649) or the trusted key (RSA-OAEP).
    pub wrapped: Vec<u8>,
    /// How: [`WRAPPING_AES_KWP`] or [`WRAPPING_RSA_OAEP`].
    pub wrapping: &'static str,
    /// The transport key version used.
    pub transport: KeyVersionRecord,
    /// End of the tie-up's validity.
    pub valid_until: Option<i64>,
}

/// Delivers a key version wrapped under the caller's transport key, if the policy
/// allows it, and records the delivery with its audit record.
pub async fn request_key(
    state: &AppState,
    caller: &Caller,
    alias: &str,
    version: Option<u32>,
) -> Result<Delivery, OpsError> {
    let mut conn = state.store.conn().await?;
    let (key, v) = participant_key_version(&mut conn, caller, alias, version).await?;
    if !matches!(key.class, KeyClass::CardAccess | KeyClass::Authenticator) {
        return Err(OpsError::FailedPrecondition(format!(
            "{} keys are not distributed",
            key.class
        )));
    }
    if matches!(v.state, KeyState::Destroyed | KeyState::PendingDestruction) {
        return Err(OpsError::FailedPrecondition(format!(
            "version {} of key {alias:?} is {}",
            v.version, v.state
        )));
    }
    let now = state.clock.now_ms();
    let grounds = authorize(&mut conn, caller, &key, &v, Action::Receive, now).await?;
    drop(conn);
    let transport = grounds
        .transport
        .ok_or_else(|| OpsError::Internal("transport key vanished".into()))?;
    let (wrapping, target) = (transport.cka_id, v.cka_id);
    let trusted = transport.alias.starts_with(TRUSTED_PREFIX);
    let wrapped = state
        .hsm
        .run(move |s| {
            if trusted {
                s.wrap_rsa_oaep_under(&wrapping, &target)
            } else {
                s.wrap_aes_kwp(&wrapping, &target)
            }
        })
        .await
        .map_err(|e| {
            if e.rv() == Some(cryptoki::error::RvError::KeyNotWrappable) {
                OpsError::FailedPrecondition(format!(
                    "key {alias:?} is delivered only under a trusted key of yours, which you do not have: an officer marks your RSA public key trusted with the security officer's PIN (kmsctl entity trust-key); a transport key cannot wrap it"
                ))
            } else {
                e.into()
            }
        })?;
    let event = caller
        .event_about(
            "KeyDistribution/RequestKey",
            format!("under {} v{}", transport.alias, transport.version),
        )
        .key(alias, Some(v.version));
    let delivered = DistributionRecord {
        id: format!("d-{}", uuid::Uuid::new_v4().simple()),
        alias: alias.to_string(),
        version: v.version,
        entity_id: caller.entity.id.clone(),
        transport_alias: transport.alias.clone(),
        transport_version: transport.version,
        kcv: v.kcv.clone(),
        at: now,
    };
    state
        .write(event, move |tx| {
            Box::pin(async move { Ok(rows::record_distribution(tx, &delivered).await?) })
        })
        .await?;
    let valid_until = grounds
        .tie_ups
        .iter()
        .filter(|t| t.mode_for(alias) == Some(TieUpMode::Supply))
        .filter_map(|t| t.valid_until)
        .max();
    Ok(Delivery {
        key,
        version: v,
        wrapped,
        wrapping: if trusted {
            WRAPPING_RSA_OAEP
        } else {
            WRAPPING_AES_KWP
        },
        transport,
        valid_until,
    })
}

/// A key the caller may receive or have used for it.
#[derive(Debug, Clone)]
pub struct Entitlement {
    /// The key.
    pub key: KeyRecord,
    /// The mode.
    pub mode: TieUpMode,
    /// The current active version.
    pub current: Option<KeyVersionRecord>,
    /// End of validity.
    pub valid_until: Option<i64>,
    /// The tie-up that grants it.
    pub tie_up_id: String,
}

/// The keys the caller's tie-ups in force cover, with mode and current version.
pub async fn entitlements(state: &AppState, caller: &Caller) -> Result<Vec<Entitlement>, OpsError> {
    let now = state.clock.now_ms();
    let mut conn = state.store.conn().await?;
    let mut out = Vec::new();
    for t in tie_rows::list(&mut conn, Some(&caller.entity.id)).await? {
        if !policy_tie_up(&t).is_in_force(now) {
            continue;
        }
        for (alias, mode) in &t.keys {
            let Some(key) = key_rows::key(&mut conn, alias).await? else {
                continue;
            };
            // The version new work uses: active, not compromised, inside its
            // cryptoperiod.
            let current = key_rows::versions(&mut conn, alias)
                .await?
                .into_iter()
                .find(|v| v.state == KeyState::Active)
                .filter(|v| policy_key(&key, v).lifecycle(true, now).is_none());
            out.push(Entitlement {
                key,
                mode: *mode,
                current,
                valid_until: t.valid_until,
                tie_up_id: t.id.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.key.alias.cmp(&b.key.alias));
    Ok(out)
}

/// Which issuer a consent request is about: the caller itself, or for an officer
/// the issuer named.
async fn consenting_issuer(
    conn: &mut Conn,
    caller: &Caller,
    named: &str,
) -> Result<crate::store::entities::EntityRecord, OpsError> {
    if caller.entity.kind == EntityKind::Officer {
        if named.is_empty() {
            return Err(invalid(
                "an officer records a consent on an issuer's behalf: name the issuer",
            ));
        }
        return entities::get(conn, named)
            .await?
            .ok_or_else(|| invalid(format!("unknown issuer {named:?}")));
    }
    if !named.is_empty() && named != caller.entity.id {
        return Err(OpsError::Denied(brandkms_policy::DenyReason::NotIssuersKey));
    }
    Ok(caller.entity.clone())
}

/// Grants (`grant = true`) or revokes a consent.
pub async fn set_consent(
    state: &AppState,
    caller: &Caller,
    issuer: &str,
    third_party: &str,
    alias: &str,
    grant: bool,
) -> Result<ConsentRecord, OpsError> {
    let operation = if grant {
        "KeyDistribution/GrantConsent"
    } else {
        "KeyDistribution/RevokeConsent"
    };
    let mut conn = state.store.conn().await?;
    let issuer = consenting_issuer(&mut conn, caller, issuer).await?;
    entities::get(&mut conn, third_party)
        .await?
        .ok_or_else(|| invalid(format!("unknown third party {third_party:?}")))?;
    key_rows::key(&mut conn, alias)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no key {alias:?}")))?;
    let tie_ups: Vec<_> = tie_rows::list(&mut conn, Some(&issuer.id))
        .await?
        .iter()
        .map(policy_tie_up)
        .collect();
    drop(conn);
    if let Decision::Deny(reason) = can_consent(&policy_entity(&issuer), alias, &tie_ups) {
        return Err(OpsError::Denied(reason));
    }
    let now = state.clock.now_ms();
    let event = caller
        .event_about(
            operation,
            format!("issuer {} third party {third_party}", issuer.id),
        )
        .key(alias, None);
    let (issuer_id, third_party, alias, me) = (
        issuer.id.clone(),
        third_party.to_string(),
        alias.to_string(),
        caller.entity.id.clone(),
    );
    state
        .write_serial(event, move |tx| {
            Box::pin(async move {
                if grant {
                    rows::grant(
                        tx,
                        &ConsentRecord {
                            issuer: issuer_id.clone(),
                            third_party: third_party.clone(),
                            alias: alias.clone(),
                            granted_by: me,
                            granted_at: now,
                            revoked_by: None,
                            revoked_at: None,
                        },
                    )
                    .await?;
                } else if !rows::revoke(tx, &issuer_id, &third_party, &alias, &me, now).await? {
                    return Err(OpsError::FailedPrecondition(format!(
                        "no standing consent of {issuer_id} for {third_party} on {alias:?}"
                    )));
                }
                rows::consents(tx, Some(&issuer_id))
                    .await?
                    .into_iter()
                    .find(|c| c.third_party == third_party && c.alias == alias)
                    .ok_or_else(|| OpsError::Internal("consent row vanished".into()))
            })
        })
        .await
}

/// Consents concerning the caller (officers: all).
pub async fn list_consents(
    state: &AppState,
    caller: &Caller,
) -> Result<Vec<ConsentRecord>, OpsError> {
    let mut conn = state.store.conn().await?;
    let scope = (caller.entity.kind != EntityKind::Officer).then_some(caller.entity.id.as_str());
    Ok(rows::consents(&mut conn, scope).await?)
}
