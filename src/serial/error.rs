//! The one error type of the serial ECG module.
//!
//! Every variant names the port, file or setting at fault and says how to fix it: these
//! messages reach a field engineer at a cart (the CLI prints them verbatim), not a developer.

use std::path::PathBuf;

use crate::ecg::EcgError;

/// Why a serial ECG operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// A setting is out of range or inconsistent with another.
    #[error("invalid serial ECG setting: {problem}")]
    Config {
        /// The setting, the value given, what is accepted and how to fix it.
        problem: String,
    },
    /// The serial device (or capture file) could not be opened.
    #[error("cannot open ECG port {port}: {source}; {hint}")]
    Open {
        /// The device path as given, so a typo is visible.
        port: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
        /// What to check, chosen from the kind of failure (missing device, permissions, busy).
        hint: &'static str,
    },
    /// Writing to the serial device failed for a reason other than a full buffer.
    #[error(
        "cannot write ECG to {port}: {source}; check the cable and that nothing else has the port open"
    )]
    Write {
        /// The device written to.
        port: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A pseudo-terminal for a hardware-free test could not be created.
    #[error("cannot create a pseudo-terminal: {source}; is /dev/ptmx available (devpts mounted)?")]
    Pty {
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The reader thread could not be started.
    #[error("cannot start the ECG reader thread: {source}; the system is out of threads or memory")]
    Thread {
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The beat report could not be written (stdout closed or full disk).
    #[error("cannot write the beat report: {source}")]
    Output {
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The ECG analysis refused the configured sampling rate.
    #[error("ECG analysis: {0}")]
    Ecg(#[from] EcgError),
}

impl SerialError {
    /// An [`SerialError::Open`] for `port` with a hint chosen from the kind of `source`.
    pub fn open(port: impl Into<PathBuf>, source: std::io::Error) -> SerialError {
        use std::io::ErrorKind;
        let port = port.into();
        let hint = match source.kind() {
            // serialport reports a port locked by another program (EBUSY) as "not found".
            ErrorKind::NotFound if port.exists() => {
                "another program holds the port; stop it (fuser -v PORT shows which)"
            }
            ErrorKind::NotFound => {
                "check that the ECG board is plugged in and powered and that the path is right \
                 (ls /dev/ttyUSB* /dev/ttyACM* /dev/serial/by-id/)"
            }
            ErrorKind::PermissionDenied => {
                "add the user to the group owning the device (usually dialout) and log in again"
            }
            ErrorKind::AddrInUse | ErrorKind::ResourceBusy | ErrorKind::WouldBlock => {
                "another program holds the port; stop it (fuser -v PORT shows which)"
            }
            _ => "check the cable and that the path is a serial device or a capture file",
        };
        SerialError::Open { port, source, hint }
    }
}
