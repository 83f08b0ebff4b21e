//! Release bundle files (filled in next).
