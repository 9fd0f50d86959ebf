//! Binding the two listeners before anything else starts, so an unusable address fails start-up
//! with the flag named, and tests can bind port 0 and read the real address back.
//!
//! The admin listener on `[::]` is dual-stack (IPv6 and IPv4-mapped), which serves IPv4,
//! IPv6-only and dual-stack clusters alike; where the kernel has no IPv6 at all it falls back to
//! `0.0.0.0` with a warning instead of failing.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};
use tracing::warn;

use crate::config::{Config, ListenAddr};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("--grpc-listen {addr}: {source}")]
    Grpc { addr: ListenAddr, source: io::Error },
    #[error("--grpc-listen {addr}: another process is serving on this socket")]
    SocketInUse { addr: ListenAddr },
    #[error("--admin-listen {addr}: {source}")]
    Admin { addr: SocketAddr, source: io::Error },
}

pub enum GrpcListener {
    Tcp(TcpListener),
    /// The socket file is removed when the guard drops, after the server stopped.
    Unix(UnixListener, SocketFile),
}

pub struct Listeners {
    pub grpc: GrpcListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let grpc = bind_grpc(&config.grpc_listen, config.grpc_socket_mode).await?;
        let admin = bind_admin(config.admin_listen).await?;
        Ok(Self { grpc, admin })
    }

    /// The address the gRPC server really listens on (port 0 resolved).
    pub fn grpc_addr(&self) -> io::Result<ListenAddr> {
        match &self.grpc {
            GrpcListener::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            GrpcListener::Unix(_, file) => Ok(ListenAddr::Unix(file.0.clone())),
        }
    }

    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

async fn bind_admin(addr: SocketAddr) -> Result<TcpListener, BindError> {
    match TcpListener::bind(addr).await {
        Err(source) if addr.ip().is_unspecified() && addr.is_ipv6() && no_ipv6(&source) => {
            let fallback = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            warn!(%addr, %fallback, error = %source, "no IPv6 on this host; admin listener on IPv4 only");
            TcpListener::bind(fallback)
                .await
                .map_err(|source| BindError::Admin {
                    addr: fallback,
                    source,
                })
        }
        result => result.map_err(|source| BindError::Admin { addr, source }),
    }
}

/// The errors a kernel without IPv6 gives for binding `[::]`.
fn no_ipv6(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

async fn bind_grpc(addr: &ListenAddr, socket_mode: u32) -> Result<GrpcListener, BindError> {
    let error = |source| BindError::Grpc {
        addr: addr.clone(),
        source,
    };
    match addr {
        ListenAddr::Tcp(socket) => TcpListener::bind(socket)
            .await
            .map(GrpcListener::Tcp)
            .map_err(error),
        ListenAddr::Unix(path) => {
            remove_stale_socket(path)
                .await
                .map_err(|e| e.map_or(BindError::SocketInUse { addr: addr.clone() }, error))?;
            let listener = UnixListener::bind(path).map_err(error)?;
            let file = SocketFile(path.clone());
            // The cache holds the app's data: the owner and, by default, the socket's group (the
            // pod's fsGroup, shared with the app container) may connect; nobody else.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode)).map_err(error)?;
            Ok(GrpcListener::Unix(listener, file))
        }
    }
}

/// A socket file left by a process that died is removed; one that still answers is not ours to
/// take (`Err(None)`).
async fn remove_stale_socket(path: &Path) -> Result<(), Option<io::Error>> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(Some(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(None);
    }
    std::fs::remove_file(path).map_err(Some)
}

/// Removes the unix socket file on drop.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
