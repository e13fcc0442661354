//! RSA with settlement keys: reading the public half, OAEP decryption, PSS
//! signatures and their verification, and the OAEP probe and benchmark pair.

use cryptoki::error::RvError;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType};
use zeroize::Zeroizing;

use super::session::{HsmSession, SessionKey, verified};
use super::spec::ObjectId;
use super::{HsmError, lock};

impl HsmSession<'_> {
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
        let _timer = self.timer("rsa_oaep");
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
        let _timer = self.timer("rsa_pss");
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
        let _timer = self.timer("rsa_pss");
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
