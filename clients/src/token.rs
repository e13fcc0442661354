//! A participant's own PKCS#11 token (SoftHSM2 in development, any module in
//! production): its RSA key pair, and the keys it receives from brandkms, unwrapped
//! inside the token. Software crypto here is limited to encoding the public key.

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rsa::pkcs8::EncodePublicKey;
use zeroize::Zeroizing;

/// Errors of the participant's token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A PKCS#11 call failed.
    #[error("token: {0}")]
    Pkcs11(#[from] cryptoki::error::Error),
    /// No token with that label.
    #[error("no token labelled {0:?}")]
    NotFound(String),
    /// Something the token returned is unusable.
    #[error("token: {0}")]
    Invalid(String),
}

/// A logged-in session on the participant's token.
pub struct Token {
    session: Session,
    _pkcs11: Pkcs11,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token")
    }
}

const RSA_LABEL: &str = "brandkms-participant/rsa";

fn oaep() -> PkcsOaepParams<'static> {
    PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    )
}

/// What a delivered key is wrapped under.
#[derive(Debug, Clone, Copy)]
pub enum Unwrapping<'a> {
    /// AES key wrap with padding under the transport key with this label.
    AesKwp(&'a str),
    /// RSA-OAEP under this participant's RSA key (marked trusted by the brand).
    RsaOaep,
}

impl Token {
    /// Opens the module, finds the token by label and logs in.
    pub fn open(module: &Path, label: &str, pin: &str) -> Result<Token, TokenError> {
        let pkcs11 = Pkcs11::new(module)?;
        pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        let mut slots = Vec::new();
        for s in pkcs11.get_slots_with_token()? {
            if pkcs11.get_token_info(s)?.label().trim_end() == label {
                slots.push(s);
            }
        }
        let slot = match slots.as_slice() {
            [one] => *one,
            [] => return Err(TokenError::NotFound(label.to_string())),
            _ => {
                return Err(TokenError::Invalid(format!(
                    "{} tokens are labelled {label:?}",
                    slots.len()
                )));
            }
        };
        let session = pkcs11.open_rw_session(slot)?;
        session.login(UserType::User, Some(&AuthPin::from(pin)))?;
        Ok(Token {
            session,
            _pkcs11: pkcs11,
        })
    }

    fn find(&self, label: &str, class: ObjectClass) -> Result<Option<ObjectHandle>, TokenError> {
        let found = self.session.find_objects(&[
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Class(class),
        ])?;
        Ok(found.into_iter().next())
    }

