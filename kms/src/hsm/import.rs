//! Keys brought in from another HSM (issue 13): the import key pair (RSA-3072,
//! the private half sensitive, never extractable, unwrap only) and the unwrap
//! of a key wrapped under it straight into a token object, whose check value
//! the token computes; the object is destroyed when that value is not the one
//! the exporting party stated. No key byte passes through the service.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectHandle};

use super::keygen::GeneratedRsa;
use super::session::{GeneratedKey, HsmSession, Kcv};
use super::spec::{KeySpec, Usage, token_key_template};
use super::{HsmError, lock};

/// Size of the import key.
pub const IMPORT_KEY_BITS: u64 = 3072;

/// Why a wrapped key was not imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The token did not unwrap it (another key's ciphertext, cut short, not
    /// the size of the stated algorithm): one answer for all.
    #[error(
        "the wrapped key does not unwrap under this import key into a key of the stated algorithm"
    )]
    DoesNotUnwrap,
    /// It unwrapped, but its check value is not the one stated; the object
    /// was destroyed.
    #[error("the unwrapped key's check value is {computed}, not {expected}; nothing was kept")]
    KcvMismatch {
        /// What the token computed.
        computed: String,
        /// What the request stated.
        expected: String,
    },
    /// Anything else the token said.
    #[error(transparent)]
    Hsm(#[from] HsmError),
}

/// How an imported key is wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportWrapping {
    /// RSA-OAEP (SHA-1, MGF1-SHA-1, no label) under the import key pair.
    RsaOaepSha1,
    /// AES key wrap with padding (RFC 5649, `CKM_AES_KEY_WRAP_PAD`) under an
    /// import KEK.
    AesKeyWrapPad,
}

