//! What a holder of the service's PIN could do with the module beyond the
//! service's own calls, probed with session objects that vanish afterwards
//! (`kms doctor`). No key value is read: a derived key's `CKA_SENSITIVE` is, and
//! whether the module knows `CKA_DERIVE_TEMPLATE` is asked by its length only.

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};

use super::raw::EcbDerive;
use super::session::HsmSession;
use super::spec::{Usage, derived_des2_template};
use super::{HsmError, SecretAlgorithm};

/// `CKA_DERIVE_TEMPLATE` (PKCS#11 2.40), which `cryptoki` does not name.
const CKA_DERIVE_TEMPLATE: cryptoki_sys::CK_ATTRIBUTE_TYPE = 0x4000_0213;

/// One hardening check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked.
    pub check: &'static str,
    /// Whether the module closes the door (`None`: the probe could not tell).
    pub closed: Option<bool>,
    /// What the answer means.
    pub meaning: String,
}

impl HsmSession<'_> {
    /// Probes what a PIN holder could do; every probe object is destroyed.
    pub fn hardening(&self) -> Vec<Finding> {
        vec![
            self.probe_wrap_with_trusted(),
            self.probe_user_trusted(),
            self.probe_non_sensitive_derivation(),
            self.probe_derive_template(),
        ]
    }

    fn session_key(
        &self,
        algorithm: SecretAlgorithm,
        extra: &[Attribute],
    ) -> Result<ObjectHandle, Error> {
        let mut template = vec![
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
        ];
        if algorithm == SecretAlgorithm::Aes256 {
            template.push(Attribute::ValueLen(32.into()));
        }
        template.extend_from_slice(extra);
        self.session.generate_key(&algorithm.keygen(), &template)
    }

    fn discard(&self, handles: &[ObjectHandle]) {
        for h in handles {
            if let Err(e) = self.session.destroy_object(*h) {
                tracing::warn!(error = %e, "could not destroy a probe object");
            }
        }
    }

    fn probe_wrap_with_trusted(&self) -> Finding {
        let check = "an untrusted key cannot wrap a key marked CKA_WRAP_WITH_TRUSTED";
        let target = self.session_key(
            SecretAlgorithm::Tdes2,
            &[
                Attribute::Extractable(true),
                Attribute::WrapWithTrusted(true),
            ],
        );
        let wrapper = self.session_key(SecretAlgorithm::Aes256, &[Attribute::Wrap(true)]);
        let (target, wrapper) = match (target, wrapper) {
            (Ok(t), Ok(w)) => (t, w),
            (t, w) => {
                let made: Vec<_> = [t.as_ref().ok(), w.as_ref().ok()]
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                self.discard(&made);
                let e = t
                    .err()
                    .or(w.err())
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                return unknown(check, e);
            }
        };
        let wrapped = self
            .session
            .wrap_key(&Mechanism::AesKeyWrapPad, wrapper, target);
        self.discard(&[target, wrapper]);
        match wrapped {
            Err(Error::Pkcs11(RvError::KeyNotWrappable, _)) => Finding {
                check,
                closed: Some(true),
                meaning: "enforced (CKR_KEY_NOT_WRAPPABLE): a key marked so can only be wrapped under a key the security officer marked CKA_TRUSTED".into(),
            },
            Ok(_) => Finding {
                check,
                closed: Some(false),
                meaning: "NOT enforced: any key a PIN holder makes can wrap every extractable key".into(),
            },
            Err(e) => unknown(check, e.to_string()),
        }
    }

    fn probe_user_trusted(&self) -> Finding {
        let check = "a PIN holder cannot mark its own key CKA_TRUSTED";
        match self.session_key(
            SecretAlgorithm::Aes256,
            &[Attribute::Wrap(true), Attribute::Trusted(true)],
        ) {
            Err(Error::Pkcs11(RvError::AttributeReadOnly, _)) => Finding {
                check,
                closed: Some(true),
                meaning: "refused (CKR_ATTRIBUTE_READ_ONLY): only the security officer marks keys trusted (SoftHSM2: on public objects only, whose values it stores unencrypted; see docs/threat-model.md)".into(),
            },
            Ok(h) => {
                self.discard(&[h]);
                Finding {
                    check,
                    closed: Some(false),
                    meaning: "ACCEPTED: a PIN holder can make trusted keys, so CKA_WRAP_WITH_TRUSTED protects nothing".into(),
                }
            }
            Err(e) => unknown(check, e.to_string()),
        }
    }

    fn probe_non_sensitive_derivation(&self) -> Finding {
        let check = "a key derived from a card master cannot be made readable (non-sensitive)";
        let master = match self.session_key(
            SecretAlgorithm::Tdes2,
            &[Attribute::Extractable(false), Attribute::Derive(true)],
        ) {
            Ok(m) => m,
            Err(e) => return unknown(check, e.to_string()),
        };
        let template: Vec<Attribute> = derived_des2_template(Usage::CARD_KEY)
            .into_iter()
            .map(|a| match a {
                Attribute::Sensitive(_) => Attribute::Sensitive(false),
                Attribute::Extractable(_) => Attribute::Extractable(true),
                other => other,
            })
            .collect();
        let derived = self.inner.raw.derive_ecb_encrypt_data(
            self.session,
            master,
            EcbDerive::Des3,
            &[0x5a; 16],
            &template,
        );
        let finding = match derived {
            Ok(h) => {
                let sensitive = self
                    .session
                    .get_attributes(h, &[AttributeType::Sensitive])
                    .ok()
                    .and_then(|a| match a.first() {
                        Some(Attribute::Sensitive(s)) => Some(*s),
                        _ => None,
                    });
                self.discard(&[h]);
                match sensitive {
                    Some(false) => Finding {
                        check,
                        closed: Some(false),
                        meaning: "ACCEPTED: CKM_DES3_ECB_ENCRYPT_DATA with CKA_SENSITIVE=false gives a PIN holder a card key it can read (close it with a derive template on the masters, where the module has one)".into(),
                    },
                    Some(true) => Finding {
                        check,
                        closed: Some(true),
                        meaning: "the module made the derived key sensitive whatever the template asked".into(),
                    },
                    None => unknown(check, "could not read the derived key's CKA_SENSITIVE".into()),
                }
            }
            Err(HsmError::Pkcs11 {
                rv:
                    rv @ (RvError::TemplateInconsistent
                    | RvError::AttributeValueInvalid
                    | RvError::AttributeReadOnly
                    | RvError::KeyFunctionNotPermitted),
                ..
            }) => Finding {
                check,
                closed: Some(true),
                meaning: format!("refused ({rv})"),
            },
            Err(e) => unknown(check, e.to_string()),
        };
        self.discard(&[master]);
        finding
    }

    fn probe_derive_template(&self) -> Finding {
        let check =
            "the module knows CKA_DERIVE_TEMPLATE (derived keys' attributes pinned by the master)";
        let master = match self.session_key(
            SecretAlgorithm::Tdes2,
            &[Attribute::Extractable(false), Attribute::Derive(true)],
        ) {
            Ok(m) => m,
            Err(e) => return unknown(check, e.to_string()),
        };
        let known = self
            .inner
            .raw
            .knows_attribute(self.session, master, CKA_DERIVE_TEMPLATE);
        self.discard(&[master]);
        match known {
            Ok(true) => Finding {
                check,
                closed: Some(true),
                meaning: "yes: masters can require their derived keys to be sensitive and non-extractable".into(),
            },
            Ok(false) => Finding {
                check,
                closed: Some(false),
                meaning: "no (CKR_ATTRIBUTE_TYPE_INVALID): a derived key's attributes are whatever the deriver asks for".into(),
            },
            Err(e) => unknown(check, e.to_string()),
        }
    }
}

