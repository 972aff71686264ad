//! Listeners of the admin API: a unix socket (mode 0600, no token) and an optional TCP
//! listener behind a bearer token.

use std::{
    fs,
    future::Future,
    io,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use axum::{middleware, Router};
use tokio::net::{TcpListener, UnixListener};

use super::auth::{require_bearer, Token};

/// Binds the admin socket at `path` (see [`bind_unix`]) and serves `router` on it until
/// `shutdown` completes.
pub async fn serve_unix(
    path: &Path,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = bind_unix(path)?;
    serve_unix_listener(listener, router, shutdown).await
}

/// Binds a unix socket at `path` with mode 0600: creates the parent directory (0755) if
/// missing, replaces a stale socket left by an earlier daemon, and refuses to replace anything
/// else (a live socket, a file, a directory).
///
/// The socket is bound in a private (0700) directory next to `path`, made 0600, then renamed
/// into place: bound directly, it would be reachable with the umask's mode until the chmod, and
/// a connection made in that window would be accepted later.
pub fn bind_unix(path: &Path) -> Result<UnixListener> {
    let shown = path.display();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.exists() {
        // The chmod: the umask may have narrowed the mode, and clients must reach the socket.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .and_then(|()| fs::set_permissions(parent, fs::Permissions::from_mode(0o755)))
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }

    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{shown}: another process is serving on this socket (is a daemon running?)");
            }
            // Stale: the rename below replaces it.
        }
        Ok(_) => bail!("{shown} exists and is not a socket: not replacing it"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {shown}")),
    }

    let name = path
        .file_name()
        .with_context(|| format!("{shown}: no file name"))?;
    let private = parent.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover from a crashed process with the same pid.
    let _ = fs::remove_dir_all(&private);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    let bound = (|| -> Result<UnixListener> {
        let staged = private.join(name);
        let listener = UnixListener::bind(&staged)
            .with_context(|| format!("cannot bind {}", staged.display()))?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod {}", staged.display()))?;
        fs::rename(&staged, path).with_context(|| format!("cannot move the socket to {shown}"))?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&private);
    bound
}

/// Serves `router` on an already bound unix socket until `shutdown` completes.
pub async fn serve_unix_listener(
    listener: UnixListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("admin API (unix socket)")
}

/// Binds the TCP listener; `local_addr()` then tells the port when `addr` asked for port 0.
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the admin API to {addr}"))
}

/// Binds `addr` and serves `router` on it, every request needing `Authorization: Bearer
/// <token>`, until `shutdown` completes. An empty token is refused.
pub async fn serve_tcp(
    addr: SocketAddr,
    token: String,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    check_token(&token)?;
    let listener = bind_tcp(addr).await?;
    serve_tcp_listener(listener, token, router, shutdown).await
}

/// [`serve_tcp`] on an already bound listener.
pub async fn serve_tcp_listener(
    listener: TcpListener,
    token: String,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    check_token(&token)?;
    // Outermost layer: nothing, not even a 404, answers without the token.
    let router = router.layer(middleware::from_fn_with_state(
        Token(Arc::from(token)),
        require_bearer,
    ));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("admin API (TCP)")
}

fn check_token(token: &str) -> Result<()> {
    if token.is_empty() {
        bail!("the TCP admin API needs a non-empty bearer token");
    }
    // Such a token could not be sent back intact in an `Authorization` header.
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the admin API token must not contain spaces or control characters");
    }
    Ok(())
}
