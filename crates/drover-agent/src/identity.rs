//! Who this device is: its key pair (generated here; the private key never
//! leaves the device and is stored with mode 0600), its certificate, the
//! pinned fleet CA, and the TLS configurations built from them.
//!
//! Files in the data directory:
//! `device.key` (0600), `device.crt`, `ca.crt`, `server.json`.

use std::path::Path;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

pub const KEY_FILE: &str = "device.key";
pub const CERT_FILE: &str = "device.crt";
pub const CA_FILE: &str = "ca.crt";
pub const SERVER_FILE: &str = "server.json";

/// Where the server is and which CA it must present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInfo {
    pub url: String,
    /// SHA-256 (hex) of the fleet CA certificate.
    pub ca_fingerprint: String,
    /// When the device certificate expires (Unix ms), if known.
    #[serde(default)]
    pub cert_expires_at_ms: Option<i64>,
    /// When the device certificate was received (Unix ms).
    #[serde(default)]
    pub cert_received_at_ms: Option<i64>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The id the server will know this key by.
pub fn device_id(key: &KeyPair) -> String {
    let spki = key.subject_public_key_info();
    drover_proto::device::device_id_from_spki_sha256(
        ring::digest::digest(&ring::digest::SHA256, &spki).as_ref(),
    )
}

/// Loads `DATA/device.key`, creating it (ECDSA P-256, mode 0600) if absent.
pub fn load_or_create_key(data: &Path) -> Result<KeyPair, String> {
    let path = data.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(pem) => KeyPair::from_pem(&pem)
            .map_err(|e| format!("{} is not a usable key: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            drover_fs::ensure_dir(data, 0o700)
                .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
            let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
            drover_fs::write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A certificate signing request for `key`, signed by it (proof of possession).
pub fn csr_pem(key: &KeyPair) -> Result<String, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, device_id(key));
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| format!("cannot build a CSR: {e}"))
}

/// Fingerprint of the certificate in `pem`, which must hold exactly one:
/// a file with more could smuggle a second trust anchor past the pin.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let first = certs.next()?.ok()?;
    if certs.next().is_some() {
        return None;
    }
    Some(sha256_hex(&first))
}

/// The certificate of `pem` whose SHA-256 is `fingerprint`, alone, as PEM.
/// This is what the agent trusts: never anything else the server sent.
pub fn pinned_certificate(pem: &str, fingerprint: &str) -> Option<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|c| sha256_hex(c) == fingerprint)
        .map(|c| {
            use std::fmt::Write;
            let b64 = drover_proto::base64url::encode(&c)
                .replace('-', "+")
                .replace('_', "/");
            let padded = format!("{b64}{}", "=".repeat((4 - b64.len() % 4) % 4));
            let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
            for line in padded.as_bytes().chunks(64) {
                let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
            }
            out.push_str("-----END CERTIFICATE-----\n");
            out
        })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS that trusts only `ca_pem`, optionally presenting a client certificate.
pub fn client_tls(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| format!("bad CA certificate: {e}"))?)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert_pem, key_pem)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("bad device certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| format!("bad device key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("device certificate and key do not match: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// TLS that accepts any server certificate. Used for exactly one thing:
/// fetching the fleet CA, whose SHA-256 is then compared with the pinned
/// fingerprint before anything else is trusted.
pub fn fingerprint_only_tls() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let p = provider();
    let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p)))
        .with_no_client_auth();
    Arc::new(cfg)
}

/// Everything a device needs to open its control channel.
#[derive(Clone)]
pub struct Identity {
    pub device_id: String,
    pub server: ServerInfo,
    pub key: Arc<KeyPair>,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl Identity {
    /// Loads an enrolled identity from the data directory; `Ok(None)` when
    /// the device has no certificate yet (not enrolled, or still pending).
    pub fn load(data: &Path) -> Result<Option<Identity>, String> {
        let read = |name: &str| std::fs::read_to_string(data.join(name));
        let server: ServerInfo = match read(SERVER_FILE) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{}: {e}", data.join(SERVER_FILE).display()))?,
            Err(_) => return Ok(None),
        };
        let (Ok(cert_pem), Ok(ca_pem)) = (read(CERT_FILE), read(CA_FILE)) else {
            return Ok(None);
        };
        if pem_fingerprint(&ca_pem).as_deref() != Some(server.ca_fingerprint.as_str()) {
            return Err(format!(
                "{} does not match the pinned CA fingerprint; re-enroll the device",
                data.join(CA_FILE).display()
            ));
        }
        // An enrolled device without its key cannot be repaired by making a
        // new one: say so instead of presenting a certificate for another key.
        let key_path = data.join(KEY_FILE);
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| {
            format!(
                "{}: {e}; the device key is gone, so the device must be enrolled again",
                key_path.display()
            )
        })?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| format!("{} is not a usable key: {e}", key_path.display()))?;
        Ok(Some(Identity {
            device_id: device_id(&key),
            server,
            key: Arc::new(key),
            cert_pem,
            ca_pem,
        }))
    }

    /// TLS for the control channel: pinned CA, device certificate.
    pub fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        client_tls(
            &self.ca_pem,
            Some((&self.cert_pem, &self.key.serialize_pem())),
        )
    }
}

/// Stores server facts atomically.
pub fn save_server(data: &Path, info: &ServerInfo) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(info).expect("serializes");
    drover_fs::write_atomic(&data.join(SERVER_FILE), &text, 0o644)
        .map_err(|e| format!("cannot write {SERVER_FILE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_ca_file_holds_exactly_one_certificate() {
        let (a, b) = (
            rcgen::KeyPair::generate().unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        );
        let ca = |k: &rcgen::KeyPair| {
            CertificateParams::new(Vec::<String>::new())
                .unwrap()
                .self_signed(k)
                .unwrap()
                .pem()
        };
        let (good, evil) = (ca(&a), ca(&b));
        let fp = pem_fingerprint(&good).unwrap();
        let smuggled = format!("{good}{evil}");
        assert_eq!(
            pem_fingerprint(&smuggled),
            None,
            "a second certificate must not pass the pin"
        );
        let kept = pinned_certificate(&smuggled, &fp).unwrap();
        assert_eq!(
            pem_fingerprint(&kept).as_deref(),
            Some(fp.as_str()),
            "only the pinned certificate is kept"
        );
        assert!(pinned_certificate(&evil, &fp).is_none());
    }

    #[test]
    fn key_is_private_stable_and_yields_a_stable_id() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k1 = load_or_create_key(dir.path()).unwrap();
        let k2 = load_or_create_key(dir.path()).unwrap();
        assert_eq!(device_id(&k1), device_id(&k2));
        assert!(drover_proto::device::is_device_id(&device_id(&k1)));
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(csr_pem(&k1).unwrap().contains("CERTIFICATE REQUEST"));
    }
}
