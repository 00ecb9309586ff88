//! Reference Mobile IPv4 agents and the `mipctl` operator tool.
#![forbid(unsafe_code)]

pub mod cli;
pub mod decode;
pub mod fa_daemon;
pub mod ha_daemon;
pub mod mn_daemon;
pub mod pcap;
pub mod register;
pub mod status;
pub mod traces;
pub mod tunnel_io;
