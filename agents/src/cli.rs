//! `mipctl`: command-line parsing (clap) and the commands, kept out of `main` so tests can drive them.
//!
//! Exit status: [`EXIT_OK`] (0); [`EXIT_MALFORMED`] (1) when a message is malformed or a registration is denied;
//! [`EXIT_USAGE`] (2) for usage errors, bad hex, unreadable capture or configuration files;
//! [`EXIT_UNREACHABLE`] (3) when no reply came, or (`bindings`, `status`) a daemon's admin address did not answer.

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use mip::auth::{Algorithm, Key};
use mip::wire::{Dialect, Message};

use crate::decode::{FrameLine, Keys, frame_json, message_json};
use crate::pcap::PcapReader;

/// Success.
pub const EXIT_OK: u8 = 0;
/// A Mobile IP message was malformed.
pub const EXIT_MALFORMED: u8 = 1;
/// Usage error, bad hex input or unreadable capture file.
pub const EXIT_USAGE: u8 = 2;
/// No answer: `register` got no authenticated reply, `bindings` could not reach the admin address.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Mobile IPv4 operator tool.
#[derive(Debug, Parser)]
#[command(name = "mipctl", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `mipctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode one Mobile IP message (UDP payload, hex) or every port-434 message in a capture, as JSON lines.
    Decode(DecodeArgs),
    /// Send one authenticated registration (as the node in --config would) and print the outcome as JSON.
    Register(RegisterArgs),
    /// Print the bindings a daemon holds, from its admin address.
    Bindings(BindingsArgs),
    /// One screen per daemon from its admin address: role, version, uptime, bindings, replication peers, recent
    /// registrations with their codes, last errors, drops.
    Status(StatusArgs),
}

/// Arguments of `mipctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A daemon's admin address (host:port); repeat it, or give a comma-separated list, for several daemons.
    #[arg(long, value_name = "ADDR", value_delimiter = ',', default_value = "127.0.0.1:9434")]
    pub admin: Vec<std::net::SocketAddr>,
    /// Print each daemon's status as one JSON object per line (its `/status` with "admin" added; a daemon that
    /// did not answer is {"admin", "error"}).
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for each daemon.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub timeout: u64,
}

/// Arguments of `mipctl register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The mobile node configuration (the file `mip-mn --config` reads: home address, home agent = the proxy,
    /// SPI, …).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The keys file holding the node's MN-HA security association (default: the config's daemon.keys_file).
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// Care-of address to register (default: the local address the routing table uses toward the home agent).
    #[arg(long, value_name = "ADDR")]
    pub care_of: Option<std::net::Ipv4Addr>,
    /// Requested lifetime in seconds (default: the configuration's).
    #[arg(long, value_name = "SECS")]
    pub lifetime: Option<u16>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
    /// Deregister again once the registration is accepted (leave no binding behind).
    #[arg(long)]
    pub deregister: bool,
}

/// Arguments of `mipctl bindings`.
#[derive(Debug, Args)]
pub struct BindingsArgs {
    /// The daemon's admin address (host:port).
    #[arg(long, value_name = "ADDR")]
    pub admin: std::net::SocketAddr,
}

/// Authentication algorithm names on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    /// HMAC-MD5 (RFC 2104), the default since RFC 3220.
    HmacMd5,
    /// RFC 2002 keyed MD5, prefix+suffix mode.
    KeyedMd5,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(a: AlgorithmArg) -> Self {
        match a {
            AlgorithmArg::HmacMd5 => Algorithm::HmacMd5,
            AlgorithmArg::KeyedMd5 => Algorithm::KeyedMd5PrefixSuffix,
        }
    }
}

/// Arguments of `mipctl decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Key (hex) to verify authentication extensions with; adds "valid" to the extensions it applies to.
    #[arg(long, value_name = "HEX", value_parser = parse_key)]
    pub key: Option<Key>,
    /// Apply --key only to this SPI (decimal or 0x-hex); without it the key applies to every SPI.
    #[arg(long, value_name = "N", value_parser = parse_u32, requires = "key")]
    pub spi: Option<u32>,
    /// Algorithm of --key.
    #[arg(long, value_enum, default_value_t = AlgorithmArg::HmacMd5, requires = "key")]
    pub algorithm: AlgorithmArg,
    /// Type of the HA Parameter extension (default 255).
    #[arg(long, value_name = "T", value_parser = parse_u8)]
    pub ha_param_type: Option<u8>,
    /// Sub-Type of the HA Parameter extension (default 1).
    #[arg(long, value_name = "S", value_parser = parse_u8)]
    pub ha_param_subtype: Option<u8>,
    /// Decode every UDP port-434 payload of this pcap or pcapng file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "input")]
    pub pcap: Option<PathBuf>,
    /// The UDP payload in hex (whitespace and a leading 0x ignored); "-" or absent reads standard input.
    #[arg(value_name = "HEX|-")]
    pub input: Option<String>,
}

