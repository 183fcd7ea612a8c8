//! Replies, written straight into the connection's output buffer in RESP2 or RESP3 so that the
//! bytes are exactly Redis's (ordered maps, RESP2 fallbacks for RESP3 types, null kinds).

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol version a client chose with HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RespVersion {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

/// One reply, as a command produces it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+text`.
    Simple(Cow<'static, str>),
    /// `-text`; the text starts with its code (`ERR`, `WRONGTYPE`, ...).
    Error(Cow<'static, str>),
    /// `:n`.
    Int(i64),
    /// `$len\r\nbytes`.
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// A missing aggregate: `*-1` in RESP2, `_` in RESP3.
    NilArray,
    /// An array.
    Array(Vec<Reply>),
    /// A map: a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// A set: an array in RESP2.
    Set(Vec<Reply>),
    /// A double: a bulk string in RESP2.
    Double(f64),
    /// A boolean: 1 or 0 in RESP2.
    Bool(bool),
    /// Verbatim text (`=`): a bulk string in RESP2.
    Verbatim(Bytes),
    /// An out-of-band push (RESP3 `>`): an array in RESP2.
    Push(Vec<Reply>),
    /// Nothing at all: the connection closes without a reply (SHUTDOWN).
    NoReply,
    /// Several frames, one after the other with no header (SUBSCRIBE of several channels
    /// answers once per channel).
    Frames(Vec<Reply>),
    /// Bytes already encoded for this client (a Pub/Sub message to the publisher itself).
    Raw(Bytes),
}

impl Reply {
    /// `+OK`.
    pub const fn ok() -> Reply {
        Reply::Simple(Cow::Borrowed("OK"))
    }

    /// A simple string.
    pub fn simple(s: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Simple(s.into())
    }

    /// An error; `msg` includes its code, e.g. `ERR syntax error`.
    pub fn error(msg: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Error(msg.into())
    }

    /// A bulk string copied from `b`.
    pub fn bulk(b: &[u8]) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(b))
    }

    /// A bulk string from a static string.
    pub fn bulk_static(b: &'static str) -> Reply {
        Reply::Bulk(Bytes::from_static(b.as_bytes()))
    }

    /// A bulk string holding a formatted value.
    pub fn bulk_string(s: String) -> Reply {
        Reply::Bulk(Bytes::from(s))
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Writes the reply in `version`'s encoding.
    pub fn encode(&self, version: RespVersion, out: &mut BytesMut) {
        let v3 = version == RespVersion::Resp3;
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', sanitize(s).as_bytes()),
            Reply::Int(n) => int_line(out, b':', *n),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Nil if v3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray if v3 => out.put_slice(b"_\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => aggregate(out, b'*', items, version),
            Reply::Set(items) => aggregate(out, if v3 { b'~' } else { b'*' }, items, version),
            Reply::Push(items) => aggregate(out, if v3 { b'>' } else { b'*' }, items, version),
            Reply::Map(pairs) => {
                if v3 {
                    int_line(out, b'%', pairs.len() as i64);
                } else {
                    int_line(out, b'*', pairs.len() as i64 * 2);
                }
                for (k, v) in pairs {
                    k.encode(version, out);
                    v.encode(version, out);
                }
            }
            Reply::Double(d) if v3 => line(out, b',', format_double(*d).as_bytes()),
            Reply::Double(d) => bulk(out, format_double(*d).as_bytes()),
            Reply::Bool(b) if v3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Bool(b) => int_line(out, b':', *b as i64),
            Reply::Verbatim(text) if v3 => {
                int_line(out, b'=', text.len() as i64 + 4);
                out.put_slice(b"txt:");
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim(text) => bulk(out, text),
            Reply::NoReply => {}
            Reply::Frames(items) => {
                for item in items {
                    item.encode(version, out);
                }
            }
            Reply::Raw(b) => out.put_slice(b),
        }
    }
}

/// Redis replaces newlines in error texts so an error is always one line.
fn sanitize(s: &str) -> Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        Cow::Owned(s.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(s)
    }
}

fn line(out: &mut BytesMut, prefix: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(prefix);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

fn int_line(out: &mut BytesMut, prefix: u8, n: i64) {
    let mut b = itoa::Buffer::new();
    line(out, prefix, b.format(n).as_bytes());
}

fn bulk(out: &mut BytesMut, b: &[u8]) {
    out.reserve(b.len() + 16);
    int_line(out, b'$', b.len() as i64);
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

fn aggregate(out: &mut BytesMut, prefix: u8, items: &[Reply], version: RespVersion) {
    int_line(out, prefix, items.len() as i64);
    for item in items {
        item.encode(version, out);
    }
}

/// Formats a double as Redis does (`%.17g`, with `inf`, `-inf` and `nan`).
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "nan".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    format_g17(d)
}

/// C's `%.17g`.
fn format_g17(d: f64) -> String {
    if d == 0.0 {
        return if d.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let exp = d.abs().log10().floor() as i32;
    let s = if !(-4..17).contains(&exp) {
        let s = format!("{:.16e}", d);
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = trim_zeros(mant);
        let e: i32 = e.parse().unwrap_or(0);
        format!("{}e{}{:02}", mant, if e < 0 { '-' } else { '+' }, e.abs())
    } else {
        let decimals = (16 - exp).max(0) as usize;
        trim_zeros(&format!("{:.*}", decimals, d)).to_string()
    };
    s
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, v: RespVersion) -> String {
        let mut out = BytesMut::new();
        r.encode(v, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn resp2_falls_back_for_resp3_types() {
        let map = Reply::Map(vec![(Reply::bulk(b"a"), Reply::Int(1))]);
        assert_eq!(enc(&map, RespVersion::Resp2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&map, RespVersion::Resp3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&Reply::Nil, RespVersion::Resp2), "$-1\r\n");
        assert_eq!(enc(&Reply::NilArray, RespVersion::Resp2), "*-1\r\n");
        assert_eq!(enc(&Reply::Nil, RespVersion::Resp3), "_\r\n");
        assert_eq!(enc(&Reply::Bool(true), RespVersion::Resp2), ":1\r\n");
        assert_eq!(enc(&Reply::Double(1.5), RespVersion::Resp3), ",1.5\r\n");
    }

    #[test]
    fn errors_stay_on_one_line() {
        assert_eq!(enc(&Reply::error("ERR a\r\nb"), RespVersion::Resp2), "-ERR a  b\r\n");
    }

    #[test]
    fn doubles_format_like_percent_17g() {
        assert_eq!(format_double(3.0), "3");
        assert_eq!(format_double(0.1), "0.10000000000000001");
        assert_eq!(format_double(1e20), "1e+20");
        assert_eq!(format_double(f64::INFINITY), "inf");
    }
}
