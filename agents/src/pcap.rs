//! Capture files: a bounded, panic-free reader for classic pcap and pcapng, the link layers Mobile IP
//! captures use, and a tiny classic-pcap writer for tests and cross-checks.
//!
//! Reader: classic pcap in both byte orders with microsecond (`a1b2c3d4`) or nanosecond (`a1b23c4d`)
//! timestamps; pcapng sections of either byte order with Section Header, Interface Description, Enhanced
//! Packet, Simple Packet and (obsolete) Packet blocks; every other block is skipped without being buffered. A
//! packet record or parsed block longer than [`MAX_RECORD`] is an error, so no input makes the reader allocate
//! more than that at once; a file that ends inside a record is an error naming the byte offset.
//!
//! Link layers ([`ipv4_packet`]): Ethernet (with 802.1Q/802.1ad tags), raw IP (101) and raw IPv4 (228), Linux
//! cooked SLL (113) and SLL2 (276), BSD NULL (0) and LOOP (108).

use core::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::SocketAddrV4;
use std::path::Path;

use mip::wire::ipv4::{Ipv4Repr, protocol};
use mip::wire::udp::UdpRepr;

/// Largest packet record (classic) or parsed block (pcapng) the reader accepts: 256 KiB.
pub const MAX_RECORD: usize = 256 * 1024;
/// Most interfaces one pcapng section may describe.
pub const MAX_INTERFACES: usize = 4096;

/// Link-layer header types (tcpdump.org LINKTYPE_* values).
pub mod linktype {
    /// BSD loopback: 4-byte address family in the capturing host's byte order.
    pub const NULL: u32 = 0;
    /// Ethernet.
    pub const ETHERNET: u32 = 1;
    /// Raw IP (v4 or v6, by the version nibble).
    pub const RAW: u32 = 101;
    /// OpenBSD loopback: 4-byte address family, big-endian.
    pub const LOOP: u32 = 108;
    /// Linux cooked capture v1.
    pub const LINUX_SLL: u32 = 113;
    /// Raw IPv4.
    pub const IPV4: u32 = 228;
    /// Linux cooked capture v2.
    pub const LINUX_SLL2: u32 = 276;
}

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const CLASSIC_HEADER_LEN: usize = 24;
const CLASSIC_RECORD_HEADER_LEN: usize = 16;

const BLOCK_SHB: u32 = 0x0a0d_0d0a;
const BLOCK_IDB: u32 = 1;
const BLOCK_PB: u32 = 2;
const BLOCK_SPB: u32 = 3;
const BLOCK_EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const OPT_END: u16 = 0;
const OPT_IF_TSRESOL: u16 = 9;

// === errors ===

/// What is wrong with a capture file.
#[derive(Debug)]
pub enum PcapErrorKind {
    /// Reading failed.
    Io(io::Error),
    /// The file is empty.
    Empty,
    /// The first four bytes are neither a pcap nor a pcapng magic number.
    UnknownMagic(u32),
    /// The file ends inside the named structure.
    Truncated(&'static str),
    /// A pcapng Section Header's byte-order magic is neither 1a2b3c4d nor 4d3c2b1a.
    BadByteOrderMagic(u32),
    /// A pcapng section of a major version other than 1.
    UnsupportedVersion(u16),
    /// A packet record or block is longer than [`MAX_RECORD`].
    TooLarge(u64),
    /// A pcapng block length that is not a multiple of 4 or too short for its block type.
    BadBlockLength(u32),
    /// A pcapng block's trailing length differs from its leading one (leading, trailing).
    LengthMismatch(u32, u32),
    /// A packet's captured length runs past the end of its block.
    CapturedLengthTooLong(u32),
    /// A packet refers to an interface no Interface Description Block declared.
    UndefinedInterface(u32),
    /// More than [`MAX_INTERFACES`] interfaces in one section.
    TooManyInterfaces,
}

impl fmt::Display for PcapErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcapErrorKind::Io(e) => write!(f, "read error: {e}"),
            PcapErrorKind::Empty => f.write_str("empty file"),
            PcapErrorKind::UnknownMagic(m) => write!(f, "not a pcap or pcapng file (magic {m:#010x})"),
            PcapErrorKind::Truncated(what) => write!(f, "file ends inside {what}"),
            PcapErrorKind::BadByteOrderMagic(m) => write!(f, "bad pcapng byte-order magic {m:#010x}"),
            PcapErrorKind::UnsupportedVersion(v) => write!(f, "unsupported pcapng major version {v}"),
            PcapErrorKind::TooLarge(n) => write!(f, "record of {n} bytes exceeds the {MAX_RECORD}-byte limit"),
            PcapErrorKind::BadBlockLength(n) => write!(f, "invalid pcapng block length {n}"),
            PcapErrorKind::LengthMismatch(a, b) => {
                write!(f, "pcapng block trailing length {b} differs from leading length {a}")
            }
            PcapErrorKind::CapturedLengthTooLong(n) => write!(f, "captured length {n} runs past the end of the block"),
            PcapErrorKind::UndefinedInterface(i) => write!(f, "packet refers to undefined interface {i}"),
            PcapErrorKind::TooManyInterfaces => write!(f, "more than {MAX_INTERFACES} interfaces in one section"),
        }
    }
}

/// A capture-file failure and the byte offset in the file where it was found.
#[derive(Debug)]
pub struct PcapError {
    /// What is wrong.
    pub kind: PcapErrorKind,
    /// Byte offset in the file.
    pub offset: u64,
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte offset {}", self.kind, self.offset)
    }
}

