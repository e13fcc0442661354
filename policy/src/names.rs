//! The vocabulary shared by the policy, the store and the wire: each enum has one
//! stable lowercase name, used in the database and in messages.

use std::fmt;
use std::str::FromStr;

/// A name that is not one of an enum's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected one of: {expected})")]
pub struct ParseNameError {
    /// What was being parsed.
    pub what: &'static str,
    /// The value given.
    pub value: String,
    /// The accepted names, comma-separated.
    pub expected: String,
}

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseNameError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ParseNameError {
                        what: $what,
                        value: s.to_string(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }
    };
}

named_enum!(
    /// The kinds of participant (docs/design.md §1).
    EntityKind, "entity kind" {
        /// A bank, card company or railway that issues cards.
        Issuer => "issuer",
        /// A chain-store POS centre.
        PosCenter => "pos_center",
        /// A multimedia-kiosk centre.
        MmkCenter => "mmk_center",
        /// A bank centre (load keys with the sponsoring issuer's consent).
        BankCenter => "bank_center",
        /// A merchant terminal.
        MerchantTerminal => "merchant_terminal",
        /// An Internet shop: never holds keys.
        Cybershop => "cybershop",
        /// The brand's loading portal for issuers that are not online.
        LoadingPortal => "loading_portal",
        /// The clearing house.
        ClearingHouse => "clearing_house",
        /// A security officer (a person).
        Officer => "officer",
    }
);

named_enum!(
    /// Whether an entity may act at all.
    EntityStatus, "entity status" {
        /// May act, within its tie-ups.
        Active => "active",
        /// Gets nothing.
        Suspended => "suspended",
    }
);

named_enum!(
    /// Key classes (docs/design.md §2).
    KeyClass, "key class" {
        /// DES/TDES masters of card keys.
        CardAccess => "card_access",
        /// AES-256 key-encryption keys, one per receiving entity.
        Transport => "transport",
        /// RSA keys whose public half encrypts account numbers.
        Settlement => "settlement",
        /// MAC keys for settlement results.
        Authenticator => "authenticator",
        /// The service's own keys (audit MAC, session sealing, import key).
        Internal => "internal",
        /// AES-256 key-encryption keys shared with an exporting HSM, imported
        /// under the import key; they unwrap keys of a bulk import, nothing else.
        ImportKek => "import_kek",
    }
);

named_enum!(
    /// The life cycle of a key version (docs/design.md §2).
    KeyState, "key state" {
        /// Used for new work.
        Active => "active",
        /// Still accepted for cards in the field, never for new distribution.
        AuthOnly => "auth_only",
        /// Still decrypts ciphertexts in the field, never encrypts anew.
        DecryptOnly => "decrypt_only",
        /// No longer used.
        Retired => "retired",
        /// Waiting for its destruction date.
        PendingDestruction => "pending_destruction",
        /// The token object is gone.
        Destroyed => "destroyed",
    }
);

named_enum!(
    /// Key algorithms.
    Algorithm, "algorithm" {
        /// Single DES: legacy, only on explicit request, always reported weak.
        Des => "des",
        /// Two-key triple DES (the default for card-access keys).
        Tdes2 => "tdes2",
        /// Three-key triple DES.
        Tdes3 => "tdes3",
        /// AES-256.
        Aes256 => "aes256",
        /// A 256-bit HMAC-SHA-256 key.
        HmacSha256 => "hmac_sha256",
        /// RSA 2048.
        Rsa2048 => "rsa2048",
        /// RSA 3072.
        Rsa3072 => "rsa3072",
        /// RSA 4096.
        Rsa4096 => "rsa4096",
    }
);

named_enum!(
    /// What a card-access key is for.
    Purpose, "purpose" {
        /// Loading value onto cards.
        Load => "load",
        /// Purchases (debits).
        Purchase => "purchase",
    }
);

named_enum!(
    /// How a tie-up covers a key (docs/design.md §3).
    TieUpMode, "tie-up mode" {
        /// The entity receives the key, wrapped.
        Supply => "supply",
        /// The brand keeps the key and uses it on the entity's behalf.
        Hold => "hold",
        /// The brand keeps an offline issuer's key and loads for it.
        ProxyLoad => "proxy_load",
    }
);

named_enum!(
    /// The state of a tie-up agreement.
    TieUpState, "tie-up state" {
        /// In force (within its validity window).
        Active => "active",
        /// Paused.
        Suspended => "suspended",
        /// Ended for good.
        Terminated => "terminated",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in EntityKind::ALL {
            assert_eq!(k.as_str().parse::<EntityKind>(), Ok(*k));
        }
        for s in KeyState::ALL {
            assert_eq!(s.as_str().parse::<KeyState>(), Ok(*s));
        }
        let err = "shop".parse::<EntityKind>().unwrap_err();
        assert!(err.to_string().contains("cybershop"));
    }
}

named_enum!(
    /// Admin operations that may be placed under dual control (rule 7).
    SensitiveOperation, "sensitive operation" {
        /// Rotating a card-access or settlement key.
        RotateKey => "rotate_key",
        /// Scheduling the destruction of a card-access or settlement key version.
        DestroyKeyVersion => "destroy_key_version",
        /// Creating a tie-up with a `supply` key.
        CreateSupplyTieUp => "create_supply_tie_up",
        /// Updating a tie-up so that it supplies more than it did.
        WidenSupplyTieUp => "widen_supply_tie_up",
        /// Registering an entity of kind officer.
        RegisterOfficer => "register_officer",
        /// Resuming a suspended officer.
        ResumeOfficer => "resume_officer",
        /// Changing which operations need a second officer.
        SetDualControl => "set_dual_control",
        /// Importing a key wrapped under the service's import key.
        ImportKey => "import_key",
        /// Marking a key version compromised.
        MarkCompromised => "mark_compromised",
        /// Setting a key version's cryptoperiod so that it serves longer.
        WidenCryptoperiod => "widen_cryptoperiod",
    }
);
