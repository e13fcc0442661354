//! The server's TLS: rustls with a required client certificate that chains to
//! the brand CA, checked once, at the handshake. A stranger's certificate is
//! refused there (counted and summarised in the audit trail by
//! [`HandshakeRefusals`], never one append per attempt); the identity layer then
//! only reads the entity from a certificate the handshake verified.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use super::identity;
use super::refusals::HandshakeRefusals;
use crate::config::TlsSettings;

/// TLS set-up errors, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("tls.{field}: cannot read {path}: {source}")]
    Read {
        /// The config field.
        field: &'static str,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file holds nothing usable.
    #[error("tls.{field}: {path} {problem}")]
    Content {
        /// The config field.
        field: &'static str,
        /// The path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's rustls configuration and the count of refused handshakes.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// For the acceptor.
    pub config: Arc<ServerConfig>,
    /// Certificates the handshake refused since the last summary.
    pub refusals: Arc<HandshakeRefusals>,
    /// The brand CA's revocation list, when `tls.crl` names one.
    pub revocation: Option<Arc<Revocation>>,
}

/// The brand CA's certificate revocation list (`tls.crl`, PEM or DER): checked
/// at every handshake, read again when the file changes ([`Revocation::reload`],
/// which `kms serve` calls every few seconds and on SIGHUP). A list that cannot
/// be read or parsed leaves the previous one in force (and is logged).
#[derive(Debug)]
pub struct Revocation {
    path: std::path::PathBuf,
    /// `tls.ca`, which `roots` was read from.
    ca: std::path::PathBuf,
    roots: Arc<RootCertStore>,
    verifier: Arc<std::sync::RwLock<Arc<dyn ClientCertVerifier>>>,
    seen: std::sync::Mutex<Option<(std::time::SystemTime, u64)>>,
}

impl Revocation {
    /// Reads the list again if the file changed since the last read; whether it
    /// took a new list.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let meta = std::fs::metadata(&self.path).map_err(|source| TlsError::Read {
            field: "crl",
            path: self.path.display().to_string(),
            source,
        })?;
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        if *lock(&self.seen) == Some(stamp) {
            return Ok(false);
        }
        let verifier = brand_ca_verifier(&self.roots, &self.ca, Some(&self.path))?;
        *self
            .verifier
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = verifier;
        *lock(&self.seen) = Some(stamp);
        Ok(true)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The CRLs in `path` (PEM blocks, or one DER list).
fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read("crl", path)?;
    let content = |problem: String| TlsError::Content {
        field: "crl",
        path: path.display().to_string(),
        problem,
    };
    let lists: Vec<CertificateRevocationListDer<'static>> = if bytes.starts_with(b"-----") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| content(format!("is not PEM: {e}")))?
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    if lists.is_empty() {
        return Err(content("holds no revocation list".to_string()));
    }
    Ok(lists)
}

/// The verifier for chains to `roots` (read from `ca`), with the revocation
/// lists in `crl`.
fn brand_ca_verifier(
    roots: &Arc<RootCertStore>,
    ca: &Path,
    crl: Option<&Path>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider());
    if let Some(path) = crl {
        // Only the caller's certificate has a status to check (the handshake
        // accepts no intermediate); a CA in `tls.ca` without a list of its own
        // in the file has none to give.
        builder = builder
            .with_crls(crls(path)?)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let (field, path) = match crl {
        Some(crl) => ("crl", crl),
        None => ("ca", ca),
    };
    builder.build().map_err(|e| TlsError::Content {
        field,
        path: path.display().to_string(),
        problem: e.to_string(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.display().to_string(),
        source,
    })
}

fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Content {
            field,
            path: path.display().to_string(),
            problem: format!("is not PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            field,
            path: path.display().to_string(),
            problem: "holds no certificate".to_string(),
        });
    }
    Ok(certs)
}

/// Loads the CA, the server certificate and key; refuses to start when the CA
/// file holds no certificate.
pub fn load(settings: &TlsSettings) -> Result<ServerTls, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates("ca", &settings.ca)? {
        roots.add(ca).map_err(|e| TlsError::Content {
            field: "ca",
            path: settings.ca.display().to_string(),
            problem: format!("holds an unusable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    // Without a list first; with `tls.crl`, the first reload reads it (and a
    // list that cannot be read stops the start).
    let brand_ca = Arc::new(std::sync::RwLock::new(brand_ca_verifier(
        &roots,
        &settings.ca,
        None,
    )?));
    let revocation = match &settings.crl {
        Some(path) => {
            let r = Revocation {
                path: path.clone(),
                ca: settings.ca.clone(),
                roots: Arc::clone(&roots),
                verifier: Arc::clone(&brand_ca),
                seen: std::sync::Mutex::new(None),
            };
            r.reload()?;
            Some(Arc::new(r))
        }
        None => None,
    };
    let refusals = Arc::new(HandshakeRefusals::default());
    let chain = certificates("cert", &settings.cert)?;
    let key_pem = read("key", &settings.key)?;
    let key: PrivateKeyDer<'static> =
        PrivateKeyDer::from_pem_slice(&key_pem)
            .ok()
            .ok_or_else(|| TlsError::Content {
                field: "key",
                path: settings.key.display().to_string(),
                problem: "holds no private key".to_string(),
            })?;
    let hints = brand_ca
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .root_hint_subjects()
        .to_vec();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(BrandCaRequired {
            hints,
            brand_ca,
            refusals: Arc::clone(&refusals),
        }))
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        refusals,
        revocation,
    })
}

/// Requires a client certificate that chains to the brand CA, and the
/// handshake signature with its key; counts the certificates it refuses.
#[derive(Debug)]
struct BrandCaRequired {
    brand_ca: Arc<std::sync::RwLock<Arc<dyn ClientCertVerifier>>>,
    /// The brand CA's names, offered to clients (the same whatever the list).
    hints: Vec<DistinguishedName>,
    refusals: Arc<HandshakeRefusals>,
}

impl BrandCaRequired {
    /// The verifier in force (the revocation list read last).
    fn brand_ca(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(
            &self
                .brand_ca
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ClientCertVerifier for BrandCaRequired {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Participants' certificates are issued by the brand CA itself (a
        // deployment whose CA issues through an intermediate lists that issuing
        // CA in `tls.ca`): whatever the client sends besides its certificate is
        // ignored, so no certificate a participant signed can act for anyone,
        // whatever the basic constraints or path length it claims.
        let _ = intermediates;
        let verified = self
            .brand_ca()
            .verify_client_cert(end_entity, &[], now)
            .map_err(|e| format!("certificate not issued by the brand CA ({e})"))
            .and_then(|v| {
                identity::caller_constraints(end_entity)
                    .map(|()| v)
                    .map_err(|e| e.to_string())
            });
        verified.map_err(|reason| {
            self.refusals.refused(end_entity, &reason);
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.brand_ca().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.brand_ca().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.brand_ca().supported_verify_schemes()
    }
}