impl std::error::Error for PcapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            PcapErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

fn err<T>(kind: PcapErrorKind, offset: u64) -> Result<T, PcapError> {
    Err(PcapError { kind, offset })
}

// === byte order ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let v = match b.get(at..at.saturating_add(2)) {
            Some(&[x, y]) => [x, y],
            _ => [0; 2],
        };
        match self {
            Endian::Little => u16::from_le_bytes(v),
            Endian::Big => u16::from_be_bytes(v),
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let v = match b.get(at..at.saturating_add(4)) {
            Some(&[w, x, y, z]) => [w, x, y, z],
            _ => [0; 4],
        };
        match self {
            Endian::Little => u32::from_le_bytes(v),
            Endian::Big => u32::from_be_bytes(v),
        }
    }
}

// === reader ===

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// 1-based position among the packets of the file (as Wireshark numbers frames).
    pub number: u64,
    /// Byte offset in the file of the record or block that holds the packet.
    pub file_offset: u64,
    /// Link-layer header type.
    pub linktype: u32,
    /// Capture time, nanoseconds since the Unix epoch (saturating; 0 when the format carries none).
    pub timestamp_ns: u64,
    /// Length of the packet on the wire (may exceed `data.len()` when the capture was truncated).
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// Timestamp resolution of a pcapng interface (`if_tsresol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TsResol(u8);

impl TsResol {
    /// Converts a timestamp in this resolution's units to nanoseconds, saturating.
    fn to_ns(self, ts: u64) -> u64 {
        let exp = u32::from(self.0 & 0x7f);
        if self.0 & 0x80 == 0 {
            if exp <= 9 {
                ts.saturating_mul(10u64.pow(9 - exp))
            } else {
                10u64.checked_pow(exp - 9).map_or(0, |d| ts / d)
            }
        } else {
            let ns = (u128::from(ts) * 1_000_000_000) >> exp;
            u64::try_from(ns).unwrap_or(u64::MAX)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: u32,
    snaplen: u32,
    tsresol: TsResol,
}

#[derive(Debug)]
enum Format {
    Classic { endian: Endian, nanos: bool, linktype: u32 },
    Ng { endian: Endian, interfaces: Vec<Interface> },
}

/// Which file format a reader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Classic libpcap.
    Pcap,
    /// pcapng.
    PcapNg,
}

/// How much of a requested buffer a read filled.
enum Fill {
    Full,
    Eof,
    Partial,
}

/// Reads packets from a pcap or pcapng stream, one at a time.
#[derive(Debug)]
pub struct PcapReader<R> {
    src: R,
    offset: u64,
    format: Format,
    frames: u64,
    done: bool,
}

impl PcapReader<io::BufReader<File>> {
    /// Opens a capture file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PcapError> {
        let f = File::open(path).map_err(|e| PcapError {
            kind: PcapErrorKind::Io(e),
            offset: 0,
        })?;
        PcapReader::new(io::BufReader::new(f))
    }
}

impl<R: Read> PcapReader<R> {
    /// Reads the file header (classic) or first Section Header Block (pcapng).
    pub fn new(mut src: R) -> Result<Self, PcapError> {
        let mut magic = [0u8; 4];
        match fill(&mut src, &mut magic, 0)? {
            Fill::Full => {}
            Fill::Eof => return err(PcapErrorKind::Empty, 0),
            Fill::Partial => return err(PcapErrorKind::Truncated("the file header"), 0),
        }
        let be = u32::from_be_bytes(magic);
        let le = u32::from_le_bytes(magic);
        let mut r = PcapReader {
            src,
            offset: 4,
            format: Format::Ng {
                endian: Endian::Little,
                interfaces: Vec::new(),
            },
            frames: 0,
            done: false,
        };
        let classic = |endian, nanos| Format::Classic {
            endian,
            nanos,
            linktype: 0,
        };
        r.format = match (be, le) {
            (MAGIC_MICROS, _) => classic(Endian::Big, false),
            (_, MAGIC_MICROS) => classic(Endian::Little, false),
            (MAGIC_NANOS, _) => classic(Endian::Big, true),
            (_, MAGIC_NANOS) => classic(Endian::Little, true),
            (BLOCK_SHB, _) => {
                r.read_section_header(0)?;
                return Ok(r);
            }
            _ => return err(PcapErrorKind::UnknownMagic(be), 0),
        };
        let mut rest = [0u8; CLASSIC_HEADER_LEN - 4];
        if !matches!(r.read(&mut rest)?, Fill::Full) {
            return err(PcapErrorKind::Truncated("the pcap file header"), 0);
        }
        if let Format::Classic { endian, linktype, .. } = &mut r.format {
            // The link type is the low 16 bits; the high bits carry FCS information.
            *linktype = endian.u32(&rest, 16) & 0xffff;
        }
        Ok(r)
    }

