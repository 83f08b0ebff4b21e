//! Webhook notifications: signing and delivery from the persisted queue
//! (`webhook_deliveries`), with retries and exponential backoff.
//!
//! Each POST carries the JSON body ([`WebhookPayload`]) and:
//! - `X-Drover-Timestamp`: Unix seconds when this attempt was signed;
//! - `X-Drover-Signature`: `sha256=` and the lowercase hex HMAC-SHA256,
//!   keyed with the webhook's secret, of `TIMESTAMP.BODY` (the timestamp
//!   header's text, a dot, the raw body bytes);
//! - `X-Drover-Event` (`firing`, `resolved`) and `X-Drover-Delivery` (the
//!   notification id, the same on every retry).
//!
//! A receiver recomputes the HMAC, compares in constant time, and refuses
//! timestamps older than a few minutes (a replayed request). Delivery is
//! at least once: a 2xx answer marks a notification delivered; anything
//! else (or no answer) is retried until the attempts are used up. This
//! module never follows redirects (a redirect could send the signed body
//! somewhere else) and never logs secrets.

use std::time::Duration;

use drover_proto::alerts::WebhookPayload;

use super::{AlertSettings, Alerting, alert_doc};
use crate::clock::rfc3339;
use crate::store::StoreResult;
use crate::store::alerts::{DeliveryOutcome, DeliveryRecord};

/// Most notifications sent per pass over the queue.
const BATCH: u32 = 100;

/// `sha256=<hex>` of HMAC-SHA256(secret, `timestamp.body`).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// Checks a signature as a receiver would (constant-time comparison);
/// `max_age_secs` bounds how old the timestamp may be at `now_secs`.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    header: &str,
    now_secs: i64,
    max_age_secs: i64,
) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now_secs - ts).abs() > max_age_secs {
        return false;
    }
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = Vec::with_capacity(timestamp.len() + 1 + body.len());
    msg.extend_from_slice(timestamp.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    ring::hmac::verify(&key, &msg, &sig).is_ok()
}

fn system_roots() -> rustls::RootCertStore {
    let path = std::env::var("SSL_CERT_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read(&path) {
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
            // A broken system certificate is skipped, not fatal.
            let _ = roots.add(c);
        }
    }
    if roots.is_empty() {
        tracing::warn!(%path, "no CA certificates found: https:// webhooks will fail (set SSL_CERT_FILE)");
    }
    roots
}

/// The HTTP client of webhook deliveries (system CAs, no redirects).
pub fn client(settings: &AlertSettings) -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(system_roots())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.request_timeout)
        .timeout(settings.request_timeout)
        .user_agent(concat!("drover-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the webhook HTTP client builds")
}

/// What one pass over the queue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: usize,
    pub retried: usize,
    pub failed: usize,
}

impl Alerting {
    /// Sends every notification due at `now` (Unix ms) once, and records
    /// each outcome: delivered, retry later (backoff), or failed.
    pub async fn deliver_due(&self, now: i64) -> StoreResult<DeliveryReport> {
        let mut report = DeliveryReport::default();
        for d in self.store.due_deliveries(now, BATCH).await? {
            let outcome = match self.send(&d, now).await {
                Ok(()) => {
                    report.delivered += 1;
                    metrics::counter!("drover_webhook_deliveries_total", "outcome" => "delivered")
                        .increment(1);
                    DeliveryOutcome::Delivered { at: now }
                }
                Err(error) if d.attempts + 1 >= self.settings.max_attempts => {
                    report.failed += 1;
                    metrics::counter!("drover_webhook_deliveries_total", "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(delivery = d.id, url = %d.url, %error, attempts = d.attempts + 1,
                        "webhook notification given up");
                    DeliveryOutcome::GaveUp { error }
                }
                Err(error) => {
                    report.retried += 1;
                    metrics::counter!("drover_webhook_deliveries_total", "outcome" => "retry")
                        .increment(1);
                    let next_at = now + self.settings.backoff_ms(d.attempts + 1);
                    tracing::info!(delivery = d.id, url = %d.url, %error, next_at = %rfc3339(next_at),
                        "webhook notification failed; will retry");
                    DeliveryOutcome::Retry { next_at, error }
                }
            };
            self.store.finish_delivery(d.id, &outcome).await?;
        }
        Ok(report)
    }

    async fn send(&self, d: &DeliveryRecord, now: i64) -> Result<(), String> {
        let Some(alert) = self
            .store
            .get_alert(d.instance_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Err(format!("alert {} no longer exists", d.instance_id));
        };
        let payload = WebhookPayload {
            notification_id: d.id,
            event: d.event.clone(),
            at: rfc3339(d.event_at),
            at_ms: d.event_at,
            value: d.value,
            alert: alert_doc(&alert),
        };
        let body = serde_json::to_vec(&payload).expect("payloads serialize");
        let ts = now.div_euclid(1000);
        let resp = self
            .http
            .post(&d.url)
            .header("content-type", "application/json")
            .header("x-drover-timestamp", ts.to_string())
            .header(
                "x-drover-signature",
                signature(d.secret.as_bytes(), ts, &body),
            )
            .header("x-drover-event", &d.event)
            .header("x-drover-delivery", d.id.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| format!("no answer: {}", error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Sends due notifications every poll interval until `stop`.
pub async fn run_deliveries(
    alerting: std::sync::Arc<Alerting>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(alerting.settings.delivery_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = alerting.deliver_due(crate::clock::now_ms()).await {
                    tracing::warn!(error = %e, "webhook queue unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_a_fresh_timestamp() {
        let body = br#"{"event":"firing"}"#;
        let sig = signature(b"0123456789abcdef", 1_700_000_000, body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        let ok =
            |secret: &[u8], ts: &str, body: &[u8], now| verify(secret, ts, body, &sig, now, 300);
        assert!(ok(b"0123456789abcdef", "1700000000", body, 1_700_000_010));
        assert!(!ok(b"0123456789abcdeX", "1700000000", body, 1_700_000_010));
        assert!(!ok(b"0123456789abcdef", "1700000001", body, 1_700_000_010));
        assert!(!ok(b"0123456789abcdef", "1700000000", b"{}", 1_700_000_010));
        assert!(
            !ok(b"0123456789abcdef", "1700000000", body, 1_700_000_400),
            "a replay after 5 minutes is refused"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = AlertSettings::default();
        assert_eq!(s.backoff_ms(1), 2_000);
        assert_eq!(s.backoff_ms(2), 4_000);
        assert_eq!(s.backoff_ms(5), 32_000);
        assert_eq!(s.backoff_ms(20), 600_000);
    }
}
