//! Our own accept loop: TLS (rustls) or plain TCP, HTTP/1.1 with upgrades,
//! graceful shutdown.
//!
//! We do not use `axum::serve` so that each connection's TLS details (the
//! peer address now, the device's client certificate later) reach handlers
//! as request extensions, and so a slow or broken handshake is bounded.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes processed at once; more connections wait their turn.
const MAX_CONCURRENT_HANDSHAKES: usize = 128;
/// How long shutdown waits for open requests before it gives up on them
/// (they end with the process).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` turns true, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    // Every connection task holds a clone of `alive`; when all are gone the
    // receiver yields `None` and draining is over.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    // Handshakes in flight at once: a reconnect storm then queues in the
    // kernel's backlog instead of holding thousands of half-built sessions
    // (and their buffers) in memory at the same time.
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    metrics::counter!("drover_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let alive = alive.clone();
        let mut stop = shutdown.clone();
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            let _alive = alive;
            // Per-connection facts every request of the connection carries.
            let service = |cert: Option<PeerCertificate>| {
                TowerToHyperService::new(tower::ServiceExt::map_request(
                    app,
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        if let Some(c) = &cert {
                            req.extensions_mut().insert(c.clone());
                        }
                        req
                    },
                ))
            };
            let builder = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .to_owned();
            let result = match acceptor {
                Some(acceptor) => {
                    let permit = handshakes.acquire_owned().await;
                    let accepted =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    drop(permit);
                    let tls = match accepted {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            metrics::counter!("drover_tls_handshake_failures_total").increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("drover_tls_handshake_failures_total").increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| PeerCertificate(Arc::new(c.clone().into_owned())));
                    let conn = builder
                        .serve_connection(TokioIo::new(tls), service(cert))
                        .with_upgrades();
                    drain_on_stop(conn, &mut stop).await
                }
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service(None))
                        .with_upgrades();
                    drain_on_stop(conn, &mut stop).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(alive);
    if tokio::time::timeout(DRAIN_TIMEOUT, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            "some connections did not finish within {DRAIN_TIMEOUT:?}; they end with the process"
        );
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs a connection; when `stop` turns true, lets the request in flight
/// finish and closes the connection.
async fn drain_on_stop<I, S>(
    conn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    stop: &mut watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => res,
        _ = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// The client certificate a TLS peer presented, already verified against
/// the fleet CA by rustls. Present only on connections that sent one.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<rustls_pki_types::CertificateDer<'static>>);

/// A TLS configuration for the server certificate chain and key (PEM).
/// Clients may present a certificate issued by `client_ca` (devices do);
/// operators and browsers present none.
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca: &rustls_pki_types::CertificateDer<'static>,
) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read the certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate file holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("cannot read the private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(client_ca.clone())
        .map_err(|e| format!("the fleet CA is not usable as a trust anchor: {e}"))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| format!("cannot set up client certificate checks: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not form a usable pair: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