    /// The format of the file.
    pub fn file_format(&self) -> FileFormat {
        match self.format {
            Format::Classic { .. } => FileFormat::Pcap,
            Format::Ng { .. } => FileFormat::PcapNg,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next packet, `Ok(None)` at the end of the file. After an error, always `Ok(None)`.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, PcapError> {
        if self.done {
            return Ok(None);
        }
        let r = match self.format {
            Format::Classic { .. } => self.next_classic(),
            Format::Ng { .. } => self.next_ng(),
        };
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<Fill, PcapError> {
        let r = fill(&mut self.src, buf, self.offset)?;
        self.offset += buf.len() as u64;
        Ok(r)
    }

    fn read_vec(&mut self, len: usize, what: &'static str, at: u64) -> Result<Vec<u8>, PcapError> {
        let mut v = vec![0u8; len.min(MAX_RECORD)];
        match self.read(&mut v)? {
            Fill::Full => Ok(v),
            Fill::Eof | Fill::Partial => err(PcapErrorKind::Truncated(what), at),
        }
    }

    fn next_frame_number(&mut self) -> u64 {
        self.frames += 1;
        self.frames
    }

    fn next_classic(&mut self) -> Result<Option<Frame>, PcapError> {
        let Format::Classic {
            endian,
            nanos,
            linktype,
        } = self.format
        else {
            return Ok(None);
        };
        let start = self.offset;
        let mut h = [0u8; CLASSIC_RECORD_HEADER_LEN];
        match self.read(&mut h)? {
            Fill::Full => {}
            Fill::Eof => return Ok(None),
            Fill::Partial => return err(PcapErrorKind::Truncated("a packet record header"), start),
        }
        let (sec, frac, incl, orig) = (
            endian.u32(&h, 0),
            endian.u32(&h, 4),
            endian.u32(&h, 8),
            endian.u32(&h, 12),
        );
        if incl as usize > MAX_RECORD {
            return err(PcapErrorKind::TooLarge(u64::from(incl)), start + 8);
        }
        let data = self.read_vec(incl as usize, "packet data", start + CLASSIC_RECORD_HEADER_LEN as u64)?;
        let frac_ns = if nanos {
            u64::from(frac)
        } else {
            u64::from(frac).saturating_mul(1000)
        };
        Ok(Some(Frame {
            number: self.next_frame_number(),
            file_offset: start,
            linktype,
            timestamp_ns: u64::from(sec).saturating_mul(1_000_000_000).saturating_add(frac_ns),
            orig_len: orig,
            data,
        }))
    }

    /// Reads a Section Header Block whose type word (at `start`) has been consumed.
    fn read_section_header(&mut self, start: u64) -> Result<(), PcapError> {
        let mut h = [0u8; 8];
        if !matches!(self.read(&mut h)?, Fill::Full) {
            return err(PcapErrorKind::Truncated("a pcapng section header"), start);
        }
        let endian = match u32::from_be_bytes([h[4], h[5], h[6], h[7]]) {
            BYTE_ORDER_MAGIC => Endian::Big,
            m if m.swap_bytes() == BYTE_ORDER_MAGIC => Endian::Little,
            m => return err(PcapErrorKind::BadByteOrderMagic(m), start + 8),
        };
        let len = endian.u32(&h, 0);
        // Type, length, magic, version (4), section length (8), trailing length.
        if !len.is_multiple_of(4) || len < 28 {
            return err(PcapErrorKind::BadBlockLength(len), start + 4);
        }
        if len as usize > MAX_RECORD {
            return err(PcapErrorKind::TooLarge(u64::from(len)), start + 4);
        }
        let rest = self.read_vec(len as usize - 12, "a pcapng section header", start)?;
        let trailing = endian.u32(&rest, rest.len().saturating_sub(4));
        if trailing != len {
            return err(PcapErrorKind::LengthMismatch(len, trailing), start + u64::from(len) - 4);
        }
        let major = endian.u16(&rest, 0);
        if major != 1 {
            return err(PcapErrorKind::UnsupportedVersion(major), start + 12);
        }
        self.format = Format::Ng {
            endian,
            interfaces: Vec::new(),
        };
        Ok(())
    }

    fn next_ng(&mut self) -> Result<Option<Frame>, PcapError> {
        loop {
            let start = self.offset;
            let mut ty = [0u8; 4];
            match self.read(&mut ty)? {
                Fill::Full => {}
                Fill::Eof => return Ok(None),
                Fill::Partial => return err(PcapErrorKind::Truncated("a pcapng block header"), start),
            }
            if u32::from_be_bytes(ty) == BLOCK_SHB {
                self.read_section_header(start)?;
                continue;
            }
            let Format::Ng { endian, .. } = self.format else {
                return Ok(None);
            };
            let block_type = endian.u32(&ty, 0);
            let mut l = [0u8; 4];
            if !matches!(self.read(&mut l)?, Fill::Full) {
                return err(PcapErrorKind::Truncated("a pcapng block header"), start);
            }
            let len = endian.u32(&l, 0);
            if !len.is_multiple_of(4) || len < 12 {
                return err(PcapErrorKind::BadBlockLength(len), start + 4);
            }
            let parsed = matches!(block_type, BLOCK_IDB | BLOCK_PB | BLOCK_SPB | BLOCK_EPB);
            if !parsed {
                self.skip(u64::from(len) - 12, start)?;
                let mut t = [0u8; 4];
                if !matches!(self.read(&mut t)?, Fill::Full) {
                    return err(PcapErrorKind::Truncated("a pcapng block"), start);
                }
                check_trailing(len, endian.u32(&t, 0), start)?;
                continue;
            }
            if len as usize > MAX_RECORD {
                return err(PcapErrorKind::TooLarge(u64::from(len)), start + 4);
            }
            let rest = self.read_vec(len as usize - 8, "a pcapng block", start)?;
            let (body, trailer) = rest.split_at(rest.len().saturating_sub(4));
            check_trailing(len, endian.u32(trailer, 0), start)?;
            let body_at = start + 8;
            if let Some(frame) = self.ng_block(block_type, body, body_at, start, endian)? {
                return Ok(Some(frame));
            }
        }
    }

    /// Interprets an IDB or packet block body; returns a frame for packet blocks.
    fn ng_block(
        &mut self,
        block_type: u32,
        body: &[u8],
        body_at: u64,
        start: u64,
        endian: Endian,
    ) -> Result<Option<Frame>, PcapError> {
        let Format::Ng { interfaces, .. } = &mut self.format else {
            return Ok(None);
        };
        let too_short = || err(PcapErrorKind::BadBlockLength(body.len() as u32 + 12), start + 4);
        // (interface, timestamp, captured length, original length, offset of the data in `body`)
        let (iface, ts, caplen, orig, data_at) = match block_type {
            BLOCK_IDB => {
                if body.len() < 8 {
                    return too_short();
                }
                if interfaces.len() >= MAX_INTERFACES {
                    return err(PcapErrorKind::TooManyInterfaces, start);
                }
                interfaces.push(Interface {
                    linktype: u32::from(endian.u16(body, 0)),
                    snaplen: endian.u32(body, 4),
                    tsresol: idb_tsresol(body.get(8..).unwrap_or(&[]), endian),
                });
                return Ok(None);
            }
            BLOCK_EPB => {
                if body.len() < 20 {
                    return too_short();
                }
                let ts = (u64::from(endian.u32(body, 4)) << 32) | u64::from(endian.u32(body, 8));
                (endian.u32(body, 0), ts, endian.u32(body, 12), endian.u32(body, 16), 20)
            }
            BLOCK_PB => {
                if body.len() < 20 {
                    return too_short();
                }
                let ts = (u64::from(endian.u32(body, 4)) << 32) | u64::from(endian.u32(body, 8));
                (
                    u32::from(endian.u16(body, 0)),
                    ts,
                    endian.u32(body, 12),
                    endian.u32(body, 16),
                    20,
                )
            }
            BLOCK_SPB => {
                if body.len() < 4 {
                    return too_short();
                }
                let orig = endian.u32(body, 0);
                let room = u32::try_from(body.len() - 4).unwrap_or(u32::MAX);
                let snap = interfaces.first().map_or(0, |i| i.snaplen);
                let cap = if snap == 0 {
                    orig.min(room)
                } else {
                    orig.min(room).min(snap)
                };
                (0, 0, cap, orig, 4)
            }
            _ => return Ok(None),
        };
        let Some(info) = interfaces.get(iface as usize).copied() else {
            return err(PcapErrorKind::UndefinedInterface(iface), body_at);
        };
        let data = match body.get(data_at..).and_then(|d| d.get(..caplen as usize)) {
            Some(d) => d.to_vec(),
            None => return err(PcapErrorKind::CapturedLengthTooLong(caplen), body_at + 12),
        };
        Ok(Some(Frame {
            number: self.next_frame_number(),
            file_offset: start,
            linktype: info.linktype,
            timestamp_ns: info.tsresol.to_ns(ts),
            orig_len: orig,
            data,
        }))
    }

    fn skip(&mut self, n: u64, start: u64) -> Result<(), PcapError> {
        let copied = io::copy(&mut (&mut self.src).take(n), &mut io::sink()).map_err(|e| PcapError {
            kind: PcapErrorKind::Io(e),
            offset: self.offset,
        })?;
        self.offset += copied;
        if copied < n {
            return err(PcapErrorKind::Truncated("a pcapng block"), start);
        }
        Ok(())
    }
}

impl<R: Read> Iterator for PcapReader<R> {
    type Item = Result<Frame, PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

fn check_trailing(len: u32, trailing: u32, start: u64) -> Result<(), PcapError> {
    if trailing == len {
        Ok(())
    } else {
        err(PcapErrorKind::LengthMismatch(len, trailing), start + u64::from(len) - 4)
    }
}

/// The `if_tsresol` option of an IDB's options, default 10^-6. Malformed options end the scan.
fn idb_tsresol(mut opts: &[u8], endian: Endian) -> TsResol {
    while opts.len() >= 4 {
        let (code, len) = (endian.u16(opts, 0), usize::from(endian.u16(opts, 2)));
        if code == OPT_END {
            break;
        }
        let value = opts.get(4..4 + len);
        if code == OPT_IF_TSRESOL
            && let Some(&[v]) = value
        {
            return TsResol(v);
        }
        let padded = 4 + len.div_ceil(4) * 4;
        opts = opts.get(padded..).unwrap_or(&[]);
    }
    TsResol(6)
}

/// Reads until `buf` is full or the stream ends.
fn fill<R: Read>(src: &mut R, buf: &mut [u8], offset: u64) -> Result<Fill, PcapError> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(buf.get_mut(got..).unwrap_or(&mut [])) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return err(PcapErrorKind::Io(e), offset + got as u64);
            }
        }
    }
    Ok(if got == buf.len() {
        Fill::Full
    } else if got == 0 {
        Fill::Eof
    } else {
        Fill::Partial
    })
}

