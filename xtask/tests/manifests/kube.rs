//! The parts of the Kubernetes manifests the drift checks read, from any
//! number of files of any number of `---` documents each.

use std::{collections::BTreeMap, path::Path};

use saphyr::{LoadableYamlNode, ScalarOwned, YamlOwned};

/// Where an environment variable's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Value(String),
    ConfigMap {
        name: String,
        key: String,
    },
    Secret {
        name: String,
        key: String,
    },
    /// fieldRef, resourceFieldRef, or nothing.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(i64),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `service` is the health name asked about ("" when not given).
    Grpc {
        port: i64,
        service: String,
    },
    Http {
        path: String,
        port: PortRef,
    },
    Tcp {
        port: PortRef,
    },
    Other,
}

#[derive(Clone, Debug, Default)]
pub struct Container {
    pub name: String,
    pub env: Vec<(String, Source)>,
    /// `(name, containerPort)`.
    pub ports: Vec<(Option<String>, i64)>,
    /// `(readiness|liveness|startup, probe)`.
    pub probes: Vec<(&'static str, Probe)>,
    /// Seconds a `preStop` hook sleeps (`sleep: {seconds}` or `exec: sleep N`).
    pub pre_stop_sleep: u64,
    /// It requests CPU (what a CPU-utilization autoscaler divides by).
    pub cpu_request: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Deployment {
    pub file: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.selector.matchLabels`.
    pub selector: BTreeMap<String, String>,
    /// `spec.replicas`, when set.
    pub replicas: Option<i64>,
    /// The pod template's annotations, over the Deployment's own.
    pub annotations: BTreeMap<String, String>,
    pub grace: Option<i64>,
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Default)]
pub struct Service {
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// `(port, targetPort)`; targetPort defaults to port.
    pub ports: Vec<(i64, PortRef)>,
}

/// A PodDisruptionBudget: which pods it guards.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    pub name: String,
    pub selector: BTreeMap<String, String>,
}

/// A HorizontalPodAutoscaler: what it scales, from how many.
#[derive(Clone, Debug, Default)]
pub struct Autoscaler {
    pub name: String,
    pub target_kind: String,
    pub target_name: String,
    pub min_replicas: i64,
}

#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub budgets: Vec<Budget>,
    pub autoscalers: Vec<Autoscaler>,
    /// name -> key -> value.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// name -> key -> value (`stringData` as written, `data` still base64).
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

fn get<'a>(node: &'a YamlOwned, path: &str) -> Option<&'a YamlOwned> {
    path.split('.')
        .try_fold(node, |n, key| n.as_mapping_get(key))
}

/// A scalar as text: `8080`, `"8080"` and `true` alike.
pub fn text(node: &YamlOwned) -> Option<String> {
    match node {
        YamlOwned::Value(ScalarOwned::String(s)) => Some(s.clone()),
        YamlOwned::Value(ScalarOwned::Integer(i)) => Some(i.to_string()),
        YamlOwned::Value(ScalarOwned::FloatingPoint(f)) => Some(f.to_string()),
        YamlOwned::Value(ScalarOwned::Boolean(b)) => Some(b.to_string()),
        YamlOwned::Representation(s, _, _) => Some(s.clone()),
        YamlOwned::Tagged(_, inner) => text(inner),
        _ => None,
    }
}

fn text_at(node: &YamlOwned, path: &str) -> Option<String> {
    get(node, path).and_then(text)
}

fn seq<'a>(node: &'a YamlOwned, path: &str) -> &'a [YamlOwned] {
    get(node, path)
        .and_then(|n| n.as_vec())
        .map(|v| v.as_slice())
        .unwrap_or(&[])
}

fn string_map(node: Option<&YamlOwned>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(map) = node.and_then(|n| n.as_mapping()) {
        for (k, v) in map {
            if let Some(k) = text(k) {
                out.insert(k, text(v).unwrap_or_default());
            }
        }
    }
    out
}

fn port_ref(node: Option<&YamlOwned>) -> Option<PortRef> {
    let t = text(node?)?;
    Some(match t.parse() {
        Ok(n) => PortRef::Number(n),
        Err(_) => PortRef::Name(t),
    })
}

fn container(node: &YamlOwned) -> Container {
    let env = seq(node, "env")
        .iter()
        .map(|e| {
            let name = text_at(e, "name").unwrap_or_default();
            let source = if let Some(v) = get(e, "value") {
                Source::Value(text(v).unwrap_or_default())
            } else if let Some(r) = get(e, "valueFrom.configMapKeyRef") {
                Source::ConfigMap {
                    name: text_at(r, "name").unwrap_or_default(),
                    key: text_at(r, "key").unwrap_or_default(),
                }
            } else if let Some(r) = get(e, "valueFrom.secretKeyRef") {
                Source::Secret {
                    name: text_at(r, "name").unwrap_or_default(),
                    key: text_at(r, "key").unwrap_or_default(),
                }
            } else {
                Source::Other
            };
            (name, source)
        })
        .collect();
    let ports = seq(node, "ports")
        .iter()
        .filter_map(|p| {
            let port = text_at(p, "containerPort")?.parse().ok()?;
            Some((text_at(p, "name"), port))
        })
        .collect();
    let mut probes = Vec::new();
    for kind in ["readiness", "liveness", "startup"] {
        let Some(p) = node.as_mapping_get(&format!("{kind}Probe")) else {
            continue;
        };
        let probe = if let Some(g) = get(p, "grpc") {
            Probe::Grpc {
                port: text_at(g, "port")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(-1),
                service: text_at(g, "service").unwrap_or_default(),
            }
        } else if let Some(h) = get(p, "httpGet") {
            Probe::Http {
                path: text_at(h, "path").unwrap_or_else(|| "/".into()),
                port: port_ref(get(h, "port")).unwrap_or(PortRef::Number(-1)),
            }
        } else if let Some(t) = get(p, "tcpSocket") {
            Probe::Tcp {
                port: port_ref(get(t, "port")).unwrap_or(PortRef::Number(-1)),
            }
        } else {
            Probe::Other
        };
        probes.push((kind, probe));
    }
    let pre_stop_sleep = get(node, "lifecycle.preStop")
        .map(|h| {
            if let Some(s) = text_at(h, "sleep.seconds") {
                return s.parse().unwrap_or(0);
            }
            let cmd: Vec<String> = seq(h, "exec.command").iter().filter_map(text).collect();
            // ["sleep", "5"] or ["/bin/sh", "-c", "sleep 5"]
            let words: Vec<&str> = cmd.iter().flat_map(|c| c.split_whitespace()).collect();
            words
                .windows(2)
                .find(|w| w[0].ends_with("sleep"))
                .and_then(|w| w[1].parse().ok())
                .unwrap_or(0)
        })
        .unwrap_or(0);
    Container {
        name: text_at(node, "name").unwrap_or_default(),
        env,
        ports,
        probes,
        pre_stop_sleep,
        cpu_request: get(node, "resources.requests.cpu").is_some(),
    }
}

impl Manifests {
    /// Adds every document of one file's text.
    pub fn add(&mut self, file: &str, yaml: &str) -> Result<(), String> {
        let docs = YamlOwned::load_from_str(yaml).map_err(|e| format!("{file}: {e}"))?;
        for doc in docs {
            self.add_doc(file, &doc);
        }
        Ok(())
    }

    fn add_doc(&mut self, file: &str, doc: &YamlOwned) {
        if let Some(items) = get(doc, "items").and_then(|i| i.as_vec()) {
            for item in items {
                self.add_doc(file, item);
            }
        }
        let kind = text_at(doc, "kind").unwrap_or_default();
        let name = text_at(doc, "metadata.name").unwrap_or_default();
        match kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" => {
                let pod = get(doc, "spec.template")
                    .cloned()
                    .unwrap_or(YamlOwned::BadValue);
                let mut annotations = string_map(get(doc, "metadata.annotations"));
                annotations.extend(string_map(get(&pod, "metadata.annotations")));
                self.deployments.push(Deployment {
                    file: file.to_owned(),
                    name,
                    labels: string_map(get(&pod, "metadata.labels")),
                    selector: string_map(get(doc, "spec.selector.matchLabels")),
                    replicas: text_at(doc, "spec.replicas").and_then(|s| s.parse().ok()),
                    annotations,
                    grace: text_at(&pod, "spec.terminationGracePeriodSeconds")
                        .and_then(|s| s.parse().ok()),
                    containers: seq(&pod, "spec.containers").iter().map(container).collect(),
                });
            }
            "Service" => self.services.push(Service {
                name,
                selector: string_map(get(doc, "spec.selector")),
                ports: seq(doc, "spec.ports")
                    .iter()
                    .filter_map(|p| {
                        let port: i64 = text_at(p, "port")?.parse().ok()?;
                        let target =
                            port_ref(get(p, "targetPort")).unwrap_or(PortRef::Number(port));
                        Some((port, target))
                    })
                    .collect(),
            }),
            "PodDisruptionBudget" => self.budgets.push(Budget {
                name,
                selector: string_map(get(doc, "spec.selector.matchLabels")),
            }),
            "HorizontalPodAutoscaler" => self.autoscalers.push(Autoscaler {
                name,
                target_kind: text_at(doc, "spec.scaleTargetRef.kind").unwrap_or_default(),
                target_name: text_at(doc, "spec.scaleTargetRef.name").unwrap_or_default(),
                // Kubernetes' default.
                min_replicas: text_at(doc, "spec.minReplicas")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1),
            }),
            "ConfigMap" => {
                self.config_maps
                    .entry(name)
                    .or_default()
                    .extend(string_map(get(doc, "data")));
            }
            "Secret" => {
                let keys = self.secrets.entry(name).or_default();
                keys.extend(string_map(get(doc, "data")));
                keys.extend(string_map(get(doc, "stringData")));
            }
            _ => {}
        }
    }

    /// Every `.yaml`/`.yml` file under `dir`, less those its `.gitignore`
    /// names (`secrets.yaml`, a filled-in copy of the example, stays unread).
    pub fn load(dir: &Path) -> Result<Self, String> {
        let ignored: Vec<String> = std::fs::read_to_string(dir.join(".gitignore"))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let is_ignored = |name: &str| {
            ignored
                .iter()
                .any(|pattern| match pattern.strip_prefix('*') {
                    Some(suffix) => name.ends_with(suffix),
                    None => name == pattern.trim_start_matches('/'),
                })
        };
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            for e in entries.flatten() {
                let path = e.path();
                if is_ignored(&e.file_name().to_string_lossy()) {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    files.push(path);
                }
            }
        }
        files.sort();
        let mut m = Self::default();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string();
            m.add(&rel, &text)?;
        }
        Ok(m)
    }
}
