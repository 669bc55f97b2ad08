//! `echoview model install|list|rollback`: the field engineer's model update commands.
//!
//! Thin: parse, call [`Store`], print one line per fact, restart the service. The store's
//! errors already name the bundle and say why; this layer adds what happened to the cart
//! ("the active model is unchanged") so the operator knows the cart is still safe.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::Args;

use super::{SITE_KEY, SiteKey, Store, Switched, Vetting};
use crate::engine::EngineKind;

/// Where the store is and which engine vets bundles: shared by the three commands.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Act on the file-system tree under DIR instead of `/` (the store is
    /// DIR/var/lib/echoview/models, the site key DIR/etc/echoview/model-signing.pub); for
    /// image builds and tests. The service is not restarted when DIR is not `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Engine that runs the self-test: the one the daemon runs the model on.
    #[arg(long, value_enum, default_value = "tract")]
    pub engine: EngineKind,
}

impl StoreArgs {
    fn store(&self) -> Store {
        Store::under_root(&self.root)
    }

    /// Whether this acts on the running system, whose service may be restarted.
    fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }
}

/// `echoview model install`
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The bundle folder to install (manifest.toml, the ONNX files, reference.json, and
    /// manifest.toml.sig where the site signs bundles).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// The store and engine.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The site's public key [default: ROOT/etc/echoview/model-signing.pub if it exists;
    /// without a key, bundles need no signature].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Do not restart the service after switching (the daemon keeps the old model until its
    /// next start).
    #[arg(long)]
    pub no_restart: bool,
}

/// `echoview model rollback`
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The store and engine.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Do not restart the service after switching.
    #[arg(long)]
    pub no_restart: bool,
}

/// `echoview model list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Act on the file-system tree under DIR instead of `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// Installs a bundle; see [`Store::install`].
pub fn install(args: &InstallArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.store();
    let key_path = match &args.key {
        Some(path) => Some(path.clone()),
        None => {
            let site = args.store.root.join(SITE_KEY.trim_start_matches('/'));
            site.exists().then_some(site)
        }
    };
    let key = key_path
        .map(|path| SiteKey::load(&path))
        .transpose()
        .context("loading the site's model-signing key")?;
    if let Some(key) = &key {
        eprintln!(
            "model: bundles must be signed with the key in {}",
            key.path().display()
        );
    }
    let vetting = Vetting {
        engine: args.store.engine,
        key,
    };
    let switched = store
        .install(&args.bundle, &vetting)
        .with_context(|| unchanged(&store))?;
    report(&store, &switched, "installed");
    restart(&args.store, args.no_restart)
}

/// Switches back to the other slot; see [`Store::rollback`].
pub fn rollback(args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.store();
    let switched = store
        .rollback(args.store.engine)
        .with_context(|| unchanged(&store))?;
    report(&store, &switched, "rolled back to");
    restart(&args.store, args.no_restart)
}

/// Prints both slots, the active one marked with `*`.
pub fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let store = Store::under_root(&args.root);
    println!("{}:", store.dir().display());
    for state in store.list()? {
        let mark = if state.active { "*" } else { " " };
        let what = match state.bundle {
            None => "(empty)".to_string(),
            Some(Ok(identity)) => identity,
            Some(Err(why)) => format!("BROKEN: {why}"),
        };
        println!("{mark} {}  {what}", state.slot);
    }
    Ok(ExitCode::SUCCESS)
}

/// The reassurance added to every failure: which model the cart still runs.
fn unchanged(store: &Store) -> String {
    match store.active() {
        Ok(Some(slot)) => format!(
            "the active model is unchanged (slot {slot}, {})",
            store.slot_path(slot).display()
        ),
        Ok(None) => format!(
            "no model is active in {}: install one before starting the service",
            store.dir().display()
        ),
        Err(e) => format!("the store's active link is unreadable: {e}"),
    }
}

fn report(store: &Store, switched: &Switched, verb: &str) {
    println!(
        "model: {verb} {} in slot {} ({}), now active",
        switched.now.identity,
        switched.slot,
        store.slot_path(switched.slot).display()
    );
    println!("model: {}", switched.now.selftest);
    match &switched.before {
        Some((slot, identity)) => println!(
            "model: previously active: {identity} in slot {slot}; `echoview model rollback` \
             switches back"
        ),
        None => println!("model: no model was active before"),
    }
}

/// Restarts the service if it is running, so it loads the new model.
fn restart(args: &StoreArgs, skip: bool) -> anyhow::Result<ExitCode> {
    if skip {
        println!(
            "model: service not restarted (--no-restart); it loads the model at its next start"
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !args.is_live() {
        println!(
            "model: service not restarted (--root {} is not the running system)",
            args.root.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let status = Command::new("systemctl")
        .args(["try-restart", "echoview.service"])
        .status()
        .context(
            "the model is switched, but running `systemctl try-restart echoview.service` \
             failed; restart the service by hand so it loads the new model",
        )?;
    if !status.success() {
        anyhow::bail!(
            "the model is switched, but `systemctl try-restart echoview.service` exited with \
             {status}; see `journalctl -u echoview` and restart the service by hand"
        );
    }
    println!("model: service restarted (if it was running)");
    Ok(ExitCode::SUCCESS)
}
