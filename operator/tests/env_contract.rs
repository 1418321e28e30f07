//! The contract between the pods the operator renders and the services they run: every
//! environment variable a container sets is one its service reads (a misspelt name would be
//! silently ignored), its value is one the service's own parsers take, and every variable
//! whose default only makes sense on one machine (a URL or peer list on 127.0.0.1) is set.

use std::collections::{BTreeMap, BTreeSet};

use clap::{ArgAction, Args, Command};

/// The variables a service reads, with their defaults.
fn reads<A: Args>() -> BTreeMap<String, Vec<String>> {
    A::augment_args(Command::new("service"))
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            let defaults = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            Some((env, defaults))
        })
        .collect()
}

type Parser = fn(&[String], &BTreeMap<&str, &str>) -> Result<(), String>;

/// Parses a container's arguments and the values its variables set (as the flags those
/// variables stand for) with the service's own flags, as the service would at start.
fn parse<A: Args>(arguments: &[String], values: &BTreeMap<&str, &str>) -> Result<(), String> {
    let command = A::augment_args(Command::new("service"));
    let mut argv = arguments.to_vec();
    for arg in command.get_arguments() {
        let Some(value) = arg.get_env().and_then(|name| values.get(name.to_str()?)) else {
            continue;
        };
        let long = arg.get_long().expect("a variable stands for a flag");
        match arg.get_action() {
            ArgAction::SetTrue if *value == "true" => argv.push(format!("--{long}")),
            ArgAction::SetTrue => {}
            _ => argv.push(format!("--{long}={value}")),
        }
    }
    command
        .try_get_matches_from(argv)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn every_variable_a_pod_sets_is_read_and_every_local_default_is_overridden() {
    let services = BTreeMap::from([
        ("catalog", reads::<stocknet_catalog::Config>()),
        ("order", reads::<stocknet_order::Config>()),
        ("frontend", reads::<stocknet_frontend::Config>()),
    ]);
    let parsers: BTreeMap<&str, Parser> = BTreeMap::from([
        ("catalog", parse::<stocknet_catalog::Config> as _),
        ("order", parse::<stocknet_order::Config> as _),
        ("frontend", parse::<stocknet_frontend::Config> as _),
    ]);
    let example = include_str!("../../examples/stocknet.yaml");
    let rendered = stocknet_operator::resources::render(example, "default").expect("render");
    let mut seen = BTreeSet::new();
    for document in serde_yaml::Deserializer::from_str(&rendered) {
        let object: serde_yaml::Value = serde::Deserialize::deserialize(document).expect("YAML");
        let containers = &object["spec"]["template"]["spec"]["containers"];
        for container in containers.as_sequence().into_iter().flatten() {
            let service = container["args"][0].as_str().expect("a service to run");
            let known = &services[service];
            let set: BTreeSet<&str> = container["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|var| var["name"].as_str().expect("a name"))
                .collect();
            for name in &set {
                assert!(known.contains_key(*name), "{service} does not read {name}");
            }
            for (name, defaults) in known {
                let local = defaults.iter().any(|value| value.contains("127.0.0.1"));
                assert!(
                    !local || set.contains(name.as_str()),
                    "{service}'s {name} defaults to {defaults:?} and the pod leaves it so"
                );
            }
            // Values from secrets and the pod's own fields are not known before it runs.
            let values: BTreeMap<&str, &str> = container["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|var| Some((var["name"].as_str()?, var["value"].as_str()?)))
                .collect();
            let arguments: Vec<String> = container["args"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|arg| Some(arg.as_str()?.to_owned()))
                .collect();
            if let Err(refused) = parsers[service](&arguments, &values) {
                panic!("{service} refuses what its pod sets: {refused}");
            }
            seen.insert(service.to_owned());
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["catalog", "frontend", "order"].map(String::from))
    );
}

/// The report CronJob's container runs `stocknet report`, whose flags live in the root crate
/// (src/report.rs): every variable the job sets is one of its flags' `env`.
#[test]
fn every_variable_the_report_job_sets_is_one_stocknet_report_reads() {
    // Its flags name their variables as `env = env::NAME`, the constants of common's `env`.
    let names: BTreeMap<&str, &str> = include_str!("../../services/common/src/env.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("pub const "))
        .filter_map(|rest| {
            let (name, value) = rest.split_once(": &str = \"")?;
            Some((name, value.strip_suffix("\";")?))
        })
        .collect();
    let reads: BTreeSet<&str> = include_str!("../../src/report.rs")
        .split("env = env::")
        .skip(1)
        .filter_map(|rest| {
            let name = rest
                .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .next()?;
            names.get(name).copied()
        })
        .collect();
    assert!(reads.contains("STOCKNET_REPORT_FRONTEND"), "{reads:?}");
    let yaml = r#"
apiVersion: stocknet.io/v1alpha1
kind: StockNet
metadata: {name: demo}
spec:
  reports:
    webhook: {url: "https://hooks.example.com/r", secret: {name: hook, key: hmac}}
    mail:
      smtpUrl: smtp://mail.example.com
      from: reports@example.com
      to: [desk@example.com]
      credentials: {name: smtp, key: login}
"#;
    let rendered = stocknet_operator::resources::render(yaml, "default").expect("render");
    let mut set = BTreeSet::new();
    for document in serde_yaml::Deserializer::from_str(&rendered) {
        let object: serde_yaml::Value = serde::Deserialize::deserialize(document).expect("YAML");
        let pod = &object["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        for container in pod["containers"].as_sequence().into_iter().flatten() {
            assert_eq!(container["args"][0].as_str(), Some("report"));
            for var in container["env"].as_sequence().into_iter().flatten() {
                set.insert(var["name"].as_str().expect("a name").to_owned());
            }
        }
    }
    assert!(set.len() >= 8, "{set:?}");
    for name in &set {
        assert!(
            reads.contains(name.as_str()),
            "stocknet report does not read {name}"
        );
    }
}
