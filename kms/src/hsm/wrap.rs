//! Key wrapping: AES key wrap with padding (RFC 5649), RSA-OAEP under an
//! imported public key, and the test-only unwrap a participant's token does.

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::Attribute;

#[cfg(any(test, feature = "testing"))]
use super::session::Kcv;
use super::session::{GeneratedKey, HsmSession, SessionKey};
use super::spec::ObjectId;
use super::{HsmError, lock};

impl<'a> HsmSession<'a> {
    /// Wraps `key` under the AES key `wrapping` with `CKM_AES_KEY_WRAP_PAD` (RFC 5649).
    /// The token refuses keys that are not `CKA_EXTRACTABLE`.
    pub fn wrap_aes_kwp(&self, wrapping: &ObjectId, key: &ObjectId) -> Result<Vec<u8>, HsmError> {
        let _timer = self.timer("wrap");
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
        let _timer = self.timer("wrap");
        let params = Self::oaep_sha1();
        self.with_key(key, |k| {
            Ok(self
                .session
                .wrap_key(&Mechanism::RsaPkcsOaep(params), public.handle(), k)?)
        })
    }

    /// Imports a participant's RSA public key as a token object the security
    /// officer marks `CKA_TRUSTED` (call it in [`super::Hsm::as_security_officer`]):
    /// the one kind of key that may wrap keys marked `CKA_WRAP_WITH_TRUSTED`.
    /// A public object (the SO can make no other; a public key hides nothing),
    /// that wraps only, and that no one may change or copy. Its fingerprint is
    /// `fingerprint` (SHA-256 of the SPKI the officer checked).
    pub fn import_trusted_rsa_public(
        &self,
        modulus: &[u8],
        exponent: &[u8],
        fingerprint: [u8; 32],
        label: &str,
    ) -> Result<GeneratedKey, HsmError> {
        let id = self.new_object_id()?;
        let mut template = super::spec::rsa_public_wrap_template(modulus, exponent)
            .into_iter()
            .map(|a| match a {
                Attribute::Token(_) => Attribute::Token(true),
                other => other,
            })
            .collect::<Vec<_>>();
        template.extend([
            Attribute::Private(false),
            Attribute::Trusted(true),
            Attribute::Modifiable(false),
            Attribute::Copyable(false),
            Attribute::Id(id.0.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ]);
        let handle = self.session.create_object(&template)?;
        lock(&self.inner.handles).insert(id, handle);
        Ok(GeneratedKey {
            id,
            kcv: [0; 3],
            fingerprint: Some(fingerprint),
        })
    }

    /// Wraps `key` with RSA-OAEP (SHA-1, MGF1-SHA-1, no label) under the token
    /// RSA public key `wrapping` (a participant's trusted key).
    pub fn wrap_rsa_oaep_under(
        &self,
        wrapping: &ObjectId,
        key: &ObjectId,
    ) -> Result<Vec<u8>, HsmError> {
        let _timer = self.timer("wrap");
        let key_handle = self.find(key)?;
        let params = Self::oaep_sha1();
        self.with_key(wrapping, |w| {
            Ok(self
                .session
                .wrap_key(&Mechanism::RsaPkcsOaep(params), w, key_handle)?)
        })
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
