//! Argument parsing with Redis's exact rules (`string2ll` rejects `+1`, `01` and spaces).

use super::err;
use crate::protocol::Reply;

/// Parses a signed 64-bit integer exactly as Redis's `string2ll` does.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    if b == b"0" {
        return Some(0);
    }
    let (neg, digits) = match b[0] {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || !(b'1'..=b'9').contains(&digits[0]) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    if neg {
        if v > i64::MAX as u64 + 1 {
            None
        } else {
            Some((v as i64).wrapping_neg())
        }
    } else {
        i64::try_from(v).ok()
    }
}

/// Parses a float as Redis's `string2ld`/`strtold` accepts it (no leading space, no NaN).
pub fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.len() > 5120 || s.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// Parses a SCAN-family cursor as Redis's `strtoul` check accepts it: empty is 0, a sign is
/// allowed (`-1` wraps), anything else but digits is refused.
pub fn parse_cursor(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return Some(0);
    }
    let (neg, digits) = match b[0] {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    Some(if neg { v.wrapping_neg() } else { v })
}

/// Options of SCAN and HSCAN.
#[derive(Debug, Default)]
pub struct ScanOptions<'a> {
    /// COUNT (default 10).
    pub count: usize,
    /// MATCH, unless it is `*`.
    pub pattern: Option<&'a [u8]>,
    /// TYPE (SCAN only).
    pub type_name: Option<&'a [u8]>,
}

/// Parses `[MATCH pattern] [COUNT count] [TYPE type]` from `args[from..]` with Redis's errors;
/// TYPE is accepted only where `allow_type`.
pub fn parse_scan_options(
    args: &[bytes::Bytes],
    from: usize,
    allow_type: bool,
) -> Result<ScanOptions<'_>, Reply> {
    let mut o = ScanOptions { count: 10, ..Default::default() };
    let mut i = from;
    while i < args.len() {
        let has_value = i + 1 < args.len();
        if is(&args[i], "COUNT") && has_value {
            match parse_i64(&args[i + 1]) {
                None => return Err(err::not_integer()),
                Some(n) if n < 1 => return Err(err::syntax()),
                Some(n) => o.count = n as usize,
            }
        } else if is(&args[i], "MATCH") && has_value {
            o.pattern = (&args[i + 1][..] != b"*").then_some(&args[i + 1][..]);
        } else if allow_type && is(&args[i], "TYPE") && has_value {
            o.type_name = Some(&args[i + 1]);
        } else {
            return Err(err::syntax());
        }
        i += 2;
    }
    Ok(o)
}

/// Case-insensitive comparison of an argument with an option name.
pub fn is(arg: &[u8], name: &str) -> bool {
    arg.eq_ignore_ascii_case(name.as_bytes())
}

/// Formats a float the way INCRBYFLOAT and HINCRBYFLOAT reply (shortest exact form, no
/// exponent for ordinary magnitudes).
pub fn format_float(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e17 {
        return format!("{}", v as i128);
    }
    let s = format!("{v}");
    if s.contains('e') {
        format!("{v:.17}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-5"), Some(-5));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        for bad in [&b"+1"[..], b"01", b"-0", b" 1", b"1 ", b"", b"-", b"1.0", b"abc"] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn cursors_parse_like_strtoul() {
        assert_eq!(parse_cursor(b""), Some(0));
        assert_eq!(parse_cursor(b"+7"), Some(7));
        assert_eq!(parse_cursor(b"007"), Some(7));
        assert_eq!(parse_cursor(b"-1"), Some(u64::MAX));
        assert_eq!(parse_cursor(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b" 1"[..], b"1 ", b"+", b"-", b"abc", b"0x1", b"18446744073709551616"] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn floats() {
        assert_eq!(parse_f64(b"1.5"), Some(1.5));
        assert_eq!(parse_f64(b"5"), Some(5.0));
        assert_eq!(parse_f64(b" 1"), None);
        assert_eq!(parse_f64(b"nan"), None);
        assert_eq!(format_float(10.5), "10.5");
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(5.0e3), "5000");
    }
}
