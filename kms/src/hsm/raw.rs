//! The two mechanisms that `cryptoki` 0.12 does not name (docs/design.md §8):
//! `CKM_DES3_ECB_ENCRYPT_DATA` / `CKM_DES_ECB_ENCRYPT_DATA` key derivation and
//! `CKM_DES3_CMAC`. `cryptoki` refuses to build a mechanism type below the vendor
//! range, so these calls go to the same module's `C_DeriveKey`, `C_Sign` and
//! `C_Verify` through `cryptoki-sys`, with the session and object handles that
//! `cryptoki` exposes. This is the only module with `unsafe` code in brandkms, and
//! its results are checked against the RustCrypto `des` / `cmac` crates in tests.
#![allow(unsafe_code)]

use std::path::Path;
use std::ptr;

use cryptoki::context::Function;
use cryptoki::error::Rv;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_KEY_DERIVATION_STRING_DATA, CK_MECHANISM, CK_MECHANISM_TYPE, CK_OBJECT_HANDLE,
    CK_ULONG, CKM_DES_ECB_ENCRYPT_DATA, CKM_DES3_CMAC, CKM_DES3_ECB_ENCRYPT_DATA,
};

use super::HsmError;

/// Length of a TDES-CMAC: SoftHSM2 computes only the full 8 bytes.
pub const CMAC_LEN: usize = 8;

/// Which `*_ECB_ENCRYPT_DATA` mechanism a derivation uses: it follows the base key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcbDerive {
    /// `CKM_DES_ECB_ENCRYPT_DATA`, for a single-DES base key.
    Des,
    /// `CKM_DES3_ECB_ENCRYPT_DATA`, for a two- or three-key TDES base key.
    Des3,
}

/// The module's own entry points for the mechanisms `cryptoki` cannot express.
pub(crate) struct RawFunctions {
    lib: cryptoki_sys::Pkcs11,
}

impl std::fmt::Debug for RawFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawFunctions")
    }
}

