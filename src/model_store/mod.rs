//! The installed models of a cart: two slots and an `active` link, so that a model update
//! never leaves the cart without a working model.
//!
//! ```text
//! /var/lib/echoview/models/
//!     a/          a verified bundle
//!     b/          the other (the previous model after an install)
//!     active -> a the bundle the daemon loads (its default model folder)
//! ```
//!
//! [`Store::install`] verifies a bundle (hashes, and the site signature when a site key is
//! configured), copies it into a staging folder, verifies the copy and runs its self-test on
//! the engine, and only then replaces the inactive slot with it and re-points `active` by
//! renaming a new link over the old one, which is atomic: a reader sees the old model or the
//! new one, never a mix or nothing. Any failure before the switch leaves both slots and the
//! link as they were. [`Store::rollback`] re-points `active` at the other slot after checking
//! it the same way.

pub mod command;
pub mod signature;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::bundle::{Bundle, BundleError};
use crate::engine::{self, EngineError, EngineKind};
use crate::selftest::{self, SelfTestError, SelfTestReport};

pub use signature::{SIGNATURE_FILE, SignatureError, SiteKey};

/// The store on a cart; the daemon's default model is its `active` link.
pub const DEFAULT_STORE: &str = "/var/lib/echoview/models";

/// The site's model-signing public key; when this file exists, unsigned bundles are refused.
pub const SITE_KEY: &str = "/etc/echoview/model-signing.pub";

/// The name of the link to the active slot.
pub const ACTIVE: &str = "active";

/// Staging folder for a bundle being installed; never loaded by the daemon.
const STAGING: &str = ".staging";

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Slot `a`.
    A,
    /// Slot `b`.
    B,
}

impl Slot {
    /// The slot's folder name, also the target of the `active` link.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Both slots, in listing order.
    pub const BOTH: [Slot; 2] = [Slot::A, Slot::B];
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a store operation failed. Every variant leaves the active model as it was, except
/// [`StoreError::Io`] during the final rename, which the message says.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bundle to install (or a slot) does not load: unreadable, invalid or corrupt.
    #[error("bundle {dir} is not installable: {source}")]
    Bundle {
        /// The bundle folder.
        dir: PathBuf,
        /// What the loader found.
        source: BundleError,
    },
    /// A site key is configured and the bundle's signature is missing or wrong.
    #[error("bundle {dir} is refused: {source}")]
    Signature {
        /// The bundle folder.
        dir: PathBuf,
        /// What is wrong with the signature or key.
        source: SignatureError,
    },
    /// The engine could not load the bundle.
    #[error("bundle {dir} does not load on {engine}: {source}")]
    Engine {
        /// The bundle folder.
        dir: PathBuf,
        /// The engine's name.
        engine: &'static str,
        /// What the engine said.
        source: EngineError,
    },
    /// The bundle's self-test failed on the engine.
    #[error("bundle {dir} fails its self-test on {engine}: {source}")]
    SelfTest {
        /// The bundle folder.
        dir: PathBuf,
        /// The engine's name.
        engine: &'static str,
        /// What differed.
        source: SelfTestError,
    },
    /// A file operation in the store failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The `active` link points somewhere other than a slot (changed by hand).
    #[error(
        "{path} points to {target:?}, not to slot a or b; point it at a slot with \
         `ln -sfn a {path}` (or reinstall a bundle)"
    )]
    BadLink {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// Rollback needs a model in the other slot.
    #[error("no model to roll back to: slot {slot} in {store} is empty")]
    NothingToRollBack {
        /// The empty slot.
        slot: Slot,
        /// The store folder.
        store: PathBuf,
    },
}

/// How to vet a bundle before it becomes active.
#[derive(Debug, Clone)]
pub struct Vetting {
    /// The engine that runs the self-test: the one the daemon will run the model on.
    pub engine: EngineKind,
    /// The site key; `None` when the site does not sign bundles.
    pub key: Option<SiteKey>,
}

/// A bundle that passed vetting.
#[derive(Debug, Clone)]
pub struct Vetted {
    /// `name version (manifest sha256 prefix)`.
    pub identity: String,
    /// What the self-test measured.
    pub selftest: SelfTestReport,
}

