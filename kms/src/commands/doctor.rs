//! `kms doctor`: what the configured token can do, probed with session objects
//! that vanish afterwards. Tells an operator, before the first key is made,
//! whether legacy single DES, TDES derivation and CMAC are available, and what
//! the module offers for importing existing keys (unwrap mechanisms; CBC for
//! key blocks; XOR and concatenation for clear components); then the hardening
//! report (`HsmSession::hardening`): what a PIN holder could do.

use std::path::{Path, PathBuf};

use crate::hsm::{EcbDerive, Exportability, Hsm, HsmError, KeyRole, KeySpec, SecretAlgorithm};

/// One capability and whether the token has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What was tried.
    pub capability: &'static str,
    /// `Ok` or the token's refusal, with a hint.
    pub result: Result<(), String>,
}

/// Probes the token.
pub async fn run(hsm: &Hsm) -> Result<Vec<Probe>, HsmError> {
    let mut probes = hsm
        .run(|s| {
            let spec = |algorithm, role| KeySpec {
                algorithm,
                role,
                export: Exportability::Never,
            };
            let mut probes = Vec::new();
            let mut probe = |capability, result: Result<(), HsmError>| {
                probes.push(Probe {
                    capability,
                    result: result.map_err(|e| e.to_string()),
                });
            };
            for (name, algorithm, role) in [
                (
                    "two-key TDES keys",
                    SecretAlgorithm::Tdes2,
                    KeyRole::CardMaster,
                ),
                (
                    "three-key TDES keys",
                    SecretAlgorithm::Tdes3,
                    KeyRole::CardMaster,
                ),
                ("AES-256 keys", SecretAlgorithm::Aes256, KeyRole::Transport),
                (
                    "HMAC-SHA-256 keys",
                    SecretAlgorithm::HmacSha256,
                    KeyRole::AuditMac,
                ),
            ] {
                probe(
                    name,
                    s.generate_ephemeral(&spec(algorithm, role))
                        .and_then(|id| s.destroy(&id)),
                );
            }
            probe(
                "TDES card-key derivation and CMAC",
                probe_derivation(s, SecretAlgorithm::Tdes2),
            );
            probe(
                "single DES card-key derivation (legacy)",
                probe_derivation(s, SecretAlgorithm::Des),
            );
            for (capability, tdes) in [
                ("TDES-CBC unwrap (TR-31 / X9.143 key blocks)", true),
                ("AES-CBC unwrap (TR-31 / X9.143 key blocks)", false),
            ] {
                probes.push(Probe {
                    capability,
                    result: match s.unwraps_with_cbc(tdes) {
                        Ok(true) => Ok(()),
                        Ok(false) => Err("the token refuses the mechanism for C_UnwrapKey".into()),
                        Err(e) => Err(e.to_string()),
                    },
                });
            }
            Ok(probes)
        })
        .await?;
    // Importing keys without their passing through the service's memory
    // (issue 13): what the module lists.
    use cryptoki::mechanism::MechanismType as M;
    for (capability, mechanism, need_unwrap) in [
        (
            "RSA-OAEP unwrap (import under an import key)",
            M::RSA_PKCS_OAEP,
            true,
        ),
        (
            "AES key wrap with padding unwrap (bulk import under a KEK)",
            M::AES_KEY_WRAP_PAD,
            true,
        ),
        (
            "CKM_XOR_BASE_AND_DATA (import by clear components)",
            M::XOR_BASE_AND_DATA,
            false,
        ),
        (
            "CKM_CONCATENATE_BASE_AND_KEY (components, key blocks)",
            M::CONCATENATE_BASE_AND_KEY,
            false,
        ),
        (
            "CKM_CONCATENATE_BASE_AND_DATA (components, key blocks)",
            M::CONCATENATE_BASE_AND_DATA,
            false,
        ),
    ] {
        let support = hsm.mechanism_support(mechanism)?;
        probes.push(Probe {
            capability,
            result: match (support.listed, support.unwraps || !need_unwrap) {
                (true, true) => Ok(()),
                (true, false) => Err("listed, but not for C_UnwrapKey".into()),
                (false, _) => Err("not in the token's mechanism list".into()),
            },
        });
    }
    Ok(probes)
}

fn probe_derivation(
    s: &crate::hsm::HsmSession<'_>,
    algorithm: SecretAlgorithm,
) -> Result<(), HsmError> {
    let random = s.random(16)?;
    let mut data = [0u8; 16];
    data.copy_from_slice(random.get(..16).unwrap_or(&[0u8; 16]));
    let master = s.generate_ephemeral(&KeySpec {
        algorithm,
        role: KeyRole::CardMaster,
        export: Exportability::Never,
    })?;
    let mechanism = if algorithm == SecretAlgorithm::Des {
        EcbDerive::Des
    } else {
        EcbDerive::Des3
    };
    let result = (|| {
        let kc = s.derive_card_key(&master, mechanism, &data)?;
        let ks = s.derive_session_key(&kc, &data)?;
        s.tdes_cmac(ks.handle(), b"probe")?;
        Ok(())
    })();
    s.destroy(&master)?;
    result
}

/// The token directory a SoftHSM2 configuration names (`directories.tokendir`),
/// a relative one resolved against `cwd`, the directory the module runs in.
pub fn token_directory(softhsm2_conf: &Path, cwd: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(softhsm2_conf).ok()?;
    let value = text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "directories.tokendir").then(|| value.trim().to_string())
    })?;
    Some(cwd.join(value))
}

/// Where the SoftHSM2 token directory lies, when the module is SoftHSM2
/// (`SOFTHSM2_CONF` set): inside the deployment (the config file's directory,
/// where `kms` runs, or the directory of its SQLite database: a packaged
/// install keeps its state in /var/lib/brandkms), or outside it — then a copy
/// of the deployment would share the token, and `kms reconcile --fix` in one
/// would destroy the other's keys.
pub fn token_directory_probe(
    softhsm2_conf: Option<&Path>,
    deployment: &Path,
    state: Option<&Path>,
) -> Option<Probe> {
    let conf = softhsm2_conf?;
    let capability = "token directory inside the deployment (SoftHSM2)";
    let result = match token_directory(conf, deployment) {
        None => Err(format!("{} names no directories.tokendir", conf.display())),
        Some(dir) => {
            let dir = dir.canonicalize().unwrap_or(dir);
            let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            let deployment = canonical(deployment);
            if dir.starts_with(&deployment) || state.is_some_and(|s| dir.starts_with(canonical(s)))
            {
                Ok(())
            } else {
                Err(format!(
                    "WARNING: {} lies outside the deployment {}: a copy of the deployment \
                     (cp -a) would share this token, and kms reconcile --fix in one would \
                     destroy the other's keys; write directories.tokendir relative to the \
                     deployment (kms runs in its config file's directory)",
                    dir.display(),
                    deployment.display()
                ))
            }
        }
    };
    Some(Probe { capability, result })
}
