//! Hash commands: the per-field values sessions are stored in.

use super::CommandSpec;

/// Hash commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[];
