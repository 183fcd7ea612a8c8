//! Requests off the wire. `redis-protocol` parses frames but has no limits and re-parses a
//! partial frame from its start on every read, so a guard scans ahead first: it enforces our
//! bounds (multibulk length, bulk length, inline size) and remembers how far it got, so a
//! large request arriving in pieces is scanned once. Only a complete frame reaches the crate.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::{decode::decode_range, types::RangeFrame};

/// Longest inline command or frame header line, as Redis's PROTO_INLINE_MAX_SIZE.
pub const INLINE_MAX: usize = 64 * 1024;

/// Bounds a client cannot exceed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `proto-max-bulk-len`: longest bulk string.
    pub max_bulk_len: usize,
    /// `proto-max-multibulk-len`: most arguments in one command.
    pub max_multibulk_len: usize,
    /// Whether the client is still unauthenticated (Redis then allows only tiny requests).
    pub unauthenticated: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bulk_len: 512 * 1024 * 1024, max_multibulk_len: 1024 * 1024, unauthenticated: false }
    }
}

/// A request the client must be told about before its connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn perr(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// Where the guard stopped in an incomplete multibulk request.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Offset of the next element header.
    pos: usize,
    /// Elements still to scan.
    remaining: usize,
}

/// Splits a connection's input into requests (argument vectors).
#[derive(Debug, Default)]
pub struct RequestParser {
    progress: Option<Progress>,
}

