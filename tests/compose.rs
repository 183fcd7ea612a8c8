//! The container files against the binary (no container engine runs here, and `docker compose
//! config` is not installed): `docker-compose.yml` parses, has its services, ports, volumes,
//! health checks and start order; every `CACHEGRID_*` variable and flag it, the Dockerfile or
//! the README's container section uses is one the binary accepts.

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
fn the_compose_file_runs_three_nodes_and_postgres_in_order() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["postgres", "node-a", "node-b", "node-c"]));
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
        let containers: BTreeSet<&str> = ports.iter().map(|p| p.rsplit(':').next().unwrap()).collect();
        assert_eq!(
            containers,
            BTreeSet::from(["7379", "8379"]),
            "{name} publishes the client and admin ports"
        );
        for p in &ports {
            assert!(
                host_ports.insert(p.split(':').next().unwrap().to_string()),
                "host port of {p} used twice"
            );
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
    }
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
    assert_eq!(expose, ["7379 8379"]);
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
            assert!(NODES.contains(&service), "{line}: no such service");
            assert_eq!(words.next(), Some("cachegrid"), "{line}");
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
            let published: Vec<String> =
                NODES.iter().flat_map(|n| str_list(&compose()["services"][*n]["ports"])).collect();
            assert!(
                published.contains(&format!("{port}:7379")),
                "{line}: port {port} is not a node's client port"
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "the section shows commands to run");
    for (port, node) in [("8379", "node-a"), ("8380", "node-b"), ("8381", "node-c")] {
        assert!(str_list(&compose()["services"][node]["ports"]).contains(&format!("{port}:8379")));
        assert!(section.contains(port), "README names {node}'s admin port {port}");
    }
}
