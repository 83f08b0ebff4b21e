//! Software updates on the device (docs/updates.md).
//!
//! - [`installer`]: the `Installer` trait every payload type implements.

pub mod installer;