// === link layers ===

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const AF_INET: u32 = 2;
const MAX_VLAN_TAGS: usize = 8;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    match b.get(at..at.checked_add(2)?) {
        Some(&[x, y]) => Some(u16::from_be_bytes([x, y])),
        _ => None,
    }
}

/// Follows VLAN tags from an EtherType and the bytes after it to an IPv4 packet.
fn ethertype_ipv4(mut ethertype: u16, mut rest: &[u8]) -> Option<&[u8]> {
    for _ in 0..MAX_VLAN_TAGS {
        if !ETHERTYPE_VLAN.contains(&ethertype) {
            break;
        }
        ethertype = be16(rest, 2)?;
        rest = rest.get(4..)?;
    }
    (ethertype == ETHERTYPE_IPV4).then_some(rest)
}

/// The IPv4 packet inside a captured frame, or `None` for other network layers and unknown link types. The
/// slice may extend past the IPv4 Total Length (Ethernet padding).
pub fn ipv4_packet(linktype: u32, frame: &[u8]) -> Option<&[u8]> {
    match linktype {
        linktype::ETHERNET => ethertype_ipv4(be16(frame, 12)?, frame.get(14..)?),
        linktype::RAW | linktype::IPV4 => (frame.first()? >> 4 == 4).then_some(frame),
        linktype::LINUX_SLL => ethertype_ipv4(be16(frame, 14)?, frame.get(16..)?),
        linktype::LINUX_SLL2 => ethertype_ipv4(be16(frame, 0)?, frame.get(20..)?),
        linktype::NULL | linktype::LOOP => {
            let fam = match frame.get(..4)? {
                &[a, b, c, d] => [a, b, c, d],
                _ => return None,
            };
            let is_inet = u32::from_be_bytes(fam) == AF_INET
                || (linktype == linktype::NULL && u32::from_le_bytes(fam) == AF_INET);
            is_inet.then(|| frame.get(4..)).flatten()
        }
        _ => None,
    }
}

