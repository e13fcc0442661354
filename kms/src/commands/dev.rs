//! `kms init --dev DIR`: a ready development deployment in one directory: a
//! SoftHSM2 token of its own, a random PIN in a file, a SQLite path, a development
//! PKI made with `rcgen` (brand CA, server certificate, client certificates for
//! officers and sample participants) and the config that ties them together.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::commands::softhsm::{self, SoftHsmError};

/// Label of the development token.
pub const DEV_TOKEN_LABEL: &str = "brandkms-dev";
/// Name of the config file inside the deployment directory.
pub const CONFIG_FILE: &str = "kms.toml";
pub use crate::server::identity::ENTITY_URI_PREFIX;

/// Client certificates the development PKI issues: officers and the seed's
/// sample participants (registered as entities by the demo, not here).
pub const DEV_CLIENTS: &[&str] = &[
    "officer-1",
    "officer-2",
    "issuer-2-1",
    "issuer-2-2",
    "issuer-2-3",
    "issuer-2-4",
    "bank-center-b",
    "mmk-center",
    "pos-center",
    "terminal-1",
    "terminal-2",
    "cybershop-k",
    "cybershop-l",
    "loading-portal",
    "clearing-house",
    "store-s",
];

/// The officers `kms init --dev` registers.
pub const DEV_OFFICERS: &[&str] = &["officer-1", "officer-2"];

/// Errors while writing a development deployment.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token could not be created.
    #[error(transparent)]
    Token(#[from] SoftHsmError),
    /// A certificate could not be made.
    #[error("certificate: {0}")]
    Pki(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), DevError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), DevError> {
    std::fs::write(path, contents).map_err(io_err(path))
}

fn random_hex(bytes: usize) -> String {
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(buf)
}

/// Writes the deployment into `dir` unless its config already exists. Returns the
/// config path and whether anything was written.
pub fn write_deployment(dir: &Path) -> Result<(PathBuf, bool), DevError> {
    let config = dir.join(CONFIG_FILE);
    if config.exists() {
        return Ok((config, false));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    let dir = dir.canonicalize().map_err(io_err(dir))?;

    let pin = random_hex(8);
    let so_pin = random_hex(8);
    let token = softhsm::create_deployment_token(&dir, DEV_TOKEN_LABEL, &so_pin, &pin)?;
    write_private(&dir.join("pin"), pin.as_bytes())?;
    write_private(&dir.join("so-pin"), so_pin.as_bytes())?;

    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(io_err(&pki))?;
    write_pki(&pki)?;

    let text = format!(
        "# brandkms development deployment, written by `kms init --dev`.\n\
         # Relative paths are relative to this file. See kms/kms.reference.toml.\n\
         listen = \"127.0.0.1:7443\"\n\n\
         [hsm]\n\
         module = \"{module}\"\n\
         token_label = \"{DEV_TOKEN_LABEL}\"\n\
         pin_file = \"pin\"\n\
         sessions = 8\n\n\
         [hsm.env]\n\
         SOFTHSM2_CONF = \"./softhsm/softhsm2.conf\"\n\
         OPENSSL_CONF = \"./softhsm/openssl.cnf\"\n\n\
         [database]\n\
         url = \"sqlite://kms.db\"\n\n\
         [tls]\n\
         ca = \"pki/ca.pem\"\n\
         cert = \"pki/server.pem\"\n\
         key = \"pki/server-key.pem\"\n\n\
         # Prometheus metrics, plain HTTP: keep it on loopback.\n\
         [metrics]\n\
         listen = \"127.0.0.1:9464\"\n",
        module = token.module.display(),
    );
    write_public(&config, text.as_bytes())?;
    Ok((config, true))
}

/// The brand CA, the server certificate and one client certificate per
/// [`DEV_CLIENTS`] entry (SAN URI `urn:brandkms:entity:<id>`).
pub fn write_pki(pki: &Path) -> Result<(), DevError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn("brandkms development brand CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_public(&pki.join("ca.pem"), ca_cert.pem().as_bytes())?;
    write_private(&pki.join("ca-key.pem"), ca_key.serialize_pem().as_bytes())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
    server.distinguished_name = dn("brandkms server");
    server
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;
    write_public(&pki.join("server.pem"), server_cert.pem().as_bytes())?;
    write_private(
        &pki.join("server-key.pem"),
        server_key.serialize_pem().as_bytes(),
    )?;

    for id in DEV_CLIENTS {
        let (cert, key) = client_certificate(id, &issuer)?;
        write_public(&pki.join(format!("{id}.pem")), cert.as_bytes())?;
        write_private(&pki.join(format!("{id}-key.pem")), key.as_bytes())?;
    }
    Ok(())
}

/// A client certificate for entity `id`, signed by `issuer`: (cert PEM, key PEM).
pub fn client_certificate(
    id: &str,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), DevError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(id);
    params.subject_alt_names = vec![SanType::URI(format!("{ENTITY_URI_PREFIX}{id}").try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "brandkms development");
    dn.push(DnType::CommonName, common_name);
    dn
}
