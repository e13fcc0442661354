//! Operations on a pooled session. Every key is addressed by its `CKA_ID`; handles
//! are looked up once and cached, because finding an object gets slower as the
//! token fills (DESIGN.md §8).

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::raw::{CMAC_LEN, EcbDerive};
use super::spec::{
    KeySpec, OBJECT_ID_LEN, ObjectId, Usage, derived_des2_template, token_key_template,
};
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
    session: &'a Session,
    inner: &'a Inner,
}

impl std::fmt::Debug for HsmSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HsmSession")
    }
}

/// A key derived into a session object (`K_C`, `K_S`); destroyed when dropped.
pub struct SessionKey<'a> {
    handle: ObjectHandle,
    session: &'a Session,
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
    pub(super) fn new(session: &'a Session, inner: &'a Inner) -> Self {
        HsmSession { session, inner }
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

    /// Generates a persistent secret key with a random `CKA_ID` and records nothing:
    /// the caller writes the row, and destroys the object if that fails.
    pub fn generate(&self, spec: &KeySpec, label: &str) -> Result<GeneratedKey, HsmError> {
        spec.validate()?;
        let id = self.new_object_id()?;
        let template = token_key_template(spec, &id, label);
        let handle = self
            .session
            .generate_key(&spec.algorithm.keygen(), &template)
            .map_err(|e| mechanism_hint(e.into(), spec))?;
        lock(&self.inner.handles).insert(id, handle);
        let kcv = match self.check_value(handle) {
            Ok(kcv) => kcv,
            Err(e) => {
                self.destroy(&id)?;
                return Err(e.with_id(id));
            }
        };
        Ok(GeneratedKey {
            id,
            kcv,
            fingerprint: None,
        })
    }

    /// Generates a session object with a random `CKA_ID` (gone when its session
    /// closes at the latest): for probes that must leave nothing behind.
    pub fn generate_ephemeral(&self, spec: &KeySpec) -> Result<ObjectId, HsmError> {
        spec.validate()?;
        let id = self.new_object_id()?;
        let template: Vec<Attribute> = token_key_template(spec, &id, "brandkms-probe")
            .into_iter()
            .map(|a| match a {
                Attribute::Token(_) => Attribute::Token(false),
                other => other,
            })
            .collect();
        let handle = self
            .session
            .generate_key(&spec.algorithm.keygen(), &template)
            .map_err(|e| mechanism_hint(e.into(), spec))?;
        lock(&self.inner.handles).insert(id, handle);
        Ok(id)
    }

    /// Imports a secret key in clear. Tests only: brand keys are always generated.
    #[cfg(any(test, feature = "testing"))]
    pub fn import_for_tests(
        &self,
        spec: &KeySpec,
        label: &str,
        value: &[u8],
    ) -> Result<GeneratedKey, HsmError> {
        let id = self.new_object_id()?;
        let template = super::spec::imported_key_template(spec, &id, label, value);
        let handle = self.session.create_object(&template)?;
        lock(&self.inner.handles).insert(id, handle);
        let kcv = self.check_value(handle).map_err(|e| e.with_id(id))?;
        Ok(GeneratedKey {
            id,
            kcv,
            fingerprint: None,
        })
    }

    /// The key's `CKA_CHECK_VALUE`, which the token computes itself: for DES, TDES
    /// and AES keys the first 3 bytes of the key encrypting a zero block.
    fn check_value(&self, handle: ObjectHandle) -> Result<Kcv, HsmError> {
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
        let found = self.session.find_objects(&[Attribute::Id(id.0.to_vec())])?;
        let handle = match found.as_slice() {
            [] => return Err(HsmError::ObjectNotFound(*id)),
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
    fn with_key<T>(
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

    /// HMAC-SHA-256 of `data` with a generic-secret key.
    pub fn hmac_sha256(&self, key: &ObjectId, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.with_key(key, |h| {
            Ok(self.session.sign(&Mechanism::Sha256Hmac, h, data)?)
        })
    }

    /// Verifies an HMAC-SHA-256 in the token. `Ok(false)` when it does not match.
    pub fn hmac_sha256_verify(
        &self,
        key: &ObjectId,
        data: &[u8],
        mac: &[u8],
    ) -> Result<bool, HsmError> {
        self.with_key(key, |h| {
            verified(self.session.verify(&Mechanism::Sha256Hmac, h, data, mac))
        })
    }

    /// AES-256-GCM encryption with a token key: a fresh 12-byte IV from the token,
    /// `aad` bound; returns IV || ciphertext || 16-byte tag.
    pub fn aes_gcm_seal(
        &self,
        key: &ObjectId,
        aad: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let mut iv = self.random(GCM_IV_LEN)?;
        let sealed = self.with_key(key, |h| {
            let mut iv = iv.clone();
            let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
            Ok(self.session.encrypt(&Mechanism::AesGcm(params), h, data)?)
        })?;
        iv.extend_from_slice(&sealed);
        Ok(iv)
    }

    /// Opens what [`HsmSession::aes_gcm_seal`] sealed; `Ok(None)` when the tag or
    /// the associated data does not match.
    pub fn aes_gcm_open(
        &self,
        key: &ObjectId,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, HsmError> {
        let Some((iv, body)) = sealed.split_at_checked(GCM_IV_LEN) else {
            return Ok(None);
        };
        self.with_key(key, |h| {
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
            match self.session.decrypt(&Mechanism::AesGcm(params), h, body) {
                Ok(plain) => Ok(Some(Zeroizing::new(plain))),
                Err(cryptoki::error::Error::Pkcs11(
                    RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                    _,
                )) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// TDES-ECB encryption of whole blocks with a token key.
    pub fn tdes_ecb_encrypt(&self, key: &ObjectId, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.with_key(key, |h| self.tdes_ecb_encrypt_handle(h, data))
    }

    /// TDES-ECB decryption of whole blocks with a token key.
    pub fn tdes_ecb_decrypt(&self, key: &ObjectId, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        blocks(data)?;
        self.with_key(key, |h| {
            Ok(self.session.decrypt(&Mechanism::Des3Ecb, h, data)?)
        })
    }

    /// TDES-ECB encryption with a key handle (a session key).
    pub fn tdes_ecb_encrypt_handle(
        &self,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        blocks(data)?;
        Ok(self.session.encrypt(&Mechanism::Des3Ecb, key, data)?)
    }

    /// TDES-CBC encryption, no padding, with a key handle.
    pub fn tdes_cbc_encrypt(
        &self,
        key: ObjectHandle,
        iv: [u8; 8],
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        blocks(data)?;
        Ok(self.session.encrypt(&Mechanism::Des3Cbc(iv), key, data)?)
    }

    /// TDES-CBC decryption, no padding, with a key handle.
    pub fn tdes_cbc_decrypt(
        &self,
        key: ObjectHandle,
        iv: [u8; 8],
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        blocks(data)?;
        Ok(self.session.decrypt(&Mechanism::Des3Cbc(iv), key, data)?)
    }

    /// Derives a two-key TDES session object `E_base(data)` (16 data bytes), with the
    /// usage of a card key `K_C`. Destroyed when the returned value is dropped.
    pub fn derive_card_key(
        &self,
        master: &ObjectId,
        mechanism: EcbDerive,
        data: &[u8; 16],
    ) -> Result<SessionKey<'a>, HsmError> {
        let template = derived_des2_template(Usage::CARD_KEY);
        let handle = self.with_key(master, |h| {
            self.inner
                .raw
                .derive_ecb_encrypt_data(self.session, h, mechanism, data, &template)
                .map_err(|e| des_hint(e, mechanism))
        })?;
        Ok(SessionKey {
            handle,
            session: self.session,
        })
    }

    /// Derives a session key `K_S = E_KC(data)` from a derived card key.
    pub fn derive_session_key(
        &self,
        card_key: &SessionKey<'_>,
        data: &[u8; 16],
    ) -> Result<SessionKey<'a>, HsmError> {
        let template = derived_des2_template(Usage::SESSION_KEY);
        let handle = self.inner.raw.derive_ecb_encrypt_data(
            self.session,
            card_key.handle(),
            EcbDerive::Des3,
            data,
            &template,
        )?;
        Ok(SessionKey {
            handle,
            session: self.session,
        })
    }

    /// TDES-CMAC (8 bytes) with a key handle.
    pub fn tdes_cmac(&self, key: ObjectHandle, data: &[u8]) -> Result<[u8; CMAC_LEN], HsmError> {
        self.inner.raw.des3_cmac(self.session, key, data)
    }

    /// Verifies a TDES-CMAC in the token. `Ok(false)` when it does not match.
    pub fn tdes_cmac_verify(
        &self,
        key: ObjectHandle,
        data: &[u8],
        mac: &[u8; CMAC_LEN],
    ) -> Result<bool, HsmError> {
        self.inner
            .raw
            .des3_cmac_verify(self.session, key, data, mac)
    }

    /// Wraps `key` under the AES key `wrapping` with `CKM_AES_KEY_WRAP_PAD` (RFC 5649).
    /// The token refuses keys that are not `CKA_EXTRACTABLE`.
    pub fn wrap_aes_kwp(&self, wrapping: &ObjectId, key: &ObjectId) -> Result<Vec<u8>, HsmError> {
        let key_handle = self.find(key)?;
        self.with_key(wrapping, |w| {
            Ok(self
                .session
                .wrap_key(&Mechanism::AesKeyWrapPad, w, key_handle)?)
        })
    }

    /// Imports an RSA public key (big-endian modulus and exponent) as a session
    /// object that can only wrap; destroyed when the returned value is dropped.
    pub fn import_rsa_public(
        &self,
        modulus: &[u8],
        exponent: &[u8],
    ) -> Result<SessionKey<'a>, HsmError> {
        let handle = self
            .session
            .create_object(&super::spec::rsa_public_wrap_template(modulus, exponent))?;
        Ok(SessionKey {
            handle,
            session: self.session,
        })
    }

    /// Wraps `key` under an RSA public key with RSA-OAEP (SHA-1, MGF1-SHA-1, no
    /// label: what SoftHSM2 accepts for wrapping). The token refuses keys that are
    /// not `CKA_EXTRACTABLE`.
    pub fn wrap_rsa_oaep(
        &self,
        public: &SessionKey<'_>,
        key: &ObjectId,
    ) -> Result<Vec<u8>, HsmError> {
        let params = Self::oaep_sha1();
        self.with_key(key, |k| {
            Ok(self
                .session
                .wrap_key(&Mechanism::RsaPkcsOaep(params), public.handle(), k)?)
        })
    }

    /// An RSA key pair with a fresh `CKA_ID` on the private half: the public
    /// half a session object with `public_usage`; the private half sensitive,
    /// never extractable, a token object when `token`, with `private_usage`.
    fn rsa_pair(
        &self,
        bits: u64,
        token: bool,
        public_usage: &[Attribute],
        mut private: Vec<Attribute>,
    ) -> Result<(ObjectId, ObjectHandle, ObjectHandle), HsmError> {
        let id = self.new_object_id()?;
        let mut public = vec![
            Attribute::Token(false),
            Attribute::ModulusBits(bits.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
        ];
        public.extend_from_slice(public_usage);
        private.extend([
            Attribute::Token(token),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Id(id.0.to_vec()),
        ]);
        let (pub_handle, priv_handle) =
            self.session
                .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
        Ok((id, pub_handle, priv_handle))
    }

    /// Generates a settlement RSA key pair: the private half a token object
    /// (sensitive, never extractable, decrypt and sign only) labelled `label`;
    /// the public half is read and dropped (the private object carries the
    /// modulus and exponent, so the public key is always read from the token).
    pub fn generate_rsa(&self, bits: u64, label: &str) -> Result<GeneratedRsa, HsmError> {
        let (id, pub_handle, priv_handle) = self.rsa_pair(
            bits,
            true,
            &[Attribute::Encrypt(true), Attribute::Verify(true)],
            vec![
                Attribute::Decrypt(true),
                Attribute::Sign(true),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )?;
        self.session.destroy_object(pub_handle)?;
        lock(&self.inner.handles).insert(id, priv_handle);
        let (modulus, exponent) = self.rsa_public(&id)?;
        Ok(GeneratedRsa {
            id,
            modulus,
            exponent,
        })
    }

    /// The modulus and public exponent of an RSA private key object.
    pub fn rsa_public(&self, id: &ObjectId) -> Result<(Vec<u8>, Vec<u8>), HsmError> {
        self.with_key(id, |h| {
            let attrs = self
                .session
                .get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])?;
            let (mut modulus, mut exponent) = (Vec::new(), Vec::new());
            for a in attrs {
                match a {
                    Attribute::Modulus(m) => modulus = m,
                    Attribute::PublicExponent(e) => exponent = e,
                    _ => {}
                }
            }
            if modulus.is_empty() || exponent.is_empty() {
                return Err(HsmError::InvalidInput("not an RSA key object"));
            }
            Ok((modulus, exponent))
        })
    }

    /// RSA-OAEP decryption with the private key `id`. `Ok(None)` for every
    /// ciphertext that does not decrypt (length, padding, another key's):
    /// callers must answer all of them alike. A ciphertext is exactly as long as
    /// the modulus; SoftHSM2 reports other lengths as a general failure, so they
    /// are refused here first.
    pub fn rsa_oaep_decrypt(
        &self,
        id: &ObjectId,
        hash: OaepHash,
        ciphertext: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, HsmError> {
        let (modulus, _) = self.rsa_public(id)?;
        if ciphertext.len() != modulus.len() {
            return Ok(None);
        }
        self.with_key(id, |h| {
            match self
                .session
                .decrypt(&Mechanism::RsaPkcsOaep(hash.params()), h, ciphertext)
            {
                Ok(plain) => Ok(Some(Zeroizing::new(plain))),
                Err(cryptoki::error::Error::Pkcs11(rv, _)) if decryption_refusal(rv) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) signature with the private key `id`.
    pub fn rsa_pss_sign(&self, id: &ObjectId, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.with_key(id, |h| {
            Ok(self
                .session
                .sign(&Mechanism::Sha256RsaPkcsPss(pss_params()), h, data)?)
        })
    }

    /// Verifies an RSA-PSS (SHA-256) signature under a public key, in the token.
    pub fn rsa_pss_verify(
        &self,
        modulus: &[u8],
        exponent: &[u8],
        data: &[u8],
        signature: &[u8],
    ) -> Result<bool, HsmError> {
        let public = self.session.create_object(&[
            Attribute::Class(cryptoki::object::ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::RSA),
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::Modulus(modulus.to_vec()),
            Attribute::PublicExponent(exponent.to_vec()),
        ])?;
        let public = SessionKey {
            handle: public,
            session: self.session,
        };
        match verified(self.session.verify(
            &Mechanism::Sha256RsaPkcsPss(pss_params()),
            public.handle(),
            data,
            signature,
        )) {
            Err(HsmError::Pkcs11 {
                rv: RvError::SignatureLenRange,
                ..
            }) => Ok(false),
            other => other,
        }
    }

    /// An ephemeral RSA key pair (session objects) and one OAEP ciphertext made
    /// under it in the token: for measuring the raw decryption rate.
    pub fn rsa_bench_pair(
        &self,
        bits: u64,
        hash: OaepHash,
    ) -> Result<(ObjectId, Vec<u8>), HsmError> {
        let (id, pub_handle, priv_handle) = self.rsa_pair(
            bits,
            false,
            &[Attribute::Encrypt(true)],
            vec![Attribute::Decrypt(true)],
        )?;
        let public = SessionKey {
            handle: pub_handle,
            session: self.session,
        };
        let ciphertext = self.session.encrypt(
            &Mechanism::RsaPkcsOaep(hash.params()),
            public.handle(),
            b"4111111111111111",
        )?;
        lock(&self.inner.handles).insert(id, priv_handle);
        Ok((id, ciphertext))
    }

    /// Whether the token decrypts RSA-OAEP with SHA-256 (SoftHSM2 2.6 does not:
    /// SHA-1 only); probed on an ephemeral key pair, which is destroyed.
    pub fn probe_oaep_sha256(&self) -> Result<bool, HsmError> {
        let Ok((id, ciphertext)) = self.rsa_bench_pair(2048, OaepHash::Sha256) else {
            return Ok(false);
        };
        let works = self
            .rsa_oaep_decrypt(&id, OaepHash::Sha256, &ciphertext)
            .map(|p| p.is_some());
        self.destroy(&id)?;
        works
    }

    /// Generates an RSA key pair (private half sensitive, never extractable, able to
    /// unwrap) and returns the private half's `CKA_ID` with the public modulus and
    /// exponent. Tests only: it stands for a participant's own token.
    #[cfg(any(test, feature = "testing"))]
    pub fn generate_rsa_for_tests(
        &self,
        bits: u64,
    ) -> Result<(ObjectId, Vec<u8>, Vec<u8>), HsmError> {
        let (id, pub_handle, priv_handle) = self.rsa_pair(
            bits,
            false,
            &[Attribute::Wrap(true)],
            vec![Attribute::Unwrap(true), Attribute::Decrypt(false)],
        )?;
        lock(&self.inner.handles).insert(id, priv_handle);
        let attrs = self.session.get_attributes(
            pub_handle,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        let (mut modulus, mut exponent) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Modulus(m) => modulus = m,
                Attribute::PublicExponent(e) => exponent = e,
                _ => {}
            }
        }
        self.session.destroy_object(pub_handle)?;
        Ok((id, modulus, exponent))
    }

    /// Unwraps a key into a session object with a fresh `CKA_ID` (usable to
    /// encrypt and unwrap), as a participant does in its own token, and returns the
    /// id and the key's check value computed by encrypting a zero block (SoftHSM2
    /// sets no `CKA_CHECK_VALUE` on unwrapped keys). Tests only.
    #[cfg(any(test, feature = "testing"))]
    pub fn unwrap_for_tests(
        &self,
        unwrapping: &ObjectId,
        wrapped: &[u8],
        rsa_oaep: bool,
        key_type: cryptoki::object::KeyType,
    ) -> Result<(ObjectId, Kcv), HsmError> {
        use cryptoki::object::KeyType;
        let id = self.new_object_id()?;
        let template = [
            Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Unwrap(key_type == KeyType::AES),
            Attribute::Id(id.0.to_vec()),
        ];
        let params = Self::oaep_sha1();
        let mechanism = if rsa_oaep {
            Mechanism::RsaPkcsOaep(params)
        } else {
            Mechanism::AesKeyWrapPad
        };
        let handle = self.with_key(unwrapping, |u| {
            Ok(self.session.unwrap_key(&mechanism, u, wrapped, &template)?)
        })?;
        lock(&self.inner.handles).insert(id, handle);
        let (ecb, zero) = if key_type == KeyType::AES {
            (Mechanism::AesEcb, &[0u8; 16][..])
        } else {
            (Mechanism::Des3Ecb, &[0u8; 8][..])
        };
        let block = self.session.encrypt(&ecb, handle, zero)?;
        let kcv = Kcv::try_from(block.get(..3).unwrap_or_default())
            .map_err(|_| HsmError::InvalidInput("ECB returned a short block"))?;
        Ok((id, kcv))
    }

    /// RSA-OAEP parameters for SHA-1 (what SoftHSM2 accepts for decryption).
    pub fn oaep_sha1() -> PkcsOaepParams<'static> {
        PkcsOaepParams::new(
            MechanismType::SHA1,
            PkcsMgfType::MGF1_SHA1,
            PkcsOaepSource::empty(),
        )
    }
}

fn pss_params() -> cryptoki::mechanism::rsa::PkcsPssParams {
    cryptoki::mechanism::rsa::PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32u64.into(),
    }
}

/// What the token answers to a ciphertext it will not decrypt. SoftHSM2
/// reports an OAEP padding failure as `CKR_GENERAL_ERROR` (measured: an
/// all-zero ciphertext of modulus length), so a general error during an RSA
/// decryption counts as a refusal too: the answer must not tell them apart.
fn decryption_refusal(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::ArgumentsBad
            | RvError::GeneralError
            | RvError::FunctionFailed
    )
}

/// The hash of an RSA-OAEP key (and its MGF1), part of the key's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OaepHash {
    /// SHA-1 / MGF1-SHA-1 (SoftHSM2 2.6).
    Sha1,
    /// SHA-256 / MGF1-SHA-256.
    Sha256,
}

impl OaepHash {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OaepHash::Sha1 => "sha1",
            OaepHash::Sha256 => "sha256",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<OaepHash> {
        match s {
            "sha1" => Some(OaepHash::Sha1),
            "sha256" => Some(OaepHash::Sha256),
            _ => None,
        }
    }

    fn params(self) -> PkcsOaepParams<'static> {
        match self {
            OaepHash::Sha1 => PkcsOaepParams::new(
                MechanismType::SHA1,
                PkcsMgfType::MGF1_SHA1,
                PkcsOaepSource::empty(),
            ),
            OaepHash::Sha256 => PkcsOaepParams::new(
                MechanismType::SHA256,
                PkcsMgfType::MGF1_SHA256,
                PkcsOaepSource::empty(),
            ),
        }
    }
}

/// A settlement key pair just generated.
#[derive(Clone, Debug)]
pub struct GeneratedRsa {
    /// The private half's `CKA_ID`.
    pub id: ObjectId,
    /// The modulus, big-endian.
    pub modulus: Vec<u8>,
    /// The public exponent, big-endian.
    pub exponent: Vec<u8>,
}

fn blocks(data: &[u8]) -> Result<(), HsmError> {
    if data.is_empty() || !data.len().is_multiple_of(8) {
        return Err(HsmError::InvalidInput(
            "TDES input must be a non-empty multiple of 8 bytes",
        ));
    }
    Ok(())
}

fn verified(r: cryptoki::error::Result<()>) -> Result<bool, HsmError> {
    match r {
        Ok(()) => Ok(true),
        Err(cryptoki::error::Error::Pkcs11(
            RvError::SignatureInvalid | RvError::SignatureLenRange,
            _,
        )) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

const GCM_IV_LEN: usize = 12;
const GCM_TAG_BITS: u64 = 128;

const LEGACY_HINT: &str = "; with SoftHSM2, single DES needs OpenSSL's legacy provider: set OPENSSL_CONF to a config that activates the default and legacy providers before the module loads (softhsm/mktoken.sh and `kms init --dev` write one)";

fn mechanism_hint(e: HsmError, spec: &KeySpec) -> HsmError {
    if e.rv() == Some(RvError::MechanismInvalid) {
        return HsmError::MechanismUnavailable {
            mechanism: spec.algorithm.keygen_name(),
            hint: if spec.algorithm == super::SecretAlgorithm::Des {
                LEGACY_HINT
            } else {
                ""
            },
        };
    }
    e
}

fn des_hint(e: HsmError, mechanism: EcbDerive) -> HsmError {
    if e.rv() == Some(RvError::MechanismInvalid) {
        return match mechanism {
            EcbDerive::Des => HsmError::MechanismUnavailable {
                mechanism: "CKM_DES_ECB_ENCRYPT_DATA",
                hint: LEGACY_HINT,
            },
            EcbDerive::Des3 => HsmError::MechanismUnavailable {
                mechanism: "CKM_DES3_ECB_ENCRYPT_DATA",
                hint: "",
            },
        };
    }
    e
}

impl HsmError {
    fn with_id(self, id: ObjectId) -> HsmError {
        match self {
            HsmError::NoCheckValue(_) => HsmError::NoCheckValue(id),
            other => other,
        }
    }
}
