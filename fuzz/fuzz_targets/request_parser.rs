//! Arbitrary bytes, split at an arbitrary point, into the request parser: it must never panic,
//! loop or allocate beyond its limits, and what it parses must not depend on the split.

#![no_main]

use bytes::BytesMut;
use cachegrid::protocol::{Limits, RequestParser};
use libfuzzer_sys::fuzz_target;

fn parse(chunks: &[&[u8]], limits: &Limits) -> Result<Vec<Vec<bytes::Bytes>>, String> {
    let mut parser = RequestParser::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(args) = parser.next(&mut buf, limits).map_err(|e| e.to_string())? {
            out.push(args);
        }
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let limits = Limits { max_bulk_len: 1 << 20, max_multibulk_len: 1024, unauthenticated: cut & 1 == 1 };
    let cut = (cut as usize).min(data.len());
    let whole = parse(&[data], &limits);
    let split = parse(&[&data[..cut], &data[cut..]], &limits);
    // Requests complete before an error must be the same either way.
    if let (Ok(a), Ok(b)) = (&whole, &split) {
        assert_eq!(a, b);
    }
});
