//! The subcommands of `mxserve`, one module each.

pub mod generate;
pub mod inspect;
pub mod serve;
