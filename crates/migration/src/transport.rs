//! The TCP transport of a migration: the source connects to the URI the operator gave
//! (`migrate`), the target listens on its `--incoming` URI and accepts one source.
//!
//! The stream itself is plain TCP: nothing secret crosses it in the clear (an SEV guest's
//! private pages travel as records sealed by its migration helper), and everything read
//! from it is checked by the codec and the engine. Timeouts bound every blocking read and
//! write, so a vanished peer ends a migration instead of hanging it.

use crate::uri::Uri;
use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// How long the source waits to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a side waits for a frame from the other (the target may be prefaulting or its
/// owner attesting it; the source may be sealing a large round).
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a waiting `accept` looks at its cancel flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Why a migration connection could not be made or set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The URI's host does not resolve.
    #[error("cannot resolve {uri}")]
    Resolve {
        /// The URI.
        uri: Uri,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The URI's host resolves to no address.
    #[error("{uri} resolves to no address")]
    NoAddress {
        /// The URI.
        uri: Uri,
    },
    /// No address of the URI accepted the connection.
    #[error("cannot connect to {uri} (is the target running with --incoming {uri}?)")]
    Connect {
        /// The URI.
        uri: Uri,
        /// The last address's error.
        #[source]
        source: io::Error,
    },
    /// The URI cannot be bound.
    #[error("cannot listen on {uri}")]
    Listen {
        /// The URI.
        uri: Uri,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// Accepting the source failed.
    #[error("cannot accept the source")]
    Accept(#[source] io::Error),
    /// Socket options (no delay, timeouts) could not be set.
    #[error("cannot set up the socket")]
    Setup(#[source] io::Error),
    /// The socket could not be duplicated for the other direction.
    #[error("cannot duplicate the socket")]
    Duplicate(#[source] io::Error),
}

/// Connects to the target at `uri` (each address it resolves to in turn).
pub fn connect(uri: &Uri) -> Result<TcpStream, TransportError> {
    let addrs = uri
        .authority()
        .to_socket_addrs()
        .map_err(|source| TransportError::Resolve {
            uri: uri.clone(),
            source,
        })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(source) => TransportError::Connect {
            uri: uri.clone(),
            source,
        },
        None => TransportError::NoAddress { uri: uri.clone() },
    })
}

/// Binds `uri` for an incoming migration (at once, so a busy port is reported at start).
pub fn listen(uri: &Uri) -> Result<TcpListener, TransportError> {
    TcpListener::bind(uri.authority()).map_err(|source| TransportError::Listen {
        uri: uri.clone(),
        source,
    })
}

/// Waits for one connection on `listener`; `None` once `cancel` is set.
pub fn accept(
    listener: &TcpListener,
    cancel: &AtomicBool,
) -> Result<Option<(TcpStream, SocketAddr)>, TransportError> {
    listener
        .set_nonblocking(true)
        .map_err(TransportError::Accept)?;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(TransportError::Accept)?;
                return Ok(Some((stream, peer)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if cancel.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(e) => return Err(TransportError::Accept(e)),
        }
    }
}

/// Sets up a migration connection: no Nagle delay (frames are buffered already), and
/// [`STREAM_TIMEOUT`] on reads and writes.
pub fn prepare(s: &TcpStream) -> Result<(), TransportError> {
    let setup = || -> io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(STREAM_TIMEOUT))?;
        s.set_write_timeout(Some(STREAM_TIMEOUT))
    };
    setup().map_err(TransportError::Setup)
}

/// A second handle on the connection (one side reads, the other writes).
pub fn duplicate(s: &TcpStream) -> Result<TcpStream, TransportError> {
    s.try_clone().map_err(TransportError::Duplicate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn a_listener_accepts_one_source_and_both_ends_talk() {
        let listener = listen(&uri("tcp:127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cancel = AtomicBool::new(false);
        let source = std::thread::spawn(move || {
            let mut s = connect(&uri(&format!("tcp:127.0.0.1:{port}"))).unwrap();
            prepare(&s).unwrap();
            s.write_all(b"hello").unwrap();
        });
        let (stream, _) = accept(&listener, &cancel).unwrap().unwrap();
        prepare(&stream).unwrap();
        let mut got = Vec::new();
        duplicate(&stream).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        source.join().unwrap();
    }

    #[test]
    fn a_cancelled_accept_returns_none() {
        let listener = listen(&uri("tcp:127.0.0.1:0")).unwrap();
        let cancel = AtomicBool::new(true);
        assert!(accept(&listener, &cancel).unwrap().is_none());
    }

    #[test]
    fn nobody_listening_is_a_connect_error_naming_the_uri() {
        // Bind then drop: the port is free and nothing listens on it.
        let port = listen(&uri("tcp:127.0.0.1:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = uri(&format!("tcp:127.0.0.1:{port}"));
        let e = connect(&target).unwrap_err();
        assert!(matches!(e, TransportError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains(&target.to_string()), "{e}");
        let busy = listen(&uri("tcp:127.0.0.1:0")).unwrap();
        let taken = uri(&format!("tcp:{}", busy.local_addr().unwrap()));
        assert!(matches!(listen(&taken), Err(TransportError::Listen { .. })));
    }
}
