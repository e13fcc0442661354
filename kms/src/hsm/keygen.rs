//! Key generation: persistent and ephemeral secret keys, settlement RSA key
//! pairs, and the test-only import and generation helpers.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};

use super::session::{GeneratedKey, HsmSession};
use super::spec::{KeySpec, ObjectId, token_key_template};
use super::{HsmError, lock};

/// How many times a generation that fails with `CKR_GENERAL_ERROR` is tried.
const GENERATE_ATTEMPTS: u64 = 3;

impl HsmSession<'_> {
    /// Generates a persistent secret key with a random `CKA_ID` and records nothing:
    /// the caller writes the row, and destroys the object if that fails.
    pub fn generate(&self, spec: &KeySpec, label: &str) -> Result<GeneratedKey, HsmError> {
        let _timer = self.timer("keygen");
        spec.validate()?;
        let id = self.new_object_id()?;
        let template = token_key_template(spec, &id, label);
        // SoftHSM2 has been seen to fail concurrent generations with
        // CKR_GENERAL_ERROR under load: tried again, a few times, before a
        // caller sees it.
        let mut attempt = 0;
        let handle = loop {
            attempt += 1;
            match self
                .session
                .generate_key(&spec.algorithm.keygen(), &template)
            {
                Ok(h) => break h,
                Err(e) => {
                    let e: HsmError = e.into();
                    if e.rv() == Some(RvError::GeneralError) && attempt < GENERATE_ATTEMPTS {
                        tracing::warn!(
                            attempt,
                            "key generation failed with CKR_GENERAL_ERROR; trying again"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(5 * attempt));
                        continue;
                    }
                    return Err(mechanism_hint(e, spec));
                }
            }
        };
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

    /// An RSA key pair with a fresh `CKA_ID` on the private half: the public
    /// half a session object with `public_usage`; the private half sensitive,
    /// never extractable, a token object when `token`, with `private_usage`.
    pub(super) fn rsa_pair(
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
        let _timer = self.timer("keygen");
        self.rsa_token_key(
            bits,
            vec![
                Attribute::Decrypt(true),
                Attribute::Sign(true),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
    }

    /// An RSA private key as a token object with `usage` (the public half is
    /// read from it and the public object dropped).
    pub(super) fn rsa_token_key(
        &self,
        bits: u64,
        usage: Vec<Attribute>,
    ) -> Result<GeneratedRsa, HsmError> {
        let (id, pub_handle, priv_handle) = self.rsa_pair(bits, true, &[], usage)?;
        self.session.destroy_object(pub_handle)?;
        lock(&self.inner.handles).insert(id, priv_handle);
        let (modulus, exponent) = self.rsa_public(&id)?;
        Ok(GeneratedRsa {
            id,
            modulus,
            exponent,
        })
    }

    /// Generates an RSA key pair (private half sensitive, never extractable, able to
    /// unwrap) and returns the private half's `CKA_ID` with the public modulus and
    /// exponent. Tests only: it stands for a participant's own token.
    #[cfg(any(test, feature = "testing"))]
    pub fn generate_rsa_for_tests(
        &self,
        bits: u64,
    ) -> Result<(ObjectId, Vec<u8>, Vec<u8>), HsmError> {
        // A token object: a security-officer call (which logs the user out and
        // so destroys private session objects) must not take it away.
        let (id, pub_handle, priv_handle) = self.rsa_pair(
            bits,
            true,
            &[Attribute::Wrap(true)],
            vec![Attribute::Unwrap(true), Attribute::Decrypt(false)],
        )?;
        lock(&self.inner.handles).insert(id, priv_handle);
        self.session.destroy_object(pub_handle)?;
        let (modulus, exponent) = self.rsa_public(&id)?;
        Ok((id, modulus, exponent))
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

/// How to make single DES available in SoftHSM2.
pub(super) const LEGACY_HINT: &str = "; with SoftHSM2, single DES needs OpenSSL's legacy provider: set OPENSSL_CONF to a config that activates the default and legacy providers before the module loads (softhsm/mktoken.sh and `kms init --dev` write one)";

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
