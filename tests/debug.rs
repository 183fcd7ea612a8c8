//! DEBUG, the fault-injection command: refused unless `enable-debug-command` allows the
//! client (Redis 7's rule and error), and its subcommands' answers to good and bad input.

mod common;

use cachegrid::config::DebugCommand;
use common::TestNode;

fn node(debug: DebugCommand) -> TestNode {
    TestNode::with_config(|c| c.enable_debug_command = debug)
}

#[test]
fn debug_is_refused_by_default_with_redis_7s_error() {
    let n = TestNode::start();
    let reply = n.raw().cmd_str(&["DEBUG", "SLEEP", "0"]);
    assert!(
        reply.starts_with(
            "-ERR DEBUG command not allowed. If the enable-debug-command option is set to \"local\""
        ),
        "{reply}"
    );
    let reply = n.raw().cmd_str(&["DEBUG", "BUS-HEAL"]);
    assert!(reply.starts_with("-ERR DEBUG command not allowed"), "{reply}");
}

#[test]
fn local_admits_loopback_clients_and_config_get_shows_the_setting() {
    let n = node(DebugCommand::Local);
    let mut c = n.raw();
    assert_eq!(c.cmd_str(&["DEBUG", "SLEEP", "0.01"]), "+OK\r\n");
    assert_eq!(
        c.cmd_str(&["CONFIG", "GET", "enable-debug-command"]),
        "*2\r\n$20\r\nenable-debug-command\r\n$5\r\nlocal\r\n"
    );
}

#[test]
fn bus_faults_are_set_shown_and_healed() {
    let n = node(DebugCommand::Yes);
    let mut c = n.raw();
    assert_eq!(c.cmd_str(&["DEBUG", "BUS-DROP", "127.0.0.1:17001", "127.0.0.1:17002"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["DEBUG", "BUS-DELAY", "25"]), "+OK\r\n");
    let status = c.cmd_str(&["DEBUG", "BUS-STATUS"]);
    assert!(status.contains("dropped:127.0.0.1:17001,127.0.0.1:17002\r\ndelay_ms:25"), "{status}");
    assert_eq!(c.cmd_str(&["DEBUG", "BUS-HEAL"]), "+OK\r\n");
    assert!(c.cmd_str(&["DEBUG", "BUS-STATUS"]).contains("dropped:\r\ndelay_ms:0"));
}

#[test]
fn bad_debug_arguments_get_clear_errors_and_the_node_keeps_serving() {
    let n = node(DebugCommand::Yes);
    let mut c = n.raw();
    for (args, expect) in [
        (&["DEBUG", "SLEEP", "soon"][..], "-ERR value is not a valid float"),
        (&["DEBUG", "SLEEP", "-1"][..], "-ERR value is not a valid float"),
        (&["DEBUG", "SLEEP", "99999"][..], "-ERR DEBUG SLEEP is limited to"),
        (&["DEBUG", "BUS-DELAY", "-5"][..], "-ERR the delay is milliseconds"),
        (&["DEBUG", "BUS-DROP", "nowhere"][..], "-ERR 'nowhere' is neither a bus HOST:PORT nor a node id"),
        (&["DEBUG", "BUS-DROP", &"ab".repeat(20)][..], "-ERR a node id needs cluster mode"),
        (&["DEBUG", "FAILPOINT", "no-such-point", "return"][..], "-ERR unknown failpoint 'no-such-point'"),
        (&["DEBUG", "NOPE"][..], "-ERR unknown subcommand 'NOPE'. Try DEBUG HELP."),
        (&["DEBUG", "SLEEP"][..], "-ERR wrong number of arguments for 'debug|sleep' command"),
    ] {
        let reply = c.cmd_str(args);
        assert!(reply.starts_with(expect), "{args:?}: {reply}");
    }
    assert_eq!(c.cmd_str(&["PING"]), "+PONG\r\n");
}

#[test]
fn failpoints_are_armed_only_in_a_failpoints_build() {
    let n = node(DebugCommand::Yes);
    let reply = n.raw().cmd_str(&["DEBUG", "FAILPOINT", "replication-before-send", "off"]);
    if cfg!(feature = "failpoints") {
        assert_eq!(reply, "+OK\r\n");
    } else {
        assert!(reply.starts_with("-ERR failpoints are not compiled in"), "{reply}");
    }
}

#[test]
fn debug_help_lists_the_subcommands_and_failpoints() {
    let n = node(DebugCommand::Yes);
    let help = n.raw().cmd_str(&["DEBUG", "HELP"]);
    for s in ["SLEEP", "BUS-DROP", "BUS-DELAY", "BUS-HEAL", "FAILPOINT", "migration-before-switch"] {
        assert!(help.contains(s), "{s} in {help}");
    }
}
