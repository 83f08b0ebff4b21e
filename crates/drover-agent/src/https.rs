//! A minimal HTTPS client for the agent's few plain requests (enrollment,
//! fetching the CA) and for streaming artifact downloads: hyper's HTTP/1.1
//! connection over tokio-rustls, with timeouts and a cap on answer size
//! (except for streamed bodies, which the caller bounds). (reqwest would
//! double the agent.)

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest answer body read.
const MAX_ANSWER: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(20);

/// The host and port to dial for an `https://` server URL (443 by default).
pub fn host_port(url: &str) -> Result<(String, u16), String> {
    match drover_proto::url::split(url).map_err(|e| format!("server URL {url:?}: {e}"))? {
        (scheme, host, port) if scheme == "https" => Ok((host, port.unwrap_or(443))),
        _ => Err(format!("server URL {url:?} must start with https://")),
    }
}

/// Opens TCP + TLS to the server of `url`.
pub async fn connect_tls(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    bind: Option<std::net::IpAddr>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let (host, port) = host_port(url)?;
    let tcp = tokio::time::timeout(TIMEOUT, async {
        match bind {
            // The simulator spreads devices over many loopback addresses.
            Some(ip) => {
                let addr = tokio::net::lookup_host((host.as_str(), port))
                    .await?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))?;
                let sock = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                sock.bind(std::net::SocketAddr::new(ip, 0))?;
                sock.connect(addr).await
            }
            None => TcpStream::connect((host.as_str(), port)).await,
        }
    })
    .await
    .map_err(|_| format!("connecting to {host}:{port} timed out"))?
    .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("bad host {host:?}: {e}"))?;
    tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| format!("TLS handshake with {host}:{port} timed out"))?
    .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))
}

/// Sends one request and returns (status, body).
pub async fn request(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    method: hyper::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let (host, port) = host_port(url)?;
    let stream = connect_tls(url, tls, None).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(
            hyper::header::USER_AGENT,
            concat!("drover-agent/", env!("CARGO_PKG_VERSION")),
        );
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| "the server did not answer in time".to_string())?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let bytes = tokio::time::timeout(
        TIMEOUT,
        Limited::new(resp.into_body(), MAX_ANSWER).collect(),
    )
    .await
    .map_err(|_| "the server's answer did not arrive in time".to_string())?
    .map_err(|e| format!("cannot read the answer: {e}"))?
    .to_bytes();
    Ok((status, bytes))
}

/// An answer whose body is read by the caller, chunk by chunk.
pub struct StreamingResponse {
    pub status: hyper::StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: hyper::body::Incoming,
}

/// Sends `GET path` with extra `headers` on an open connection `io` and
/// returns the answer's head; the body is streamed by the caller (see
/// [`next_chunk`]). Works over TLS and plain TCP alike.
pub async fn get_streaming<S>(
    io: S,
    host_header: &str,
    path: &str,
    headers: &[(&str, String)],
) -> Result<StreamingResponse, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(hyper::Method::GET)
        .uri(path)
        .header(hyper::header::HOST, host_header)
        .header(
            hyper::header::USER_AGENT,
            concat!("drover-agent/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| "the server did not answer in time".to_string())?
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = resp.into_parts();
    Ok(StreamingResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `GET path` from the server of `url` over TLS (mTLS when `tls` carries
/// a client certificate); the body is streamed by the caller.
pub async fn get_streaming_tls(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    bind: Option<std::net::IpAddr>,
    path: &str,
    headers: &[(&str, String)],
) -> Result<StreamingResponse, String> {
    let (host, port) = host_port(url)?;
    let stream = connect_tls(url, tls, bind).await?;
    get_streaming(stream, &format!("{host}:{port}"), path, headers).await
}

/// The next data chunk of a streamed body; `None` at its end. Fails when
/// nothing arrives for `idle` (a stalled connection).
pub async fn next_chunk(
    body: &mut hyper::body::Incoming,
    idle: Duration,
) -> Result<Option<Bytes>, String> {
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| format!("no data from the server for {idle:?}"))?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(format!("the download broke off: {e}")),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data()
                    && !data.is_empty()
                {
                    return Ok(Some(data));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(
            host_port("https://a.example:8443").unwrap(),
            ("a.example".into(), 8443)
        );
        assert_eq!(
            host_port("https://a.example/x").unwrap(),
            ("a.example".into(), 443)
        );
        assert_eq!(host_port("https://[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(host_port("http://a.example").is_err());
        assert!(host_port("https://:1").is_err());
    }
}
