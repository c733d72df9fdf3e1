//! The TLS identity: PKCS#12 (the reference's `pkcs12_path`/`pkcs12_password`) or PEM.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use native_tls::{Identity, Protocol, TlsAcceptor};
use openssl::error::ErrorStack;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::x509::{X509, X509Ref};

/// Where the server's certificate and key come from.
#[derive(Clone, PartialEq, Eq)]
pub enum TlsIdentity {
    Pkcs12 {
        path: PathBuf,
        password: String,
    },
    /// A PEM certificate (chain) and a PKCS#8 PEM private key.
    Pem {
        cert: PathBuf,
        key: PathBuf,
    },
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsIdentity::Pkcs12 { path, .. } => f
                .debug_struct("Pkcs12")
                .field("path", path)
                .field("password", &"***")
                .finish(),
            TlsIdentity::Pem { cert, key } => f
                .debug_struct("Pem")
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

/// Why the identity could not be loaded; names the file and the configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// Loads the identity and builds an acceptor that speaks TLS 1.2 or newer.
///
/// The certificate and the private key are checked to belong together: OpenSSL
/// would otherwise accept the pair, drop the key, and fail every handshake
/// ("no shared cipher").
///
/// # Errors
/// An unreadable file, a wrong password, or a key that does not match.
pub fn build_acceptor(identity: &TlsIdentity) -> Result<TlsAcceptor, TlsError> {
    let read = |key: &str, path: &PathBuf| {
        fs::read(path).map_err(|e| TlsError(format!("{key}: cannot read {}: {e}", path.display())))
    };
    let identity = match identity {
        TlsIdentity::Pkcs12 { path, password } => {
            let der = read("server.pkcs12_path", path)?;
            let not_pkcs12 = |e: &dyn fmt::Display| {
                TlsError(format!(
                    "server.pkcs12_path: {} is not a PKCS#12 identity that server.pkcs12_password opens: {e}",
                    path.display()
                ))
            };
            check_pkcs12(&der, password, path).map_err(|e| match e {
                PairError::Unreadable(e) => not_pkcs12(&e),
                PairError::Mismatch(e) => e,
            })?;
            Identity::from_pkcs12(&der, password).map_err(|e| not_pkcs12(&e))?
        }
        TlsIdentity::Pem { cert, key } => {
            let cert_pem = read("server.cert_path", cert)?;
            let key_pem = read("server.key_path", key)?;
            let not_pem = |e: &dyn fmt::Display| {
                TlsError(format!(
                    "server.cert_path/server.key_path: {} and {} are not a PEM certificate and its PKCS#8 key: {e}",
                    cert.display(),
                    key.display()
                ))
            };
            let identity = Identity::from_pkcs8(&cert_pem, &key_pem).map_err(|e| not_pem(&e))?;
            check_pem(&cert_pem, &key_pem, cert, key).map_err(|e| match e {
                PairError::Unreadable(e) => not_pem(&e),
                PairError::Mismatch(e) => e,
            })?;
            identity
        }
    };
    TlsAcceptor::builder(identity)
        .min_protocol_version(Some(Protocol::Tlsv12))
        .build()
        .map_err(|e| TlsError(format!("TLS setup failed: {e}")))
}

/// Why [`check_pem`] or [`check_pkcs12`] refused.
enum PairError {
    /// The files did not parse: reported like any unloadable identity.
    Unreadable(ErrorStack),
    /// They parsed, and the key is not the certificate's.
    Mismatch(TlsError),
}

impl From<ErrorStack> for PairError {
    fn from(e: ErrorStack) -> PairError {
        PairError::Unreadable(e)
    }
}

/// Whether `key` is the private half of the key `cert` certifies.
fn belongs_to(cert: &X509Ref, key: &PKeyRef<Private>) -> bool {
    cert.public_key().is_ok_and(|public| public.public_eq(key))
}

/// The first certificate of the PEM chain (the one served, as native-tls
/// takes it) must certify the PEM key.
fn check_pem(cert_pem: &[u8], key_pem: &[u8], cert: &Path, key: &Path) -> Result<(), PairError> {
    let pkey = PKey::private_key_from_pem(key_pem)?;
    let chain = X509::stack_from_pem(cert_pem)?;
    let Some(leaf) = chain.first() else {
        // native-tls has already refused an empty chain.
        return Ok(());
    };
    if belongs_to(leaf, &pkey) {
        return Ok(());
    }
    let why = if chain.iter().skip(1).any(|c| belongs_to(c, &pkey)) {
        format!(
            "{} belongs to a later certificate of the chain in {}: the server's own certificate must come first",
            key.display(),
            cert.display()
        )
    } else {
        format!(
            "{} is not the key of the first certificate in {}",
            key.display(),
            cert.display()
        )
    };
    Err(PairError::Mismatch(TlsError(format!(
        "server.key_path: the private key does not match the certificate in server.cert_path ({why})"
    ))))
}

/// A PKCS#12 file must hold a key and the certificate for it. OpenSSL picks the
/// certificate that matches the key, so a file whose key certifies none of its
/// certificates parses without a certificate.
fn check_pkcs12(der: &[u8], password: &str, path: &Path) -> Result<(), PairError> {
    let parsed = Pkcs12::from_der(der)?.parse2(password)?;
    let problem = |what: &str| {
        PairError::Mismatch(TlsError(format!(
            "server.pkcs12_path: {what} ({})",
            path.display()
        )))
    };
    let Some(pkey) = parsed.pkey else {
        return Err(problem("the PKCS#12 file holds no private key"));
    };
    match parsed.cert {
        Some(cert) if belongs_to(&cert, &pkey) => Ok(()),
        Some(_) => Err(problem(
            "the private key does not match the certificate in the PKCS#12 file",
        )),
        None if parsed.ca.is_some_and(|ca| !ca.is_empty()) => Err(problem(
            "the private key does not match any certificate in the PKCS#12 file",
        )),
        None => Err(problem("the PKCS#12 file holds no certificate")),
    }
}
