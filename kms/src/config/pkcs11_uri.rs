//! `hsm.uri`: a PKCS#11 URI (RFC 7512) that selects the module, the token and
//! the PIN source in one line, beside the separate fields:
//!
//! ```text
//! pkcs11:token=brandkms?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/brandkms/pin
//! ```
//!
//! A URI here selects a token, so of the path attributes only `token` (the
//! label) is taken; others (`serial`, `object`, ...) are refused by name rather
//! than ignored, since a URI that selects less than it says would pick the wrong
//! token. Query attributes: `module-path`, `module-name` (looked up in the
//! usual module directories), `pin-source` (`file:PATH`, `file:///PATH` or a
//! path). `pin-value` is refused: a PIN never goes in the configuration.

use std::path::{Path, PathBuf};

/// What a URI selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label.
    pub token: Option<String>,
    /// `module-path=`.
    pub module_path: Option<PathBuf>,
    /// `module-name=`: a module name without directory or suffix.
    pub module_name: Option<String>,
    /// `pin-source=`: a file holding the user PIN.
    pub pin_source: Option<PathBuf>,
}

/// The longest URI accepted (a configuration line, not a document).
const MAX_LEN: usize = 4096;
/// `CK_TOKEN_INFO.label` holds 32 bytes.
const MAX_LABEL: usize = 32;

/// Where `module-name=NAME` is looked for, as `libNAME.so` or `NAME.so`.
pub const MODULE_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu/pkcs11",
    "/usr/lib/aarch64-linux-gnu/pkcs11",
    "/usr/lib/pkcs11",
    "/usr/lib/softhsm",
    "/usr/local/lib",
];

/// Parses a PKCS#11 URI. The message names the attribute at fault.
pub fn parse(uri: &str) -> Result<Pkcs11Uri, String> {
    if uri.len() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} bytes"));
    }
    let rest = uri
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("pkcs11:"))
        .and_then(|_| uri.get(7..))
        .ok_or("does not start with pkcs11:")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out = Pkcs11Uri::default();
    let mut seen: Vec<String> = Vec::new();
    let mut once = |name: &str| {
        if seen.iter().any(|s| s == name) {
            return Err(format!("attribute {name} appears twice"));
        }
        seen.push(name.to_string());
        Ok(())
    };
    for attribute in path.split(';').filter(|a| !a.is_empty()) {
        // Not echoed: a malformed attribute may hold a PIN typed in the wrong place.
        let (name, value) = attribute
            .split_once('=')
            .ok_or("a path attribute has no value (NAME=VALUE)")?;
        once(name)?;
        let value = decode(name, value)?;
        match name {
            "token" => {
                if value.len() > MAX_LABEL {
                    return Err(format!("token: a label is at most {MAX_LABEL} bytes"));
                }
                out.token = Some(value);
            }
            "object" | "type" | "id" => {
                return Err(format!(
                    "{name} names an object; this URI selects a token (token=LABEL)"
                ));
            }
            "manufacturer"
            | "model"
            | "serial"
            | "library-manufacturer"
            | "library-description"
            | "library-version"
            | "slot-description"
            | "slot-manufacturer"
            | "slot-id" => {
                return Err(format!(
                    "{name} is not supported: select the token by its label (token=LABEL)"
                ));
            }
            other => return Err(format!("unknown path attribute {other}")),
        }
    }
    for attribute in query.split('&').filter(|a| !a.is_empty()) {
        let (name, value) = attribute
            .split_once('=')
            .ok_or("a query attribute has no value (NAME=VALUE)")?;
        once(name)?;
        if name == "pin-value" {
            return Err(
                "pin-value: a PIN never goes in the configuration; use pin-source=file:PATH".into(),
            );
        }
        let value = decode(name, value)?;
        match name {
            "module-path" => out.module_path = Some(PathBuf::from(value)),
            "module-name" => {
                if value.contains('/') || value == "." || value == ".." {
                    return Err("module-name: a name, not a path (use module-path)".into());
                }
                out.module_name = Some(value);
            }
            "pin-source" => out.pin_source = Some(pin_source(&value)?),
            other => return Err(format!("unknown query attribute {other}")),
        }
    }
    if out.module_path.is_some() && out.module_name.is_some() {
        return Err("module-path and module-name both given: keep one".into());
    }
    Ok(out)
}

