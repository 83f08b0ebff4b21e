//! CLI failures: one line for a human (or a JSON error with `--json`) and a
//! documented exit code, so scripts can tell failures apart.
//!
//! | code | meaning |
//! |---|---|
//! | 1 | the server refused or failed the request |
//! | 2 | bad command line or local input |
//! | 3 | not logged in, or the token lacks the right (401/403) |
//! | 4 | the named object does not exist |
//! | 5 | cannot reach the server (network, TLS) |

#[derive(Debug)]
pub struct CliError {
    pub kind: Kind,
    /// Stable code, the server's when it sent one.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Failed,
    Usage,
    Auth,
    NotFound,
    Unreachable,
}

impl CliError {
    pub fn new(kind: Kind, code: &str, message: impl Into<String>) -> Self {
        CliError {
            kind,
            code: code.into(),
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, "usage", message)
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Kind::Failed, "failed", message)
    }

    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::Failed => 1,
            Kind::Usage => 2,
            Kind::Auth => 3,
            Kind::NotFound => 4,
            Kind::Unreachable => 5,
        }
    }

    pub fn print(&self, json: bool) {
        if json {
            eprintln!(
                "{}",
                serde_json::json!({ "error": { "code": self.code, "message": self.message } })
            );
        } else {
            eprintln!("error: {}", self.message);
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::failed(e.to_string())
    }
}

pub type CliResult<T> = Result<T, CliError>;