/// What an install or rollback did.
#[derive(Debug, Clone)]
pub struct Switched {
    /// The slot now active.
    pub slot: Slot,
    /// The bundle now active.
    pub now: Vetted,
    /// The slot and bundle identity that were active before, if any.
    pub before: Option<(Slot, String)>,
}

/// One slot as `model list` shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    /// Which slot.
    pub slot: Slot,
    /// Whether `active` points here.
    pub active: bool,
    /// `None`: empty; `Some(Ok(identity))`: a bundle whose hashes verify; `Some(Err(why))`:
    /// a bundle that no longer loads.
    pub bundle: Option<Result<String, String>>,
}

/// A model store folder.
#[derive(Debug, Clone)]
pub struct Store {
    /// The folder holding the slots and the link.
    dir: PathBuf,
}

impl Store {
    /// The store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// The cart's store inside the file-system tree `root` (`/` on a cart; another folder
    /// for tests and image builds).
    pub fn under_root(root: &Path) -> Store {
        Store::new(root.join(DEFAULT_STORE.trim_start_matches('/')))
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `active` link: the folder the daemon loads.
    pub fn active_path(&self) -> PathBuf {
        self.dir.join(ACTIVE)
    }

    /// A slot's folder.
    pub fn slot_path(&self, slot: Slot) -> PathBuf {
        self.dir.join(slot.name())
    }

    /// The active slot, `None` before the first install.
    pub fn active(&self) -> Result<Option<Slot>, StoreError> {
        let path = self.active_path();
        let target = match std::fs::read_link(&path) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "reading the link",
                    path,
                    source,
                });
            }
        };
        Slot::BOTH
            .into_iter()
            .find(|s| target.as_os_str() == s.name())
            .map(Some)
            .ok_or(StoreError::BadLink { path, target })
    }

    /// Both slots: whether active, and what they hold.
    pub fn list(&self) -> Result<Vec<SlotState>, StoreError> {
        let active = self.active()?;
        Ok(Slot::BOTH
            .into_iter()
            .map(|slot| {
                let path = self.slot_path(slot);
                let bundle = path.join("manifest.toml").exists().then(|| {
                    Bundle::load(&path)
                        .map(|b| b.identity())
                        .map_err(|e| e.to_string())
                });
                SlotState {
                    slot,
                    active: active == Some(slot),
                    bundle,
                }
            })
            .collect())
    }

    /// Installs the bundle in `source` into the inactive slot and makes it active; see the
    /// module documentation. On error the active model is unchanged.
    pub fn install(&self, source: &Path, vetting: &Vetting) -> Result<Switched, StoreError> {
        // Vet the source first: a bad bundle is refused before the store is touched.
        let bundle = Bundle::load(source).map_err(|e| StoreError::Bundle {
            dir: source.to_path_buf(),
            source: e,
        })?;
        if let Some(key) = &vetting.key {
            key.verify_bundle(source)
                .map_err(|e| StoreError::Signature {
                    dir: source.to_path_buf(),
                    source: e,
                })?;
        }
        create_dir(&self.dir)?;
        let _lock = self.lock()?;
        let active = self.active()?;
        let before = active.map(|slot| (slot, self.identity_of(slot)));
        let staging = self.dir.join(STAGING);
        remove_all(&staging)?;
        create_dir(&staging)?;
        let mut files = vec![
            "manifest.toml".to_string(),
            bundle.manifest.encoder.file.clone(),
            bundle.manifest.head.file.clone(),
            bundle.manifest.reference.file.clone(),
        ];
        if source.join(SIGNATURE_FILE).exists() {
            files.push(SIGNATURE_FILE.to_string());
        }
        for file in &files {
            copy_synced(&source.join(file), &staging.join(file))?;
        }
        sync_dir(&staging)?;
        // Vet the copy, not the source: this is what the daemon will load.
        let vetted = match vet(&staging, vetting.engine) {
            Ok(vetted) => vetted,
            Err(e) => {
                let _ = remove_all(&staging);
                return Err(relabel(e, source));
            }
        };
        let slot = active.map_or(Slot::A, Slot::other);
        let target = self.slot_path(slot);
        remove_all(&target)?;
        rename(&staging, &target)?;
        sync_dir(&self.dir)?;
        self.point_active_at(slot)?;
        Ok(Switched {
            slot,
            now: vetted,
            before,
        })
    }

    /// Makes the other slot active again, after checking its hashes and self-test.
    pub fn rollback(&self, engine: EngineKind) -> Result<Switched, StoreError> {
        let _lock = self.lock()?;
        let active = self.active()?;
        let slot = active.map_or(Slot::A, Slot::other);
        let target = self.slot_path(slot);
        if !target.join("manifest.toml").exists() {
            return Err(StoreError::NothingToRollBack {
                slot,
                store: self.dir.clone(),
            });
        }
        let vetted = vet(&target, engine)?;
        let before = active.map(|s| (s, self.identity_of(s)));
        self.point_active_at(slot)?;
        Ok(Switched {
            slot,
            now: vetted,
            before,
        })
    }

    /// The identity of the bundle in `slot`, or why it does not load.
    fn identity_of(&self, slot: Slot) -> String {
        match Bundle::load(&self.slot_path(slot)) {
            Ok(bundle) => bundle.identity(),
            Err(e) => format!("unloadable bundle ({e})"),
        }
    }

    /// Re-points `active` at `slot` by renaming a new link over it (atomic on POSIX).
    fn point_active_at(&self, slot: Slot) -> Result<(), StoreError> {
        let fresh = self.dir.join(".active.new");
        remove_all(&fresh)?;
        std::os::unix::fs::symlink(slot.name(), &fresh).map_err(|source| StoreError::Io {
            action: "creating the link",
            path: fresh.clone(),
            source,
        })?;
        rename(&fresh, &self.active_path())?;
        sync_dir(&self.dir)
    }

    /// Holds an exclusive lock on the store until the returned file is dropped, so two
    /// installs (or an install and a rollback) never interleave.
    fn lock(&self) -> Result<File, StoreError> {
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                action: "opening the lock file",
                path: path.clone(),
                source,
            })?;
        // SAFETY: the descriptor is open for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(StoreError::Io {
                action: "locking",
                path,
                source: io::Error::last_os_error(),
            });
        }
        Ok(file)
    }
}

