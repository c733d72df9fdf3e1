//! The TLS identity: PKCS#12 (the reference's `pkcs12_path`/`pkcs12_password`) or PEM.

use std::fmt;
use std::fs;
use std::path::PathBuf;

use native_tls::{Identity, Protocol, TlsAcceptor};

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
/// # Errors
/// An unreadable file, a wrong password, or a key that does not match.
pub fn build_acceptor(identity: &TlsIdentity) -> Result<TlsAcceptor, TlsError> {
    let read = |key: &str, path: &PathBuf| {
        fs::read(path).map_err(|e| TlsError(format!("{key}: cannot read {}: {e}", path.display())))
    };
    let identity = match identity {
        TlsIdentity::Pkcs12 { path, password } => {
            let der = read("server.pkcs12_path", path)?;
            Identity::from_pkcs12(&der, password).map_err(|e| {
                TlsError(format!(
                    "server.pkcs12_path: {} is not a PKCS#12 identity that server.pkcs12_password opens: {e}",
                    path.display()
                ))
            })?
        }
        TlsIdentity::Pem { cert, key } => {
            let cert_pem = read("server.cert_path", cert)?;
            let key_pem = read("server.key_path", key)?;
            Identity::from_pkcs8(&cert_pem, &key_pem).map_err(|e| {
                TlsError(format!(
                    "server.cert_path/server.key_path: {} and {} are not a PEM certificate and its PKCS#8 key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
    };
    TlsAcceptor::builder(identity)
        .min_protocol_version(Some(Protocol::Tlsv12))
        .build()
        .map_err(|e| TlsError(format!("TLS setup failed: {e}")))
}
