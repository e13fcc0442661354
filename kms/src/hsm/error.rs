//! Errors of the HSM layer. PKCS#11 return codes are kept, never turned into text.

use std::path::PathBuf;

use cryptoki::context::Function;
use cryptoki::error::{Error as CryptokiError, RvError};

use super::ObjectId;

/// Everything that can go wrong between brandkms and the PKCS#11 token.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The token no longer holds the user's login (the session state seen).
    #[error("the user is no longer logged in to the token (session state {0})")]
    LoginLost(String),
    /// The module could not be loaded or initialised.
    #[error("cannot load PKCS#11 module {path}: {source}")]
    Module {
        /// Path of the module.
        path: PathBuf,
        /// What cryptoki reported.
        #[source]
        source: CryptokiError,
    },
    /// No slot holds a token with the configured label.
    #[error("no token labelled {label:?} is present (tokens present: {present})")]
    TokenNotFound {
        /// The configured label.
        label: String,
        /// The labels that are present, comma-separated.
        present: String,
    },
    /// Several tokens carry the configured label.
    #[error("{count} tokens are labelled {label:?}: give each token a label of its own")]
    AmbiguousToken {
        /// The configured label.
        label: String,
        /// How many carry it.
        count: usize,
    },
    /// The token refused the user PIN.
    #[error("the token refused the PIN ({0})")]
    PinRefused(RvError),
    /// The token refused the security officer's PIN (nothing was done).
    #[error("the token refused the security officer's PIN ({0})")]
    SoPinRefused(RvError),
    /// A PKCS#11 function returned an error code.
    #[error("PKCS#11 {function} failed: {rv}")]
    Pkcs11 {
        /// The function that failed.
        function: Function,
        /// Its return code.
        rv: RvError,
    },
    /// The token does not offer a mechanism brandkms needs for this operation.
    #[error("the token does not offer {mechanism}{hint}")]
    MechanismUnavailable {
        /// The mechanism's PKCS#11 name.
        mechanism: &'static str,
        /// What to do about it (may be empty).
        hint: &'static str,
    },
    /// No object carries the CKA_ID.
    #[error("no token object has CKA_ID {0}")]
    ObjectNotFound(ObjectId),
    /// Several objects carry the CKA_ID (the id must be unique).
    #[error("{count} token objects share CKA_ID {id}")]
    AmbiguousObject {
        /// The id.
        id: ObjectId,
        /// How many objects carry it.
        count: usize,
    },
    /// No data object has the name.
    #[error("no token data object named {0:?}")]
    DataObjectNotFound(String),
    /// Several data objects carry the name (it must be unique).
    #[error("{count} token data objects are named {name:?}")]
    AmbiguousDataObject {
        /// The name.
        name: String,
        /// How many objects carry it.
        count: usize,
    },
    /// The token gave no `CKA_CHECK_VALUE` for a key it generated.
    #[error("the token gave no CKA_CHECK_VALUE for key {0}")]
    NoCheckValue(ObjectId),
    /// A key specification combines things that do not go together.
    #[error("invalid key specification: {0}")]
    InvalidSpec(&'static str),
    /// Input of the wrong size for the mechanism.
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// Another cryptoki error (library loading, conversions).
    #[error("cryptoki: {0}")]
    Cryptoki(CryptokiError),
    /// The blocking worker that ran the HSM call failed.
    #[error("HSM worker failed: {0}")]
    Worker(String),
}

impl HsmError {
    /// The PKCS#11 return code, when the token returned one.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            HsmError::Pkcs11 { rv, .. } | HsmError::PinRefused(rv) | HsmError::SoPinRefused(rv) => {
                Some(*rv)
            }
            _ => None,
        }
    }

    /// True when a cached object handle has gone stale.
    pub(crate) fn is_stale_handle(&self) -> bool {
        matches!(
            self.rv(),
            Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
        )
    }

    /// True when the token lost the session or the login: the call did
    /// nothing, and the pool recovers (new sessions, the login restored).
    pub fn is_session_lost(&self) -> bool {
        matches!(
            self.rv(),
            Some(
                RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::UserNotLoggedIn
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
            )
        )
    }
}

impl From<CryptokiError> for HsmError {
    fn from(e: CryptokiError) -> Self {
        match e {
            CryptokiError::Pkcs11(rv, function) => HsmError::Pkcs11 { function, rv },
            other => HsmError::Cryptoki(other),
        }
    }
}
