//! The label socket: a Unix stream socket serving newline-delimited JSON to any number of
//! viewers, none of which can slow the pipeline or each other.
//!
//! The [`Hub`] owns the clients. Each client has its own task and a bounded queue of lines;
//! publishing puts a line in every queue without waiting, and a client whose queue is full
//! (it stopped reading, so the kernel buffer and then its queue filled) is disconnected on
//! the spot. The task sends `hello` first, then the queued lines; what a client sends is read
//! and thrown away, and a client that sends more than a small limit is disconnected.

use std::fs::Permissions;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::config::SocketConfig;
use super::sys;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process is serving on the path.
    #[error(
        "{path} is in use by another running process (another echoview?); stop it or choose \
         another path with --socket"
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the path; it is not ours to delete.
    #[error("{path} exists and is not a socket; remove it or choose another path with --socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating, binding or setting up the socket failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The configured group does not exist.
    #[error("socket.group {group:?} is not a group on this system; create it or fix the config")]
    NoGroup {
        /// The group name.
        group: String,
    },
    /// The socket's permission bits are not valid.
    #[error("socket.mode: {0}")]
    Mode(String),
}

/// Creates the socket at `config.path` with its mode and group, replacing a stale socket
/// left by a crashed daemon (but never a live one, nor a file that is not a socket).
/// Must be called inside a tokio runtime.
pub fn bind(config: &SocketConfig) -> Result<UnixListener, SocketError> {
    let path = &config.path;
    let io = |action: &'static str| {
        move |source| SocketError::Io {
            action,
            path: path.clone(),
            source,
        }
    };
    let mode = config.mode_bits().map_err(SocketError::Mode)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io("create the folder of"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket { path: path.clone() });
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse { path: path.clone() });
            }
            std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("bind"))?;
    let setup = || -> Result<(), SocketError> {
        std::fs::set_permissions(path, Permissions::from_mode(mode))
            .map_err(io("set the mode of"))?;
        if let Some(group) = &config.group {
            let gid = sys::group_id(group)
                .map_err(io("look up the group for"))?
                .ok_or_else(|| SocketError::NoGroup {
                    group: group.clone(),
                })?;
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(io("set the group of"))?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

/// Removes the socket file at shutdown; a file already gone is fine.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Limits on clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Most clients at once.
    pub max_clients: usize,
    /// Lines queued per client.
    pub queue: usize,
    /// Bytes a client may send in all.
    pub max_bytes_in: usize,
}

impl From<&SocketConfig> for ClientLimits {
    fn from(c: &SocketConfig) -> ClientLimits {
        ClientLimits {
            max_clients: c.max_clients,
            queue: c.client_queue,
            max_bytes_in: c.max_client_bytes,
        }
    }
}

/// The hub's handle on one client.
struct ClientHandle {
    /// Its queue.
    tx: mpsc::Sender<Arc<str>>,
    /// Tells its task to hang up now, even in the middle of a blocked write.
    kick: Option<oneshot::Sender<()>>,
}

/// What [`Hub::publish`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Clients that got the line queued.
    pub delivered: usize,
    /// Clients disconnected because their queue was full.
    pub dropped: usize,
}

/// The set of connected clients. See the module documentation.
pub struct Hub {
    /// Connected clients.
    clients: Vec<ClientHandle>,
    /// The `hello` line every client gets first.
    hello: Arc<str>,
    /// Limits.
    limits: ClientLimits,
    /// Set at daemon shutdown; every client task watches it.
    shutdown: watch::Receiver<bool>,
    /// The client tasks.
    tasks: JoinSet<()>,
}

impl Hub {
    /// A hub greeting clients with `hello` and ending them when `shutdown` turns true.
    pub fn new(hello: String, limits: ClientLimits, shutdown: watch::Receiver<bool>) -> Hub {
        Hub {
            clients: Vec::new(),
            hello: hello.into(),
            limits,
            shutdown,
            tasks: JoinSet::new(),
        }
    }

    /// Greets clients connecting from now on with `hello` (the engine changed).
    pub fn set_hello(&mut self, hello: String) {
        self.hello = hello.into();
    }

    /// Clients connected now.
    pub fn len(&mut self) -> usize {
        self.clients.retain(|c| !c.tx.is_closed());
        self.clients.len()
    }

