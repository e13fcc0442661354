//! Symmetric ciphers: AES-256-GCM sealing, TDES-ECB and TDES-CBC, and the
//! derivation of card keys (`K_C`) and session keys (`K_S`).

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::ObjectHandle;
use zeroize::Zeroizing;

use super::HsmError;
use super::keygen::LEGACY_HINT;
use super::raw::EcbDerive;
use super::session::{HsmSession, SessionKey};
use super::spec::{ObjectId, Usage, derived_des2_template};

impl<'a> HsmSession<'a> {
    /// AES-256-GCM encryption with a token key: a fresh 12-byte IV from the token,
    /// `aad` bound; returns IV || ciphertext || 16-byte tag.
    pub fn aes_gcm_seal(
        &self,
        key: &ObjectId,
        aad: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let _timer = self.timer("aes_gcm");
        let mut iv = self.random(GCM_IV_LEN)?;
        let sealed = self.with_key(key, |h| {
            let mut iv = iv.clone();
            let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
            Ok(self.session.encrypt(&Mechanism::AesGcm(params), h, data)?)
        })?;
        iv.extend_from_slice(&sealed);
        Ok(iv)
    }

    /// Opens what [`HsmSession::aes_gcm_seal`] sealed; `Ok(None)` when the tag or
    /// the associated data does not match.
    pub fn aes_gcm_open(
        &self,
        key: &ObjectId,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, HsmError> {
        let _timer = self.timer("aes_gcm");
        let Some((iv, body)) = sealed.split_at_checked(GCM_IV_LEN) else {
            return Ok(None);
        };
        self.with_key(key, |h| {
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
            match self.session.decrypt(&Mechanism::AesGcm(params), h, body) {
                Ok(plain) => Ok(Some(Zeroizing::new(plain))),
                Err(cryptoki::error::Error::Pkcs11(
                    RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                    _,
                )) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// TDES-ECB encryption of whole blocks with a token key.
    pub fn tdes_ecb_encrypt(&self, key: &ObjectId, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        // Timed by tdes_ecb_encrypt_handle.
        self.with_key(key, |h| self.tdes_ecb_encrypt_handle(h, data))
    }

    /// TDES-ECB decryption of whole blocks with a token key.
    pub fn tdes_ecb_decrypt(&self, key: &ObjectId, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        let _timer = self.timer("tdes");
        blocks(data)?;
        self.with_key(key, |h| {
            Ok(self.session.decrypt(&Mechanism::Des3Ecb, h, data)?)
        })
    }

    /// TDES-ECB encryption with a key handle (a session key).
    pub fn tdes_ecb_encrypt_handle(
        &self,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let _timer = self.timer("tdes");
        blocks(data)?;
        Ok(self.session.encrypt(&Mechanism::Des3Ecb, key, data)?)
    }

    /// TDES-CBC encryption, no padding, with a key handle.
    pub fn tdes_cbc_encrypt(
        &self,
        key: ObjectHandle,
        iv: [u8; 8],
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let _timer = self.timer("tdes");
        blocks(data)?;
        Ok(self.session.encrypt(&Mechanism::Des3Cbc(iv), key, data)?)
    }

    /// TDES-CBC decryption, no padding, with a key handle.
    pub fn tdes_cbc_decrypt(
        &self,
        key: ObjectHandle,
        iv: [u8; 8],
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let _timer = self.timer("tdes");
        blocks(data)?;
        Ok(self.session.decrypt(&Mechanism::Des3Cbc(iv), key, data)?)
    }

    /// Derives a two-key TDES session object `E_base(data)` (16 data bytes), with the
    /// usage of a card key `K_C`. Destroyed when the returned value is dropped.
    pub fn derive_card_key(
        &self,
        master: &ObjectId,
        mechanism: EcbDerive,
        data: &[u8; 16],
    ) -> Result<SessionKey<'a>, HsmError> {
        let _timer = self.timer("derive");
        let template = derived_des2_template(Usage::CARD_KEY);
        let handle = self.with_key(master, |h| {
            self.inner
                .raw
                .derive_ecb_encrypt_data(self.session, h, mechanism, data, &template)
                .map_err(|e| des_hint(e, mechanism))
        })?;
        Ok(SessionKey {
            handle,
            session: self.session,
        })
    }

    /// Derives a session key `K_S = E_KC(data)` from a derived card key.
    pub fn derive_session_key(
        &self,
        card_key: &SessionKey<'_>,
        data: &[u8; 16],
    ) -> Result<SessionKey<'a>, HsmError> {
        let _timer = self.timer("derive");
        let template = derived_des2_template(Usage::SESSION_KEY);
        let handle = self.inner.raw.derive_ecb_encrypt_data(
            self.session,
            card_key.handle(),
            EcbDerive::Des3,
            data,
            &template,
        )?;
        Ok(SessionKey {
            handle,
            session: self.session,
        })
    }
}

fn blocks(data: &[u8]) -> Result<(), HsmError> {
    if data.is_empty() || !data.len().is_multiple_of(8) {
        return Err(HsmError::InvalidInput(
            "TDES input must be a non-empty multiple of 8 bytes",
        ));
    }
    Ok(())
}

const GCM_IV_LEN: usize = 12;
const GCM_TAG_BITS: u64 = 128;

fn des_hint(e: HsmError, mechanism: EcbDerive) -> HsmError {
    if e.rv() == Some(RvError::MechanismInvalid) {
        return match mechanism {
            EcbDerive::Des => HsmError::MechanismUnavailable {
                mechanism: "CKM_DES_ECB_ENCRYPT_DATA",
                hint: LEGACY_HINT,
            },
            EcbDerive::Des3 => HsmError::MechanismUnavailable {
                mechanism: "CKM_DES3_ECB_ENCRYPT_DATA",
                hint: "",
            },
        };
    }
    e
}
