//! Migration URIs, as QMP `migrate` (`uri`) and `--incoming` take them. Only
//! `tcp:HOST:PORT` is supported, with HOST an IPv4 address, an IPv6 address in brackets
//! or a host name. QEMU's other forms (`unix:`, `exec:`, `fd:`, `file:`, `rdma:`, `vsock:`)
//! are refused by name.
//!
//! Parsing does no I/O: a host name is checked for shape, not resolved.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// Longest host name (RFC 1035).
const MAX_HOSTNAME_LEN: usize = 253;
/// Longest label of a host name.
const MAX_LABEL_LEN: usize = 63;

/// Schemes QEMU knows that sevmirror does not support.
const QEMU_SCHEMES: [&str; 7] = ["unix", "exec", "fd", "file", "rdma", "vsock", "channels"];

/// Where the host part of a URI points.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A dotted-quad IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address (written in brackets).
    Ipv6(Ipv6Addr),
    /// A host name, to be resolved by whoever connects.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A parsed migration URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Uri {
    /// `tcp:HOST:PORT`. Port 0 is allowed (a listener picks a free port).
    Tcp {
        /// The host.
        host: Host,
        /// The port.
        port: u16,
    },
}

impl Uri {
    /// `HOST:PORT` as `std::net::ToSocketAddrs` takes it (IPv6 in brackets), for
    /// `TcpStream::connect` or `TcpListener::bind`.
    pub fn authority(&self) -> String {
        match self {
            Uri::Tcp { host, port } => format!("{host}:{port}"),
        }
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

/// Why a string is not a migration URI we support.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum UriError {
    /// No `scheme:` prefix.
    #[error("{uri:?} has no scheme: use tcp:HOST:PORT")]
    NoScheme {
        /// The input.
        uri: String,
    },
    /// A scheme QEMU knows but sevmirror does not.
    #[error("{scheme}: migration URIs are not supported; use tcp:HOST:PORT")]
    NotSupported {
        /// The scheme.
        scheme: String,
    },
    /// A scheme nobody knows.
    #[error("unknown migration URI scheme {scheme:?}: use tcp:HOST:PORT")]
    UnknownScheme {
        /// The scheme.
        scheme: String,
    },
    /// `tcp:` without `:PORT`.
    #[error("{uri:?} has no port: use tcp:HOST:PORT")]
    NoPort {
        /// The input.
        uri: String,
    },
    /// A port that is not a number from 0 to 65535.
    #[error("port {port:?} is not a number from 0 to 65535")]
    BadPort {
        /// The port text.
        port: String,
    },
    /// `tcp::PORT`.
    #[error("the host is empty: name one (0.0.0.0 or [::] to listen on every address)")]
    EmptyHost,
    /// An IPv6 address without brackets, or a broken bracketed one.
    #[error("{host:?} is not a valid IPv6 address in brackets, as in tcp:[::1]:4444")]
    BadIpv6 {
        /// The host text.
        host: String,
    },
    /// A host that is neither an IPv4 address nor a valid host name.
    #[error("{host:?} is neither an IPv4 address nor a valid host name: {why}")]
    BadHost {
        /// The host text.
        host: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl FromStr for Uri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Uri, UriError> {
        let Some((scheme, rest)) = s.split_once(':') else {
            return Err(UriError::NoScheme { uri: s.to_string() });
        };
        if scheme != "tcp" {
            let lower = scheme.to_ascii_lowercase();
            return Err(if lower == "tcp" {
                UriError::UnknownScheme {
                    scheme: scheme.to_string(),
                }
            } else if QEMU_SCHEMES.contains(&lower.as_str()) {
                UriError::NotSupported { scheme: lower }
            } else {
                UriError::UnknownScheme {
                    scheme: scheme.to_string(),
                }
            });
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let Some((addr, after)) = bracketed.split_once(']') else {
                return Err(UriError::BadIpv6 {
                    host: rest.to_string(),
                });
            };
            let Some(port) = after.strip_prefix(':') else {
                return Err(if after.is_empty() {
                    UriError::NoPort { uri: s.to_string() }
                } else {
                    UriError::BadIpv6 {
                        host: rest.to_string(),
                    }
                });
            };
            let addr = Ipv6Addr::from_str(addr).map_err(|_| UriError::BadIpv6 {
                host: format!("[{addr}]"),
            })?;
            (Host::Ipv6(addr), port)
        } else {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return Err(UriError::NoPort { uri: s.to_string() });
            };
            if host.contains(':') {
                return Err(UriError::BadIpv6 {
                    host: host.to_string(),
                });
            }
            (parse_host(host)?, port)
        };
        let port = parse_port(port)?;
        Ok(Uri::Tcp { host, port })
    }
}

fn parse_port(port: &str) -> Result<u16, UriError> {
    // u16::from_str takes a leading '+'; a port does not.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UriError::BadPort {
            port: port.to_string(),
        });
    }
    port.parse().map_err(|_| UriError::BadPort {
        port: port.to_string(),
    })
}

