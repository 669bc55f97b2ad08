//! What this binary is: crate version, source revision, build features and target, for
//! `echoview --version` and for the reports that must name the build they came from.
//!
//! The facts come from `build.rs` at compile time; nothing here is computed at run time.

/// The crate version (`Cargo.toml`).
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (12 hex digits), or `unknown` outside git.
pub const GIT_REV: &str = env!("ECHOVIEW_GIT_REV");

/// The target triple it was built for.
pub const TARGET: &str = env!("ECHOVIEW_TARGET");

/// `yes` when built with the `tensorrt` feature (GPU inference on the Jetson).
pub const FEATURE_TENSORRT: &str = env!("ECHOVIEW_FEATURE_TENSORRT");

/// `yes` when built with the `v4l` feature (live V4L2 capture).
pub const FEATURE_V4L: &str = env!("ECHOVIEW_FEATURE_V4L");

/// The line `echoview --version` prints after the program name, e.g.
/// `0.1.0 (rev 1a2b3c4d5e6f, tensorrt: no, v4l: yes, target aarch64-unknown-linux-gnu)`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("ECHOVIEW_GIT_REV"),
    ", tensorrt: ",
    env!("ECHOVIEW_FEATURE_TENSORRT"),
    ", v4l: ",
    env!("ECHOVIEW_FEATURE_V4L"),
    ", target ",
    env!("ECHOVIEW_TARGET"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_line_names_every_fact() {
        assert!(LONG.starts_with(CRATE_VERSION), "{LONG}");
        for fact in [GIT_REV, TARGET, FEATURE_TENSORRT, FEATURE_V4L] {
            assert!(!fact.is_empty());
            assert!(LONG.contains(fact), "{LONG} lacks {fact}");
        }
        for flag in [FEATURE_TENSORRT, FEATURE_V4L] {
            assert!(flag == "yes" || flag == "no", "{flag}");
        }
        assert_eq!(
            FEATURE_V4L == "yes",
            cfg!(feature = "v4l"),
            "build.rs and cargo agree on v4l"
        );
    }
}