// === writer ===

/// Builds an IPv4 + UDP packet (TTL 64, no options) around `payload` with correct IP and UDP checksums.
/// Fails when the packet would exceed 65535 bytes.
pub fn try_ipv4_udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Result<Vec<u8>, mip::wire::Error> {
    const IP: usize = mip::wire::ipv4::HEADER_LEN;
    const UDP: usize = mip::wire::udp::HEADER_LEN;
    let mut buf = vec![0u8; IP + UDP + payload.len()];
    let (ip, udp) = buf
        .split_at_mut_checked(IP)
        .ok_or(mip::wire::Error::new(mip::wire::ErrorKind::BufferTooSmall, 0))?;
    if let Some(p) = udp.get_mut(UDP..) {
        p.copy_from_slice(payload);
    }
    UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    }
    .emit(udp, payload.len(), *src.ip(), *dst.ip())
    .map_err(|e| e.shifted(IP))?;
    Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        protocol: protocol::UDP,
        payload_len: UDP + payload.len(),
        ttl: 64,
        tos: 0,
        ident: 0,
        dont_frag: false,
    }
    .emit(ip)?;
    Ok(buf)
}

/// [`try_ipv4_udp_packet`] for payloads that fit (at most 65507 bytes); a longer payload is cut to fit.
pub fn ipv4_udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    const MAX_PAYLOAD: usize = 65535 - mip::wire::ipv4::HEADER_LEN - mip::wire::udp::HEADER_LEN;
    let payload = payload.get(..MAX_PAYLOAD).unwrap_or(payload);
    try_ipv4_udp_packet(src, dst, payload).unwrap_or_default()
}

/// Writes a classic little-endian microsecond pcap of raw IPv4 packets (LINKTYPE_RAW, 101) to `path`; each
/// entry is (timestamp in microseconds since the Unix epoch, IPv4 packet).
pub fn write_pcap(path: impl AsRef<Path>, packets: &[(u64, &[u8])]) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    write_pcap_to(&mut w, linktype::RAW, packets)?;
    w.flush()
}

