//! Operations on a pooled session. Every key is addressed by its `CKA_ID`; handles
//! are looked up once and cached, because finding an object gets slower as the
//! token fills (docs/design.md §8).

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;

use super::spec::{OBJECT_ID_LEN, ObjectId};
use super::{HsmError, Inner, lock};

/// A key check value: the first 3 bytes of the key encrypting a zero block.
pub type Kcv = [u8; 3];

/// A key the token has just generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneratedKey {
    /// Its random `CKA_ID`.
    pub id: ObjectId,
    /// Its check value, computed by the token.
    pub kcv: Kcv,
    /// RSA keys: the SHA-256 fingerprint of the public key (SPKI DER),
    /// recorded (hex) instead of a check value.
    pub fingerprint: Option<[u8; 32]>,
}

/// A token object as reconciliation sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenObject {
    /// `CKA_ID` (objects without a 16-byte id are not brandkms's and are skipped).
    pub id: ObjectId,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_SENSITIVE`, where the object has it.
    pub sensitive: Option<bool>,
    /// `CKA_EXTRACTABLE`, where the object has it.
    pub extractable: Option<bool>,
}

/// A logged-in session lent by the pool for the length of one call.
pub struct HsmSession<'a> {
    pub(super) session: &'a Session,
    pub(super) inner: &'a Inner,
}

impl std::fmt::Debug for HsmSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HsmSession")
    }
}

/// A key derived into a session object (`K_C`, `K_S`); destroyed when dropped.
pub struct SessionKey<'a> {
    pub(super) handle: ObjectHandle,
    pub(super) session: &'a Session,
}

impl std::fmt::Debug for SessionKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKey({})", self.handle)
    }
}

impl SessionKey<'_> {
    /// The object's handle, valid until this value is dropped.
    pub fn handle(&self) -> ObjectHandle {
        self.handle
    }
}

impl Drop for SessionKey<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.session.destroy_object(self.handle) {
            tracing::warn!(error = %e, "could not destroy a derived session key");
        }
    }
}

impl<'a> HsmSession<'a> {
    /// Wraps a pooled session and the process's shared state.
    pub(super) fn new(session: &'a Session, inner: &'a Inner) -> Self {
        HsmSession { session, inner }
    }

    /// Times one token operation of `family` (`derive`, `cmac`, `hmac`,
    /// `tdes`, `aes_gcm`, `rsa_oaep`, `rsa_pss`, `keygen`, `wrap`, `unwrap`,
    /// `find`, `data`) into `brandkms_hsm_op_seconds{family}` when dropped.
    pub(super) fn timer(&self, family: &'static str) -> OpTimer {
        OpTimer {
            family,
            started: std::time::Instant::now(),
        }
    }

    /// Random bytes from the token.
    pub fn random(&self, len: usize) -> Result<Vec<u8>, HsmError> {
        let mut out = vec![0u8; len];
        self.session.generate_random_slice(&mut out)?;
        Ok(out)
    }

    /// A fresh random `CKA_ID`.
    pub fn new_object_id(&self) -> Result<ObjectId, HsmError> {
        let mut id = [0u8; OBJECT_ID_LEN];
        self.session.generate_random_slice(&mut id)?;
        Ok(ObjectId(id))
    }

    /// The key's `CKA_CHECK_VALUE`, which the token computes itself: for DES, TDES
    /// and AES keys the first 3 bytes of the key encrypting a zero block.
    pub(super) fn check_value(&self, handle: ObjectHandle) -> Result<Kcv, HsmError> {
        let attrs = self
            .session
            .get_attributes(handle, &[AttributeType::CheckValue])?;
        for attr in attrs {
            if let Attribute::CheckValue(v) = attr
                && let Some(kcv) = v.get(..3).and_then(|k| Kcv::try_from(k).ok())
            {
                return Ok(kcv);
            }
        }
        Err(HsmError::NoCheckValue(ObjectId([0; OBJECT_ID_LEN])))
    }

    /// The key's check value, looked up by `CKA_ID`.
    pub fn kcv(&self, id: &ObjectId) -> Result<Kcv, HsmError> {
        let handle = self.find(id)?;
        self.check_value(handle).map_err(|e| e.with_id(*id))
    }

    /// The handle of the one object with this `CKA_ID`; fails on zero or several.
    pub fn find(&self, id: &ObjectId) -> Result<ObjectHandle, HsmError> {
        if let Some(h) = lock(&self.inner.handles).get(id) {
            return Ok(*h);
        }
        let _timer = self.timer("find");
        let found = self.session.find_objects(&[Attribute::Id(id.0.to_vec())])?;
        let handle = match found.as_slice() {
            // A session that is not logged in finds no private object: a lost
            // login must not read as a missing key (a destruction would record
            // a key destroyed that still exists).
            [] => {
                let state = self.session.get_session_info()?.session_state();
                if state != cryptoki::session::SessionState::RwUser {
                    return Err(HsmError::Pkcs11 {
                        function: cryptoki::context::Function::FindObjects,
                        rv: cryptoki::error::RvError::UserNotLoggedIn,
                    });
                }
                return Err(HsmError::ObjectNotFound(*id));
            }
            [one] => *one,
            many => {
                return Err(HsmError::AmbiguousObject {
                    id: *id,
                    count: many.len(),
                });
            }
        };
        lock(&self.inner.handles).insert(*id, handle);
        Ok(handle)
    }

    /// Runs `op` with the key's handle; a stale cached handle is looked up again once.
    pub(super) fn with_key<T>(
        &self,
        id: &ObjectId,
        op: impl Fn(ObjectHandle) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let handle = self.find(id)?;
        match op(handle) {
            Err(e)
                if matches!(
                    e.rv(),
                    Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
                ) =>
            {
                lock(&self.inner.handles).remove(id);
                op(self.find(id)?)
            }
            other => other,
        }
    }

    /// Destroys the object with this `CKA_ID`.
    pub fn destroy(&self, id: &ObjectId) -> Result<(), HsmError> {
        let handle = self.find(id)?;
        lock(&self.inner.handles).remove(id);
        self.session.destroy_object(handle)?;
        Ok(())
    }

    /// Makes the key `id` non-extractable for good (`CKA_EXTRACTABLE` may only
    /// go from true to false): after a transport key's single delivery, nothing
    /// wraps it out of the token again.
    pub fn seal_extraction(&self, id: &ObjectId) -> Result<(), HsmError> {
        let handle = self.find(id)?;
        self.session
            .update_attributes(handle, &[Attribute::Extractable(false)])?;
        Ok(())
    }

    /// Whether the key `id` may still be wrapped out of the token.
    pub fn is_extractable(&self, id: &ObjectId) -> Result<bool, HsmError> {
        let handle = self.find(id)?;
        let found = self
            .session
            .get_attributes(handle, &[AttributeType::Extractable])?;
        Ok(found
            .iter()
            .any(|a| matches!(a, Attribute::Extractable(true))))
    }

    /// True when an object with this `CKA_ID` exists (and only one).
    pub fn exists(&self, id: &ObjectId) -> Result<bool, HsmError> {
        lock(&self.inner.handles).remove(id);
        match self.find(id) {
            Ok(_) => Ok(true),
            Err(HsmError::ObjectNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every token object whose label starts with `prefix`, with its protection flags.
    pub fn list_objects(&self, prefix: &str) -> Result<Vec<TokenObject>, HsmError> {
        let mut out = Vec::new();
        for handle in self.session.find_objects(&[Attribute::Token(true)])? {
            let attrs = self.session.get_attributes(
                handle,
                &[
                    AttributeType::Id,
                    AttributeType::Label,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )?;
            let (mut id, mut label, mut sensitive, mut extractable) = (None, None, None, None);
            for attr in attrs {
                match attr {
                    Attribute::Id(v) => id = v.try_into().ok().map(ObjectId),
                    Attribute::Label(v) => label = Some(String::from_utf8_lossy(&v).into_owned()),
                    Attribute::Sensitive(b) => sensitive = Some(b),
                    Attribute::Extractable(b) => extractable = Some(b),
                    _ => {}
                }
            }
            if let (Some(id), Some(label)) = (id, label)
                && label.starts_with(prefix)
            {
                out.push(TokenObject {
                    id,
                    label,
                    sensitive,
                    extractable,
                });
            }
        }
        out.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(out)
    }

    /// The protection and usage attributes of the object with this `CKA_ID`,
    /// as `Debug` strings (`Trusted(true)`, ...), those it has. Tests only.
    #[cfg(any(test, feature = "testing"))]
    pub fn attributes_for_tests(&self, id: &ObjectId) -> Result<Vec<String>, HsmError> {
        let handle = self.find(id)?;
        let kinds = [
            AttributeType::Trusted,
            AttributeType::Private,
            AttributeType::Modifiable,
            AttributeType::Copyable,
            AttributeType::Wrap,
            AttributeType::Encrypt,
            AttributeType::WrapWithTrusted,
            AttributeType::Extractable,
            AttributeType::Sensitive,
        ];
        let mut out = Vec::new();
        for kind in kinds {
            if let Ok(attrs) = self.session.get_attributes(handle, &[kind]) {
                out.extend(attrs.iter().map(|a| format!("{a:?}")));
            }
        }
        Ok(out)
    }

    /// Reads `CKA_VALUE`. Exists only so that tests can show the token refuses it
    /// for every brandkms key; nothing else in brandkms reads key values.
    #[cfg(any(test, feature = "testing"))]
    pub fn read_value_for_tests(&self, id: &ObjectId) -> Result<Vec<u8>, HsmError> {
        let handle = self.find(id)?;
        let attrs = self
            .session
            .get_attributes(handle, &[AttributeType::Value])?;
        match attrs.into_iter().next() {
            Some(Attribute::Value(v)) => Ok(v),
            _ => Err(HsmError::Pkcs11 {
                function: cryptoki::context::Function::GetAttributeValue,
                rv: RvError::AttributeSensitive,
            }),
        }
    }
}

/// `Ok(false)` for a signature or MAC the token says does not match.
pub(super) fn verified(r: cryptoki::error::Result<()>) -> Result<bool, HsmError> {
    match r {
        Ok(()) => Ok(true),
        Err(cryptoki::error::Error::Pkcs11(
            RvError::SignatureInvalid | RvError::SignatureLenRange,
            _,
        )) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl HsmError {
    /// Puts `id` into a [`HsmError::NoCheckValue`]; other errors pass unchanged.
    pub(super) fn with_id(self, id: ObjectId) -> HsmError {
        match self {
            HsmError::NoCheckValue(_) => HsmError::NoCheckValue(id),
            other => other,
        }
    }
}

/// The timer of one token operation (see [`HsmSession::timer`]).
#[derive(Debug)]
pub(super) struct OpTimer {
    family: &'static str,
    started: std::time::Instant,
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        metrics::histogram!("brandkms_hsm_op_seconds", "family" => self.family)
            .record(self.started.elapsed().as_secs_f64());
    }
}
