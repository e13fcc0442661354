//! Typed key specifications and the one place where PKCS#11 templates are built.

use std::fmt;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};

use super::HsmError;

/// Size of a `CKA_ID`: 16 random bytes from the token.
pub const OBJECT_ID_LEN: usize = 16;

/// The `CKA_ID` of a token object: 16 random bytes, shown in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; OBJECT_ID_LEN]);

impl ObjectId {
    /// Parses the hex form stored in the database.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(ObjectId(bytes.try_into().ok()?))
    }

    /// The hex form stored in the database.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// Algorithms of the secret keys brandkms generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecretAlgorithm {
    /// Single DES (legacy; needs OpenSSL's legacy provider under SoftHSM2).
    Des,
    /// Two-key triple DES.
    Tdes2,
    /// Three-key triple DES.
    Tdes3,
    /// AES with a 256-bit key.
    Aes256,
    /// A 256-bit generic secret for HMAC-SHA-256.
    HmacSha256,
}

impl SecretAlgorithm {
    /// True for the DES family (8-byte blocks, DES KCV).
    pub fn is_des_family(self) -> bool {
        matches!(self, Self::Des | Self::Tdes2 | Self::Tdes3)
    }

    pub(crate) fn key_type(self) -> KeyType {
        match self {
            Self::Des => KeyType::DES,
            Self::Tdes2 => KeyType::DES2,
            Self::Tdes3 => KeyType::DES3,
            Self::Aes256 => KeyType::AES,
            Self::HmacSha256 => KeyType::GENERIC_SECRET,
        }
    }

    pub(crate) fn keygen(self) -> Mechanism<'static> {
        match self {
            Self::Des => Mechanism::DesKeyGen,
            Self::Tdes2 => Mechanism::Des2KeyGen,
            Self::Tdes3 => Mechanism::Des3KeyGen,
            Self::Aes256 => Mechanism::AesKeyGen,
            Self::HmacSha256 => Mechanism::GenericSecretKeyGen,
        }
    }

    /// `CKA_VALUE_LEN` where the key type takes one (never for DES keys).
    fn value_len(self) -> Option<u64> {
        match self {
            Self::Aes256 | Self::HmacSha256 => Some(32),
            Self::Des | Self::Tdes2 | Self::Tdes3 => None,
        }
    }

    /// Name of the key-generation mechanism, for error messages.
    pub(crate) fn keygen_name(self) -> &'static str {
        match self {
            Self::Des => "CKM_DES_KEY_GEN",
            Self::Tdes2 => "CKM_DES2_KEY_GEN",
            Self::Tdes3 => "CKM_DES3_KEY_GEN",
            Self::Aes256 => "CKM_AES_KEY_GEN",
            Self::HmacSha256 => "CKM_GENERIC_SECRET_KEY_GEN",
        }
    }
}

/// What a key is for; decides its usage flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// A card-access master key `K_M`: derives card keys, nothing else.
    CardMaster,
    /// A transport key: wraps keys delivered to one entity.
    Transport,
    /// The audit trail's MAC key.
    AuditMac,
    /// The key that seals session state.
    SessionSeal,
    /// An authenticator key for MACs on settlement results.
    Authenticator,
    /// An import KEK: unwraps the keys of a bulk import, nothing else.
    ImportKek,
}

/// Whether a key may ever leave the token, wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exportability {
    /// `CKA_EXTRACTABLE` false: the key never leaves the token.
    Never,
    /// `CKA_EXTRACTABLE` true: a supply tie-up may deliver it wrapped under a
    /// transport key. The key is still sensitive: never readable in clear.
    WrappedOnly,
}

/// A typed description of a secret key to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpec {
    /// The algorithm.
    pub algorithm: SecretAlgorithm,
    /// The role, which fixes the usage flags.
    pub role: KeyRole,
    /// Whether the key may be wrapped for delivery.
    pub export: Exportability,
}

impl KeySpec {
    /// Checks that algorithm, role and exportability go together.
    pub fn validate(&self) -> Result<(), HsmError> {
        use SecretAlgorithm as A;
        let algorithm_fits = match self.role {
            KeyRole::CardMaster => self.algorithm.is_des_family(),
            KeyRole::Transport | KeyRole::SessionSeal | KeyRole::ImportKek => {
                self.algorithm == A::Aes256
            }
            KeyRole::AuditMac | KeyRole::Authenticator => self.algorithm == A::HmacSha256,
        };
        if !algorithm_fits {
            return Err(HsmError::InvalidSpec(
                "algorithm does not fit the key's role",
            ));
        }
        // A transport key leaves once, wrapped under its entity's RSA public key.
        let may_export = matches!(
            self.role,
            KeyRole::CardMaster | KeyRole::Authenticator | KeyRole::Transport
        );
        if self.export == Exportability::WrappedOnly && !may_export {
            return Err(HsmError::InvalidSpec(
                "only card-access, authenticator and transport keys may be exportable",
            ));
        }
        Ok(())
    }
}

