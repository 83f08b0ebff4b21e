//! Operator API tokens: format, hashing and the caller of a request.
//!
//! A token reads `drv_<id>_<secret>`: the id finds the stored record, the
//! secret (32 random bytes, hex) is checked against its SHA-256 in constant
//! time. Secrets are random and long, so a fast hash is enough; the clear
//! secret is never stored or logged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use drover_proto::api::Role;
use ring::rand::SecureRandom;

use crate::error::ApiError;

pub const TOKEN_PREFIX: &str = "drv_";

/// Random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the system random generator failed");
    hex::encode(buf)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// A newly minted token: its id, the full bearer string and the stored hash.
pub struct MintedToken {
    pub id: String,
    pub bearer: String,
    pub secret_hash: String,
}

/// Mints an operator API token (`drv_…`).
pub fn mint_token() -> MintedToken {
    mint_secret(TOKEN_PREFIX)
}

/// Mints `<prefix><16 hex id>_<64 hex secret>`; only the secret's hash is kept.
pub fn mint_secret(prefix: &str) -> MintedToken {
    let id = random_hex(8);
    let secret = random_hex(32);
    MintedToken {
        bearer: format!("{prefix}{id}_{secret}"),
        secret_hash: sha256_hex(secret.as_bytes()),
        id,
    }
}

/// Splits an operator token into (id, secret) if it has the token shape.
pub fn parse_token(bearer: &str) -> Option<(&str, &str)> {
    parse_secret(TOKEN_PREFIX, bearer)
}

/// Splits `<prefix><id>_<secret>` into (id, secret) if it has that shape.
pub fn parse_secret<'a>(prefix: &str, text: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = text.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('_')?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id, 16) && hexish(secret, 64)).then_some((id, secret))
}

/// Whether `secret` hashes to `stored_hash` (constant time).
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    constant_time_eq(&sha256_hex(secret.as_bytes()), stored_hash)
}

/// Compares two equal-length strings without an early exit.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The authenticated caller of an API request, put in the request's
/// extensions by the authentication layer.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// Refuses the request unless the caller's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {needed} role; token {} has the {} role. Ask an admin for a token with the {needed} role",
                self.token_id, self.role
            )))
        }
    }
}

/// Why the authentication layer turned a request away, kept in the request
/// extensions so the handler's extractor can answer with it.
#[derive(Debug, Clone)]
pub struct AuthRejection(pub ApiError);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        Err(parts
            .extensions
            .get::<AuthRejection>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| {
                ApiError::unauthorized(
                    "missing_token",
                    "no API token: send `Authorization: Bearer <token>` (run `drover login` for the CLI)",
                )
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_match_their_hash() {
        let t = mint_token();
        let (id, secret) = parse_token(&t.bearer).expect("minted token parses");
        assert_eq!(id, t.id);
        assert!(constant_time_eq(
            &sha256_hex(secret.as_bytes()),
            &t.secret_hash
        ));
        assert_ne!(mint_token().bearer, t.bearer, "tokens must be random");
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for bad in [
            "",
            "drv_",
            "drv_abc_def",
            "xyz_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000",
            "drv_0123456789abcdeg_0000000000000000000000000000000000000000000000000000000000000000",
            "drv_0123456789abcdef_000",
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
    }
}
