//! Arbitrary argument vectors through the dispatcher (`resolve`, then `execute`) against an
//! in-process `Server`: no command may panic whatever its arguments, in or out of MULTI.

#![no_main]

use std::net::SocketAddr;

use bytes::Bytes;
use cachegrid::commands::{all_commands, execute, resolve};
use cachegrid::config::Config;
use cachegrid::server::{ClientState, Server};
use libfuzzer_sys::fuzz_target;

/// Every command and subcommand name, so inputs reach real handlers instead of "unknown".
fn names() -> Vec<Vec<Bytes>> {
    all_commands()
        .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
        .map(|c| c.name.split('|').map(|p| Bytes::from_static(p.as_bytes())).collect())
        .collect()
}

fuzz_target!(|input: Vec<(u8, Vec<Vec<u8>>)>| {
    let names = names();
    let server = Server::new(Config { shards: 4, ..Config::default() });
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let info = server.clients.register(addr, addr);
    let mut client = ClientState::new(info, true);
    for (pick, rest) in input.into_iter().take(64) {
        let mut args = names[pick as usize % names.len()].clone();
        // A few commands end the process or the connection; the rest must just reply.
        if args[0] == "shutdown" {
            continue;
        }
        args.extend(rest.into_iter().take(16).map(Bytes::from));
        let _ = resolve(&args);
        let _ = execute(&server, &mut client, args);
    }
});