/// An unsigned number in decimal or with a 0x prefix in hex.
fn parse_number(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse::<u64>(),
    };
    r.map_err(|e| format!("{s:?} is not a decimal or 0x-hex number: {e}"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    u32::try_from(parse_number(s)?).map_err(|_| format!("{s} does not fit 32 bits"))
}

fn parse_u8(s: &str) -> Result<u8, String> {
    u8::try_from(parse_number(s)?).map_err(|_| format!("{s} is not in 0..=255"))
}

fn parse_key(s: &str) -> Result<Key, String> {
    let mut bytes = parse_hex(s.as_bytes()).map_err(|e| e.to_string())?;
    if bytes.is_empty() {
        return Err("empty key".into());
    }
    let key = Key::new(&bytes);
    bytes.fill(0);
    Ok(key)
}

/// Why hex input was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HexError {
    /// A character that is neither a hex digit nor whitespace, at a 0-based character position.
    BadChar {
        /// The character (U+FFFD for bytes that are not UTF-8).
        ch: char,
        /// 0-based character position in the input.
        position: usize,
    },
    /// An odd number of digits; `position` is that of the last digit.
    OddDigits {
        /// How many digits.
        digits: usize,
        /// 0-based character position of the last digit.
        position: usize,
    },
}

impl std::fmt::Display for HexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HexError::BadChar { ch, position } => {
                write!(
                    f,
                    "invalid hex character {ch:?} at character position {position} (0-based)"
                )
            }
            HexError::OddDigits { digits, position } => write!(
                f,
                "odd number of hex digits ({digits}): the last digit, at character position {position} (0-based), \
                 has no partner"
            ),
        }
    }
}

impl std::error::Error for HexError {}

/// Parses hex text: whitespace anywhere and one leading `0x`/`0X` are ignored.
pub fn parse_hex(input: &[u8]) -> Result<Vec<u8>, HexError> {
    let text = String::from_utf8_lossy(input);
    let mut chars = text.chars().enumerate().peekable();
    while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    let mut prefix = chars.clone();
    if matches!(prefix.next(), Some((_, '0'))) && matches!(prefix.next(), Some((_, 'x' | 'X'))) {
        chars = prefix;
    }
    let mut out = Vec::with_capacity(input.len() / 2);
    let mut high: Option<(usize, u32)> = None;
    let mut digits = 0;
    for (position, ch) in chars {
        if ch.is_whitespace() {
            continue;
        }
        let Some(d) = ch.to_digit(16) else {
            return Err(HexError::BadChar { ch, position });
        };
        digits += 1;
        match high.take() {
            None => high = Some((position, d)),
            Some((_, h)) => out.push((h * 16 + d) as u8),
        }
    }
    match high {
        Some((position, _)) => Err(HexError::OddDigits { digits, position }),
        None => Ok(out),
    }
}

/// Runs a parsed command line with the process's standard streams; returns the exit status.
pub fn run(cli: Cli) -> u8 {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let stderr = io::stderr();
    let mut err = stderr.lock();
    let code = run_with(cli, &mut io::stdin().lock(), &mut out, &mut err);
    match out.flush() {
        Ok(()) => code,
        Err(e) => {
            let _ignored = writeln!(err, "error: writing output: {e}");
            code.max(EXIT_MALFORMED)
        }
    }
}

/// Runs a parsed command line against the given streams; returns the exit status.
pub fn run_with(cli: Cli, stdin: &mut dyn Read, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let result = match cli.command {
        Command::Decode(args) => decode(args, stdin, out),
        Command::Register(args) => register(&args, out),
        Command::Status(args) => status(&args, out),
        Command::Bindings(args) => {
            crate::register::admin_get(args.admin, "/bindings", std::time::Duration::from_secs(5))
                .map_err(Failure::unreachable)
                .and_then(|body| {
                    writeln!(out, "{}", body.trim_end())
                        .map_err(|e| Failure::output(&e))
                        .map(|()| EXIT_OK)
                })
        }
    };
    match result {
        Ok(code) => code,
        Err(Failure { code, message }) => {
            // If stderr itself is gone there is nobody left to tell.
            let _ignored = writeln!(err, "error: {message}");
            code
        }
    }
}

