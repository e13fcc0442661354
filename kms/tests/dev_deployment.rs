//! `kms init --dev DIR`: a ready deployment whose token holds only sensitive
//! secret keys, the internal ones non-extractable, as both Debian's `pkcs11-tool`
//! and the PKCS#11 attributes read by brandkms show. (A test binary of its own:
//! it loads the dev token's module configuration into this process.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use brandkms::ops::versions::LABEL_PREFIX;
use brandkms::testing;

const KMS: &str = env!("CARGO_BIN_EXE_kms");

#[tokio::test]
async fn the_dev_token_holds_only_sensitive_keys_and_internal_ones_never_leave() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let first = Command::new(KMS)
        .args(["init", "--dev"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .env_remove("SOFTHSM2_CONF")
        .env_remove("OPENSSL_CONF")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.contains("wrote development deployment"), "{stdout}");
    assert!(stdout.contains("registered officer officer-1"), "{stdout}");
    for f in [
        "kms.toml",
        "pin",
        "kms.db",
        "pki/ca.pem",
        "pki/server.pem",
        "pki/officer-1.pem",
        "pki/issuer-2-3-key.pem",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }

    let again = Command::new(KMS)
        .args(["init", "--dev"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));

    // What an operator sees with opensc's pkcs11-tool.
    let pin = std::fs::read_to_string(dir.join("pin")).unwrap();
    let module = brandkms::commands::softhsm::module_path().unwrap();
    // Its token directory is relative to the deployment: run where kms runs.
    let listing = Command::new("pkcs11-tool")
        .current_dir(&dir)
        .env("SOFTHSM2_CONF", dir.join("softhsm/softhsm2.conf"))
        .args(["--module", &module.display().to_string()])
        .args([
            "--token-label",
            "brandkms-dev",
            "--login",
            "--pin",
            &pin,
            "--list-objects",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let secret_keys = listing.matches("Secret Key Object").count();
    assert_eq!(secret_keys, 2, "{listing}");
    assert_eq!(
        listing.matches("Access:     sensitive").count(),
        secret_keys,
        "{listing}"
    );
    assert_eq!(
        listing.matches("never extractable").count(),
        secret_keys,
        "{listing}"
    );

    // The same through the PKCS#11 attributes brandkms reads.
    let hsm = testing::open_deployment_token(&dir);
    let objects = hsm.run(|s| s.list_objects(LABEL_PREFIX)).await.unwrap();
    assert_eq!(objects.len(), 2);
    for o in objects {
        assert_eq!(o.sensitive, Some(true), "{}", o.label);
        assert_eq!(o.extractable, Some(false), "{}", o.label);
    }
}
