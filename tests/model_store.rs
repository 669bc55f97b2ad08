//! `echoview model install|list|rollback` on a real store in a temporary folder, with the
//! real engine (tract) running each bundle's self-test: a good bundle switches the active
//! slot; a corrupted bundle, a bundle whose self-test fails and an unsigned bundle at a site
//! that signs are refused and the active model never changes; rollback switches back.

use std::path::{Path, PathBuf};
use std::process::Command;

use echoview::bundle::sha256_hex;
use echoview::engine::EngineKind;
use echoview::model_store::{SIGNATURE_FILE, SiteKey, Slot, Store, StoreError, Vetting};

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
}

/// A copy of the demo bundle in `dir`.
fn copy_demo(dir: &Path) -> PathBuf {
    let out = dir.join("bundle");
    std::fs::create_dir_all(&out).unwrap();
    for file in [
        "manifest.toml",
        "encoder.onnx",
        "head.onnx",
        "reference.json",
    ] {
        std::fs::copy(demo().join(file), out.join(file)).unwrap();
    }
    out
}

/// A copy whose reference logits were edited and re-hashed: the hashes verify, the
/// self-test cannot pass.
fn failing_selftest(dir: &Path) -> PathBuf {
    let bundle = copy_demo(dir);
    let path = bundle.join("reference.json");
    let old = sha256_hex(&std::fs::read(&path).unwrap());
    let mut reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let first = reference["head_logits"][0].as_f64().unwrap();
    reference["head_logits"][0] = serde_json::json!(first + 1.0);
    let text = serde_json::to_vec(&reference).unwrap();
    std::fs::write(&path, &text).unwrap();
    let manifest = std::fs::read_to_string(bundle.join("manifest.toml")).unwrap();
    assert!(manifest.contains(&old));
    std::fs::write(
        bundle.join("manifest.toml"),
        manifest.replace(&old, &sha256_hex(&text)),
    )
    .unwrap();
    bundle
}

/// A copy with one byte of the encoder flipped.
fn corrupted(dir: &Path) -> PathBuf {
    let bundle = copy_demo(dir);
    let path = bundle.join("encoder.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    bundle
}

fn vetting() -> Vetting {
    Vetting {
        engine: EngineKind::Tract,
        key: None,
    }
}

/// What `active` points at, and the bytes of the manifest it leads to.
fn active_state(store: &Store) -> (Option<Slot>, Vec<u8>) {
    (
        store.active().unwrap(),
        std::fs::read(store.active_path().join("manifest.toml")).unwrap_or_default(),
    )
}

#[test]
fn install_refuses_bad_bundles_and_never_changes_the_active_model() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::under_root(tmp.path());
    assert_eq!(store.active().unwrap(), None);

    let first = store.install(&demo(), &vetting()).unwrap();
    assert_eq!(first.slot, Slot::A);
    assert!(first.before.is_none());
    assert!(first.now.identity.starts_with("echoview-demo "));
    assert_eq!(store.active().unwrap(), Some(Slot::A));
    let second = store.install(&demo(), &vetting()).unwrap();
    assert_eq!(second.slot, Slot::B, "an install goes to the inactive slot");
    assert_eq!(second.before.as_ref().map(|b| b.0), Some(Slot::A));
    let before = active_state(&store);
    assert_eq!(before.0, Some(Slot::B));

    let bad = tempfile::tempdir().unwrap();
    let err = store
        .install(&corrupted(bad.path()), &vetting())
        .unwrap_err();
    assert!(matches!(err, StoreError::Bundle { .. }), "{err}");
    assert!(err.to_string().contains("encoder.onnx"), "{err}");
    assert_eq!(active_state(&store), before);

    let bad = tempfile::tempdir().unwrap();
    let err = store
        .install(&failing_selftest(bad.path()), &vetting())
        .unwrap_err();
    assert!(matches!(err, StoreError::SelfTest { .. }), "{err}");
    assert!(err.to_string().contains("self-test"), "{err}");
    assert_eq!(active_state(&store), before);
    assert!(
        !store.dir().join(".staging").exists(),
        "a refused bundle leaves no staging copy"
    );
    // Both slots still hold loadable models after the refusals.
    let list = store.list().unwrap();
    assert!(
        list.iter().all(|s| matches!(s.bundle, Some(Ok(_)))),
        "{list:?}"
    );
    assert!(list[1].active && !list[0].active);

    let back = store.rollback(EngineKind::Tract).unwrap();
    assert_eq!(back.slot, Slot::A);
    assert_eq!(store.active().unwrap(), Some(Slot::A));
    assert_eq!(store.rollback(EngineKind::Tract).unwrap().slot, Slot::B);
}

