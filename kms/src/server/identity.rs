//! Caller identity from the TLS client certificate, in one place: the certificate
//! must chain to the brand CA, and its one SAN URI `urn:brandkms:entity:<id>`
//! names the entity.

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The SAN URI prefix that carries a caller's entity id.
pub const ENTITY_URI_PREFIX: &str = "urn:brandkms:entity:";

/// Why a certificate does not identify a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No client certificate was presented.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate cannot be parsed.
    #[error("client certificate cannot be parsed")]
    Malformed,
    /// The certificate has no (or several) `urn:brandkms:entity:` SAN URIs.
    #[error("client certificate must carry exactly one SAN URI {ENTITY_URI_PREFIX}<id>")]
    NoEntity,
}

/// What the certificate says about the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The entity id from the SAN URI.
    pub entity_id: String,
    /// SHA-256 of the certificate (DER), hex.
    pub fingerprint: String,
}

/// SHA-256 of a certificate's DER, hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// Reads the caller from the chain the TLS handshake verified against the brand
/// CA (`server::tls` refuses any other at the handshake).
pub fn identify(chain: &[CertificateDer<'static>]) -> Result<PeerIdentity, IdentityError> {
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    Ok(PeerIdentity {
        entity_id: entity_id(leaf)?,
        fingerprint: fingerprint(leaf),
    })
}

/// The entity id in the certificate's one `urn:brandkms:entity:<id>` SAN URI.
pub fn entity_id(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let (_, x509) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| IdentityError::Malformed)?;
    let san = x509
        .subject_alternative_name()
        .map_err(|_| IdentityError::Malformed)?
        .ok_or(IdentityError::NoEntity)?;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => uri.strip_prefix(ENTITY_URI_PREFIX),
        _ => None,
    });
    match (ids.next(), ids.next()) {
        (Some(id), None) if crate::ops::valid_name(id) => Ok(id.to_string()),
        _ => Err(IdentityError::NoEntity),
    }
}
