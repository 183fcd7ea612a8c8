//! CONFIG GET / SET / RESETSTAT over the options a node has, with Redis's names.

use super::CommandSpec;

/// CONFIG.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[];
