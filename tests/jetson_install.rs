//! `board/jetson/install.sh --root DIR` into a temporary tree: the first run sets the cart
//! up (site file, udev rule, clocks unit, model store), a second run changes nothing (the
//! tree is identical, byte for byte), a damaged or re-configured tree is repaired, and
//! `--dry-run` changes nothing. Host commands (systemctl, udevadm, nvpmodel) are only listed
//! under --root, so this runs anywhere with bash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("board/jetson/install.sh")
}

fn install(root: &Path, site: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(script())
        .arg("--root")
        .arg(root)
        .arg("--site")
        .arg(site)
        .args(extra)
        .env("ECHOVIEW_BIN", env!("CARGO_BIN_EXE_echoview"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every entry under `root`: file contents and modes, link targets, folders.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let key = path.strip_prefix(root).unwrap().to_path_buf();
            let value = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path);
                "dir".to_string()
            } else {
                let bytes = std::fs::read(&path).unwrap();
                format!(
                    "{:o} {}",
                    meta.permissions().mode() & 0o7777,
                    echoview::bundle::sha256_hex(&bytes)
                )
            };
            out.insert(key, value);
        }
    }
    out
}

fn site(dir: &Path, clocks: &str, ecg: &str) -> PathBuf {
    let path = dir.join("site.conf");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
    std::fs::write(
        &path,
        format!(
            "# test site\nVIDEO_MATCH=usb:534D:2109\nECG_MATCH={ecg}\nNVPMODEL=0\n\
             JETSON_CLOCKS={clocks}\nMODEL={}\nSERVICE=yes\n",
            model.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn install_is_idempotent_and_repairs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/nv_tegra_release"),
        "# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic, EABI: aarch64\n",
    )
    .unwrap();
    let site = site(tmp.path(), "yes", "serial:FTDI_FT232R_USB_UART_A9XYZ");

    let (ok, first) = install(&root, &site, &[]);
    assert!(ok, "{first}");
    assert!(first.contains("JetPack 6"), "{first}");
    assert!(!first.contains("summary   0 change"), "{first}");
    let rules =
        std::fs::read_to_string(root.join("etc/udev/rules.d/65-echoview-site.rules")).unwrap();
    assert!(
        rules.contains(
            "SUBSYSTEM==\"video4linux\", SUBSYSTEMS==\"usb\", ATTRS{idVendor}==\"534d\", \
             ATTRS{idProduct}==\"2109\", ENV{ECHOVIEW_ROLE}=\"video\""
        ),
        "{rules}"
    );
    assert!(
        rules.contains(
            "SUBSYSTEM==\"tty\", ENV{ID_SERIAL}==\"FTDI_FT232R_USB_UART_A9XYZ\", \
             ENV{ECHOVIEW_ROLE}=\"ecg\""
        ),
        "{rules}"
    );
    let clocks = root.join("etc/systemd/system/echoview-clocks.service");
    assert!(
        std::fs::read_to_string(&clocks)
            .unwrap()
            .contains("jetson_clocks")
    );
    let active = root.join("var/lib/echoview/models/active");
    assert_eq!(std::fs::read_link(&active).unwrap(), Path::new("a"));
    assert!(
        first.contains("skip      (--root) systemctl enable echoview.service"),
        "{first}"
    );
    let after_first = snapshot(&root);

    let (ok, second) = install(&root, &site, &[]);
    assert!(ok, "{second}");
    assert!(second.contains("summary   0 change(s)"), "{second}");
    assert_eq!(snapshot(&root), after_first, "a second run changes nothing");

    // Repair: a deleted rule comes back; --dry-run only says it would.
    let rule_file = root.join("etc/udev/rules.d/65-echoview-site.rules");
    std::fs::remove_file(&rule_file).unwrap();
    let (ok, dry) = install(&root, &site, &["--dry-run"]);
    assert!(ok, "{dry}");
    assert!(dry.contains("summary   1 change(s) would be made"), "{dry}");
    assert!(!rule_file.exists(), "--dry-run wrote nothing");
    let (ok, repair) = install(&root, &site, &[]);
    assert!(ok, "{repair}");
    assert_eq!(snapshot(&root), after_first, "the repair restores the tree");

    // A changed site file is applied, and a setting turned off is undone.
    let site = self::site(tmp.path(), "no", "");
    let (ok, changed) = install(&root, &site, &[]);
    assert!(ok, "{changed}");
    assert!(!clocks.exists(), "{changed}");
    let rules = std::fs::read_to_string(&rule_file).unwrap();
    assert!(!rules.contains("ECHOVIEW_ROLE}=\"ecg\""), "{rules}");
    let (ok, again) = install(&root, &site, &[]);
    assert!(ok && again.contains("summary   0 change(s)"), "{again}");
}

#[test]
fn a_bad_site_file_is_refused_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site.conf");
    std::fs::write(&site, "VIDEO_MATCH=usb:534d:2109\nVIDEO_MATHC=x\n").unwrap();
    let (ok, text) = install(tmp.path(), &site, &[]);
    assert!(!ok);
    assert!(text.contains("line 2: unknown key VIDEO_MATHC"), "{text}");
    std::fs::write(&site, "VIDEO_MATCH=usb:534d\n").unwrap();
    let (ok, text) = install(tmp.path(), &site, &[]);
    assert!(!ok);
    assert!(
        text.contains("neither usb:VVVV:PPPP nor serial:ID_SERIAL"),
        "{text}"
    );
}
