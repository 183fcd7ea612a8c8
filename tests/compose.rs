//! The container files against the binaries (no container engine runs here, and `docker compose
//! config` is not installed): `docker-compose.yml` parses, has its services, ports, volumes,
//! health checks and start order; every `CACHEGRID_*` variable and flag it, the Dockerfile or
//! the README's container section uses is one the binaries accept (`cachegrid`, and the example
//! session app `login_app`, whose health check is run against the app itself).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML")
}

/// `name:value` of a published port `"127.0.0.1:HOST:CONTAINER"`: (host address, host port,
/// container port).
fn published(p: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = p.split(':').collect();
    assert_eq!(parts.len(), 3, "{p}: published as ADDRESS:HOST:CONTAINER");
    (parts[0], parts[1], parts[2])
}

/// The example session app, built beside the `cachegrid` binary (`--all-targets` builds it;
/// built here if it is not).
fn login_app() -> std::path::PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_cachegrid"));
    let app = bin.parent().unwrap().join("examples").join("login_app");
    // Built every time (a no-op when fresh): `--all-targets` test builds leave only a hashed
    // copy of an example, so an old `login_app` may be lying here. The whole workspace with the
    // test build's features, so the build reuses the test build's crates and only links the
    // example (`-p cachegrid-middleware` alone compiled cachegrid again: 2.5 min of a CI run).
    {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut args = vec!["build", "--workspace", "--example", "login_app"];
        if cfg!(feature = "failpoints") {
            args.extend(["--features", "cachegrid/failpoints"]);
        }
        let status = Command::new(cargo).args(args).current_dir(root()).status().unwrap();
        assert!(status.success(), "cannot build the login_app example");
    }
    app
}

fn cachegrid(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cachegrid"));
    cmd.args(args);
    // Only the variables under test.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CACHEGRID_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().cloned());
    cmd.output().unwrap()
}