#[test]
fn rollback_with_an_empty_other_slot_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::under_root(tmp.path());
    store.install(&demo(), &vetting()).unwrap();
    let err = store.rollback(EngineKind::Tract).unwrap_err();
    assert!(
        matches!(err, StoreError::NothingToRollBack { slot: Slot::B, .. }),
        "{err}"
    );
    assert_eq!(store.active().unwrap(), Some(Slot::A));
}

#[test]
fn a_site_key_requires_a_valid_signature() {
    use ed25519_dalek::{Signer, SigningKey};
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let tmp = tempfile::tempdir().unwrap();
    let signer = SigningKey::from_bytes(&[42u8; 32]);
    let key_file = tmp.path().join("model-signing.pub");
    std::fs::write(&key_file, hex(signer.verifying_key().as_bytes())).unwrap();
    let vetting = Vetting {
        engine: EngineKind::Tract,
        key: Some(SiteKey::load(&key_file).unwrap()),
    };
    let store = Store::under_root(&tmp.path().join("root"));
    let bundle = copy_demo(tmp.path());

    let err = store.install(&bundle, &vetting).unwrap_err();
    assert!(matches!(err, StoreError::Signature { .. }), "{err}");
    assert_eq!(store.active().unwrap(), None);

    let manifest = std::fs::read(bundle.join("manifest.toml")).unwrap();
    let sig = signer.sign(&manifest).to_bytes();
    std::fs::write(bundle.join(SIGNATURE_FILE), hex(&sig)).unwrap();
    store.install(&bundle, &vetting).unwrap();
    assert!(store.active_path().join(SIGNATURE_FILE).exists());

    // Signed by another key: refused.
    let other = SigningKey::from_bytes(&[1u8; 32])
        .sign(&manifest)
        .to_bytes();
    std::fs::write(bundle.join(SIGNATURE_FILE), hex(&other)).unwrap();
    let err = store.install(&bundle, &vetting).unwrap_err();
    assert!(matches!(err, StoreError::Signature { .. }), "{err}");
    assert_eq!(store.active().unwrap(), Some(Slot::A));
}

fn echoview(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_commands_report_what_they_did_and_what_stays_active() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let root = root.to_str().unwrap();
    let demo = demo();
    let demo = demo.to_str().unwrap();

    let (ok, text) = echoview(&["model", "install", demo, "--root", root, "--no-restart"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("in slot a") && text.contains("self-test passed"),
        "{text}"
    );

    let bad = corrupted(tmp.path());
    let (ok, text) = echoview(&[
        "model",
        "install",
        bad.to_str().unwrap(),
        "--root",
        root,
        "--no-restart",
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("the active model is unchanged (slot a"),
        "{text}"
    );

    let (ok, text) = echoview(&["model", "list", "--root", root]);
    assert!(ok, "{text}");
    assert!(text.contains("* a  echoview-demo"), "{text}");
    assert!(text.contains("  b  (empty)"), "{text}");

    let (ok, text) = echoview(&["model", "rollback", "--root", root, "--no-restart"]);
    assert!(!ok, "{text}");
    assert!(text.contains("no model to roll back to"), "{text}");
}
