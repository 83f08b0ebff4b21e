//! `POST /v1/enroll`: turning a CSR into an accepted (or pending) device.
//!
//! Three ways in: an enrollment token (accepted at once, with the token's
//! tags), a pre-authorized public key (accepted at once, with its tags), or
//! nothing (the device waits as `pending` until an operator accepts it; it
//! asks again with the same CSR). A known key that was rejected or revoked
//! is refused. The device id is derived from the key, never chosen by the
//! device.

use axum::http::StatusCode;
use drover_proto::api::AuditOutcome;
use drover_proto::device::{Document, EnrollRequest, EnrollResponse, EnrollStatus};

use super::Devices;
use crate::auth::{parse_secret, secret_matches};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::pki::Csr;
use crate::store::{Change, DeviceRecord, EnrollTokenRecord, Enrollment, NewAudit};

/// Prefix of enrollment token secrets.
pub const ENROLL_SECRET_PREFIX: &str = "det_";

/// How long a pending device is told to wait before asking again.
const PENDING_RETRY_SECS: u64 = 30;

fn refused(code: &'static str, message: impl Into<String>) -> ApiError {
    metrics::counter!("drover_enrollment_refused_total", "reason" => code).increment(1);
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

fn audit(device_id: &str, action: &str, detail: serde_json::Value) -> NewAudit {
    NewAudit {
        at: now_ms(),
        actor: format!("device:{device_id}"),
        actor_name: "device".into(),
        action: action.into(),
        target: Some(device_id.into()),
        method: "POST".into(),
        path: "/v1/enroll".into(),
        status: 200,
        outcome: AuditOutcome::Success,
        detail,
    }
}

/// Checks an enrollment token secret; returns the usable token record.
async fn usable_token(
    devices: &Devices,
    secret: &str,
    now: i64,
) -> Result<EnrollTokenRecord, ApiError> {
    let Some((id, raw)) = parse_secret(ENROLL_SECRET_PREFIX, secret) else {
        return Err(refused(
            "invalid_enrollment_token",
            "the enrollment token is malformed: copy the whole token the operator gave you",
        ));
    };
    let token = devices.store.get_enroll_token(id).await?;
    let Some(token) = token.filter(|t| secret_matches(raw, &t.secret_hash)) else {
        return Err(refused(
            "invalid_enrollment_token",
            "this enrollment token is not known to the server; ask the operator for a new one",
        ));
    };
    if token.revoked_at.is_some() {
        return Err(refused(
            "enrollment_token_revoked",
            format!("enrollment token {id} was revoked; ask the operator for a new one"),
        ));
    }
    if token.expires_at.is_some_and(|e| e <= now) {
        return Err(refused(
            "enrollment_token_expired",
            format!("enrollment token {id} has expired; ask the operator for a new one"),
        ));
    }
    if token.uses_left == Some(0) {
        return Err(refused(
            "enrollment_token_used_up",
            format!("enrollment token {id} has no uses left; ask the operator for a new one"),
        ));
    }
    Ok(token)
}

fn merged(base: &Document, extra: &Document) -> Document {
    let mut d = base.clone();
    d.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    d
}

impl Devices {
    /// Handles one enrollment request. Returns the HTTP status (200 for
    /// accepted, 202 for pending) and the answer.
    pub async fn enroll(
        &self,
        req: &EnrollRequest,
    ) -> Result<(StatusCode, EnrollResponse), ApiError> {
        let csr = Csr::parse(&req.csr_pem).map_err(|m| {
            metrics::counter!("drover_enrollment_refused_total", "reason" => "bad_csr")
                .increment(1);
            ApiError::bad_request(m)
        })?;
        if let Some(h) = &req.hostname
            && (h.len() > 253 || h.chars().any(|c| c.is_control()))
        {
            return Err(ApiError::bad_request(
                "hostname must be at most 253 printable characters",
            ));
        }
        let device_id = csr.device_id();
        let public_key = hex::encode(&csr.spki_der);
        let now = now_ms();

        for _attempt in 0..5 {
            let existing = self.store.get_device(&device_id).await?;
            let token = match &req.token {
                Some(t) => Some(usable_token(self, t, now).await?),
                None => None,
            };
            match &existing {
                Some(d) if d.enrollment == Enrollment::Revoked => {
                    return Err(refused(
                        "device_revoked",
                        format!(
                            "device {device_id} was revoked; a revoked key can never enroll again: generate a new key"
                        ),
                    ));
                }
                Some(d) if d.enrollment == Enrollment::Rejected => {
                    return Err(refused(
                        "device_rejected",
                        format!("an operator rejected device {device_id}"),
                    ));
                }
                _ => {}
            }
            let preauth = match &existing {
                Some(d) if d.enrollment == Enrollment::Accepted => None,
                _ => self.store.get_preauth(&public_key).await?,
            };
            let accept = existing
                .as_ref()
                .is_some_and(|d| d.enrollment == Enrollment::Accepted)
                || token.is_some()
                || preauth.is_some();

            if !accept {
                // No way in yet: record (once) and wait for an operator.
                if existing.is_none() {
                    let device = new_device(
                        &device_id,
                        &public_key,
                        Enrollment::Pending,
                        req,
                        Document::new(),
                        None,
                        now,
                    );
                    let a = audit(
                        &device_id,
                        "devices.request",
                        serde_json::json!({ "hostname": req.hostname }),
                    );
                    if !self
                        .store
                        .apply(
                            &[Change::PutDevice {
                                device,
                                expected_version: None,
                            }],
                            Some(&a),
                        )
                        .await
                        .unwrap_or(false)
                    {
                        continue;
                    }
                    tracing::info!(device_id, "device is waiting for an operator to accept it");
                }
                return Ok((
                    StatusCode::ACCEPTED,
                    EnrollResponse {
                        device_id,
                        status: EnrollStatus::Pending,
                        certificate_pem: None,
                        certificate_expires_at_ms: None,
                        retry_after_secs: Some(PENDING_RETRY_SECS),
                    },
                ));
            }

            let cert = self
                .ca
                .issue_device_cert(&csr, &device_id, self.settings.cert_validity)
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot issue a device certificate");
                    ApiError::internal()
                })?;
            let mut changes = Vec::new();
            let (via, extra_tags) = match (&existing, &token, &preauth) {
                (Some(d), _, _) if d.enrollment == Enrollment::Accepted => {
                    (d.enrolled_via.clone(), Document::new())
                }
                (_, Some(t), _) => {
                    // Use up one of the token's uses, in the same transaction.
                    changes.push(Change::ConsumeEnrollToken {
                        id: t.id.clone(),
                        now,
                    });
                    (Some(format!("token:{}", t.id)), t.tags.clone())
                }
                (_, None, Some(p)) => {
                    changes.push(Change::DeletePreauth {
                        public_key: public_key.clone(),
                    });
                    (Some("preauthorized".into()), p.tags.clone())
                }
                _ => unreachable!("accept implies one of the three"),
            };
            let (device, expected) = match existing {
                Some(mut d) => {
                    let v = d.version;
                    d.enrollment = Enrollment::Accepted;
                    d.tags = merged(&d.tags, &extra_tags);
                    d.enrolled_via = via.clone();
                    d.cert_serial = Some(cert.serial.clone());
                    d.cert_not_after = Some(cert.not_after_ms);
                    d.hostname = req.hostname.clone().or(d.hostname);
                    d.updated_at = now;
                    (d, Some(v))
                }
                None => {
                    let mut d = new_device(
                        &device_id,
                        &public_key,
                        Enrollment::Accepted,
                        req,
                        extra_tags,
                        via.clone(),
                        now,
                    );
                    d.cert_serial = Some(cert.serial.clone());
                    d.cert_not_after = Some(cert.not_after_ms);
                    (d, None)
                }
            };
            changes.push(Change::PutDevice {
                device,
                expected_version: expected,
            });
            let a = audit(
                &device_id,
                "devices.enroll",
                serde_json::json!({ "via": via, "serial": cert.serial }),
            );
            match self.store.apply(&changes, Some(&a)).await {
                Ok(true) => {}
                // Someone else changed the token or device meanwhile: read again.
                Ok(false) | Err(crate::store::StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            metrics::counter!("drover_enrollments_total").increment(1);
            tracing::info!(device_id, via = ?via, "device enrolled");
            return Ok((
                StatusCode::OK,
                EnrollResponse {
                    device_id,
                    status: EnrollStatus::Accepted,
                    certificate_pem: Some(cert.pem),
                    certificate_expires_at_ms: Some(cert.not_after_ms),
                    retry_after_secs: None,
                },
            ));
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the enrollment raced with other changes; try again",
        ))
    }
}

fn new_device(
    id: &str,
    public_key: &str,
    enrollment: Enrollment,
    req: &EnrollRequest,
    tags: Document,
    via: Option<String>,
    now: i64,
) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        public_key: public_key.into(),
        enrollment,
        hostname: req.hostname.clone(),
        tags,
        inventory: Document::new(),
        inventory_hash: None,
        desired: Document::new(),
        reported: None,
        agent_version: None,
        cert_serial: None,
        cert_not_after: None,
        enrolled_via: via,
        created_at: now,
        updated_at: now,
        last_seen: None,
        version: 1,
    }
}