fn unknown(check: &'static str, error: String) -> Finding {
    Finding {
        check,
        closed: None,
        meaning: format!("could not tell: {error}"),
    }
}

/// What the module offers for bringing existing keys in (issue 13): which
/// mechanisms it lists, with the unwrap flag where that matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MechanismSupport {
    /// Listed by `C_GetMechanismList`.
    pub listed: bool,
    /// `CKF_UNWRAP` in its `C_GetMechanismInfo`.
    pub unwraps: bool,
}

impl super::Hsm {
    /// Whether the token offers `mechanism` (`C_GetMechanismInfo`; the list is
    /// not read, since `cryptoki` logs an error for every type it cannot name),
    /// and whether it unwraps with it.
    pub fn mechanism_support(
        &self,
        mechanism: cryptoki::mechanism::MechanismType,
    ) -> Result<MechanismSupport, HsmError> {
        match self
            .inner
            .pkcs11
            .get_mechanism_info(*super::lock(&self.inner.slot), mechanism)
        {
            Ok(info) => Ok(MechanismSupport {
                listed: true,
                unwraps: info.unwrap(),
            }),
            Err(Error::Pkcs11(RvError::MechanismInvalid, _)) => Ok(MechanismSupport {
                listed: false,
                unwraps: false,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

impl HsmSession<'_> {
    /// Tries `C_UnwrapKey` with CBC (TDES when `tdes`, else AES) under a
    /// throwaway key, on 32 bytes of zeros: `Ok(true)` when the token takes the
    /// mechanism for unwrapping (whatever it then says of the bytes),
    /// `Ok(false)` when it refuses the mechanism itself.
    pub fn unwraps_with_cbc(&self, tdes: bool) -> Result<bool, HsmError> {
        let (algorithm, mechanism) = if tdes {
            (SecretAlgorithm::Tdes3, Mechanism::Des3Cbc([0; 8]))
        } else {
            (SecretAlgorithm::Aes256, Mechanism::AesCbc([0; 16]))
        };
        let key = self.session_key(algorithm, &[Attribute::Unwrap(true)])?;
        let template = derived_des2_template(Usage::CARD_KEY);
        let unwrapped = self
            .session
            .unwrap_key(&mechanism, key, &[0u8; 32], &template);
        let answer = match unwrapped {
            Ok(h) => {
                self.discard(&[h]);
                Ok(true)
            }
            Err(Error::Pkcs11(RvError::MechanismInvalid | RvError::FunctionNotSupported, _)) => {
                Ok(false)
            }
            Err(Error::Pkcs11(_, _)) => Ok(true),
            Err(e) => Err(e.into()),
        };
        self.discard(&[key]);
        answer
    }
}
