//! What can go wrong while recording or replaying a session file.
//!
//! Every variant names the file, because a cart may hold hundreds of sessions and an error
//! that does not say which one is useless in a service log, and says what to do about it.

use std::path::PathBuf;

/// An error while writing or reading a session file.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session file could not be created.
    #[error(
        "cannot create session file {}: {source}; check that the folder exists, is writable and \
         that no session of that name exists already (sessions are never overwritten)",
        path.display()
    )]
    Create {
        /// The file that was to be created.
        path: PathBuf,
        /// Why the operating system refused.
        source: std::io::Error,
    },

    /// Writing to an open session file failed (disk full, device removed, ...).
    #[error(
        "writing session file {} failed: {detail}; check free disk space and the storage device, \
         the messages written before this point are kept",
        path.display()
    )]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The failure, as the MCAP writer or the operating system reported it.
        detail: String,
    },

    /// The caller asked to record something the format cannot hold or that breaks the clock
    /// or sequence rules; nothing was written for it.
    #[error("cannot record {what} in session file {}: {detail}", path.display())]
    InvalidInput {
        /// The file being written.
        path: PathBuf,
        /// What was being recorded ("frame 12", "ECG block at sample 5000", ...).
        what: String,
        /// What is wrong with it and what the caller must change.
        detail: String,
    },

    /// The session file could not be opened or read from.
    #[error("cannot read session file {}: {source}; check the path and its permissions", path.display())]
    Read {
        /// The file being read.
        path: PathBuf,
        /// Why the operating system refused.
        source: std::io::Error,
    },

    /// The file does not start with the MCAP magic bytes.
    #[error(
        "{} is not an MCAP session ({found}); pass a .mcap file recorded by echoview",
        path.display()
    )]
    NotMcap {
        /// The file that was opened.
        path: PathBuf,
        /// What the file starts with instead, so a mixed-up file type is easy to recognise.
        found: String,
    },

    /// The file ends in the middle of a record: the recording was cut off.
    #[error(
        "{} ends in the middle of a record after {messages_read} intact messages: the recording \
         was interrupted (crash, power loss or full disk) before the session was finished; \
         everything before the cut is valid and was delivered, the tail is lost",
        path.display()
    )]
    Truncated {
        /// The file being read.
        path: PathBuf,
        /// Messages decoded and delivered before the cut.
        messages_read: u64,
    },

    /// The bytes of the file are damaged (CRC mismatch, impossible lengths, bad compression).
    #[error(
        "{} is corrupt after {messages_read} intact messages: {detail}; the file was damaged \
         after it was written (storage or copy error); restore it from a copy, or salvage the \
         intact chunks with `mcap recover`",
        path.display()
    )]
    Corrupt {
        /// The file being read.
        path: PathBuf,
        /// Messages decoded and delivered before the damage.
        messages_read: u64,
        /// What the MCAP layer found wrong.
        detail: String,
    },

    /// A known channel uses a schema or encoding this reader does not understand.
    #[error(
        "{}: channel {topic} is {found}, but this echoview reads it as {expected}; the session \
         was written by an incompatible tool or version, convert it or use a matching echoview",
        path.display()
    )]
    UnexpectedChannel {
        /// The file being read.
        path: PathBuf,
        /// The channel's topic.
        topic: String,
        /// The schema and encoding the file declares.
        found: String,
        /// The schema and encoding this reader decodes.
        expected: String,
    },

    /// The session was written in a newer format version than this reader knows.
    #[error(
        "{} is session format {found}, this echoview reads format {supported} and older; \
         update echoview to replay it",
        path.display()
    )]
    NewerFormat {
        /// The file being read.
        path: PathBuf,
        /// The `format_version` the file declares.
        found: String,
        /// The newest format this reader understands.
        supported: u32,
    },

    /// A message on a known channel does not decode or breaks the format's rules.
    #[error(
        "{}: message on {topic} at {t_ns} ns is invalid: {detail}; the session was not written \
         by a compatible echoview or was edited",
        path.display()
    )]
    BadMessage {
        /// The file being read.
        path: PathBuf,
        /// The channel the message is on.
        topic: String,
        /// The message's log time on the session clock, to find it in Foxglove.
        t_ns: u64,
        /// What is wrong with it.
        detail: String,
    },
}
