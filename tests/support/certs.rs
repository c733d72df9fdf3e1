//! A CA and a server certificate for localhost/127.0.0.1, made with OpenSSL at test time.

use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

pub struct Certs {
    pub ca_pem: Vec<u8>,
    pub pkcs12: PathBuf,
    pub pkcs12_password: String,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey")
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut b = X509NameBuilder::new().expect("name");
    b.append_entry_by_text("CN", cn).expect("cn");
    b.build()
}

fn cert(
    subject: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    serial: u32,
) -> X509 {
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("version");
    b.set_serial_number(
        &BigNum::from_u32(serial)
            .expect("bn")
            .to_asn1_integer()
            .expect("int"),
    )
    .expect("serial");
    b.set_subject_name(&name(subject)).expect("subject");
    b.set_pubkey(key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
        .expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(30).expect("t"))
        .expect("na");
    match issuer {
        None => {
            b.set_issuer_name(&name(subject)).expect("issuer");
            b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
                .expect("ext");
            b.append_extension(
                KeyUsage::new()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .expect("ku"),
            )
            .expect("ext");
            b.sign(key, MessageDigest::sha256()).expect("sign");
        }
        Some((ca, ca_key)) => {
            b.set_issuer_name(ca.subject_name()).expect("issuer");
            let san = SubjectAlternativeName::new()
                .dns("localhost")
                .ip("127.0.0.1")
                .build(&b.x509v3_context(Some(ca), None))
                .expect("san");
            b.append_extension(san).expect("ext");
            b.sign(ca_key, MessageDigest::sha256()).expect("sign");
        }
    }
    b.build()
}

/// Writes server.p12, server.pem and server.key into `dir`.
pub fn make(dir: &Path) -> Certs {
    let ca_key = key();
    let ca = cert("Switchboard Test CA", &ca_key, None, 1);
    let server_key = key();
    let server = cert("localhost", &server_key, Some((&ca, &ca_key)), 2);
    let password = "p12-test-password".to_string();
    let mut chain = openssl::stack::Stack::new().expect("stack");
    chain.push(ca.clone()).expect("push");
    let p12 = Pkcs12::builder()
        .name("switchboard")
        .pkey(&server_key)
        .cert(&server)
        .ca(chain)
        .build2(&password)
        .expect("pkcs12");
    let certs = Certs {
        ca_pem: ca.to_pem().expect("pem"),
        pkcs12: dir.join("server.p12"),
        pkcs12_password: password,
        cert_pem: dir.join("server.pem"),
        key_pem: dir.join("server.key"),
    };
    std::fs::write(&certs.pkcs12, p12.to_der().expect("der")).expect("write p12");
    std::fs::write(&certs.cert_pem, server.to_pem().expect("pem")).expect("write pem");
    std::fs::write(
        &certs.key_pem,
        server_key.private_key_to_pem_pkcs8().expect("pkcs8"),
    )
    .expect("write key");
    certs
}

/// Writes a fresh PKCS#8 PEM key to `path`: it belongs to no certificate.
pub fn write_stray_key(path: &Path) {
    std::fs::write(path, key().private_key_to_pem_pkcs8().expect("pkcs8")).expect("write key");
}

/// Writes DIR/foreign.p12 (password `certs.pkcs12_password`): a fresh key with the
/// server certificate of `certs`, which is not that key's. OpenSSL refuses to
/// pair them in one bag, so the certificate goes in as a chain certificate, as
/// a careless export would leave it.
pub fn write_pkcs12_with_a_foreign_key(dir: &Path, certs: &Certs) -> PathBuf {
    let pem = std::fs::read(&certs.cert_pem).expect("read server.pem");
    let server = X509::from_pem(&pem).expect("server.pem");
    let mut chain = openssl::stack::Stack::new().expect("stack");
    chain.push(server).expect("push");
    let p12 = Pkcs12::builder()
        .name("switchboard")
        .pkey(&key())
        .ca(chain)
        .build2(&certs.pkcs12_password)
        .expect("pkcs12");
    let path = dir.join("foreign.p12");
    std::fs::write(&path, p12.to_der().expect("der")).expect("write p12");
    path
}
