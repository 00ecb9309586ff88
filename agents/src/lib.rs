//! Reference Mobile IPv4 agents and the `mipctl` operator tool.
#![forbid(unsafe_code)]

pub mod cli;
pub mod decode;
pub mod pcap;
pub mod register;
