//! The services of `deploy/docker-compose.yml` as the tests need them, read without a YAML
//! crate: each service's name, its `command: [...]` (a one-line flow sequence, which is
//! JSON) and its `environment:` map. It reads the file as written there (block mappings,
//! two-space indents); `.ci/run` checks the file itself against the compose spec.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn path() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/docker-compose.yml")
}

#[derive(Debug, Default)]
pub struct Service {
    pub name: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Service {
    /// The value after `--flag` in the command line.
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let at = self.command.iter().position(|a| a == flag)?;
        self.command.get(at + 1).map(String::as_str)
    }

    pub fn has(&self, flag: &str) -> bool {
        self.command.iter().any(|a| a == flag)
    }

    pub fn env(&self, key: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The role: the command's first word (`server`, `model`, `worker`, `evaluator`).
    pub fn role(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// A `key: value` line's key and value (value empty for a key that opens a block).
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.trim().split_once(':')?;
    Some((k.trim(), v.trim()))
}

/// The services of a compose file, in file order.
pub fn services(text: &str) -> Vec<Service> {
    let mut out: Vec<Service> = Vec::new();
    let (mut top, mut key) = (String::new(), String::new());
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (k, v) = key_value(line).unwrap_or((line.trim(), ""));
        match indent(line) {
            0 => top = k.to_string(),
            2 if top == "services" => out.push(Service { name: k.to_string(), ..Service::default() }),
            4 if top == "services" => {
                key = k.to_string();
                let service = out.last_mut().expect("a service key before any service");
                if k == "command" {
                    assert!(v.starts_with('['), "{}: command is not a one-line flow sequence", service.name);
                    service.command = serde_json::from_str(v).unwrap_or_else(|e| panic!("{line}: {e}"));
                }
            }
            6 if top == "services" && key == "environment" => {
                let service = out.last_mut().unwrap();
                let pair = match line.trim().strip_prefix("- ") {
                    Some(item) => item.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())),
                    None => Some((k.to_string(), v.trim_matches('"').to_string())),
                };
                service.env.extend(pair);
            }
            _ => {}
        }
    }
    out
}

/// The services of `deploy/docker-compose.yml`.
pub fn deploy_services() -> Vec<Service> {
    services(&std::fs::read_to_string(path()).unwrap())
}
