//! The tie-up policy of brandkms: a pure function from (caller, action, key,
//! tie-ups, consents, time) to a decision. No I/O, no async, no logging, no clock.

mod names;

pub use names::{
    Algorithm, EntityKind, EntityStatus, KeyClass, KeyState, ParseNameError, Purpose, TieUpMode,
    TieUpState,
};
