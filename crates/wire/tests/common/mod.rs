//! Payload builders shared by the integration tests of this crate.
//!
//! Each test file is its own crate and uses only part of this module, so
//! items unused by one of them are not dead code.
#![allow(dead_code)]

pub mod largest;
