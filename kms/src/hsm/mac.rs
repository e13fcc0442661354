//! Message authentication in the token: HMAC-SHA-256 with token keys, TDES-CMAC
//! with session keys.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;

use super::HsmError;
use super::raw::CMAC_LEN;
use super::session::{HsmSession, verified};
use super::spec::ObjectId;

impl HsmSession<'_> {
    /// HMAC-SHA-256 of `data` with a generic-secret key.
    pub fn hmac_sha256(&self, key: &ObjectId, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        let _timer = self.timer("hmac");
        self.with_key(key, |h| {
            Ok(self.session.sign(&Mechanism::Sha256Hmac, h, data)?)
        })
    }

    /// Verifies an HMAC-SHA-256 in the token. `Ok(false)` when it does not match.
    pub fn hmac_sha256_verify(
        &self,
        key: &ObjectId,
        data: &[u8],
        mac: &[u8],
    ) -> Result<bool, HsmError> {
        let _timer = self.timer("hmac");
        self.with_key(key, |h| {
            verified(self.session.verify(&Mechanism::Sha256Hmac, h, data, mac))
        })
    }

    /// TDES-CMAC (8 bytes) with a key handle.
    pub fn tdes_cmac(&self, key: ObjectHandle, data: &[u8]) -> Result<[u8; CMAC_LEN], HsmError> {
        let _timer = self.timer("cmac");
        self.inner.raw.des3_cmac(self.session, key, data)
    }

    /// Verifies a TDES-CMAC in the token. `Ok(false)` when it does not match.
    pub fn tdes_cmac_verify(
        &self,
        key: ObjectHandle,
        data: &[u8],
        mac: &[u8; CMAC_LEN],
    ) -> Result<bool, HsmError> {
        let _timer = self.timer("cmac");
        self.inner
            .raw
            .des3_cmac_verify(self.session, key, data, mac)
    }
}
