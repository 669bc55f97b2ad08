//! The Debian package that `cargo deb --no-build` made from the release build
//! (target/debian/echoview_*.deb; .ci/run makes it before the tests): its files, its
//! conffile and its maintainer scripts. Without a package (a plain `cargo test`), the test
//! says so and checks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The package of this crate version, if one was built.
fn package() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let prefix = format!("echoview_{}", env!("CARGO_PKG_VERSION"));
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("dpkg-deb runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_package_holds_the_cart_files() {
    let Some(deb) = package() else {
        eprintln!(
            "SKIPPED: no target/debian/echoview_{}_*.deb; build it with `cargo build --release \
             && cargo deb --no-build` (as .ci/run does) to check the package",
            env!("CARGO_PKG_VERSION")
        );
        return;
    };
    let listing = dpkg_deb(&["-c"], &deb);
    for file in [
        "./usr/bin/echoview",
        "./lib/systemd/system/echoview.service",
        "./etc/echoview/echoview.toml",
        "./lib/udev/rules.d/70-echoview.rules",
        "./usr/share/echoview/models/demo/manifest.toml",
        "./usr/share/echoview/models/demo/encoder.onnx",
        "./usr/share/echoview/models/demo/head.onnx",
        "./usr/share/echoview/models/demo/reference.json",
        "./usr/share/echoview/board/jetson/install.sh",
        "./usr/share/echoview/board/jetson/site.conf.example",
        "./usr/share/doc/echoview/protocol.md",
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {file}")))
            .unwrap_or_else(|| panic!("{} lacks {file}:\n{listing}", deb.display()));
        if file.ends_with("/echoview") || file.ends_with(".sh") {
            assert!(line.starts_with("-rwxr-xr-x"), "{line}");
        }
    }
    // The unit's documentation link points into the package.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/echoview.service"),
    )
    .unwrap();
    assert!(unit.contains("Documentation=file:/usr/share/doc/echoview/protocol.md"));

    let control = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/echoview/echoview.toml");
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(postinst.contains("useradd --system"), "{postinst}");
    for script in ["postinst", "prerm", "postrm"] {
        assert!(control.path().join(script).exists(), "no {script}");
    }
    let fields = dpkg_deb(&["-f"], &deb);
    assert!(
        fields.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{fields}"
    );
    assert!(fields.contains("Package: echoview"), "{fields}");
}
