//! One generator for a key's class: what a new version of a card-access,
//! authenticator or settlement key is made of in the token. `keys` (create,
//! rotate) and `settlement` (create) both take it from here.

use brandkms_policy::{Algorithm, KeyClass};

use crate::hsm::{
    EcbDerive, Exportability, GeneratedKey, HsmError, HsmSession, KeyRole, KeySpec, SecretAlgorithm,
};
use crate::ops::rsa_public;
use crate::ops::{OpsError, invalid};
use crate::store::keys::KeyRecord;

/// Makes a version's token object under the given label, in a token session.
pub type Generator =
    Box<dyn FnOnce(&HsmSession<'_>, &str) -> Result<GeneratedKey, HsmError> + Send + 'static>;

/// The generator for a new version of `key`, by its class and algorithm.
pub fn generator(key: &KeyRecord) -> Result<Generator, OpsError> {
    match key.class {
        KeyClass::CardAccess => Ok(secret_generator(KeySpec {
            algorithm: card_algorithm(key.algorithm)?,
            role: KeyRole::CardMaster,
            export: if key.exportable {
                Exportability::WrappedOnly
            } else {
                Exportability::Never
            },
        })),
        KeyClass::Authenticator => Ok(secret_generator(KeySpec {
            algorithm: SecretAlgorithm::HmacSha256,
            role: KeyRole::Authenticator,
            export: Exportability::Never,
        })),
        KeyClass::Settlement => Ok(rsa_generator(rsa_bits(key.algorithm)?)),
        other => Err(OpsError::FailedPrecondition(format!(
            "{other} keys are not generated through the Admin service"
        ))),
    }
}

/// The token algorithm of a card-access key algorithm.
pub fn card_algorithm(a: Algorithm) -> Result<SecretAlgorithm, OpsError> {
    match a {
        Algorithm::Des => Ok(SecretAlgorithm::Des),
        Algorithm::Tdes2 => Ok(SecretAlgorithm::Tdes2),
        Algorithm::Tdes3 => Ok(SecretAlgorithm::Tdes3),
        other => Err(invalid(format!(
            "algorithm {other} is not a card-access algorithm (des, tdes2, tdes3)"
        ))),
    }
}

/// Modulus bits of an RSA algorithm.
pub fn rsa_bits(a: Algorithm) -> Result<u64, OpsError> {
    match a {
        Algorithm::Rsa2048 => Ok(2048),
        Algorithm::Rsa3072 => Ok(3072),
        Algorithm::Rsa4096 => Ok(4096),
        other => Err(invalid(format!(
            "algorithm {other} is not a settlement algorithm (rsa2048, rsa3072, rsa4096)"
        ))),
    }
}

/// Generates a secret key; for single DES, first shows that the token can derive
/// with it (SoftHSM2 needs OpenSSL's legacy provider), so that no unusable legacy
/// key is ever recorded.
fn secret_generator(spec: KeySpec) -> Generator {
    Box::new(move |s, label| {
        let key = s.generate(&spec, label)?;
        if spec.algorithm == SecretAlgorithm::Des
            && let Err(e) = s.derive_card_key(&key.id, EcbDerive::Des, &[0u8; 16])
        {
            s.destroy(&key.id)?;
            return Err(e);
        }
        Ok(key)
    })
}

/// Generates a key pair in the token and fingerprints its public key.
fn rsa_generator(bits: u64) -> Generator {
    Box::new(move |s, label| rsa_key(s, s.generate_rsa(bits, label)?))
}

/// A new RSA key pair as a key version's object: recorded by its public key's
/// fingerprint; destroyed when the public key does not encode.
pub fn rsa_key(s: &HsmSession<'_>, g: crate::hsm::GeneratedRsa) -> Result<GeneratedKey, HsmError> {
    let info = rsa_public::encode(&g.modulus, &g.exponent).map_err(|_| {
        let _ = s.destroy(&g.id);
        HsmError::InvalidInput("the token's RSA public key does not encode")
    })?;
    Ok(GeneratedKey {
        id: g.id,
        kcv: [0; 3],
        fingerprint: Some(info.fingerprint),
    })
}