/// A failure to report on one stderr line, with its exit status.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    fn malformed(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_MALFORMED,
            message: message.into(),
        }
    }
    fn output(e: &io::Error) -> Self {
        Failure::malformed(format!("writing output: {e}"))
    }
    fn unreachable(message: String) -> Self {
        Failure {
            code: EXIT_UNREACHABLE,
            message,
        }
    }
}

/// `mipctl status`: exit 0 when every daemon answered, 3 otherwise (the others are shown all the same).
fn status(args: &StatusArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    use crate::status::{fetch, json_line, render};
    let timeout = std::time::Duration::from_secs(args.timeout.max(1));
    let mut code = EXIT_OK;
    let mut text = String::new();
    for (i, admin) in args.admin.iter().enumerate() {
        let result = fetch(*admin, timeout);
        if result.is_err() {
            code = EXIT_UNREACHABLE;
        }
        if args.json {
            writeln!(out, "{}", json_line(*admin, &result)).map_err(|e| Failure::output(&e))?;
        } else {
            text.clear();
            if i > 0 {
                text.push('\n');
            }
            render(*admin, &result, &mut text);
            out.write_all(text.as_bytes()).map_err(|e| Failure::output(&e))?;
        }
    }
    Ok(code)
}

/// `mipctl register`: exit 0 when accepted, 1 when denied, 3 when no reply came.
fn register(args: &RegisterArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    use crate::register::{RegisterOptions, RegisterResult, load_node, register};
    let (config, keys) = load_node(&args.config, args.keys.as_deref()).map_err(Failure::usage)?;
    let opts = RegisterOptions {
        config,
        care_of: args.care_of,
        lifetime: args.lifetime,
        timeout: std::time::Duration::from_secs(args.timeout),
        deregister: args.deregister,
    };
    let (report, code) = match register(&opts, keys).map_err(Failure::unreachable)? {
        RegisterResult::Accepted(v) => (v, EXIT_OK),
        RegisterResult::Denied(v) => (v, EXIT_MALFORMED),
        RegisterResult::Timeout => {
            return Err(Failure::unreachable(format!(
                "no authenticated reply within {} s",
                args.timeout
            )));
        }
    };
    writeln!(out, "{report}").map_err(|e| Failure::output(&e))?;
    Ok(code)
}

fn decode(args: DecodeArgs, stdin: &mut dyn Read, out: &mut dyn Write) -> Result<u8, Failure> {
    let dialect = match (args.ha_param_type, args.ha_param_subtype) {
        (None, None) => Dialect::default(),
        (t, s) => {
            let d = Dialect::default();
            Dialect::new(t.unwrap_or(d.ha_parameter_type), s.unwrap_or(d.ha_parameter_subtype))
                .map_err(|e| Failure::usage(format!("--ha-param-type/--ha-param-subtype: {e}")))?
        }
    };
    let mut keys = Keys::new();
    if let Some(key) = args.key {
        keys.push(args.spi, key, args.algorithm.into());
    }
    if let Some(path) = args.pcap {
        return decode_pcap(&path, &dialect, &keys, out);
    }
    let text = match args.input.as_deref() {
        Some("-") | None => {
            let mut buf = Vec::new();
            stdin
                .read_to_end(&mut buf)
                .map_err(|e| Failure::usage(format!("reading standard input: {e}")))?;
            buf
        }
        Some(s) => s.as_bytes().to_vec(),
    };
    let bytes = parse_hex(&text).map_err(|e| Failure::usage(e.to_string()))?;
    let msg = Message::parse(&bytes, &dialect).map_err(|e| Failure::malformed(e.to_string()))?;
    writeln!(out, "{}", message_json(&msg, &keys)).map_err(|e| Failure::output(&e))?;
    Ok(EXIT_OK)
}