/// Usage flags of a key; every flag is always set explicitly in a template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub encrypt: bool,
    pub decrypt: bool,
    pub sign: bool,
    pub verify: bool,
    pub wrap: bool,
    pub unwrap: bool,
    pub derive: bool,
}

impl Usage {
    pub(crate) fn of(role: KeyRole) -> Usage {
        let none = Usage::default();
        match role {
            KeyRole::CardMaster => Usage {
                derive: true,
                ..none
            },
            KeyRole::Transport => Usage { wrap: true, ..none },
            KeyRole::ImportKek => Usage {
                unwrap: true,
                ..none
            },
            KeyRole::AuditMac | KeyRole::Authenticator => Usage {
                sign: true,
                verify: true,
                ..none
            },
            KeyRole::SessionSeal => Usage {
                encrypt: true,
                decrypt: true,
                ..none
            },
        }
    }

    /// A derived card key `K_C`: checks and answers challenges, derives `K_S`.
    pub(crate) const CARD_KEY: Usage = Usage {
        encrypt: true,
        decrypt: true,
        sign: false,
        verify: false,
        wrap: false,
        unwrap: false,
        derive: true,
    };

    /// A session key `K_S`: seals commands and checks receipts.
    pub(crate) const SESSION_KEY: Usage = Usage {
        encrypt: false,
        decrypt: false,
        sign: true,
        verify: true,
        wrap: false,
        unwrap: false,
        derive: false,
    };

    fn attributes(self) -> [Attribute; 7] {
        [
            Attribute::Encrypt(self.encrypt),
            Attribute::Decrypt(self.decrypt),
            Attribute::Sign(self.sign),
            Attribute::Verify(self.verify),
            Attribute::Wrap(self.wrap),
            Attribute::Unwrap(self.unwrap),
            Attribute::Derive(self.derive),
        ]
    }
}

/// Template of a persistent secret key generated in the token.
pub(crate) fn token_key_template(spec: &KeySpec, id: &ObjectId, label: &str) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(spec.algorithm.key_type()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(spec.export == Exportability::WrappedOnly),
        Attribute::Id(id.0.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    if let Some(len) = spec.algorithm.value_len() {
        template.push(Attribute::ValueLen(len.into()));
    }
    // An exportable card-access master can be wrapped only under a key the
    // security officer marked trusted (a participant's RSA public key): never
    // under a key a PIN holder made (docs/threat-model.md).
    if spec.role == KeyRole::CardMaster && spec.export == Exportability::WrappedOnly {
        template.push(Attribute::WrapWithTrusted(true));
    }
    template.extend(Usage::of(spec.role).attributes());
    template
}

/// Template of a two-key TDES session object derived inside the token (`K_C`, `K_S`).
pub(crate) fn derived_des2_template(usage: Usage) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::DES2),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
    ];
    template.extend(usage.attributes());
    template
}

/// Template of an RSA public key imported as a session object, to wrap under.
pub(crate) fn rsa_public_wrap_template(modulus: &[u8], exponent: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Modulus(modulus.to_vec()),
        Attribute::PublicExponent(exponent.to_vec()),
        Attribute::Wrap(true),
        Attribute::Encrypt(false),
        Attribute::Verify(false),
    ]
}

/// Template of a key imported in clear. Tests only: brand keys are always generated.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn imported_key_template(
    spec: &KeySpec,
    id: &ObjectId,
    label: &str,
    value: &[u8],
) -> Vec<Attribute> {
    let mut template: Vec<Attribute> = token_key_template(spec, id, label)
        .into_iter()
        .filter(|a| !matches!(a, Attribute::ValueLen(_)))
        .collect();
    template.push(Attribute::Value(value.to_vec()));
    template
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_always_sensitive_and_set_extractable() {
        let id = ObjectId([7; 16]);
        for export in [Exportability::Never, Exportability::WrappedOnly] {
            let spec = KeySpec {
                algorithm: SecretAlgorithm::Tdes2,
                role: KeyRole::CardMaster,
                export,
            };
            let t = token_key_template(&spec, &id, "x");
            assert!(t.contains(&Attribute::Sensitive(true)));
            assert!(t.contains(&Attribute::Extractable(
                export == Exportability::WrappedOnly
            )));
            assert!(!t.iter().any(|a| matches!(a, Attribute::ValueLen(_))));
        }
    }

    #[test]
    fn internal_keys_cannot_be_exportable() {
        let spec = KeySpec {
            algorithm: SecretAlgorithm::Aes256,
            role: KeyRole::SessionSeal,
            export: Exportability::WrappedOnly,
        };
        assert!(spec.validate().is_err());
        let spec = KeySpec {
            algorithm: SecretAlgorithm::Aes256,
            role: KeyRole::CardMaster,
            export: Exportability::Never,
        };
        assert!(spec.validate().is_err());
    }
}
