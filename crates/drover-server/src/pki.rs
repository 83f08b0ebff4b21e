//! The fleet certificate authority and the server's TLS certificate.
//!
//! On first start the server creates the fleet CA (`DATA/ca.key`, mode 0600,
//! and `DATA/ca.crt`). The CA signs the server's TLS certificate now and
//! device certificates later. The CA key never leaves the data directory; the
//! CA certificate's SHA-256 fingerprint is what clients and agents pin.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::fsutil::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a usable {what}: {detail}. Restore it from a backup or move it away to start a new fleet CA"
    )]
    Invalid {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("cannot create a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, data: &str, mode: u32) -> Result<(), PkiError> {
    write_atomic(path, data.as_bytes(), mode).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

/// Parses the first certificate of a PEM file into DER.
pub fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

/// Lowercase hex SHA-256 of a certificate's DER: the CA fingerprint.
pub fn fingerprint(der: &[u8]) -> String {
    crate::auth::sha256_hex(der)
}

/// The fleet CA, able to sign certificates.
pub struct FleetCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl FleetCa {
    pub const CERT_FILE: &'static str = "ca.crt";
    pub const KEY_FILE: &'static str = "ca.key";

    /// Loads the CA from `dir`, or creates one if neither file exists.
    /// Returns the CA and whether it was just created.
    pub fn load_or_create(dir: &Path) -> Result<(FleetCa, bool), PkiError> {
        let cert_path = dir.join(Self::CERT_FILE);
        let key_path = dir.join(Self::KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = read(&cert_path)?;
                let key_pem = read(&key_path)?;
                let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
                    path: key_path.clone(),
                    what: "CA key",
                    detail: e.to_string(),
                })?;
                let invalid_cert = |detail: String| PkiError::Invalid {
                    path: cert_path.clone(),
                    what: "CA certificate",
                    detail,
                };
                let cert_der = pem_to_der(&cert_pem)
                    .ok_or_else(|| invalid_cert("no PEM certificate".into()))?;
                let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
                    .map_err(|e| invalid_cert(e.to_string()))?;
                if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
                    return Err(invalid_cert(format!(
                        "it does not match the key in {}",
                        key_path.display()
                    )));
                }
                let issuer = Issuer::from_ca_cert_der(&cert_der, key)
                    .map_err(|e| invalid_cert(e.to_string()))?;
                Ok((
                    FleetCa {
                        cert_pem,
                        cert_der,
                        issuer,
                    },
                    false,
                ))
            }
            (false, false) => {
                let (ca, key_pem) = FleetCa::generate()?;
                // Key first: a crash between the two writes leaves a key
                // without a certificate, which is refused loudly above rather
                // than silently replaced.
                write(&key_path, &key_pem, 0o600)?;
                write(&cert_path, &ca.cert_pem, 0o644)?;
                Ok((ca, true))
            }
            (cert, _) => Err(PkiError::Invalid {
                path: if cert { key_path } else { cert_path },
                what: "CA file",
                detail: "it is missing while its partner file exists".into(),
            }),
        }
    }

    /// A new CA in memory (and its key as PEM), not yet written anywhere.
    pub fn generate() -> Result<(FleetCa, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Drover");
        dn.push(
            DnType::CommonName,
            format!("Drover fleet CA {}", &crate::auth::random_hex(4)),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365 * 20);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let ca = FleetCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Issues a TLS server certificate for `hosts` (DNS names or IPs),
    /// valid for a year. Returns (certificate PEM, key PEM).
    pub fn issue_server_cert(&self, hosts: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hosts.first().cloned().unwrap_or_else(|| "drover".into()),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A verified certificate signing request.
pub struct Csr {
    /// DER of the requested key's SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    params: rcgen::CertificateSigningRequestParams,
}

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 8 * 1024;

impl Csr {
    /// Parses a PEM CSR and checks its self-signature, which proves the
    /// requester holds the private key.
    pub fn parse(pem: &str) -> Result<Csr, String> {
        use rustls_pki_types::CertificateSigningRequestDer;
        use rustls_pki_types::pem::PemObject;
        if pem.len() > MAX_CSR_BYTES {
            return Err(format!("the CSR is larger than {MAX_CSR_BYTES} bytes"));
        }
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("the CSR is not a PEM certificate request: {e}"))?;
        use x509_parser::prelude::FromDer;
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .map_err(|e| format!("the CSR cannot be parsed: {e}"))?;
        let spki_der = parsed.certification_request_info.subject_pki.raw.to_vec();
        let params = rcgen::CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                "the CSR's signature does not match its key: the device must sign the CSR with the key it requests a certificate for".to_string()
            }
            other => format!("the CSR is not usable: {other}"),
        })?;
        Ok(Csr { spki_der, params })
    }

    /// The device id this key maps to.
    pub fn device_id(&self) -> String {
        device_id_for_spki(&self.spki_der)
    }
}

