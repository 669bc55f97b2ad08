//! Site signatures on model bundles: an ed25519 signature over `manifest.toml`.
//!
//! The manifest records the sha256 of every other bundle file, so one signature over it
//! covers the whole bundle. A site that configures a public key (a file of 64 hex digits,
//! [`super::SITE_KEY`] by default) accepts only bundles that carry a valid signature in
//! `manifest.toml.sig` (128 hex digits). Keys and signatures are hex text so that they can be
//! read, compared and copied by hand; `board/jetson/README.md` shows how to make them with
//! OpenSSL.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};

/// The signature file beside `manifest.toml`.
pub const SIGNATURE_FILE: &str = "manifest.toml.sig";

/// Why a key or signature is unusable, or a signature does not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The key or signature file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file is not the expected number of hex digits.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The signature does not match the manifest and key.
    #[error(
        "{path} is not a valid signature of {manifest} by the site key {key}: the bundle was \
         changed after signing or signed with another key; get a bundle signed for this site"
    )]
    Invalid {
        /// The signature file.
        path: PathBuf,
        /// The manifest it should sign.
        manifest: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// A site's public key, with the file it came from for messages.
#[derive(Debug, Clone)]
pub struct SiteKey {
    /// The ed25519 public key.
    key: VerifyingKey,
    /// The file it was read from, named in every refusal.
    path: PathBuf,
}

impl SiteKey {
    /// Reads a key file: 64 hex digits (32 bytes); blank lines and `#` comments are ignored.
    pub fn load(path: &Path) -> Result<SiteKey, SignatureError> {
        let bytes: [u8; 32] = read_hex(path)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| SignatureError::Format {
            path: path.to_path_buf(),
            message: format!("not an ed25519 public key ({e})"),
        })?;
        Ok(SiteKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the signature in `bundle_dir/manifest.toml.sig` over `bundle_dir/manifest.toml`.
    pub fn verify_bundle(&self, bundle_dir: &Path) -> Result<(), SignatureError> {
        let manifest = bundle_dir.join("manifest.toml");
        let sig_path = bundle_dir.join(SIGNATURE_FILE);
        let text = std::fs::read(&manifest).map_err(|source| SignatureError::Read {
            path: manifest.clone(),
            source,
        })?;
        let sig: [u8; 64] = read_hex(&sig_path)?;
        self.key
            .verify_strict(&text, &Signature::from_bytes(&sig))
            .map_err(|_| SignatureError::Invalid {
                path: sig_path,
                manifest,
                key: self.path.clone(),
            })
    }
}

/// Reads exactly `N` bytes written as hex digits, ignoring whitespace and `#` comments.
fn read_hex<const N: usize>(path: &Path) -> Result<[u8; N], SignatureError> {
    let text = std::fs::read_to_string(path).map_err(|source| SignatureError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    parse_hex(&digits).ok_or_else(|| SignatureError::Format {
        path: path.to_path_buf(),
        message: format!(
            "expected {} hex digits ({N} bytes), found {:?}",
            2 * N,
            shorten(&digits)
        ),
    })
}

/// `N` bytes from exactly `2 N` hex digits, or `None`.
fn parse_hex<const N: usize>(digits: &str) -> Option<[u8; N]> {
    if digits.len() != 2 * N || !digits.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// At most 24 characters of `s`, for messages about unreadable files.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(24).collect();
    if s.chars().count() > 24 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hex_parsing_is_exact() {
        assert_eq!(parse_hex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(parse_hex::<2>("0aF"), None);
        assert_eq!(parse_hex::<2>("0aFf00"), None);
        assert_eq!(parse_hex::<2>("0g00"), None);
        assert_eq!(parse_hex::<2>("é0a"), None);
    }

    #[test]
    fn a_signed_manifest_verifies_and_a_changed_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let signer = SigningKey::from_bytes(&[7u8; 32]);
        let key_path = dir.path().join("site.pub");
        std::fs::write(
            &key_path,
            format!("# site key\n{}\n", hex(signer.verifying_key().as_bytes())),
        )
        .unwrap();
        let manifest = b"name = \"x\"\n";
        std::fs::write(dir.path().join("manifest.toml"), manifest).unwrap();
        let sig = signer.sign(manifest);
        std::fs::write(dir.path().join(SIGNATURE_FILE), hex(&sig.to_bytes())).unwrap();
        let key = SiteKey::load(&key_path).unwrap();
        key.verify_bundle(dir.path()).unwrap();

        std::fs::write(dir.path().join("manifest.toml"), b"name = \"y\"\n").unwrap();
        let err = key.verify_bundle(dir.path()).unwrap_err();
        assert!(matches!(err, SignatureError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("site.pub"), "{err}");

        std::fs::remove_file(dir.path().join(SIGNATURE_FILE)).unwrap();
        let err = key.verify_bundle(dir.path()).unwrap_err();
        assert!(matches!(err, SignatureError::Read { .. }), "{err}");
    }

    #[test]
    fn a_malformed_key_names_the_file_and_the_expected_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pub");
        std::fs::write(&path, "abcd\n").unwrap();
        let err = SiteKey::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.pub") && err.contains("64 hex digits"),
            "{err}"
        );
    }
}
