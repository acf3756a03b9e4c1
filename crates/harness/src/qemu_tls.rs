//! Certificates for QEMU's migration over TLS (`-object tls-creds-x509,dir=DIR,…`): a
//! throw-away CA and a server and a client certificate it signed, written into one
//! directory with the names QEMU looks for (docs/qemu `tls-creds-x509`: the server
//! endpoint reads the CA, server certificate and key; the client endpoint the CA,
//! client certificate and key, which `verify-peer=on` on the server demands).
//!
//! The keys are ECDSA P-256 and live one day: they protect one benchmark run over
//! loopback. Both certificates name `localhost` and `127.0.0.1`, the host the source
//! dials, which QEMU checks against the server certificate.

use openssl::{
    asn1::Asn1Time,
    bn::{BigNum, MsbOption},
    ec::{EcGroup, EcKey},
    error::ErrorStack,
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    x509::{
        extension::{
            AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage,
            SubjectAlternativeName, SubjectKeyIdentifier,
        },
        X509Name, X509,
    },
};
use std::path::Path;

/// The CA certificate both endpoints verify the other against.
pub const CA_CERT: &str = "ca-cert.pem";
/// The server endpoint's (the migration target's) certificate.
pub const SERVER_CERT: &str = "server-cert.pem";
/// Its private key.
pub const SERVER_KEY: &str = "server-key.pem";
/// The client endpoint's (the migration source's) certificate.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// Its private key.
pub const CLIENT_KEY: &str = "client-key.pem";

/// Every file [`write_x509_dir`] writes.
pub const FILES: [&str; 5] = [CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY];

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsCertError {
    /// OpenSSL refused a step.
    #[error("cannot make the {what}")]
    Openssl {
        /// The step.
        what: &'static str,
        /// OpenSSL's errors.
        #[source]
        source: ErrorStack,
    },
    /// A file could not be written.
    #[error("cannot write {file}")]
    Write {
        /// The file.
        file: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Which end of the TLS connection a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

fn ssl(what: &'static str) -> impl FnOnce(ErrorStack) -> TlsCertError {
    move |source| TlsCertError::Openssl { what, source }
}

fn p256_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

fn name(common: &str) -> Result<X509Name, ErrorStack> {
    let mut n = X509Name::builder()?;
    n.append_entry_by_nid(Nid::ORGANIZATIONNAME, "sevmirror bench")?;
    n.append_entry_by_nid(Nid::COMMONNAME, common)?;
    Ok(n.build())
}

/// A certificate for `key`, signed by `issuer` (None: self-signed, a CA).
fn certificate(
    key: &PKey<Private>,
    common: &str,
    issuer: Option<(&X509, &PKey<Private>)>,
    role: Option<Role>,
) -> Result<X509, ErrorStack> {
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    let subject = name(common)?;
    b.set_subject_name(&subject)?;
    b.set_issuer_name(issuer.map_or(&subject, |(ca, _)| ca.subject_name()))?;
    b.set_pubkey(key)?;
    // An hour back absorbs clock skew between this process and QEMU's view.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (not_before, not_after) = (
        Asn1Time::from_unix(now - 3600)?,
        Asn1Time::days_from_now(1)?,
    );
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    match role {
        None => {
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()?,
            )?;
        }
        Some(role) => {
            b.append_extension(BasicConstraints::new().critical().build()?)?;
            // QEMU refuses an end certificate whose critical key usage lacks either.
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()?,
            )?;
            let mut purpose = ExtendedKeyUsage::new();
            match role {
                Role::Server => purpose.server_auth(),
                Role::Client => purpose.client_auth(),
            };
            b.append_extension(purpose.build()?)?;
        }
    }
    let ctx = b.x509v3_context(issuer.map(|(ca, _)| ca.as_ref()), None);
    let ski = SubjectKeyIdentifier::new().build(&ctx)?;
    let aki = issuer
        .map(|_| AuthorityKeyIdentifier::new().keyid(true).build(&ctx))
        .transpose()?;
    let san = role
        .map(|_| {
            SubjectAlternativeName::new()
                .dns("localhost")
                .ip("127.0.0.1")
                .build(&ctx)
        })
        .transpose()?;
    b.append_extension(ski)?;
    if let Some(aki) = aki {
        b.append_extension(aki)?;
    }
    if let Some(san) = san {
        b.append_extension(san)?;
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())?;
    Ok(b.build())
}