/// Loads the bundle in `dir` (hashes) and runs its self-test on `engine`.
pub fn vet(dir: &Path, engine: EngineKind) -> Result<Vetted, StoreError> {
    let bundle = Bundle::load(dir).map_err(|e| StoreError::Bundle {
        dir: dir.to_path_buf(),
        source: e,
    })?;
    let mut runner = engine::open(&bundle, engine).map_err(|e| StoreError::Engine {
        dir: dir.to_path_buf(),
        engine: engine.name(),
        source: e,
    })?;
    let selftest = selftest::run(&bundle, runner.as_mut()).map_err(|e| StoreError::SelfTest {
        dir: dir.to_path_buf(),
        engine: engine.name(),
        source: e,
    })?;
    Ok(Vetted {
        identity: bundle.identity(),
        selftest,
    })
}

/// Names the bundle the user gave rather than the staging copy in a vetting error.
fn relabel(err: StoreError, source: &Path) -> StoreError {
    let dir = source.to_path_buf();
    match err {
        StoreError::Bundle { source, .. } => StoreError::Bundle { dir, source },
        StoreError::Engine { engine, source, .. } => StoreError::Engine {
            dir,
            engine,
            source,
        },
        StoreError::SelfTest { engine, source, .. } => StoreError::SelfTest {
            dir,
            engine,
            source,
        },
        other => other,
    }
}

fn create_dir(path: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
        action: "creating",
        path: path.to_path_buf(),
        source,
    })
}

/// Removes a file, link or folder tree if it exists.
fn remove_all(path: &Path) -> Result<(), StoreError> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.map_err(|source| StoreError::Io {
        action: "removing",
        path: path.to_path_buf(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|source| StoreError::Io {
        action: "renaming into place",
        path: to.to_path_buf(),
        source,
    })
}

/// Copies a file and flushes it to disk, so a power cut after the switch cannot leave the
/// active slot with a half-written model.
fn copy_synced(from: &Path, to: &Path) -> Result<(), StoreError> {
    let io_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    };
    let mut input = File::open(from).map_err(io_err("reading", from))?;
    let mut output = File::create(to).map_err(io_err("writing", to))?;
    io::copy(&mut input, &mut output).map_err(io_err("copying into", to))?;
    output.sync_all().map_err(io_err("flushing", to))
}

/// Flushes a folder's entries (new names, renames) to disk.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            action: "flushing",
            path: dir.to_path_buf(),
            source,
        })
}