/// `file:PATH`, `file:///PATH` or a plain path.
fn pin_source(value: &str) -> Result<PathBuf, String> {
    let path = match value.strip_prefix("file:") {
        Some(rest) => match rest.strip_prefix("//") {
            // file://HOST/PATH: only the local host, written empty or localhost.
            Some(authority_and_path) => {
                let slash = authority_and_path
                    .find('/')
                    .ok_or("pin-source: file:// needs an absolute path")?;
                let (host, path) = authority_and_path.split_at(slash);
                if !(host.is_empty() || host == "localhost") {
                    return Err(format!("pin-source: host {host:?}: only a local file"));
                }
                path
            }
            None => rest,
        },
        None if value.contains(':') && !value.starts_with('/') => {
            return Err("pin-source: only file: sources (file:PATH)".into());
        }
        None => value,
    };
    if path.is_empty() {
        return Err("pin-source: empty path".into());
    }
    Ok(PathBuf::from(path))
}

/// Percent-decodes a value (RFC 3986); the result must be non-empty UTF-8
/// without control characters.
fn decode(name: &str, value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{name}: a % not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| format!("{name}: not UTF-8"))?;
    if text.is_empty() {
        return Err(format!("{name}: empty value"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{name}: control characters"));
    }
    Ok(text)
}

/// The module file of `module-name=NAME`: `libNAME.so` or `NAME.so` in the
/// first of `dirs` that has one.
pub fn find_module(name: &str, dirs: &[&str]) -> Result<PathBuf, String> {
    dirs.iter()
        .flat_map(|d| {
            let dir = Path::new(d);
            [
                dir.join(format!("lib{name}.so")),
                dir.join(format!("{name}.so")),
            ]
        })
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "module-name={name}: no lib{name}.so or {name}.so in {}; give module-path",
                dirs.join(", ")
            )
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_uri_selects_module_token_and_pin_source() {
        let u = parse("pkcs11:token=brand%20kms?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/brandkms/pin").unwrap();
        assert_eq!(u.token.as_deref(), Some("brand kms"));
        assert_eq!(
            u.module_path.as_deref(),
            Some(Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(
            u.pin_source.as_deref(),
            Some(Path::new("/etc/brandkms/pin"))
        );
        assert_eq!(parse("PKCS11:").unwrap(), Pkcs11Uri::default());
        for (source, path) in [
            ("file:///etc/pin", "/etc/pin"),
            ("file://localhost/etc/pin", "/etc/pin"),
            ("file:pin", "pin"),
            ("/etc/pin", "/etc/pin"),
            ("pin", "pin"),
        ] {
            let u = parse(&format!("pkcs11:?pin-source={source}")).unwrap();
            assert_eq!(u.pin_source.as_deref(), Some(Path::new(path)), "{source}");
        }
        let u = parse("pkcs11:token=t?module-name=softhsm2").unwrap();
        assert_eq!(u.module_name.as_deref(), Some("softhsm2"));
    }

    #[test]
    fn what_it_cannot_honour_is_refused_by_name() {
        for (uri, needle) in [
            ("file:/x", "does not start with pkcs11:"),
            ("pkcs11:token=a;token=b", "token appears twice"),
            ("pkcs11:serial=1234", "serial is not supported"),
            ("pkcs11:token=t;object=k", "object names an object"),
            ("pkcs11:colour=red", "unknown path attribute colour"),
            ("pkcs11:token", "has no value"),
            ("pkcs11:token=", "token: empty value"),
            ("pkcs11:token=%zz", "two hex digits"),
            ("pkcs11:token=%ff", "not UTF-8"),
            ("pkcs11:token=a%0Ab", "control characters"),
            (
                "pkcs11:token=123456789012345678901234567890123",
                "at most 32 bytes",
            ),
            (
                "pkcs11:?pin-value=1234",
                "a PIN never goes in the configuration",
            ),
            ("pkcs11:?pin-source=https://x/pin", "only file: sources"),
            ("pkcs11:?pin-source=file://host/pin", "only a local file"),
            ("pkcs11:?module-name=../x", "a name, not a path"),
            ("pkcs11:?module-name=a&module-path=/b", "keep one"),
            ("pkcs11:?x-vendor=1", "unknown query attribute x-vendor"),
        ] {
            let e = parse(uri).unwrap_err();
            assert!(e.contains(needle), "{uri}: {e}");
        }
    }

    #[test]
    fn a_module_name_is_found_in_the_module_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libvendor.so"), b"").unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            find_module("vendor", &["/nonexistent", d]).unwrap(),
            dir.path().join("libvendor.so")
        );
        let e = find_module("other", &[d]).unwrap_err();
        assert!(e.contains("give module-path"), "{e}");
    }

    proptest! {
        /// Any label survives percent-encoding and parsing, and the parser never
        /// panics on any input.
        #[test]
        fn labels_round_trip(label in "[ -~]{1,32}") {
            let encoded: String = label
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            let u = parse(&format!("pkcs11:token={encoded}")).unwrap();
            prop_assert_eq!(u.token, Some(label));
        }

        #[test]
        fn never_panics(s in "pkcs11:[ -~]{0,80}") {
            let _ = parse(&s);
        }
    }
}
