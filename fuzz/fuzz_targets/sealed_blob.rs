//! The sealed settlement blob (`brandkms_proto::blob`), as the clearing house
//! sends it in DecryptStream: decoding any bytes never panics, and what decodes
//! encodes back to the same bytes.
#![no_main]

use brandkms_proto::blob::SealedBlob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(blob) = SealedBlob::decode(data) {
        let again = blob.encode().expect("a decoded blob encodes");
        assert_eq!(again, data, "decode then encode is the identity");
        assert_eq!(SealedBlob::decode(&again).ok(), Some(blob));
    }
});