    /// Whether no client is connected.
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// Serves a new client; `false` (and the connection closed) when there are too many.
    pub fn add<S>(&mut self, stream: S) -> bool
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        // Reap finished tasks so the set does not grow with every client ever served.
        while self.tasks.try_join_next().is_some() {}
        if self.len() >= self.limits.max_clients {
            return false;
        }
        let (tx, rx) = mpsc::channel(self.limits.queue);
        let (kick_tx, kick_rx) = oneshot::channel();
        self.clients.push(ClientHandle {
            tx,
            kick: Some(kick_tx),
        });
        self.tasks.spawn(serve_client(
            stream,
            self.hello.clone(),
            rx,
            kick_rx,
            self.shutdown.clone(),
            self.limits.max_bytes_in,
        ));
        true
    }

    /// Queues `line` for every client without waiting; clients whose queue is full are
    /// disconnected.
    pub fn publish(&mut self, line: &Arc<str>) -> Published {
        let mut result = Published::default();
        self.clients
            .retain_mut(|c| match c.tx.try_send(line.clone()) {
                Ok(()) => {
                    result.delivered += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if let Some(kick) = c.kick.take() {
                        let _ = kick.send(());
                    }
                    result.dropped += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        result
    }

    /// Waits up to `within` for the client tasks to end (after shutdown was signalled).
    pub async fn close(mut self, within: Duration) {
        self.clients.clear();
        let _ = tokio::time::timeout(within, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

/// One client's task: `hello`, then queued lines, until the client goes, misbehaves, is
/// kicked or the daemon stops.
async fn serve_client<S>(
    stream: S,
    hello: Arc<str>,
    mut queue: mpsc::Receiver<Arc<str>>,
    mut kick: oneshot::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
    max_bytes_in: usize,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut next: Option<Arc<str>> = Some(hello);
    let mut buf = [0u8; 256];
    let mut received = 0usize;
    let mut reading = true;
    loop {
        if let Some(line) = next.take() {
            tokio::select! {
                biased;
                _ = &mut kick => break,
                _ = shutdown.changed() => break,
                written = wr.write_all(line.as_bytes()) => {
                    if written.is_err() {
                        break;
                    }
                }
            }
        }
        tokio::select! {
            biased;
            _ = &mut kick => break,
            _ = shutdown.changed() => break,
            line = queue.recv() => match line {
                Some(line) => next = Some(line),
                None => break,
            },
            n = rd.read(&mut buf), if reading => match n {
                // A client that closed its sending side may still be reading.
                Ok(0) => reading = false,
                Ok(n) => {
                    received += n;
                    if received > max_bytes_in {
                        break;
                    }
                }
                Err(_) => break,
            },
        }
    }
    // Dropping both halves closes the connection.
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    fn limits(max_clients: usize, queue: usize) -> ClientLimits {
        ClientLimits {
            max_clients,
            queue,
            max_bytes_in: 64,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_client_that_stops_reading_is_dropped_and_others_keep_receiving() {
        runtime().block_on(async {
            let (_stop_tx, stop) = watch::channel(false);
            let mut hub = Hub::new("hello\n".into(), limits(4, 2), stop);
            // Tiny in-memory pipes: a client that does not read fills its pipe at once.
            let (reader_end, ours) = tokio::io::duplex(64);
            let (stalled_end, theirs) = tokio::io::duplex(64);
            assert!(hub.add(ours));
            assert!(hub.add(theirs));
            let mut reader = BufReader::new(reader_end).lines();
            assert_eq!(reader.next_line().await.unwrap().unwrap(), "hello");
            let mut dropped = 0;
            for i in 0..50 {
                let line: Arc<str> =
                    format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(40)).into();
                dropped += hub.publish(&line).dropped;
                // The reading client keeps up.
                let got = reader.next_line().await.unwrap().unwrap();
                assert!(got.starts_with(&format!("{{\"n\":{i},")), "{got}");
                tokio::task::yield_now().await;
            }
            assert_eq!(dropped, 1, "the stalled client was dropped once");
            assert_eq!(hub.len(), 1);
            // The stalled client's connection was closed: after what was buffered, EOF.
            let mut rest = Vec::new();
            let mut stalled = stalled_end;
            tokio::time::timeout(Duration::from_secs(2), stalled.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            assert!(rest.starts_with(b"hello\n"));
        });
    }

    #[test]
    fn a_client_sending_too_much_is_disconnected_and_the_limit_on_clients_holds() {
        runtime().block_on(async {
            let (stop_tx, stop) = watch::channel(false);
            let mut hub = Hub::new("hello\n".into(), limits(1, 8), stop);
            let (mut chatty, ours) = tokio::io::duplex(4096);
            assert!(hub.add(ours));
            let (_other, theirs) = tokio::io::duplex(4096);
            assert!(!hub.add(theirs), "one client at most");
            let mut hello = [0u8; 6];
            chatty.read_exact(&mut hello).await.unwrap();
            chatty.write_all(&[b'x'; 65]).await.unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), chatty.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            assert!(rest.is_empty());
            assert_eq!(hub.len(), 0);
            stop_tx.send(true).unwrap();
            hub.close(Duration::from_secs(1)).await;
        });
    }

    #[test]
    fn binding_refuses_a_live_socket_and_replaces_a_stale_one() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let config = SocketConfig {
                path: dir.path().join("run/labels.sock"),
                mode: "0600".into(),
                ..SocketConfig::default()
            };
            let listener = bind(&config).unwrap();
            let mode = std::fs::metadata(&config.path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            assert!(matches!(bind(&config), Err(SocketError::InUse { .. })));
            drop(listener); // the file stays behind, as after a crash
            assert!(config.path.exists());
            let _again = bind(&config).unwrap();
            remove(&config.path).unwrap();
            assert!(!config.path.exists());
            std::fs::write(&config.path, b"not a socket").unwrap();
            assert!(matches!(bind(&config), Err(SocketError::NotASocket { .. })));
            let grouped = SocketConfig {
                path: dir.path().join("g.sock"),
                group: Some("no-such-group-echoview".into()),
                ..config
            };
            assert!(matches!(bind(&grouped), Err(SocketError::NoGroup { .. })));
            assert!(!grouped.path.exists(), "a failed setup leaves no socket");
        });
    }
}