/// Position of the first `\r\n`-terminated line at `from`, as (line end, next offset).
fn line_at(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let window = &buf[from..buf.len().min(from + INLINE_MAX + 2)];
    let nl = memchr(b'\r', window)?;
    let end = from + nl;
    if end + 1 < buf.len() {
        Some((end, end + 2))
    } else {
        None
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Parses a header number as Redis's string2ll would (optional '-', digits only).
fn parse_len(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (d - b'0') as i64;
    }
    Some(if neg { -n } else { n })
}

impl RequestParser {
    /// A parser for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next complete request off `buf`. `Ok(None)` means more bytes are needed;
    /// empty requests (blank lines, `*0`) are skipped. On error the connection must reply
    /// with it and close.
    pub fn next(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            let parsed = if buf[0] == b'*' { self.multibulk(buf, limits)? } else { inline(buf)? };
            match parsed {
                Parsed::Incomplete => return Ok(None),
                Parsed::Empty => continue,
                Parsed::Args(args) => return Ok(Some(args)),
            }
        }
    }

    fn multibulk(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Parsed, ProtocolError> {
        let mut progress = match self.progress {
            Some(p) => p,
            None => {
                let Some((end, next)) = line_at(buf, 1) else {
                    if buf.len() > INLINE_MAX {
                        return Err(perr("too big mbulk count string"));
                    }
                    return Ok(Parsed::Incomplete);
                };
                let n = parse_len(&buf[1..end]).filter(|&n| n <= i32::MAX as i64);
                let Some(n) = n else { return Err(perr("invalid multibulk length")) };
                if n <= 0 {
                    let _ = buf.split_to(next);
                    return Ok(Parsed::Empty);
                }
                if limits.unauthenticated && n > 10 {
                    return Err(perr("unauthenticated multibulk length"));
                }
                if n as usize > limits.max_multibulk_len {
                    return Err(perr("invalid multibulk length"));
                }
                Progress { pos: next, remaining: n as usize }
            }
        };
        while progress.remaining > 0 {
            if progress.pos >= buf.len() {
                self.progress = Some(progress);
                return Ok(Parsed::Incomplete);
            }
            if buf[progress.pos] != b'$' {
                return Err(perr(format!("expected '$', got '{}'", buf[progress.pos] as char)));
            }
            let Some((end, next)) = line_at(buf, progress.pos + 1) else {
                if buf.len() - progress.pos > INLINE_MAX {
                    return Err(perr("too big bulk count string"));
                }
                self.progress = Some(progress);
                return Ok(Parsed::Incomplete);
            };
            let len = parse_len(&buf[progress.pos + 1..end]);
            let Some(len) = len.filter(|&l| l >= 0 && l as usize <= limits.max_bulk_len) else {
                return Err(perr("invalid bulk length"));
            };
            if limits.unauthenticated && len > 16384 {
                return Err(perr("unauthenticated bulk length"));
            }
            let after = next + len as usize + 2;
            if after > buf.len() {
                // Make room once for a large argument instead of growing step by step.
                buf.reserve((after - buf.len()).min(64 * 1024 * 1024));
                self.progress = Some(progress);
                return Ok(Parsed::Incomplete);
            }
            progress = Progress { pos: after, remaining: progress.remaining - 1 };
        }
        self.progress = None;
        let frame_len = progress.pos;
        let (frame, used) = match decode_range(&buf[..frame_len]) {
            Ok(Some(f)) => f,
            Ok(None) => return Err(perr("incomplete frame")),
            Err(e) => return Err(perr(e.to_string())),
        };
        let bytes = buf.split_to(used).freeze();
        let RangeFrame::Array(items) = frame else {
            return Err(perr("expected an array"));
        };
        let mut args = Vec::with_capacity(items.len());
        for item in items {
            match item {
                RangeFrame::BulkString((start, end)) => args.push(bytes.slice(start..end)),
                _ => return Err(perr("expected a bulk string")),
            }
        }
        Ok(Parsed::Args(args))
    }
}

enum Parsed {
    Incomplete,
    Empty,
    Args(Vec<Bytes>),
}

/// An inline command (`PING\r\n`), split like Redis's sdssplitargs.
fn inline(buf: &mut BytesMut) -> Result<Parsed, ProtocolError> {
    let Some(nl) = memchr(b'\n', buf) else {
        if buf.len() > INLINE_MAX {
            return Err(perr("too big inline request"));
        }
        return Ok(Parsed::Incomplete);
    };
    let line = buf.split_to(nl + 1);
    let mut line = &line[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args = split_args(line).ok_or_else(|| perr("unbalanced quotes in request"))?;
    if args.is_empty() {
        return Ok(Parsed::Empty);
    }
    Ok(Parsed::Args(args.into_iter().map(Bytes::from).collect()))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Redis's `sdssplitargs`: words separated by spaces, with "double" quotes (and escapes such as
/// `\n`, `\x41`) and 'single' quotes. None when quotes are unbalanced.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    // sdssplitargs works on a C string: a NUL ends the line (and once looped forever here).
    // Redis itself never finds the newline past a NUL (strchr) and waits for more input.
    let line = &line[..memchr(0, line).unwrap_or(line.len())];
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Some(out);
        }
        let mut cur = Vec::new();
        let (mut inq, mut insq) = (false, false);
        loop {
            let c = line.get(i).copied();
            if inq {
                match c {
                    None => return None,
                    Some(b'\\')
                        if line.get(i + 1) == Some(&b'x')
                            && line.get(i + 2).and_then(|&b| hex(b)).is_some()
                            && line.get(i + 3).and_then(|&b| hex(b)).is_some() =>
                    {
                        cur.push(hex(line[i + 2]).unwrap() * 16 + hex(line[i + 3]).unwrap());
                        i += 3;
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        cur.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        // A closing quote must be followed by a space or the end.
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return None;
                        }
                        inq = false;
                        i += 1;
                        break;
                    }
                    Some(b) => cur.push(b),
                }
            } else if insq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return None;
                        }
                        insq = false;
                        i += 1;
                        break;
                    }
                    Some(b) => cur.push(b),
                }
            } else {
                match c {
                    None => break,
                    Some(b' ' | b'\n' | b'\r' | b'\t' | 0) => break,
                    Some(b'"') => inq = true,
                    Some(b'\'') => insq = true,
                    Some(b) => cur.push(b),
                }
            }
            i += 1;
        }
        let _ = (inq, insq);
        out.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut p = RequestParser::new();
        let mut out = Vec::new();
        while let Some(args) = p.next(&mut buf, &Limits::default())? {
            out.push(args.iter().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    #[test]
    fn pipelined_multibulk_requests() {
        let got = parse_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
        assert_eq!(got, vec![vec![b"PING".to_vec()], vec![b"GET".to_vec(), b"k".to_vec()]]);
    }

    #[test]
    fn a_request_split_anywhere_parses_the_same() {
        let wire = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut p = RequestParser::new();
            assert_eq!(p.next(&mut buf, &Limits::default()).unwrap(), None, "cut at {cut}");
            buf.extend_from_slice(&wire[cut..]);
            let args = p.next(&mut buf, &Limits::default()).unwrap().unwrap();
            assert_eq!(args[2], Bytes::from_static(b"0123456789"));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn inline_commands_with_quotes() {
        let got = parse_all(b"SET k \"a b\\n\" 'c'\r\nPING\n\r\n").unwrap();
        assert_eq!(got[0], vec![b"SET".to_vec(), b"k".to_vec(), b"a b\n".to_vec(), b"c".to_vec()]);
        assert_eq!(got[1], vec![b"PING".to_vec()]);
        assert_eq!(parse_all(b"SET \"k\r\n").unwrap_err().0, "unbalanced quotes in request");
    }

    #[test]
    fn limits_give_redis_protocol_errors() {
        let small = Limits { max_bulk_len: 4, max_multibulk_len: 2, unauthenticated: false };
        let mut p = RequestParser::new();
        let err = |p: &mut RequestParser, s: &[u8]| p.next(&mut BytesMut::from(s), &small).unwrap_err().0;
        assert_eq!(err(&mut p, b"*3\r\n"), "invalid multibulk length");
        assert_eq!(err(&mut RequestParser::new(), b"*1\r\n$5\r\n"), "invalid bulk length");
        assert_eq!(err(&mut RequestParser::new(), b"*1\r\n:5\r\n"), "expected '$', got ':'");
        assert_eq!(err(&mut RequestParser::new(), b"*x\r\n"), "invalid multibulk length");
        let big = vec![b'a'; INLINE_MAX + 1];
        assert_eq!(err(&mut RequestParser::new(), &big), "too big inline request");
    }

    #[test]
    fn a_nul_byte_ends_an_inline_command() {
        assert_eq!(parse_all(b"GET a\0b c\r\n").unwrap(), vec![vec![b"GET".to_vec(), b"a".to_vec()]]);
        assert_eq!(parse_all(b"\0\r\nPING\r\n").unwrap(), vec![vec![b"PING".to_vec()]]);
    }

    #[test]
    fn a_frame_split_across_reads_keeps_its_arguments() {
        let mut p = RequestParser::new();
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk"[..]);
        assert_eq!(p.next(&mut buf, &Limits::default()).unwrap(), None);
        buf.extend_from_slice(b"\r\n$5\r\nvalue\r\n");
        let args = p.next(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(args, vec![&b"SET"[..], b"k", b"value"]);
        assert!(buf.is_empty());
    }

    #[test]
    fn empty_multibulk_and_blank_lines_are_skipped() {
        assert_eq!(parse_all(b"*0\r\n\r\n*-1\r\n").unwrap(), Vec::<Vec<Vec<u8>>>::new());
    }
}