/// Writes a classic little-endian microsecond pcap with the given link type to `w`.
pub fn write_pcap_to<W: Write>(mut w: W, linktype: u32, packets: &[(u64, &[u8])]) -> io::Result<()> {
    let snaplen = MAX_RECORD as u32;
    let mut h = Vec::with_capacity(CLASSIC_HEADER_LEN);
    h.extend_from_slice(&MAGIC_MICROS.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&snaplen.to_le_bytes());
    h.extend_from_slice(&linktype.to_le_bytes());
    w.write_all(&h)?;
    for (ts_us, data) in packets {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|&l| l <= snaplen)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "packet longer than the pcap snaplen"))?;
        let sec = u32::try_from(ts_us / 1_000_000).unwrap_or(u32::MAX);
        let usec = (ts_us % 1_000_000) as u32;
        let mut r = [0u8; CLASSIC_RECORD_HEADER_LEN];
        for (chunk, v) in r.chunks_exact_mut(4).zip([sec, usec, len, len]) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        w.write_all(&r)?;
        w.write_all(data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sock(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), port)
    }

    fn packets() -> Vec<Vec<u8>> {
        vec![
            ipv4_udp_packet(
                sock([192, 0, 2, 77], 40001),
                sock([198, 51, 100, 10], 434),
                b"\x01\x02\x03",
            ),
            ipv4_udp_packet(
                sock([198, 51, 100, 10], 434),
                sock([192, 0, 2, 77], 40001),
                b"hello world",
            ),
        ]
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Frame>, PcapError> {
        PcapReader::new(bytes)?.collect()
    }

    fn classic(endian: Endian, nanos: bool, linktype: u32, pkts: &[Vec<u8>]) -> Vec<u8> {
        let w32 = |v: u32| match endian {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        let w16 = |v: u16| match endian {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        let mut f = Vec::new();
        f.extend_from_slice(&w32(if nanos { MAGIC_NANOS } else { MAGIC_MICROS }));
        f.extend_from_slice(&w16(2));
        f.extend_from_slice(&w16(4));
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&w32(65535));
        f.extend_from_slice(&w32(linktype));
        for (i, p) in pkts.iter().enumerate() {
            f.extend_from_slice(&w32(1000 + i as u32));
            f.extend_from_slice(&w32(5));
            f.extend_from_slice(&w32(p.len() as u32));
            f.extend_from_slice(&w32(p.len() as u32));
            f.extend_from_slice(p);
        }
        f
    }

    /// A pcapng builder for tests.
    struct Ng {
        endian: Endian,
        out: Vec<u8>,
    }

    impl Ng {
        fn new(endian: Endian) -> Self {
            let mut n = Ng {
                endian,
                out: Vec::new(),
            };
            n.shb();
            n
        }
        fn w32(&self, v: u32) -> [u8; 4] {
            match self.endian {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            }
        }
        fn w16(&self, v: u16) -> [u8; 2] {
            match self.endian {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            }
        }
        fn block(&mut self, ty: u32, body: &[u8]) {
            let mut b = body.to_vec();
            while !b.len().is_multiple_of(4) {
                b.push(0);
            }
            let len = b.len() as u32 + 12;
            let (t, l) = (self.w32(ty), self.w32(len));
            self.out.extend_from_slice(&t);
            self.out.extend_from_slice(&l);
            self.out.extend_from_slice(&b);
            self.out.extend_from_slice(&l);
        }
        fn shb(&mut self) {
            let mut b = self.w32(BYTE_ORDER_MAGIC).to_vec();
            b.extend_from_slice(&self.w16(1));
            b.extend_from_slice(&self.w16(0));
            b.extend_from_slice(&[0xff; 8]);
            self.block(BLOCK_SHB, &b);
        }
        fn idb(&mut self, linktype: u16, tsresol: Option<u8>) {
            let mut b = self.w16(linktype).to_vec();
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&self.w32(0));
            if let Some(r) = tsresol {
                b.extend_from_slice(&self.w16(OPT_IF_TSRESOL));
                b.extend_from_slice(&self.w16(1));
                b.extend_from_slice(&[r, 0, 0, 0]);
                b.extend_from_slice(&[0, 0, 0, 0]);
            }
            self.block(BLOCK_IDB, &b);
        }
        fn epb(&mut self, iface: u32, ts: u64, data: &[u8]) {
            let mut b = self.w32(iface).to_vec();
            b.extend_from_slice(&self.w32((ts >> 32) as u32));
            b.extend_from_slice(&self.w32(ts as u32));
            b.extend_from_slice(&self.w32(data.len() as u32));
            b.extend_from_slice(&self.w32(data.len() as u32));
            b.extend_from_slice(data);
            self.block(BLOCK_EPB, &b);
        }
        fn spb(&mut self, data: &[u8]) {
            let mut b = self.w32(data.len() as u32).to_vec();
            b.extend_from_slice(data);
            self.block(BLOCK_SPB, &b);
        }
    }

    #[test]
    fn writer_round_trip() {
        let pkts = packets();
        let mut out = Vec::new();
        let refs: Vec<(u64, &[u8])> = pkts
            .iter()
            .enumerate()
            .map(|(i, p)| (1_500_000 + i as u64, &p[..]))
            .collect();
        write_pcap_to(&mut out, linktype::RAW, &refs).unwrap();
        let r = PcapReader::new(&out[..]).unwrap();
        assert_eq!(r.file_format(), FileFormat::Pcap);
        let frames: Vec<Frame> = r.collect::<Result<_, _>>().unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].number, 1);
        assert_eq!(frames[1].number, 2);
        assert_eq!(frames[0].timestamp_ns, 1_500_000_000);
        assert_eq!(frames[1].timestamp_ns, 1_500_001_000);
        assert_eq!(frames[0].data, pkts[0]);
        assert_eq!(frames[0].linktype, 101);
        assert_eq!(ipv4_packet(frames[0].linktype, &frames[0].data), Some(&pkts[0][..]));
    }

    #[test]
    fn built_packet_checksums_verify() {
        let p = &packets()[0];
        let ip = mip::wire::ipv4::Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = mip::wire::udp::UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.checksum() != 0);
        assert!(udp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        assert_eq!((udp.src_port(), udp.dst_port()), (40001, 434));
        assert_eq!(udp.payload(), b"\x01\x02\x03");
        // Oversized payloads are refused by the fallible builder.
        assert!(try_ipv4_udp_packet(sock([1, 1, 1, 1], 1), sock([2, 2, 2, 2], 2), &vec![0; 70000]).is_err());
        assert_eq!(
            ipv4_udp_packet(sock([1, 1, 1, 1], 1), sock([2, 2, 2, 2], 2), &vec![0; 70000]).len(),
            65535
        );
    }

    #[test]
    fn classic_all_variants() {
        let pkts = packets();
        for endian in [Endian::Little, Endian::Big] {
            for nanos in [false, true] {
                let f = classic(endian, nanos, linktype::IPV4, &pkts);
                let frames = read_all(&f).unwrap();
                assert_eq!(frames.len(), 2, "{endian:?} nanos={nanos}");
                assert_eq!(frames[1].data, pkts[1]);
                assert_eq!(frames[0].linktype, linktype::IPV4);
                let want = 1000 * 1_000_000_000 + if nanos { 5 } else { 5000 };
                assert_eq!(frames[0].timestamp_ns, want);
            }
        }
    }

    #[test]
    fn classic_linktype_fcs_bits_masked() {
        let f = classic(Endian::Little, false, 0x1000_0000 | linktype::ETHERNET, &[]);
        let r = PcapReader::new(&f[..]).unwrap();
        assert!(matches!(r.format, Format::Classic { linktype: 1, .. }));
    }

    #[test]
    fn pcapng_both_endiannesses() {
        let pkts = packets();
        for endian in [Endian::Little, Endian::Big] {
            let mut n = Ng::new(endian);
            n.idb(linktype::RAW as u16, None);
            n.idb(linktype::ETHERNET as u16, Some(9));
            n.block(0x0000_0005, &[1, 2, 3, 4, 5, 6, 7, 8]); // ISB: skipped
            n.block(0x4000_0bad, &[9; 40]); // unknown: skipped
            n.epb(0, 1_000_000, &pkts[0]);
            let mut eth = vec![0u8; 12];
            eth.extend_from_slice(&[0x81, 0x00, 0x00, 0x05, 0x08, 0x00]);
            eth.extend_from_slice(&pkts[1]);
            eth.extend_from_slice(&[0; 6]); // Ethernet padding
            n.epb(1, 7, &eth);
            n.spb(&pkts[0]);
            let r = PcapReader::new(&n.out[..]).unwrap();
            assert_eq!(r.file_format(), FileFormat::PcapNg);
            let frames: Vec<Frame> = r.collect::<Result<_, _>>().unwrap();
            assert_eq!(frames.len(), 3, "{endian:?}");
            assert_eq!(frames.iter().map(|f| f.number).collect::<Vec<_>>(), [1, 2, 3]);
            assert_eq!(frames[0].timestamp_ns, 1_000_000_000);
            assert_eq!(frames[1].timestamp_ns, 7);
            assert_eq!(frames[1].linktype, linktype::ETHERNET);
            let ip = ipv4_packet(frames[1].linktype, &frames[1].data).unwrap();
            assert_eq!(&ip[..pkts[1].len()], &pkts[1][..]);
            assert_eq!(frames[2].data, pkts[0]);
            assert_eq!(frames[2].linktype, linktype::RAW);
        }
    }

    #[test]
    fn pcapng_second_section_switches_byte_order() {
        let pkts = packets();
        let mut a = Ng::new(Endian::Little);
        a.idb(linktype::RAW as u16, None);
        a.epb(0, 0, &pkts[0]);
        let mut b = Ng::new(Endian::Big);
        b.idb(linktype::IPV4 as u16, None);
        b.epb(0, 0, &pkts[1]);
        let mut f = a.out;
        f.extend_from_slice(&b.out);
        let frames = read_all(&f).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            (frames[0].linktype, frames[1].linktype),
            (linktype::RAW, linktype::IPV4)
        );
        assert_eq!(frames[1].number, 2);
    }

    #[test]
    fn pcapng_errors() {
        let pkts = packets();
        // Packet before any IDB.
        let mut n = Ng::new(Endian::Little);
        n.epb(0, 0, &pkts[0]);
        let e = read_all(&n.out).unwrap_err();
        assert!(matches!(e.kind, PcapErrorKind::UndefinedInterface(0)), "{e}");
        assert_eq!(e.offset, 28 + 8);
        // Trailing length mismatch.
        let mut n = Ng::new(Endian::Big);
        n.idb(1, None);
        let last = n.out.len() - 1;
        n.out[last] ^= 4;
        let e = read_all(&n.out).unwrap_err();
        assert!(matches!(e.kind, PcapErrorKind::LengthMismatch(20, 16)), "{e}");
        // Huge block length: an error, not an allocation.
        let mut n = Ng::new(Endian::Little);
        n.out.extend_from_slice(&6u32.to_le_bytes());
        n.out.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
        let e = read_all(&n.out).unwrap_err();
        assert!(matches!(e.kind, PcapErrorKind::TooLarge(_)), "{e}");
        // A skipped block that claims more bytes than the file has.
        let mut n = Ng::new(Endian::Little);
        n.out.extend_from_slice(&0x99u32.to_le_bytes());
        n.out.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
        let e = read_all(&n.out).unwrap_err();
        assert!(matches!(e.kind, PcapErrorKind::Truncated(_)), "{e}");
        assert_eq!(e.offset, 28);
        // Bad block length (not a multiple of 4).
        let mut n = Ng::new(Endian::Little);
        n.out.extend_from_slice(&0x99u32.to_le_bytes());
        n.out.extend_from_slice(&13u32.to_le_bytes());
        assert!(matches!(
            read_all(&n.out).unwrap_err().kind,
            PcapErrorKind::BadBlockLength(13)
        ));
        // Captured length past the block.
        let mut n = Ng::new(Endian::Little);
        n.idb(101, None);
        n.epb(0, 0, &pkts[0]);
        let caplen_at = n.out.len() - 4 - pkts[0].len().div_ceil(4) * 4 - 8;
        n.out[caplen_at..caplen_at + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            read_all(&n.out).unwrap_err().kind,
            PcapErrorKind::CapturedLengthTooLong(1000)
        ));
    }

    #[test]
    fn classic_errors() {
        assert!(matches!(read_all(&[]).unwrap_err().kind, PcapErrorKind::Empty));
        assert!(matches!(
            read_all(b"GIF89a...").unwrap_err().kind,
            PcapErrorKind::UnknownMagic(_)
        ));
        let mut f = classic(Endian::Little, false, 101, &packets());
        // Record length beyond the limit.
        f[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = read_all(&f).unwrap_err();
        assert!(matches!(e.kind, PcapErrorKind::TooLarge(_)));
        assert_eq!(e.offset, 32);
        assert_eq!(
            e.to_string(),
            "record of 4294967295 bytes exceeds the 262144-byte limit at byte offset 32"
        );
    }

    #[test]
    fn tsresol_conversions() {
        assert_eq!(TsResol(6).to_ns(1), 1000);
        assert_eq!(TsResol(9).to_ns(1), 1);
        assert_eq!(TsResol(12).to_ns(5000), 5);
        assert_eq!(TsResol(127).to_ns(u64::MAX), 0);
        assert_eq!(TsResol(0).to_ns(u64::MAX), u64::MAX);
        assert_eq!(TsResol(0x80 | 10).to_ns(1024), 1_000_000_000);
        assert_eq!(TsResol(0xff).to_ns(u64::MAX), 0);
    }

    /// Every prefix of a valid file gives the complete frames before the cut and then either a clean end (cut
    /// on a record boundary) or an error; nothing panics.
    #[test]
    fn truncation_at_every_offset() {
        let pkts = packets();
        let mut ng = Ng::new(Endian::Big);
        ng.idb(1, Some(6));
        ng.epb(0, 3, &pkts[0]);
        ng.spb(&pkts[1]);
        let files = [
            classic(Endian::Little, false, 101, &pkts),
            classic(Endian::Big, true, 228, &pkts),
            ng.out,
        ];
        for f in &files {
            let full = read_all(f).unwrap();
            for cut in 0..f.len() {
                let mut frames = 0;
                let res = PcapReader::new(&f[..cut]).and_then(|r| {
                    for fr in r {
                        let fr = fr?;
                        assert_eq!(fr, full[frames]);
                        frames += 1;
                    }
                    Ok(())
                });
                if let Err(e) = res {
                    assert!(e.offset <= cut as u64, "cut {cut}: {e}");
                }
                assert!(frames < full.len(), "cut {cut} still gave every frame");
            }
        }
    }

    /// Random corruption of valid files: any outcome but a panic or a huge allocation.
    #[test]
    fn random_corruption_never_panics() {
        let pkts = packets();
        let mut ng = Ng::new(Endian::Little);
        ng.idb(113, Some(0x86));
        ng.epb(0, 3, &pkts[0]);
        ng.spb(&pkts[1]);
        let files = [classic(Endian::Little, false, 1, &pkts), ng.out];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for f in &files {
            for _ in 0..3000 {
                let mut g = f.clone();
                for _ in 0..(rand() % 4 + 1) {
                    let i = (rand() % g.len() as u64) as usize;
                    g[i] = rand() as u8;
                }
                if let Ok(r) = PcapReader::new(&g[..]) {
                    for fr in r.take(100) {
                        match fr {
                            Ok(fr) => {
                                let _ = ipv4_packet(fr.linktype, &fr.data);
                                assert!(fr.data.len() <= MAX_RECORD);
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        // Pure garbage.
        for len in 0..64 {
            let g: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            if let Ok(r) = PcapReader::new(&g[..]) {
                for _ in r.take(100) {}
            }
        }
    }

    #[test]
    fn link_layers() {
        let ip = packets()[0].clone();
        let with = |hdr: &[u8]| {
            let mut v = hdr.to_vec();
            v.extend_from_slice(&ip);
            v
        };
        // Ethernet, plain and double-tagged.
        let mut eth = vec![0u8; 12];
        eth.extend_from_slice(&[0x08, 0x00]);
        assert_eq!(ipv4_packet(1, &with(&eth)), Some(&ip[..]));
        let mut qinq = vec![0u8; 12];
        qinq.extend_from_slice(&[0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2, 0x08, 0x00]);
        assert_eq!(ipv4_packet(1, &with(&qinq)), Some(&ip[..]));
        let mut v6 = vec![0u8; 12];
        v6.extend_from_slice(&[0x86, 0xdd]);
        assert_eq!(ipv4_packet(1, &with(&v6)), None);
        // SLL and SLL2.
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        assert_eq!(ipv4_packet(113, &with(&sll)), Some(&ip[..]));
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; 18]);
        assert_eq!(ipv4_packet(276, &with(&sll2)), Some(&ip[..]));
        // NULL in both host byte orders, LOOP big-endian only; AF_INET6 (30 on macOS) is not IPv4.
        assert_eq!(ipv4_packet(0, &with(&[2, 0, 0, 0])), Some(&ip[..]));
        assert_eq!(ipv4_packet(0, &with(&[0, 0, 0, 2])), Some(&ip[..]));
        assert_eq!(ipv4_packet(0, &with(&[30, 0, 0, 0])), None);
        assert_eq!(ipv4_packet(108, &with(&[0, 0, 0, 2])), Some(&ip[..]));
        assert_eq!(ipv4_packet(108, &with(&[2, 0, 0, 0])), None);
        // Raw: version nibble decides.
        assert_eq!(ipv4_packet(101, &ip), Some(&ip[..]));
        assert_eq!(ipv4_packet(101, &[0x60, 0, 0, 0]), None);
        assert_eq!(ipv4_packet(228, &ip), Some(&ip[..]));
        // Unknown link type and short frames.
        assert_eq!(ipv4_packet(147, &ip), None);
        for lt in [0, 1, 101, 108, 113, 228, 276] {
            for n in 0..24 {
                let _ = ipv4_packet(lt, &vec![0x45; n]);
            }
        }
    }
}