impl RawFunctions {
    /// Binds to the module that `cryptoki` already loaded and initialised.
    ///
    /// The dynamic loader hands back the same library instance (reference
    /// counted), so these entry points share the token state, the sessions and the
    /// login of the `cryptoki` context. `C_Initialize` is never called here.
    pub(crate) fn bind(module: &Path) -> Result<Self, HsmError> {
        // SAFETY: loading the library runs its initialisers; it is the module the
        // `Pkcs11` context loaded a moment before, so they have already run.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(module) }.map_err(|e| HsmError::Module {
            path: module.to_path_buf(),
            source: cryptoki::error::Error::LibraryLoading(e),
        })?;
        let missing = [
            ("C_DeriveKey", lib.C_DeriveKey.is_err()),
            ("C_SignInit", lib.C_SignInit.is_err()),
            ("C_Sign", lib.C_Sign.is_err()),
            ("C_VerifyInit", lib.C_VerifyInit.is_err()),
            ("C_Verify", lib.C_Verify.is_err()),
            ("C_GetAttributeValue", lib.C_GetAttributeValue.is_err()),
        ];
        if let Some((name, _)) = missing.iter().find(|(_, absent)| *absent) {
            return Err(HsmError::Cryptoki(cryptoki::error::Error::MissingSymbol(
                name,
            )));
        }
        Ok(RawFunctions { lib })
    }

    /// `C_CloseAllSessions` on `slot`: every session of this process, the
    /// login's too. Tests only (the recovery test), as a token reset would.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn close_all_sessions(
        &self,
        slot: cryptoki_sys::CK_SLOT_ID,
    ) -> Result<(), HsmError> {
        let close = self.lib.C_CloseAllSessions.as_ref().map_err(|_| {
            HsmError::Cryptoki(cryptoki::error::Error::MissingSymbol("C_CloseAllSessions"))
        })?;
        // SAFETY: a plain call with a slot id; the module was initialised by
        // the `cryptoki` context that shares this library instance.
        let rv = unsafe { close(slot) };
        Rv::from(rv)
            .into_result(Function::CloseAllSessions)
            .map_err(HsmError::from)
    }

    /// `C_DeriveKey` with `CKM_DES3_ECB_ENCRYPT_DATA` (or the single-DES variant):
    /// the new key's value is `E_base(data)`. `data` must be a multiple of 8 bytes.
    pub(crate) fn derive_ecb_encrypt_data(
        &self,
        session: &Session,
        base: ObjectHandle,
        mechanism: EcbDerive,
        data: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle, HsmError> {
        if data.is_empty() || !data.len().is_multiple_of(8) {
            return Err(HsmError::InvalidInput(
                "derivation data must be a non-empty multiple of 8 bytes",
            ));
        }
        let mechanism_type: CK_MECHANISM_TYPE = match mechanism {
            EcbDerive::Des => CKM_DES_ECB_ENCRYPT_DATA,
            EcbDerive::Des3 => CKM_DES3_ECB_ENCRYPT_DATA,
        };
        let mut data = data.to_vec();
        let mut params = CK_KEY_DERIVATION_STRING_DATA {
            pData: data.as_mut_ptr(),
            ulLen: ulong(data.len())?,
        };
        let mut mech = CK_MECHANISM {
            mechanism: mechanism_type,
            pParameter: ptr::from_mut(&mut params).cast(),
            ulParameterLen: ulong(size_of::<CK_KEY_DERIVATION_STRING_DATA>())?,
        };
        // `CK_ATTRIBUTE`s borrow the values owned by `template`, which outlives the call.
        let mut raw_template: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        let mut derived: CK_OBJECT_HANDLE = 0;
        // SAFETY: the session and base handles come from live `cryptoki` objects of
        // this module; `mech` points at `params`, which points at `data`; both live on
        // this stack frame until the call returns; the template's pointers borrow
        // `template`; `derived` is a valid out-pointer. The module does not keep any
        // of these pointers after returning.
        let rv = unsafe {
            self.lib.C_DeriveKey(
                session.handle(),
                &mut mech,
                base.handle(),
                raw_template.as_mut_ptr(),
                ulong(raw_template.len())?,
                &mut derived,
            )
        };
        Rv::from(rv).into_result(Function::DeriveKey)?;
        // SAFETY: the module has just created this object and returned its handle.
        Ok(unsafe { ObjectHandle::new_from_raw(derived) })
    }

    /// Whether the module knows the attribute `kind` of this object (for
    /// attributes `cryptoki` cannot name, such as `CKA_DERIVE_TEMPLATE`): asks for
    /// its length only, so no value is read. `CKR_ATTRIBUTE_TYPE_INVALID` is no.
    pub(crate) fn knows_attribute(
        &self,
        session: &Session,
        object: ObjectHandle,
        kind: cryptoki_sys::CK_ATTRIBUTE_TYPE,
    ) -> Result<bool, HsmError> {
        let mut query = CK_ATTRIBUTE {
            type_: kind,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        // SAFETY: the handles come from live `cryptoki` objects of this module;
        // `query` asks for the length only (a null value pointer) and lives on
        // this stack frame until the call returns.
        let rv = unsafe {
            self.lib
                .C_GetAttributeValue(session.handle(), object.handle(), &mut query, 1)
        };
        match Rv::from(rv) {
            Rv::Error(cryptoki::error::RvError::AttributeTypeInvalid) => Ok(false),
            other => {
                other.into_result(Function::GetAttributeValue)?;
                Ok(true)
            }
        }
    }

    /// `C_Sign` with `CKM_DES3_CMAC`: the full 8-byte TDES-CMAC of `data`.
    pub(crate) fn des3_cmac(
        &self,
        session: &Session,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<[u8; CMAC_LEN], HsmError> {
        let mut mech = cmac_mechanism();
        // SAFETY: live session and key handles of this module; `mech` has no
        // parameter and lives until the call returns.
        let rv = unsafe {
            self.lib
                .C_SignInit(session.handle(), &mut mech, key.handle())
        };
        Rv::from(rv).into_result(Function::SignInit)?;
        let mut input = data.to_vec();
        let mut mac = [0u8; CMAC_LEN];
        let mut mac_len = ulong(CMAC_LEN)?;
        // SAFETY: `input` and `mac` are live buffers of the lengths passed; the
        // module writes at most `mac_len` bytes into `mac` and updates `mac_len`.
        let rv = unsafe {
            self.lib.C_Sign(
                session.handle(),
                input.as_mut_ptr(),
                ulong(input.len())?,
                mac.as_mut_ptr(),
                &mut mac_len,
            )
        };
        Rv::from(rv).into_result(Function::Sign)?;
        if mac_len != ulong(CMAC_LEN)? {
            return Err(HsmError::InvalidInput(
                "the token returned a CMAC of unexpected length",
            ));
        }
        Ok(mac)
    }

    /// `C_Verify` with `CKM_DES3_CMAC`. `Ok(false)` when the MAC does not match.
    pub(crate) fn des3_cmac_verify(
        &self,
        session: &Session,
        key: ObjectHandle,
        data: &[u8],
        mac: &[u8; CMAC_LEN],
    ) -> Result<bool, HsmError> {
        let mut mech = cmac_mechanism();
        // SAFETY: as in `des3_cmac`.
        let rv = unsafe {
            self.lib
                .C_VerifyInit(session.handle(), &mut mech, key.handle())
        };
        Rv::from(rv).into_result(Function::VerifyInit)?;
        let mut input = data.to_vec();
        let mut mac = *mac;
        // SAFETY: `input` and `mac` are live buffers of the lengths passed; the
        // module only reads them.
        let rv = unsafe {
            self.lib.C_Verify(
                session.handle(),
                input.as_mut_ptr(),
                ulong(input.len())?,
                mac.as_mut_ptr(),
                ulong(CMAC_LEN)?,
            )
        };
        match Rv::from(rv).into_result(Function::Verify) {
            Ok(()) => Ok(true),
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::SignatureInvalid
                | cryptoki::error::RvError::SignatureLenRange,
                _,
            )) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

fn cmac_mechanism() -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_DES3_CMAC,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

fn ulong(n: usize) -> Result<CK_ULONG, HsmError> {
    CK_ULONG::try_from(n).map_err(|_| HsmError::InvalidInput("length out of range"))
}
