//! `kms doctor`: what the configured token can do, probed with session objects
//! that vanish afterwards. Tells an operator, before the first key is made,
//! whether legacy single DES, TDES derivation and CMAC are available; then the
//! hardening report (`HsmSession::hardening`): what a PIN holder could do.

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
    hsm.run(|s| {
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
        Ok(probes)
    })
    .await
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
