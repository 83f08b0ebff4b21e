//! Live control channels, one per connected device, and the per-address
//! connection rate limiter.
//!
//! The registry is in memory: it answers "is this device online?" and
//! "send this to that device" for the process holding the connection.
//! (With several replicas, presence becomes a database lease and commands
//! go through NATS; see docs/architecture.md.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use drover_proto::device::ServerMessage;
use tokio::sync::mpsc;

use super::Effective;

/// A message for a connection task to send. Boxed: the channel allocates a
/// block of slots per connection up front, so each slot must be small (idle
/// connections add up).
pub type Outbound = Box<ServerMessage>;

/// One live control channel.
#[derive(Debug)]
pub struct Conn {
    /// Tells connections of the same device apart (a reconnect replaces).
    pub conn_id: u64,
    pub device_id: String,
    pub connected_at: i64,
    pub last_seen: AtomicI64,
    tx: mpsc::Sender<Outbound>,
    pushed_revision: Mutex<Option<String>>,
    /// Why the connection must close, once something asked it to. Kept
    /// outside the queue so a full queue can never swallow a revocation.
    close_reason: Mutex<Option<(&'static str, String)>>,
    close: tokio::sync::Notify,
}

impl Conn {
    /// Queues a message; `false` if the connection is gone or too far behind.
    pub fn send(&self, msg: ServerMessage) -> bool {
        self.tx.try_send(Box::new(msg)).is_ok()
    }

    /// Asks the connection to send a fatal error `code` and close. Never
    /// lost: the reason is stored and the task is woken (or finds the
    /// wake-up waiting when it next looks).
    pub fn request_close(&self, code: &'static str, message: String) {
        *self.close_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some((code, message));
        self.close.notify_one();
    }

    /// Resolves once a close was requested, with its reason.
    pub async fn close_requested(&self) -> (&'static str, String) {
        loop {
            if let Some(r) = self
                .close_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return r;
            }
            self.close.notified().await;
        }
    }

    /// Pushes the desired configuration unless this revision was already sent.
    pub fn push_desired_if_changed(&self, eff: &Effective) -> bool {
        let mut last = self
            .pushed_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(eff.revision.as_str()) {
            return false;
        }
        let msg = ServerMessage::Desired {
            revision: eff.revision.clone(),
            config: eff.config.clone(),
            update: eff.update.clone(),
            rules: eff.rules.clone(),
        };
        if drover_proto::device::encode(&msg).len() > drover_proto::device::MAX_FRAME_BYTES {
            metrics::counter!("drover_desired_too_large_total").increment(1);
            tracing::error!(device_id = %self.device_id, revision = %eff.revision, "desired configuration exceeds one frame; not sent");
            return false;
        }
        let sent = self.send(msg);
        if sent {
            *last = Some(eff.revision.clone());
        }
        sent
    }

    /// Records a revision the device already has, so it is not re-sent.
    pub fn mark_pushed(&self, revision: Option<String>) {
        *self
            .pushed_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = revision;
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    conns: RwLock<HashMap<String, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Registers a new connection for `device_id`, closing any older one.
    pub fn register(&self, device_id: &str, now: i64) -> (Arc<Conn>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(16);
        let conn = Arc::new(Conn {
            conn_id: self.next_id.fetch_add(1, Ordering::Relaxed),
            device_id: device_id.to_string(),
            connected_at: now,
            last_seen: AtomicI64::new(now),
            tx,
            pushed_revision: Mutex::new(None),
            close_reason: Mutex::new(None),
            close: tokio::sync::Notify::new(),
        });
        let old = self
            .conns
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id.to_string(), conn.clone());
        if let Some(old) = old {
            old.request_close(
                "replaced",
                "a newer connection of this device replaced this one".into(),
            );
        }
        metrics::gauge!("drover_devices_connected").set(self.len() as f64);
        (conn, rx)
    }

    /// Removes the connection if it is still the registered one.
    pub fn unregister(&self, conn: &Conn) {
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        if conns
            .get(&conn.device_id)
            .is_some_and(|c| c.conn_id == conn.conn_id)
        {
            conns.remove(&conn.device_id);
        }
        let n = conns.len();
        drop(conns);
        metrics::gauge!("drover_devices_connected").set(n as f64);
    }

    pub fn get(&self, device_id: &str) -> Option<Arc<Conn>> {
        self.conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .cloned()
    }

    pub fn is_online(&self, device_id: &str) -> bool {
        self.conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(device_id)
    }

    pub fn len(&self) -> usize {
        self.conns.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn online_ids(&self) -> Vec<String> {
        self.conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn last_seen_all(&self) -> Vec<(String, i64)> {
        self.conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| (c.device_id.clone(), c.last_seen.load(Ordering::Relaxed)))
            .collect()
    }

    /// Asks every live connection to close.
    pub fn close_all(&self, code: &'static str, message: &str) {
        for c in self
            .conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            c.request_close(code, message.to_string());
        }
    }

    /// Closes a device's live connection (revocation), if any.
    pub fn close(&self, device_id: &str, code: &'static str, message: &str) -> bool {
        match self.get(device_id) {
            Some(c) => {
                c.request_close(code, message.to_string());
                true
            }
            None => false,
        }
    }
}

/// A token bucket per source address: `rate` attempts per second, bursts of
/// up to twice that.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_sec: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(per_sec.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token for `ip`; `false` means "too many, refuse".
    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let burst = self.rate * 2.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget full buckets so a scan of many addresses cannot grow this forever.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * self.rate < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_replaces_and_closes_the_old_connection() {
        let r = Registry::default();
        let (old, _old_rx) = r.register("d", 1);
        let (new, _new_rx) = r.register("d", 2);
        let reason = futures_now(old.close_requested());
        assert_eq!(reason.0, "replaced");
        r.unregister(&old);
        assert!(
            r.is_online("d"),
            "the old connection leaving must not evict the new one"
        );
        r.unregister(&new);
        assert!(!r.is_online("d"));
    }

    /// Polls a future that must already be ready.
    fn futures_now<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("not ready"),
        }
    }

    #[test]
    fn a_close_request_is_kept_even_when_the_queue_is_full() {
        let r = Registry::default();
        let (conn, _rx) = r.register("d", 1);
        while conn.send(ServerMessage::InventoryAck {
            hash: String::new(),
        }) {}
        assert!(r.close("d", "device_revoked", "revoked"));
        assert_eq!(futures_now(conn.close_requested()).0, "device_revoked");
    }

    #[test]
    fn the_rate_limiter_allows_a_burst_then_refuses() {
        let l = RateLimiter::new(5);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let allowed = (0..50).filter(|_| l.allow(ip)).count();
        assert_eq!(allowed, 10, "burst of twice the rate");
        assert!(
            l.allow("127.0.0.10".parse().unwrap()),
            "other addresses are not affected"
        );
    }
}
