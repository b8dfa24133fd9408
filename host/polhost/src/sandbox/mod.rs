//! The sandbox a fetcher runs in: what it may reach ([`Grant`]), and the
//! `wasi:http` hook that enforces it on every outgoing request.
//!
//! Owns the policy only; the runtime decides how to apply it to a store.

mod address;
mod grant;
mod hooks;

pub(crate) use address::LEARNED_PRIVATE;
pub use address::special_class;
pub(crate) use grant::shown_url;
pub use grant::{Grant, Origin, OriginPolicy};
pub(crate) use hooks::{RequestLimits, SandboxHooks};