/// The device id of a SubjectPublicKeyInfo (see `drover_proto::device`).
pub fn device_id_for_spki(spki_der: &[u8]) -> String {
    drover_proto::device::device_id_from_spki_sha256(
        ring::digest::digest(&ring::digest::SHA256, spki_der).as_ref(),
    )
}

/// A certificate issued to a device.
pub struct DeviceCert {
    pub pem: String,
    pub serial: String,
    pub not_after_ms: i64,
}

impl FleetCa {
    /// Issues a client certificate for `device_id` (its common name) to the
    /// key of `csr`, valid for `validity`. Everything but the key is chosen
    /// here: a CSR cannot ask for a CA bit, other names or other uses.
    pub fn issue_device_cert(
        &self,
        csr: &Csr,
        device_id: &str,
        validity: std::time::Duration,
    ) -> Result<DeviceCert, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Drover device");
        dn.push(DnType::CommonName, device_id);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = crate::auth::random_hex(16);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &hex::decode(&serial).expect("hex"),
        ));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        let not_after = now + Duration::try_from(validity).unwrap_or(Duration::days(90));
        params.not_after = not_after;
        let request = rcgen::CertificateSigningRequestParams {
            params,
            public_key: csr.params.public_key.clone(),
        };
        let cert = request.signed_by(&self.issuer)?;
        Ok(DeviceCert {
            pem: cert.pem(),
            serial,
            not_after_ms: (not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }
}

/// Facts read from a verified device certificate.
pub struct PeerDevice {
    pub device_id: String,
    pub spki_hex: String,
    pub serial: String,
}

/// Reads the device identity from a client certificate that rustls already
/// verified against the fleet CA.
pub fn peer_device(cert_der: &[u8]) -> Option<PeerDevice> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let spki = cert.public_key().raw;
    Some(PeerDevice {
        device_id: device_id_for_spki(spki),
        spki_hex: hex::encode(spki),
        serial: hex::encode(cert.raw_serial()),
    })
}

/// Whether an existing server certificate can be kept: issued by `ca`, valid
/// for at least 30 more days, and naming every host in `hosts`.
pub fn server_cert_is_current(cert_pem: &str, ca: &FleetCa, hosts: &[String]) -> bool {
    let Some(der) = pem_to_der(cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    let Ok((_, ca_cert)) = x509_parser::parse_x509_certificate(ca.cert_der()) else {
        return false;
    };
    if cert.issuer() != ca_cert.subject()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return false;
    }
    let remaining =
        cert.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
    if remaining < 30 * 24 * 3600 {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    hosts.iter().all(|h| names.contains(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = FleetCa::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (again, created) = FleetCa::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (pem, _key) = again.issue_server_cert(&hosts).unwrap();
        assert!(server_cert_is_current(&pem, &ca, &hosts));
        assert!(!server_cert_is_current(
            &pem,
            &ca,
            &["example.org".to_string()]
        ));
    }

    #[test]
    fn a_certificate_from_another_ca_is_not_current() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (ca_a, _) = FleetCa::load_or_create(a.path()).unwrap();
        let (ca_b, _) = FleetCa::load_or_create(b.path()).unwrap();
        let hosts = vec!["localhost".to_string()];
        let (pem, _) = ca_a.issue_server_cert(&hosts).unwrap();
        assert!(!server_cert_is_current(&pem, &ca_b, &hosts));
    }

    #[test]
    fn half_written_ca_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        FleetCa::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(FleetCa::CERT_FILE)).unwrap();
        let err = FleetCa::load_or_create(dir.path())
            .err()
            .expect("must refuse");
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}