    /// The participant's RSA public key (SPKI DER), generating the key pair in the
    /// token on first use (private half sensitive, never extractable, unwrap only).
    pub fn rsa_public_key(&self) -> Result<Vec<u8>, TokenError> {
        let public = match self.find(RSA_LABEL, ObjectClass::PUBLIC_KEY)? {
            Some(h) => h,
            None => {
                let label = Attribute::Label(RSA_LABEL.as_bytes().to_vec());
                let (public, _) = self.session.generate_key_pair(
                    &Mechanism::RsaPkcsKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::ModulusBits(3072.into()),
                        Attribute::PublicExponent(vec![1, 0, 1]),
                        Attribute::Wrap(true),
                        label.clone(),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Unwrap(true),
                        Attribute::Decrypt(false),
                        Attribute::Sign(false),
                        label,
                    ],
                )?;
                public
            }
        };
        let attrs = self.session.get_attributes(
            public,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        let (mut n, mut e) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Modulus(m) => n = m,
                Attribute::PublicExponent(x) => e = x,
                _ => {}
            }
        }
        let key = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&n),
            rsa::BigUint::from_bytes_be(&e),
        )
        .map_err(|err| TokenError::Invalid(format!("RSA public key: {err}")))?;
        Ok(key
            .to_public_key_der()
            .map_err(|err| TokenError::Invalid(format!("SPKI: {err}")))?
            .as_bytes()
            .to_vec())
    }

    /// Unwraps a transport key (RSA-OAEP SHA-1) into the token as `label`,
    /// replacing an older one, and returns its KCV (E_K(0^16)[0..3], hex).
    pub fn store_transport_key(&self, wrapped: &[u8], label: &str) -> Result<String, TokenError> {
        let private = self
            .find(RSA_LABEL, ObjectClass::PRIVATE_KEY)?
            .ok_or_else(|| TokenError::Invalid("the RSA key pair is missing".into()))?;
        if let Some(old) = self.find(label, ObjectClass::SECRET_KEY)? {
            self.session.destroy_object(old)?;
        }
        let handle = self.session.unwrap_key(
            &Mechanism::RsaPkcsOaep(oaep()),
            private,
            wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Unwrap(true),
                Attribute::Encrypt(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )?;
        self.kcv(handle, &Mechanism::AesEcb, 16)
    }

    /// The transport key stored as `label`, if any.
    pub fn has_key(&self, label: &str) -> Result<bool, TokenError> {
        Ok(self.find(label, ObjectClass::SECRET_KEY)?.is_some())
    }

    /// Unwraps a delivered key into the token as `label` and returns its KCV
    /// (E_K(0^8)[0..3], hex).
    pub fn store_delivered_key(
        &self,
        under: Unwrapping<'_>,
        wrapped: &[u8],
        key_type: KeyType,
        label: &str,
    ) -> Result<String, TokenError> {
        let (mechanism, unwrapping) = match under {
            Unwrapping::AesKwp(transport_label) => (
                Mechanism::AesKeyWrapPad,
                self.find(transport_label, ObjectClass::SECRET_KEY)?
                    .ok_or_else(|| {
                        TokenError::Invalid(format!(
                            "no transport key {transport_label:?} in the token"
                        ))
                    })?,
            ),
            Unwrapping::RsaOaep => (
                Mechanism::RsaPkcsOaep(oaep()),
                self.find(RSA_LABEL, ObjectClass::PRIVATE_KEY)?
                    .ok_or_else(|| TokenError::Invalid("the RSA key pair is missing".into()))?,
            ),
        };
        if let Some(old) = self.find(label, ObjectClass::SECRET_KEY)? {
            self.session.destroy_object(old)?;
        }
        let handle = self.session.unwrap_key(
            &mechanism,
            unwrapping,
            wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(key_type),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Derive(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )?;
        let ecb = if key_type == KeyType::DES {
            Mechanism::DesEcb
        } else {
            Mechanism::Des3Ecb
        };
        self.kcv(handle, &ecb, 8)
    }

    /// A card key from the delivered master `label`, computed in this token:
    /// `E_KM(CID) || E_KM(CID xor FF..FF)` (docs/protocol.md §1). For personalising a
    /// card, which must hold the key itself.
    pub fn diversify(&self, label: &str, cid: &[u8; 8]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        let master = self.find(label, ObjectClass::SECRET_KEY)?.ok_or_else(|| {
            TokenError::Invalid(format!("no key {label:?} in the token: run issuer sync"))
        })?;
        let key_type = self
            .session
            .get_attributes(master, &[AttributeType::KeyType])?
            .into_iter()
            .find_map(|a| match a {
                Attribute::KeyType(t) => Some(t),
                _ => None,
            });
        let ecb = if key_type == Some(KeyType::DES) {
            Mechanism::DesEcb
        } else {
            Mechanism::Des3Ecb
        };
        let mut data = Vec::with_capacity(16);
        data.extend_from_slice(cid);
        data.extend(cid.iter().map(|b| !*b));
        Ok(Zeroizing::new(self.session.encrypt(&ecb, master, &data)?))
    }

    /// SoftHSM2 sets no CKA_CHECK_VALUE on unwrapped keys: encrypt a zero block.
    fn kcv(
        &self,
        handle: ObjectHandle,
        ecb: &Mechanism<'_>,
        block: usize,
    ) -> Result<String, TokenError> {
        let out = self.session.encrypt(ecb, handle, &vec![0u8; block])?;
        out.get(..3)
            .map(hex::encode_upper)
            .ok_or_else(|| TokenError::Invalid("short ECB block".into()))
    }
}
