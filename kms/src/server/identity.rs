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
    /// A CA certificate presented as a caller's.
    #[error("a CA certificate (basic constraints CA:TRUE) cannot identify a caller")]
    CaCertificate,
    /// No key usage extension, or one without `digitalSignature`.
    #[error("client certificate must have key usage digitalSignature")]
    KeyUsage,
    /// An extended key usage extension without `clientAuth`.
    #[error("client certificate's extended key usage must include clientAuth")]
    ExtendedKeyUsage,
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

/// What a caller's certificate must be, beyond its signature chaining to the
/// brand CA: an end entity (not a CA, whatever path length its issuer allows),
/// with key usage `digitalSignature` (it signs the TLS handshake), and with
/// `clientAuth` when it restricts its extended key usage.
pub fn caller_constraints(cert: &CertificateDer<'_>) -> Result<(), IdentityError> {
    let (_, x509) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| IdentityError::Malformed)?;
    let basic = x509
        .basic_constraints()
        .map_err(|_| IdentityError::Malformed)?;
    if basic.is_some_and(|b| b.value.ca) {
        return Err(IdentityError::CaCertificate);
    }
    let usage = x509.key_usage().map_err(|_| IdentityError::Malformed)?;
    if !usage.is_some_and(|u| u.value.digital_signature()) {
        return Err(IdentityError::KeyUsage);
    }
    let extended = x509
        .extended_key_usage()
        .map_err(|_| IdentityError::Malformed)?;
    if extended.is_some_and(|e| !(e.value.client_auth || e.value.any)) {
        return Err(IdentityError::ExtendedKeyUsage);
    }
    Ok(())
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