fn decode_pcap(path: &Path, dialect: &Dialect, keys: &Keys, out: &mut dyn Write) -> Result<u8, Failure> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| Failure::usage(format!("{name}: cannot open: {e}")))?;
    let mut reader = PcapReader::new(io::BufReader::new(file)).map_err(|e| Failure::usage(format!("{name}: {e}")))?;
    let mut code = EXIT_OK;
    loop {
        let frame = match reader.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(Failure::usage(format!("{name}: {e}"))),
        };
        let line = match frame_json(&frame, dialect, keys) {
            FrameLine::Ignored => continue,
            FrameLine::Line(v) => v,
            FrameLine::Malformed(v) => {
                code = EXIT_MALFORMED;
                v
            }
        };
        writeln!(out, "{line}").map_err(|e| Failure::output(&e))?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing() {
        assert_eq!(parse_hex(b"  0x01 2 3\n\tff "), Ok(vec![0x01, 0x23, 0xff]));
        assert_eq!(parse_hex(b"0X0a"), Ok(vec![0x0a]));
        assert_eq!(parse_hex(b""), Ok(vec![]));
        assert_eq!(parse_hex(b"0x"), Ok(vec![]));
        assert_eq!(parse_hex(b"01zz"), Err(HexError::BadChar { ch: 'z', position: 2 }));
        // A 0x in the middle is not a prefix.
        assert_eq!(parse_hex(b"010x"), Err(HexError::BadChar { ch: 'x', position: 3 }));
        assert_eq!(
            parse_hex("é0".as_bytes()),
            Err(HexError::BadChar { ch: 'é', position: 0 })
        );
        assert_eq!(
            parse_hex(b"\xff"),
            Err(HexError::BadChar {
                ch: '\u{fffd}',
                position: 0
            })
        );
        assert_eq!(parse_hex(b"012"), Err(HexError::OddDigits { digits: 3, position: 2 }));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32("256"), Ok(256));
        assert_eq!(parse_u32("0x100"), Ok(256));
        assert!(parse_u32("0x1_0000_0000").is_err());
        assert!(parse_u32("0x100000000").is_err());
        assert!(parse_u8("256").is_err());
        assert!(parse_key("zz").is_err());
        assert!(parse_key("").is_err());
    }

    fn run_args(args: &[&str], stdin: &[u8]) -> (u8, String, String) {
        let cli = Cli::try_parse_from(std::iter::once("mipctl").chain(args.iter().copied())).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(cli, &mut &stdin[..], &mut out, &mut err);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn decode_from_stdin_and_errors() {
        let v1 = "012202580a0a0132c633640ac000024dec4e5a0012345678201400000100869d33adee786a3be9b795c8cafb1d71";
        let (code, out, err) = run_args(&["decode", "--key", "000102030405060708090a0b0c0d0e0f"], v1.as_bytes());
        assert_eq!((code, err.as_str()), (0, ""));
        assert!(out.contains("\"valid\":true"), "{out}");
        let (code, _, err) = run_args(&["decode", "01zz"], b"");
        assert_eq!(code, EXIT_USAGE);
        assert!(
            err.starts_with("error: invalid hex character 'z' at character position 2"),
            "{err}"
        );
        let (code, _, err) = run_args(&["decode", "--ha-param-type", "32"], v1.as_bytes());
        assert_eq!(code, EXIT_USAGE, "{err}");
        let (code, _, err) = run_args(&["decode", "0300"], b"");
        assert_eq!(code, EXIT_MALFORMED);
        assert_eq!(err, "error: truncated at byte offset 2\n");
    }

    /// `--admin` repeats or takes a list; a daemon that does not answer is reported (text and JSON) with exit
    /// status 3, after the others.
    #[test]
    fn status_of_unreachable_daemons() {
        let cli = Cli::try_parse_from([
            "mipctl",
            "status",
            "--admin",
            "127.0.0.1:1,127.0.0.1:2",
            "--admin",
            "127.0.0.1:3",
        ])
        .unwrap();
        let Command::Status(a) = &cli.command else {
            panic!("status")
        };
        assert_eq!(a.admin.len(), 3);
        let cli = Cli::try_parse_from(["mipctl", "status"]).unwrap();
        let Command::Status(a) = &cli.command else {
            panic!("status")
        };
        assert_eq!(
            a.admin,
            vec!["127.0.0.1:9434".parse().unwrap()],
            "the daemons' default admin address"
        );
        // Port 1 on loopback: nothing listens there.
        let (code, out, err) = run_args(&["status", "--admin", "127.0.0.1:1", "--timeout", "1"], b"");
        assert_eq!((code, err.as_str()), (EXIT_UNREACHABLE, ""));
        assert!(
            out.starts_with("127.0.0.1:1: unreachable: connect 127.0.0.1:1: "),
            "{out}"
        );
        let (code, out, _) = run_args(&["status", "--json", "--admin", "127.0.0.1:1,127.0.0.1:1"], b"");
        assert_eq!(code, EXIT_UNREACHABLE);
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["admin"], "127.0.0.1:1");
        assert!(lines[0]["error"].as_str().unwrap().contains("connect"), "{out}");
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        assert!(Cli::try_parse_from(["mipctl", "decode", "--spi", "256", "00"]).is_err());
        assert!(Cli::try_parse_from(["mipctl", "decode", "--pcap", "x", "00"]).is_err());
        assert!(Cli::try_parse_from(["mipctl", "decode", "--key", "00", "--algorithm", "sha1"]).is_err());
    }
}