impl HsmSession<'_> {
    /// Generates the import key pair: a token object, the private half able
    /// to unwrap and nothing else; returns its id and public half.
    pub fn generate_import_key(&self, label: &str) -> Result<GeneratedRsa, HsmError> {
        self.rsa_token_key(
            IMPORT_KEY_BITS,
            vec![
                Attribute::Unwrap(true),
                Attribute::Decrypt(false),
                Attribute::Sign(false),
                Attribute::Derive(false),
                // Nobody turns decryption on later.
                Attribute::Modifiable(false),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
    }

    /// Unwraps `wrapped` under `import` (the import key pair or an import KEK,
    /// as `wrapping` says) into a token object of `spec`'s template, labelled
    /// `label`; computes its check value in the token (`E_K(0)`, first 3
    /// bytes) and keeps it only when that is `expected`.
    pub fn import_wrapped(
        &self,
        import: &super::ObjectId,
        wrapping: ImportWrapping,
        wrapped: &[u8],
        spec: &KeySpec,
        label: &str,
        expected: Kcv,
    ) -> Result<GeneratedKey, ImportError> {
        let _timer = self.timer("unwrap");
        spec.validate()?;
        let id = self.new_object_id()?;
        // Unwrapped first as a session object (this session's alone, gone if
        // the process dies), able to encrypt until its check value is computed
        // (SoftHSM2 sets no CKA_CHECK_VALUE on unwrapped keys); only a key
        // whose value checks is copied into the token, with the usage it keeps.
        let template: Vec<Attribute> = token_key_template(spec, &id, label)
            .into_iter()
            .filter(|a| !matches!(a, Attribute::ValueLen(_)))
            .map(|a| match a {
                Attribute::Encrypt(_) => Attribute::Encrypt(true),
                Attribute::Token(_) => Attribute::Token(false),
                other => other,
            })
            .collect();
        let mechanism = match wrapping {
            ImportWrapping::RsaOaepSha1 => Mechanism::RsaPkcsOaep(Self::oaep_sha1()),
            ImportWrapping::AesKeyWrapPad => Mechanism::AesKeyWrapPad,
        };
        let unwrapped = self.with_key(import, |k| {
            Ok(self.session.unwrap_key(&mechanism, k, wrapped, &template)?)
        });
        let staged = match unwrapped {
            Ok(h) => h,
            Err(HsmError::Pkcs11 { rv, .. }) if unwrap_refusal(rv) => {
                return Err(ImportError::DoesNotUnwrap);
            }
            Err(e) => return Err(e.into()),
        };
        let kept = (|| {
            let kcv = self.ecb_check_value(staged, spec.algorithm.key_type())?;
            if kcv != expected {
                return Err(ImportError::KcvMismatch {
                    computed: hex::encode_upper(kcv),
                    expected: hex::encode_upper(expected),
                });
            }
            let encrypt = Usage::of(spec.role).encrypt;
            let handle = self
                .session
                .copy_object(
                    staged,
                    &[Attribute::Token(true), Attribute::Encrypt(encrypt)],
                )
                .map_err(HsmError::from)?;
            Ok((handle, kcv))
        })();
        if let Err(d) = self.session.destroy_object(staged) {
            tracing::error!(error = %d, "could not destroy an imported key's session object");
        }
        let (handle, kcv) = kept?;
        lock(&self.inner.handles).insert(id, handle);
        Ok(GeneratedKey {
            id,
            kcv,
            fingerprint: None,
        })
    }
}

impl HsmSession<'_> {
    /// `E_K(0)`, first 3 bytes, with a key that may encrypt.
    fn ecb_check_value(&self, key: ObjectHandle, key_type: KeyType) -> Result<Kcv, HsmError> {
        let (ecb, zero) = match key_type {
            KeyType::AES => (Mechanism::AesEcb, &[0u8; 16][..]),
            KeyType::DES => (Mechanism::DesEcb, &[0u8; 8][..]),
            KeyType::DES2 | KeyType::DES3 => (Mechanism::Des3Ecb, &[0u8; 8][..]),
            _ => {
                return Err(HsmError::InvalidInput(
                    "no ECB check value for this key type",
                ));
            }
        };
        let block = self.session.encrypt(&ecb, key, zero)?;
        Kcv::try_from(block.get(..3).unwrap_or_default())
            .map_err(|_| HsmError::InvalidInput("ECB returned a short block"))
    }

    /// The key's check value computed in the token: its `CKA_CHECK_VALUE`
    /// when the token keeps one, else `E_K(0)` computed on a copy that is a
    /// session object of this session, may encrypt, and is destroyed at once
    /// (as an import computes it: SoftHSM2 keeps no check value for unwrapped
    /// keys). For `kms verify-restore`; a token that refuses the copy answers
    /// with its error.
    pub(crate) fn computed_kcv(&self, id: &super::ObjectId) -> Result<Kcv, HsmError> {
        match self.kcv(id) {
            Err(HsmError::NoCheckValue(_)) => {}
            other => return other,
        }
        let handle = self.find(id)?;
        let key_type = self
            .session
            .get_attributes(handle, &[AttributeType::KeyType])?
            .into_iter()
            .find_map(|a| match a {
                Attribute::KeyType(t) => Some(t),
                _ => None,
            })
            .ok_or(HsmError::InvalidInput("not a secret key object"))?;
        // The copy may encrypt and not derive (no card keys from it); it
        // inherits the rest (sensitive, the original's extractability and
        // wrap-with-trusted): SoftHSM2 refuses other changes on a copy.
        let copy = self.session.copy_object(
            handle,
            &[
                Attribute::Token(false),
                Attribute::Encrypt(true),
                Attribute::Derive(false),
            ],
        )?;
        let kcv = self.ecb_check_value(copy, key_type);
        if let Err(d) = self.session.destroy_object(copy) {
            // A session object lives as long as its session: end the session
            // (a session-lost error makes the pool drop it), never pool it.
            tracing::error!(error = %d, "could not destroy a check-value copy; dropping its session");
            return Err(HsmError::Pkcs11 {
                function: cryptoki::context::Function::DestroyObject,
                rv: cryptoki::error::RvError::SessionClosed,
            });
        }
        kcv.map_err(|e| e.with_id(*id))
    }
}

/// The token's answers that mean "this ciphertext is not a key of that kind
/// under this key".
fn unwrap_refusal(rv: cryptoki::error::RvError) -> bool {
    use cryptoki::error::RvError as R;
    matches!(
        rv,
        R::EncryptedDataInvalid
            | R::EncryptedDataLenRange
            | R::WrappedKeyInvalid
            | R::WrappedKeyLenRange
            | R::DataInvalid
            | R::DataLenRange
            | R::KeySizeRange
            | R::TemplateInconsistent
            | R::AttributeValueInvalid
            // SoftHSM2 answers CKR_GENERAL_ERROR to an OAEP ciphertext that does
            // not decode, whole or cut short (probed).
            | R::GeneralError
    )
}