fn parse_host(host: &str) -> Result<Host, UriError> {
    if host.is_empty() {
        return Err(UriError::EmptyHost);
    }
    if let Ok(a) = Ipv4Addr::from_str(host) {
        return Ok(Host::Ipv4(a));
    }
    let bad = |why| UriError::BadHost {
        host: host.to_string(),
        why,
    };
    if host.len() > MAX_HOSTNAME_LEN {
        return Err(bad("longer than 253 characters"));
    }
    let mut last = "";
    for label in host.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(bad("a label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with '-'"));
        }
        last = label;
    }
    // An all-numeric last label is a mistyped IPv4 address (RFC 3696 §2).
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("it looks like an IPv4 address but is not one"));
    }
    Ok(Host::Name(host.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: Host, port: u16) -> Uri {
        Uri::Tcp { host, port }
    }

    #[test]
    fn good_uris_parse_and_print_back() {
        let cases = [
            (
                "tcp:127.0.0.1:4444",
                tcp(Host::Ipv4(Ipv4Addr::LOCALHOST), 4444),
            ),
            ("tcp:0.0.0.0:0", tcp(Host::Ipv4(Ipv4Addr::UNSPECIFIED), 0)),
            (
                "tcp:[::1]:65535",
                tcp(Host::Ipv6(Ipv6Addr::LOCALHOST), 65535),
            ),
            (
                "tcp:[fe80::1:2]:1",
                tcp(Host::Ipv6("fe80::1:2".parse().unwrap()), 1),
            ),
            (
                "tcp:localhost:4444",
                tcp(Host::Name("localhost".into()), 4444),
            ),
            (
                "tcp:dst-1.example.org:49152",
                tcp(Host::Name("dst-1.example.org".into()), 49152),
            ),
            ("tcp:9host:7", tcp(Host::Name("9host".into()), 7)),
        ];
        for (text, want) in cases {
            let got: Uri = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
        }
        assert_eq!(
            "tcp:[::1]:4444".parse::<Uri>().unwrap().authority(),
            "[::1]:4444"
        );
        assert_eq!(
            "tcp:host:4444".parse::<Uri>().unwrap().authority(),
            "host:4444"
        );
    }

    #[test]
    fn other_schemes_are_refused_by_name() {
        for (text, scheme) in [
            ("unix:/tmp/mig.sock", "unix"),
            ("exec:cat > /tmp/x", "exec"),
            ("fd:3", "fd"),
            ("file:/tmp/x", "file"),
            ("rdma:host:4444", "rdma"),
            ("vsock:3:4444", "vsock"),
            ("UNIX:/tmp/x", "unix"),
        ] {
            let e = text.parse::<Uri>().unwrap_err();
            assert_eq!(
                e,
                UriError::NotSupported {
                    scheme: scheme.into()
                },
                "{text}"
            );
            assert_eq!(
                e.to_string(),
                format!("{scheme}: migration URIs are not supported; use tcp:HOST:PORT")
            );
        }
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        use UriError as E;
        type Check = fn(&UriError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::NoScheme { .. })),
            ("127.0.0.1", |e| matches!(e, E::NoScheme { .. })),
            ("http://x:80", |e| matches!(e, E::UnknownScheme { .. })),
            ("TCP:host:1", |e| matches!(e, E::UnknownScheme { .. })),
            ("tcp:host", |e| matches!(e, E::NoPort { .. })),
            ("tcp:[::1]", |e| matches!(e, E::NoPort { .. })),
            ("tcp:host:", |e| matches!(e, E::BadPort { .. })),
            ("tcp:host:65536", |e| matches!(e, E::BadPort { .. })),
            ("tcp:host:+80", |e| matches!(e, E::BadPort { .. })),
            ("tcp:host:-1", |e| matches!(e, E::BadPort { .. })),
            ("tcp:host:http", |e| matches!(e, E::BadPort { .. })),
            ("tcp:host:80 ", |e| matches!(e, E::BadPort { .. })),
            ("tcp::4444", |e| matches!(e, E::EmptyHost)),
            ("tcp:::1:4444", |e| matches!(e, E::BadIpv6 { .. })),
            ("tcp:[::1:4444", |e| matches!(e, E::BadIpv6 { .. })),
            ("tcp:[::1]4444", |e| matches!(e, E::BadIpv6 { .. })),
            ("tcp:[not-v6]:4444", |e| matches!(e, E::BadIpv6 { .. })),
            ("tcp:[127.0.0.1]:4444", |e| matches!(e, E::BadIpv6 { .. })),
            ("tcp:256.1.1.1:4444", |e| matches!(e, E::BadHost { .. })),
            ("tcp:1.2.3:4444", |e| matches!(e, E::BadHost { .. })),
            ("tcp:host..name:1", |e| matches!(e, E::BadHost { .. })),
            ("tcp:.host:1", |e| matches!(e, E::BadHost { .. })),
            ("tcp:host.:1", |e| matches!(e, E::BadHost { .. })),
            ("tcp:-host:1", |e| matches!(e, E::BadHost { .. })),
            ("tcp:ho_st:1", |e| matches!(e, E::BadHost { .. })),
            ("tcp:ho st:1", |e| matches!(e, E::BadHost { .. })),
            ("tcp:hôst:1", |e| matches!(e, E::BadHost { .. })),
        ];
        for (text, check) in cases {
            let e = text.parse::<Uri>().unwrap_err();
            assert!(check(&e), "{text:?}: unexpected {e:?}");
            assert!(!e.to_string().is_empty());
        }
        let long_label = format!("tcp:{}.org:1", "a".repeat(64));
        assert!(matches!(
            long_label.parse::<Uri>(),
            Err(UriError::BadHost { .. })
        ));
        let long_name = format!("tcp:{}a:1", "a.".repeat(127));
        assert!(matches!(
            long_name.parse::<Uri>(),
            Err(UriError::BadHost { .. })
        ));
        assert_eq!(
            "tcp:::1:4444".parse::<Uri>().unwrap_err().to_string(),
            "\"::1\" is not a valid IPv6 address in brackets, as in tcp:[::1]:4444"
        );
    }
}