/// Writes a fresh CA, server and client certificate and keys into `dir` under the
/// names of [`FILES`] (keys readable by the owner only).
pub fn write_x509_dir(dir: &Path) -> Result<(), TlsCertError> {
    let ca_key = p256_key().map_err(ssl("CA key"))?;
    let ca =
        certificate(&ca_key, "sevmirror bench CA", None, None).map_err(ssl("CA certificate"))?;
    let mut files = vec![(CA_CERT, ca.to_pem().map_err(ssl("CA certificate"))?)];
    for (role, common, cert_file, key_file) in [
        (
            Role::Server,
            "sevmirror bench target",
            SERVER_CERT,
            SERVER_KEY,
        ),
        (
            Role::Client,
            "sevmirror bench source",
            CLIENT_CERT,
            CLIENT_KEY,
        ),
    ] {
        let key = p256_key().map_err(ssl("key"))?;
        let cert = certificate(&key, common, Some((&ca, &ca_key)), Some(role))
            .map_err(ssl("certificate"))?;
        files.push((cert_file, cert.to_pem().map_err(ssl("certificate"))?));
        files.push((
            key_file,
            key.private_key_to_pem_pkcs8().map_err(ssl("key"))?,
        ));
    }
    for (file, pem) in files {
        let path = dir.join(file);
        write_private(&path, &pem).map_err(|source| TlsCertError::Write {
            file: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode};
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
    };

    #[test]
    fn the_directory_holds_what_qemu_reads_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        write_x509_dir(dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected: Vec<&str> = FILES.to_vec();
        expected.sort();
        assert_eq!(names, expected);
        // Writing twice into the same directory refuses rather than mixing two CAs.
        assert!(matches!(
            write_x509_dir(dir.path()),
            Err(TlsCertError::Write { .. })
        ));
    }

    #[test]
    fn the_end_certificates_chain_to_the_ca_with_their_purposes() {
        let dir = tempfile::tempdir().unwrap();
        write_x509_dir(dir.path()).unwrap();
        let read = |f: &str| X509::from_pem(&std::fs::read(dir.path().join(f)).unwrap()).unwrap();
        let ca = read(CA_CERT);
        let ca_key = ca.public_key().unwrap();
        for (file, purpose) in [
            (SERVER_CERT, "TLS Web Server"),
            (CLIENT_CERT, "TLS Web Client"),
        ] {
            let cert = read(file);
            assert!(cert.verify(&ca_key).unwrap(), "{file} not signed by the CA");
            let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
            assert!(text.contains(purpose), "{file}: {text}");
            assert!(text.contains("IP Address:127.0.0.1"), "{file}: {text}");
            assert!(text.contains("CA:FALSE"), "{file}: {text}");
        }
        let text = String::from_utf8(ca.to_text().unwrap()).unwrap();
        assert!(text.contains("CA:TRUE") && text.contains("Certificate Sign"));
    }

    /// A mutually authenticated TLS connection to 127.0.0.1 with exactly these files, as
    /// QEMU's two endpoints make it.
    #[test]
    fn a_server_and_a_client_with_these_files_authenticate_each_other() {
        let dir = tempfile::tempdir().unwrap();
        write_x509_dir(dir.path()).unwrap();
        let file = |f: &str| dir.path().join(f);
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_ca_file(file(CA_CERT)).unwrap();
        acceptor
            .set_certificate_chain_file(file(SERVER_CERT))
            .unwrap();
        acceptor
            .set_private_key_file(file(SERVER_KEY), SslFiletype::PEM)
            .unwrap();
        acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        let acceptor = acceptor.build();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut tls = acceptor.accept(tcp).unwrap();
            let peer = tls.ssl().peer_certificate().unwrap();
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).unwrap();
            (peer.to_pem().unwrap(), buf)
        });
        let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
        connector.set_ca_file(file(CA_CERT)).unwrap();
        connector
            .set_certificate_file(file(CLIENT_CERT), SslFiletype::PEM)
            .unwrap();
        connector
            .set_private_key_file(file(CLIENT_KEY), SslFiletype::PEM)
            .unwrap();
        let connector = connector.build();
        let tcp = TcpStream::connect(addr).unwrap();
        // The connector checks the server certificate against the address dialled.
        let mut tls = connector.connect("127.0.0.1", tcp).unwrap();
        tls.write_all(b"pages").unwrap();
        let (peer, got) = server.join().unwrap();
        assert_eq!(&got, b"pages");
        assert_eq!(peer, std::fs::read(file(CLIENT_CERT)).unwrap());
    }
}