/// Asserts the binary accepts `env` as configuration and returns the merged TOML.
fn accepted_config(env: &[(String, String)], context: &str) -> toml::Table {
    let out = cachegrid(&["config"], env);
    assert!(
        out.status.success(),
        "{context}: cachegrid rejects {env:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_sequence().unwrap_or(&Vec::new()).iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

fn env_of(service: &Value) -> Vec<(String, String)> {
    let Some(map) = service["environment"].as_mapping() else { return Vec::new() };
    map.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("unexpected value {other:?}"),
            };
            (k.as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn the_compose_file_runs_postgres_three_nodes_and_the_session_app_in_order() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["postgres", "node-a", "node-b", "node-c", "app"]));
    let volumes: BTreeSet<&str> =
        c["volumes"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap()).collect();

    let pg = &c["services"]["postgres"];
    assert!(pg["image"].as_str().unwrap().starts_with("postgres:"));
    assert!(str_list(&pg["volumes"]).contains(&"pgdata:/var/lib/postgresql/data".to_string()));
    assert!(volumes.contains("pgdata"), "postgres data is a named volume");
    assert!(str_list(&pg["healthcheck"]["test"]).join(" ").contains("pg_isready"));

    let mut host_ports = BTreeSet::new();
    for name in NODES {
        let node = &c["services"][name];
        assert_eq!(node["build"].as_str(), Some("."), "{name} builds the Dockerfile");
        assert_eq!(str_list(&node["healthcheck"]["test"]), ["CMD", "cachegrid", "health"], "{name}");
        let ports = str_list(&node["ports"]);
        let containers: BTreeSet<&str> = ports.iter().map(|p| published(p).2).collect();
        assert_eq!(
            containers,
            BTreeSet::from(["7379", "8379"]),
            "{name} publishes the client and admin ports"
        );
        for p in &ports {
            let (address, host, _) = published(p);
            assert_eq!(address, "127.0.0.1", "{name}: no authentication, so the host's loopback only");
            assert!(host_ports.insert(host.to_string()), "host port of {p} used twice");
        }
        let data = str_list(&node["volumes"]);
        assert_eq!(data, [format!("{name}-data:/data")]);
        assert!(volumes.contains(format!("{name}-data").as_str()));
        // Start order: postgres healthy first; the other nodes after node-a (the grid's seed).
        let deps = node["depends_on"].as_mapping().expect("depends_on with conditions");
        let mut want = vec!["postgres"];
        if name != "node-a" {
            want.push("node-a");
        }
        for d in want {
            let cond = &deps[d]["condition"];
            assert_eq!(cond.as_str(), Some("service_healthy"), "{name} waits for {d}");
            assert!(!c["services"][d]["healthcheck"].is_null(), "{d} has a health check to wait for");
        }
        assert!(node["stop_grace_period"].as_str().is_some(), "{name} gives the drain time to stop");
        // One grid: node-a bootstraps it, the others join it; one zone per node; each
        // announces its service name.
        let env: BTreeMap<String, String> = env_of(node).into_iter().collect();
        assert_eq!(env.get("CACHEGRID_ZONE").map(String::as_str), Some(&*format!("zone-{}", &name[5..])));
        assert_eq!(env.get("CACHEGRID_CLUSTER_ANNOUNCE_IP").map(String::as_str), Some(name));
        if name == "node-a" {
            assert_eq!(env.get("CACHEGRID_CLUSTER_ENABLED").map(String::as_str), Some("true"));
        } else {
            assert_eq!(env.get("CACHEGRID_CLUSTER_JOIN").map(String::as_str), Some(r#"["node-a:7379"]"#));
        }
        // Sessions are backed by the postgres service.
        let url = env.get("CACHEGRID_POSTGRES_URL").expect("postgres-url");
        assert!(url.contains("host=postgres") && url.contains("dbname=cachegrid"), "{url}");
        let space = env.get("CACHEGRID_KEYSPACE").expect("a [[keyspace]]");
        assert!(
            space.contains(r#"pattern="session:*""#) && space.contains(r#"mode="write-behind""#),
            "{space}"
        );
    }

    // The session app: the same image, behind the three nodes, started once they are healthy.
    let app = &c["services"]["app"];
    assert_eq!(app["image"].as_str(), c["services"]["node-a"]["image"].as_str(), "the nodes' image");
    assert_eq!(app["build"].as_str(), Some("."));
    assert_eq!(str_list(&app["entrypoint"]), ["login_app"]);
    let ports = str_list(&app["ports"]);
    assert_eq!(ports.iter().map(|p| published(p)).collect::<Vec<_>>(), [("127.0.0.1", "3000", "3000")]);
    assert!(host_ports.insert("3000".into()), "the app's host port is its own");
    let command = str_list(&app["command"]);
    let grids: Vec<&str> = command.windows(2).filter(|w| w[0] == "--grid").map(|w| w[1].as_str()).collect();
    assert_eq!(grids, NODES.map(|n| format!("redis://{n}:7379")), "every node is a seed");
    assert!(command.windows(2).any(|w| w == ["--listen", "0.0.0.0:3000"]), "{command:?}");
    assert_eq!(
        str_list(&app["healthcheck"]["test"]),
        ["CMD", "cachegrid", "health", "--admin", "127.0.0.1:3000"]
    );
    let deps = app["depends_on"].as_mapping().expect("depends_on with conditions");
    for n in NODES {
        assert_eq!(deps[n]["condition"].as_str(), Some("service_healthy"), "the app waits for {n}");
    }
}

#[test]
fn the_session_app_accepts_its_compose_command_and_passes_its_health_check() {
    let c = compose();
    let app = &c["services"]["app"];
    let command = str_list(&app["command"]);
    let help = Command::new(login_app()).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in command.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "login_app has no {flag}"
        );
    }
    // The compose command, on a free loopback port instead of 0.0.0.0:3000 (grids are reached
    // lazily: no node needs to run), then the compose health check against it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<&str> =
        command.iter().map(|a| if a == "0.0.0.0:3000" { listen.as_str() } else { a }).collect();
    let mut child = Command::new(login_app())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the app starts").unwrap();
    assert_eq!(first, format!("login_app on http://{listen}"));
    let test = str_list(&app["healthcheck"]["test"]);
    assert_eq!(&test[..2], ["CMD", "cachegrid"]);
    let check: Vec<String> = test[2..].iter().map(|a| a.replace("127.0.0.1:3000", &listen)).collect();
    let check: Vec<&str> = check.iter().map(String::as_str).collect();
    let out = cachegrid(&check, &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "the app's health check fails: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_setting_in_the_compose_file_is_one_the_binary_accepts() {
    let c = compose();
    let dockerfile_env = dockerfile_env();
    for name in NODES {
        let node = &c["services"][name];
        let mut env = dockerfile_env.clone();
        env.extend(env_of(node));
        let merged = accepted_config(&env, name);
        // The variables really land (a typo would fail above: unknown options are refused).
        for (k, v) in env_of(node) {
            let key = k.trim_start_matches("CACHEGRID_").to_lowercase().replace('_', "-");
            assert!(merged.contains_key(&key), "{name}: {k} is not shown by cachegrid config");
            let _ = v;
        }
        // A command, if any, is `node` with flags the binary accepts (checked by `config`,
        // which takes exactly node's flags).
        let command = str_list(&node["command"]);
        if !command.is_empty() {
            assert_eq!(command[0], "node", "{name}");
            let mut args = vec!["config".to_string()];
            args.extend(command[1..].iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cachegrid(&args, &env);
            assert!(out.status.success(), "{name}: {command:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The health check finds the admin port from the same variables.
        let (host, port) = config_admin(&merged);
        assert_eq!((host.as_str(), port), ("0.0.0.0", 8379), "{name}");
    }
}

fn config_admin(merged: &toml::Table) -> (String, u16) {
    let bind = merged.get("admin-bind").or(merged.get("bind")).unwrap().as_str().unwrap().to_string();
    let port = match merged.get("admin-port") {
        Some(p) => p.as_integer().unwrap() as u16,
        None => merged["port"].as_integer().unwrap() as u16 + 1000,
    };
    (bind, port)
}

/// The `ENV` variables of the Dockerfile.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut env = Vec::new();
    for line in joined.lines().filter(|l| l.starts_with("ENV ")) {
        for pair in line[4..].split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=value");
            env.push((k.to_string(), v.to_string()));
        }
    }
    env
}

#[test]
fn the_dockerfile_builds_a_small_non_root_image_with_a_health_check() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: build, then runtime");
    assert!(froms[0].contains(" AS build"));
    assert!(froms[1].contains("-slim"), "small runtime image");
    assert!(text.contains("cargo build --release --locked --bin cachegrid"));
    assert!(text.contains("COPY --from=build /src/target/release/cachegrid /usr/local/bin/cachegrid"));
    assert!(text.lines().any(|l| l == "USER cachegrid"), "runs as a non-root user");
    assert!(text.contains("VOLUME [\"/data\"]"));
    let expose: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("EXPOSE ")).collect();
    assert_eq!(expose, ["7379 8379 17379"], "client, admin and cluster bus ports");
    // The example session app is built and shipped in the same image.
    assert!(text.contains("COPY middleware ./middleware"), "the workspace's second member");
    assert!(text.contains("cargo build --release --locked -p cachegrid-middleware --example login_app"));
    assert!(
        text.contains("COPY --from=build /src/target/release/examples/login_app /usr/local/bin/login_app")
    );
    assert!(text.contains("HEALTHCHECK") && text.contains("CMD [\"cachegrid\", \"health\"]"));
    assert!(text.contains("ENTRYPOINT [\"cachegrid\"]") && text.contains("CMD [\"node\"]"));
    let env = dockerfile_env();
    let merged = accepted_config(&env, "Dockerfile ENV");
    assert_eq!(merged["bind"].as_str(), Some("0.0.0.0"));
    assert_eq!(merged["dir"].as_str(), Some("/data"));
    // The image's default port is the one it exposes.
    assert_eq!(merged["port"].as_integer(), Some(7379));
    assert_eq!(config_admin(&merged).1, 8379);
    let out = cachegrid(&["health", "--help"], &[]);
    assert!(out.status.success(), "the health subcommand exists");
}

#[test]
fn the_readme_container_commands_match_the_binary() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("## Run a grid in containers")
        .nth(1)
        .expect("README section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut checked = 0;
    for line in section.lines() {
        let code = line.split('#').next().unwrap().trim();
        if let Some(rest) = code.strip_prefix("docker compose exec ") {
            let mut words = rest.split_whitespace();
            let service = words.next().unwrap();
            assert!(!compose()["services"][service].is_null(), "{line}: no such service");
            if words.next() != Some("cachegrid") {
                continue; // another tool of the service's image (psql)
            }
            assert!(NODES.contains(&service), "{line}: cachegrid runs in the nodes");
            let args: Vec<&str> = words.collect();
            let sub = args[0];
            let help = cachegrid(&[sub, "--help"], &[]);
            assert!(help.status.success(), "{line}: cachegrid has no subcommand {sub}");
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                assert!(help.contains(flag), "{line}: cachegrid {sub} has no flag {flag}");
            }
            checked += 1;
        }
        if let Some(port) = code.strip_prefix("redis-cli -p ").and_then(|r| r.split_whitespace().next()) {
            let ports: Vec<String> =
                NODES.iter().flat_map(|n| str_list(&compose()["services"][*n]["ports"])).collect();
            assert!(
                ports.iter().any(|p| published(p).1 == port && published(p).2 == "7379"),
                "{line}: port {port} is not a node's client port"
            );
            checked += 1;
        }
        if let Some(url) =
            code.strip_prefix("curl ").and_then(|r| r.split_whitespace().find(|w| w.contains("localhost:")))
        {
            let port = url.trim_matches('\'').split("localhost:").nth(1).unwrap().split('/').next().unwrap();
            let all: Vec<String> = compose()["services"]
                .as_mapping()
                .unwrap()
                .values()
                .flat_map(|s| str_list(&s["ports"]))
                .collect();
            assert!(all.iter().any(|p| published(p).1 == port), "{line}: nothing is published on {port}");
            checked += 1;
        }
    }
    assert!(checked >= 2, "the section shows commands to run");
    for (port, node) in [("8379", "node-a"), ("8380", "node-b"), ("8381", "node-c")] {
        assert!(str_list(&compose()["services"][node]["ports"]).contains(&format!("127.0.0.1:{port}:8379")));
        assert!(section.contains(port), "README names {node}'s admin port {port}");
    }
    assert!(section.contains("http://localhost:3000/"), "README names the app's address");
}
