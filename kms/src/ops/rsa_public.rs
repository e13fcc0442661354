//! RSA public keys as the world sees them: SubjectPublicKeyInfo DER and PEM, and
//! the SHA-256 fingerprint of the DER recorded for each settlement key version.
//! Encoding only (RustCrypto `pkcs1`, `spki`, `der`); every RSA operation with a
//! brand key runs in the token.

use der::asn1::{AnyRef, BitStringRef, UintRef};
use der::{Encode, EncodePem};
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

/// A public key, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// SubjectPublicKeyInfo, DER.
    pub der: Vec<u8>,
    /// The same, PEM (`PUBLIC KEY`).
    pub pem: String,
    /// SHA-256 of the DER.
    pub fingerprint: [u8; 32],
    /// Modulus size in bits.
    pub bits: usize,
}

/// Encodes an RSA public key from its big-endian modulus and exponent.
pub fn encode(modulus: &[u8], exponent: &[u8]) -> Result<PublicKeyInfo, der::Error> {
    let key = pkcs1::RsaPublicKey {
        modulus: UintRef::new(modulus)?,
        public_exponent: UintRef::new(exponent)?,
    };
    let key_der = key.to_der()?;
    let info = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef {
            oid: pkcs1::ALGORITHM_OID,
            parameters: Some(AnyRef::NULL),
        },
        subject_public_key: BitStringRef::from_bytes(&key_der)?,
    };
    let der = info.to_der()?;
    let pem = info.to_pem(der::pem::LineEnding::LF)?;
    let significant: Vec<u8> = modulus.iter().copied().skip_while(|b| *b == 0).collect();
    let bits = significant.first().map_or(0, |top| {
        (significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
    });
    Ok(PublicKeyInfo {
        fingerprint: Sha256::digest(&der).into(),
        der,
        pem,
        bits,
    })
}
