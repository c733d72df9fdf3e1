//! TLS for the relay workload (`relay --tls`): a self-signed identity for
//! the daemon, made at run time, and a client connector that trusts it.

use std::io;
use std::path::{Path, PathBuf};

use native_tls::{Certificate, TlsConnector};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};

/// The daemon's certificate and key, as PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("TLS set-up: {e}"))
}

impl Identity {
    /// A self-signed RSA-2048 certificate for localhost and 127.0.0.1,
    /// valid for a day (as the tests make theirs, minus the CA).
    ///
    /// # Errors
    /// If OpenSSL fails to make it.
    pub fn self_signed() -> io::Result<Identity> {
        Identity::make().map_err(tls_error)
    }

    fn make() -> Result<Identity, ErrorStack> {
        let key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", "localhost")?;
        let name = name.build();
        let mut cert = X509::builder()?;
        cert.set_version(2)?;
        let serial = BigNum::from_u32(1)?.to_asn1_integer()?;
        cert.set_serial_number(&serial)?;
        cert.set_subject_name(&name)?;
        cert.set_issuer_name(&name)?;
        cert.set_pubkey(&key)?;
        let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(1)?);
        cert.set_not_before(&from)?;
        cert.set_not_after(&until)?;
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&cert.x509v3_context(None, None))?;
        cert.append_extension(san)?;
        cert.sign(&key, MessageDigest::sha256())?;
        Ok(Identity {
            cert_pem: cert.build().to_pem()?,
            key_pem: key.private_key_to_pem_pkcs8()?,
        })
    }

    /// Writes `server.pem` and `server.key` (0600) into `dir`; returns their paths.
    ///
    /// # Errors
    /// If a file cannot be written.
    pub fn write(&self, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)?
            .write_all(&self.key_pem)?;
        Ok((cert, key))
    }

    /// A client connector that trusts this certificate (for `localhost`).
    ///
    /// # Errors
    /// If the certificate does not load.
    pub fn connector(&self) -> io::Result<TlsConnector> {
        let cert = Certificate::from_pem(&self.cert_pem).map_err(tls_error)?;
        TlsConnector::builder()
            .add_root_certificate(cert)
            .build()
            .map_err(tls_error)
    }
}
