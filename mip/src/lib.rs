//! # mip: Mobile IPv4 without I/O
//!
//! The protocol core of mip-proxy: byte-exact wire formats ([`wire`]), registration authenticators and
//! security associations ([`auth`], [`keystore`]), replay protection ([`replay`]) and the binding cache
//! ([`binding`]). Nothing here opens a socket, reads a clock or sleeps: callers pass bytes and `now` in and
//! get values back, so every rule is testable in microseconds.
//!
//! No input makes any function here panic (see the contract in [`wire`]); the crate forbids `unsafe`.
#![forbid(unsafe_code)]

pub(crate) mod macros;

pub mod auth;
pub mod binding;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod keystore;
pub mod replay;
pub mod roles;
pub mod time;
pub mod wire;
