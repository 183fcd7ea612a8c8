//! Properties of the protocol layer: the request parser never panics and does not care how
//! the bytes are split, and generated command sequences get Redis's exact replies.

mod common;

use std::cell::RefCell;

use bytes::BytesMut;
use cachegrid::protocol::{Limits, RequestParser};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Feeds `chunks` one after another; returns the requests parsed, or the error text.
fn parse_chunks(chunks: &[&[u8]], limits: &Limits) -> Result<Vec<Vec<Vec<u8>>>, String> {
    let mut parser = RequestParser::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.next(&mut buf, limits) {
                Ok(Some(args)) => out.push(args.iter().map(|a| a.to_vec()).collect()),
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(out)
}

fn small_limits() -> Limits {
    Limits { max_bulk_len: 64, max_multibulk_len: 8, unauthenticated: false }
}

/// Bytes that look like RESP often enough to reach deep parser states.
fn resp_ish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"'".to_vec()),
        Just(b"\\x4".to_vec()),
        (-3i64..40).prop_map(|n| n.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(
        bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), resp_ish()],
        cut in 0usize..512,
    ) {
        let cut = cut.min(bytes.len());
        let (a, b) = bytes.split_at(cut);
        let _ = parse_chunks(&[a, b], &small_limits());
        let _ = parse_chunks(&[&bytes], &Limits::default());
    }

    #[test]
    fn a_valid_request_split_anywhere_parses_the_same(
        requests in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), 1..4),
        mut cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut wire = Vec::new();
        for r in &requests {
            let refs: Vec<&[u8]> = r.iter().map(|a| a.as_slice()).collect();
            wire.extend(common::encode(&refs));
        }
        let whole = parse_chunks(&[&wire], &Limits::default()).unwrap();
        prop_assert_eq!(&whole, &requests);
        for c in cuts.iter_mut() {
            *c %= wire.len() + 1;
        }
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for &c in &cuts {
            chunks.push(&wire[from..c]);
            from = c;
        }
        chunks.push(&wire[from..]);
        prop_assert_eq!(parse_chunks(&chunks, &Limits::default()).unwrap(), requests);
    }
}

/// One argument of a command template.
#[derive(Debug, Clone, Copy)]
enum Arg {
    /// One of the few keys, as `$kN`.
    Key,
    /// A short value, sometimes numeric.
    Val,
    /// A literal option.
    Lit(&'static str),
}

use Arg::{Key, Lit, Val};

/// THE LIST TO EXTEND: command templates the differential generator draws from. Only commands
/// in the dispatcher today; add a template as other families land (APPEND, STRLEN, HSET, ...).
/// Nothing random or time-dependent (no TTL readouts, RANDOMKEY, TIME).
const TEMPLATES: &[&[Arg]] = &[
    &[Lit("GET"), Key],
    &[Lit("SET"), Key, Val],
    &[Lit("SET"), Key, Val, Lit("NX")],
    &[Lit("SET"), Key, Val, Lit("XX")],
    &[Lit("SET"), Key, Val, Lit("GET")],
    &[Lit("SET"), Key, Val, Lit("EX"), Lit("100")],
    &[Lit("SET"), Key, Val, Lit("KEEPTTL")],
    &[Lit("SET"), Key, Val, Lit("NX"), Lit("XX")],
    &[Lit("SET"), Key],
    &[Lit("DEL"), Key],
    &[Lit("DEL"), Key, Key, Key],
    &[Lit("EXISTS"), Key, Key],
    &[Lit("INCR"), Key],
    &[Lit("INCRBY"), Key, Val],
    &[Lit("DECR"), Key],
    &[Lit("APPEND"), Key, Val],
    &[Lit("STRLEN"), Key],
    &[Lit("GETRANGE"), Key, Lit("0"), Lit("-2")],
    &[Lit("SETRANGE"), Key, Lit("3"), Val],
    &[Lit("GETDEL"), Key],
    &[Lit("GETSET"), Key, Val],
    &[Lit("MSET"), Key, Val, Key, Val],
    &[Lit("MGET"), Key, Key, Key],
    &[Lit("MSETNX"), Key, Val, Key, Val],
    &[Lit("SETNX"), Key, Val],
    &[Lit("TYPE"), Key],
    &[Lit("RENAME"), Key, Key],
    &[Lit("RENAMENX"), Key, Key],
    &[Lit("PERSIST"), Key],
    &[Lit("EXPIRE"), Key, Lit("100"), Lit("NX")],
    &[Lit("TTL"), Key],
    &[Lit("HSET"), Key, Val, Val],
    &[Lit("HSET"), Key, Val, Val, Val, Val],
    &[Lit("HSETNX"), Key, Val, Val],
    &[Lit("HGET"), Key, Val],
    &[Lit("HMGET"), Key, Val, Val],
    &[Lit("HDEL"), Key, Val, Val],
    &[Lit("HLEN"), Key],
    &[Lit("HGETALL"), Key],
    &[Lit("HKEYS"), Key],
    &[Lit("HVALS"), Key],
    &[Lit("HEXISTS"), Key, Val],
    &[Lit("HINCRBY"), Key, Val, Val],
    &[Lit("HSTRLEN"), Key, Val],
    &[Lit("WATCH"), Key],
    &[Lit("UNWATCH")],
    &[Lit("MULTI")],
    &[Lit("EXEC")],
    &[Lit("DISCARD")],
];

const KEYS: usize = 4;

fn command() -> impl Strategy<Value = Vec<String>> {
    (0..TEMPLATES.len(), proptest::collection::vec((0..KEYS, 0..6usize), 5)).prop_map(|(t, picks)| {
        let values = ["", "v", "0", "41", "-7", "hello world"];
        TEMPLATES[t]
            .iter()
            .zip(picks)
            .map(|(arg, (k, v))| match arg {
                Key => format!("$k{k}"),
                Val => values[v].to_string(),
                Lit(s) => s.to_string(),
            })
            .collect()
    })
}

#[test]
fn generated_command_sequences_get_redis_s_replies() {
    let node = common::TestNode::start();
    let Some(d) = common::Differential::new(&node, "props_seq") else { return };
    if cachegrid::commands::lookup(b"incr").is_none() {
        eprintln!("note: INCR not in the table yet; its template is skipped until it lands");
    }
    let d = RefCell::new(d);
    let mut runner = TestRunner::new(Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(command(), 1..24), |cmds| {
        let mut d = d.borrow_mut();
        // A clean slate: no open transaction, no keys.
        d.check_str(&["RESET"]);
        let keys: Vec<String> = (0..KEYS).map(|k| format!("$k{k}")).collect();
        let mut del = vec!["DEL"];
        del.extend(keys.iter().map(|k| k.as_str()));
        d.check_str(&del);
        for cmd in &cmds {
            let args: Vec<&str> = cmd.iter().map(|a| a.as_str()).collect();
            if cachegrid::commands::lookup(args[0].as_bytes()).is_none() {
                continue;
            }
            let (ours, theirs) = {
                let owned: Vec<Vec<u8>> = args
                    .iter()
                    .map(|a| if let Some(k) = a.strip_prefix('$') { d.key(k) } else { a.as_bytes().to_vec() })
                    .collect();
                let refs: Vec<&[u8]> = owned.iter().map(|a| a.as_slice()).collect();
                d.both(&refs)
            };
            prop_assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "after {:?}",
                cmds
            );
        }
        Ok(())
    });
    d.borrow_mut().check_str(&["RESET"]);
    if let Err(e) = result {
        panic!("{e}");
    }
}
