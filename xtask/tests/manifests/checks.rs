//! The drift checks: the manifests against what the code reads. Each returns
//! its problems as sentences naming the file, Deployment, container and
//! variable; none means the two agree.

use std::collections::{BTreeMap, BTreeSet};

// The health name the runtime keeps SERVING while the process runs.
use mesh_runtime::server::LIVENESS;

use crate::{
    kube::{Container, Deployment, Manifests, PortRef, Probe, Source},
    scan::{Metrics, Process},
};

/// Variables no `optional(..)` names because the OpenTelemetry SDK and its
/// OTLP/gRPC span exporter read them themselves (opentelemetry_sdk and
/// opentelemetry-otlp 0.33: the trace signal only, the mesh exports no logs
/// or metrics over OTLP). `OTEL_EXPORTER_OTLP_PROTOCOL` is left out on
/// purpose: the exporter is built `with_tonic()`, so it always speaks gRPC
/// and a manifest asking for http/protobuf would be silently ignored.
pub const OTEL_ALLOWED: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
];

/// `required(..)` calls that only run on one branch, so the scanner's
/// "required" is too strong for them: `(variable, selector, selector values
/// under which it is required, selector's default)`. memory's embedder:
/// `EMBEDDER=local` (the default) needs `MEMORY_MODEL_DIR`, `supplied` needs
/// `EMBEDDINGS_MODEL`. Every other `required` is taken as unconditional.
pub const CONDITIONALLY_REQUIRED: &[(&str, &str, &[&str], &str)] = &[
    ("MEMORY_MODEL_DIR", "EMBEDDER", &["local"], "local"),
    ("EMBEDDINGS_MODEL", "EMBEDDER", &["supplied"], "local"),
];

/// The ConfigMap and Secret the convention allows containers to reference.
pub const CONFIG_MAP: &str = "mesh-config";
pub const SECRET: &str = "mesh-secrets";

/// Whether a variable or key names something to keep out of a ConfigMap.
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase().replace(['-', '.'], "_");
    ["TOKEN", "SECRET", "PASSWORD"]
        .iter()
        .any(|s| n.ends_with(s))
        || n.contains("DATABASE_URL")
        || n.contains("API_KEY")
}

/// Which of `processes` a Deployment runs: its container's or its own name,
/// less a `mesh-` prefix, is the process's.
pub fn process_of<'p>(processes: &'p [String], d: &Deployment, c: &Container) -> Option<&'p str> {
    let bare = |s: &str| s.strip_prefix("mesh-").unwrap_or(s).to_owned();
    let find = |n: &str| {
        processes
            .iter()
            .find(|p| **p == bare(n))
            .map(String::as_str)
    };
    find(&c.name).or_else(|| find(&d.name))
}

/// A container's value for `var`: literal, or looked up in the ConfigMap or
/// Secret example. `None` when unset or not resolvable.
pub fn value_of(m: &Manifests, c: &Container, var: &str) -> Option<String> {
    let (_, source) = c.env.iter().find(|(n, _)| n == var)?;
    match source {
        Source::Value(v) => Some(v.clone()),
        Source::ConfigMap { name, key } => m.config_maps.get(name)?.get(key).cloned(),
        Source::Secret { name, key } => m.secrets.get(name)?.get(key).cloned(),
        Source::Other => None,
    }
}

/// `host:port` (or `[v6]:port`) -> (host, port).
pub fn split_addr(addr: &str) -> Option<(String, i64)> {
    let (host, port) = addr.trim().rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "::1"
}

fn at(d: &Deployment, c: &Container) -> String {
    format!("{}: Deployment {}, container {}", d.file, d.name, c.name)
}

/// Every container of every Deployment with the process it runs (problems
/// for those that run none, and for processes without a Deployment).
pub fn containers<'a>(
    m: &'a Manifests,
    code: &'a BTreeMap<String, Process>,
    problems: &mut Vec<String>,
) -> Vec<(&'a Deployment, &'a Container, &'a str)> {
    let names: Vec<String> = code.keys().cloned().collect();
    let mut out = Vec::new();
    for d in &m.deployments {
        for c in &d.containers {
            match process_of(&names, d, c) {
                Some(p) => {
                    let p = code.get_key_value(p).unwrap().0.as_str();
                    out.push((d, c, p));
                }
                None => problems.push(format!(
                    "{}: runs no process of the mesh (name it users, conversations, memory, \
                     scheduler, billing or gateway, optionally mesh-...)",
                    at(d, c)
                )),
            }
        }
    }
    for p in code.keys() {
        if !out.iter().any(|(_, _, q)| q == p) {
            problems.push(format!("no Deployment runs {p}"));
        }
    }
    out
}

/// 1. Every variable set is one the process reads; every one it requires is set.
pub fn env_vars(m: &Manifests, code: &BTreeMap<String, Process>) -> Vec<String> {
    let mut problems = Vec::new();
    for (d, c, p) in containers(m, code, &mut problems) {
        let process = &code[p];
        let mut seen = BTreeSet::new();
        for (var, _) in &c.env {
            if !seen.insert(var) {
                problems.push(format!("{}: {var} is listed twice in env", at(d, c)));
            }
            if !process.reads.contains(var) && !OTEL_ALLOWED.contains(&var.as_str()) {
                problems.push(format!(
                    "{}: sets {var}, which {p} never reads (not in its configuration code)",
                    at(d, c)
                ));
            }
        }
        for var in &process.required {
            let needed = match CONDITIONALLY_REQUIRED.iter().find(|r| r.0 == var) {
                None => true,
                Some((_, selector, when, default)) => {
                    let v = value_of(m, c, selector)
                        .filter(|v| !v.trim().is_empty())
                        .unwrap_or_else(|| default.to_string());
                    when.contains(&v.as_str())
                }
            };
            let listed = c.env.iter().any(|(n, _)| n == var);
            // An empty value counts as unset (config::optional).
            let empty = value_of(m, c, var).is_some_and(|v| v.trim().is_empty());
            if !needed {
            } else if listed && empty {
                problems.push(format!(
                    "{}: sets {var} to an empty value, which {p} treats as unset, and it is required",
                    at(d, c)
                ));
            } else if !listed && !process.image_env.contains(var) {
                problems.push(format!(
                    "{}: does not set {var}, which {p} requires to start",
                    at(d, c)
                ));
            }
        }
    }
    problems
}

/// 2. References resolve, every defined key is used, and secrets stay secret.
pub fn keys(m: &Manifests) -> Vec<String> {
    let mut problems = Vec::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for d in &m.deployments {
        for c in &d.containers {
            for (var, source) in &c.env {
                match source {
                    Source::ConfigMap { name, key } => {
                        used.insert((name.clone(), key.clone()));
                        if name != CONFIG_MAP {
                            problems.push(format!(
                                "{}: {var} refers to ConfigMap {name}, not {CONFIG_MAP}",
                                at(d, c)
                            ));
                        } else if !m.config_maps.get(name).is_some_and(|k| k.contains_key(key)) {
                            problems.push(format!(
                                "{}: {var} refers to key {key} of ConfigMap {name}, which has no such key",
                                at(d, c)
                            ));
                        }
                        if looks_secret(var) {
                            problems.push(format!(
                                "{}: {var} looks secret but comes from ConfigMap {name}: use secretKeyRef",
                                at(d, c)
                            ));
                        }
                    }
                    Source::Secret { name, key } => {
                        used.insert((name.clone(), key.clone()));
                        if name != SECRET {
                            problems.push(format!(
                                "{}: {var} refers to Secret {name}, not {SECRET}",
                                at(d, c)
                            ));
                        } else if !m.secrets.get(name).is_some_and(|k| k.contains_key(key)) {
                            problems.push(format!(
                                "{}: {var} refers to key {key} of Secret {name}, which the example does not define",
                                at(d, c)
                            ));
                        }
                    }
                    Source::Value(_) if looks_secret(var) => problems.push(format!(
                        "{}: {var} looks secret but is written in the Deployment: use secretKeyRef",
                        at(d, c)
                    )),
                    _ => {}
                }
            }
        }
    }
    for (kind, name, defined) in [
        ("ConfigMap", CONFIG_MAP, m.config_maps.get(CONFIG_MAP)),
        ("Secret", SECRET, m.secrets.get(SECRET)),
    ] {
        let Some(defined) = defined else {
            problems.push(format!("no {kind} {name} is defined"));
            continue;
        };
        for key in defined.keys() {
            if !used.contains(&(name.to_owned(), key.clone())) {
                problems.push(format!("{kind} {name}: key {key} is used by no container"));
            }
            if kind == "ConfigMap" && looks_secret(key) {
                problems.push(format!(
                    "ConfigMap {name}: key {key} looks secret: move it to Secret {SECRET}"
                ));
            }
        }
    }
    problems
}

fn resolve(c: &Container, port: &PortRef) -> Option<i64> {
    match port {
        PortRef::Number(n) => Some(*n),
        PortRef::Name(name) => c
            .ports
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name))
            .map(|(_, p)| *p),
    }
}

/// The address a process listens on in this container, and where it came from.
fn listen_addr(m: &Manifests, c: &Container, process: &Process) -> Option<(String, String)> {
    let var = process.listen_var.as_deref()?;
    match value_of(m, c, var) {
        Some(v) => Some((v, var.to_owned())),
        None => Some((
            process.default_addr.clone()?,
            "the code's DEFAULT_ADDR".into(),
        )),
    }
}

/// 3. Ports: containerPort, Service, probes and scrape annotations.
pub fn ports(m: &Manifests, code: &BTreeMap<String, Process>) -> Vec<String> {
    let mut problems = Vec::new();
    for (d, c, p) in containers(m, code, &mut problems) {
        let process = &code[p];
        let Some((addr, from)) = listen_addr(m, c, process) else {
            problems.push(format!("{}: cannot tell where {p} listens", at(d, c)));
            continue;
        };
        let Some((host, port)) = split_addr(&addr) else {
            problems.push(format!("{}: {from}={addr} is not host:port", at(d, c)));
            continue;
        };
        if is_loopback(&host) {
            problems.push(format!(
                "{}: {p} listens on {addr} ({from}), loopback: probes and Services cannot \
                 reach it; set it to 0.0.0.0:{port}",
                at(d, c)
            ));
        }
        if !c.ports.iter().any(|(_, cp)| *cp == port) {
            problems.push(format!(
                "{}: no containerPort {port}, the port {p} listens on ({from}={addr})",
                at(d, c)
            ));
        }
        let services: Vec<_> = m
            .services
            .iter()
            .filter(|s| {
                !s.selector.is_empty() && s.selector.iter().all(|(k, v)| d.labels.get(k) == Some(v))
            })
            .collect();
        if services.is_empty() {
            problems.push(format!("{}: no Service selects its pods", at(d, c)));
        }
        for s in services {
            for (sp, target) in &s.ports {
                let tp = resolve(c, target);
                if tp != Some(port) {
                    problems.push(format!(
                        "Service {}: targetPort {target:?} is not {port}, the port {p} listens on ({from})",
                        s.name
                    ));
                }
                // The gRPC services are called at <service>:<port> (the *_URL
                // variables); the gateway's Service may map 80 to its port.
                if process.grpc && *sp != port {
                    problems.push(format!(
                        "Service {}: port {sp} is not {port}, the port {p} listens on ({from})",
                        s.name
                    ));
                }
            }
        }
        // Readiness (is it serving?) and liveness (is it alive?) on every
        // container: without them a broken pod gets traffic or never restarts.
        for wanted in ["readiness", "liveness"] {
            if !c.probes.iter().any(|(kind, _)| *kind == wanted) {
                problems.push(format!("{}: no {wanted}Probe", at(d, c)));
            }
        }
        for (kind, probe) in &c.probes {
            let kind = *kind;
            // A gRPC probe asks about a health name: readiness the whole
            // server (""), which follows Postgres; liveness and startup the
            // runtime's LIVENESS name, which stays SERVING while it runs.
            if let Probe::Grpc { service, .. } = probe {
                let expected = if kind == "readiness" { "" } else { LIVENESS };
                if service != expected {
                    problems.push(format!(
                        "{}: {kind}Probe asks about health {service:?}, not {expected:?}",
                        at(d, c)
                    ));
                }
            }
            let probe_port = match probe {
                Probe::Grpc { port: pp, .. } if process.grpc => Some(Some(*pp)),
                Probe::Http { path, port: pp } if !process.grpc => {
                    if !process.routes.contains(path) {
                        problems.push(format!(
                            "{}: {kind}Probe httpGet path {path} is no route of {p} (it has {:?})",
                            at(d, c),
                            process.routes
                        ));
                    }
                    Some(resolve(c, pp))
                }
                // Liveness and startup may only ask whether the port is open.
                Probe::Tcp { port: pp } if kind != "readiness" => Some(resolve(c, pp)),
                _ => None,
            };
            match probe_port {
                None => problems.push(format!(
                    "{}: {kind}Probe {probe:?} is not the agreed kind (grpc for the services, \
                     httpGet for the gateway; tcpSocket only for liveness and startup)",
                    at(d, c)
                )),
                Some(pp) if pp != Some(port) => problems.push(format!(
                    "{}: {kind}Probe {probe:?} does not probe {port}, the port {p} listens on",
                    at(d, c)
                )),
                Some(_) => {}
            }
        }
        if let Some(path) = d.annotations.get("prometheus.io/path")
            && !process.routes.contains(path)
        {
            problems.push(format!(
                "{}: annotation prometheus.io/path={path} is no route of {p}",
                at(d, c)
            ));
        }
        if let Some(scrape) = d.annotations.get("prometheus.io/port") {
            let metrics: Vec<(i64, String)> = process
                .metrics
                .iter()
                .filter_map(|mt| match mt {
                    Metrics::Main => Some((port, host.clone())),
                    Metrics::Addr { var, default } => {
                        let a = value_of(m, c, var).unwrap_or_else(|| default.clone());
                        split_addr(&a).map(|(h, p)| (p, h))
                    }
                })
                .collect();
            match metrics.iter().find(|(mp, _)| scrape.parse() == Ok(*mp)) {
                None => problems.push(format!(
                    "{}: annotation prometheus.io/port={scrape}, but {p} serves /metrics on {}",
                    at(d, c),
                    if metrics.is_empty() {
                        "no port".to_owned()
                    } else {
                        format!("{:?}", metrics.iter().map(|(p, _)| p).collect::<Vec<_>>())
                    }
                )),
                Some((mp, h)) if is_loopback(h) => problems.push(format!(
                    "{}: prometheus.io/port={mp}, but {p}'s metrics listen on loopback {h}: \
                     Prometheus cannot reach them (set its *_METRICS_ADDR to 0.0.0.0:{mp})",
                    at(d, c)
                )),
                Some(_) => {}
            }
        }
    }
    // URLs between the processes name a Service and one of its ports.
    for d in &m.deployments {
        for c in &d.containers {
            for (var, _) in &c.env {
                let Some(url) = value_of(m, c, var) else {
                    continue;
                };
                let Some(rest) = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"))
                else {
                    continue;
                };
                let authority = rest.split('/').next().unwrap_or_default();
                let Some((host, port)) = split_addr(authority) else {
                    continue;
                };
                let svc_name = host.split('.').next().unwrap_or_default();
                if let Some(s) = m.services.iter().find(|s| s.name == svc_name)
                    && !s.ports.iter().any(|(sp, _)| *sp == port)
                {
                    problems.push(format!(
                        "{}: {var}={url}, but Service {} exposes ports {:?}",
                        at(d, c),
                        s.name,
                        s.ports.iter().map(|(p, _)| p).collect::<Vec<_>>()
                    ));
                }
            }
        }
    }
    problems
}

/// 4. The grace period outlasts the preStop sleep plus the drain.
pub fn grace(m: &Manifests, code: &BTreeMap<String, Process>) -> Vec<String> {
    let mut problems = Vec::new();
    for (d, c, p) in containers(m, code, &mut problems) {
        let drain = match value_of(m, c, "MESH_DRAIN_SECONDS") {
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    problems.push(format!(
                        "{}: MESH_DRAIN_SECONDS={v} is not a number",
                        at(d, c)
                    ));
                    continue;
                }
            },
            None => code[p].drain_default.unwrap_or(10),
        };
        // Kubernetes' default when the field is left out.
        let grace = d.grace.unwrap_or(30);
        let needed = drain + c.pre_stop_sleep;
        if grace <= needed as i64 {
            problems.push(format!(
                "{}: terminationGracePeriodSeconds {grace}{} does not exceed preStop sleep {} + \
                 MESH_DRAIN_SECONDS {drain} = {needed}: the kubelet kills {p} mid-drain",
                at(d, c),
                if d.grace.is_none() { " (default)" } else { "" },
                c.pre_stop_sleep
            ));
        }
    }
    problems
}

/// Whether every label `selector` asks for is among `labels` (an empty
/// selector selects nothing here: Deployments and Services must name theirs).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Check 5, references between objects, which a schema check of each object
/// alone cannot see: a Deployment's selector and its pods' labels, the pods
/// a Service or a PodDisruptionBudget selects, what an autoscaler scales.
pub fn references(m: &Manifests) -> Vec<String> {
    let mut problems = Vec::new();
    let selected = |selector: &BTreeMap<String, String>| {
        m.deployments
            .iter()
            .filter(|d| selects(selector, &d.labels))
            .collect::<Vec<_>>()
    };
    for d in &m.deployments {
        if !selects(&d.selector, &d.labels) {
            problems.push(format!(
                "{}: Deployment {}: selector {:?} does not match its pods' labels {:?}",
                d.file, d.name, d.selector, d.labels
            ));
        }
    }
    for s in &m.services {
        if selected(&s.selector).is_empty() {
            problems.push(format!(
                "Service {}: selector {:?} matches no Deployment's pods",
                s.name, s.selector
            ));
        }
    }
    for b in &m.budgets {
        let guarded = selected(&b.selector);
        if guarded.is_empty() {
            problems.push(format!(
                "PodDisruptionBudget {}: selector {:?} matches no Deployment's pods",
                b.name, b.selector
            ));
        }
        for d in guarded {
            // With one pod, minAvailable 1 means no node drain may ever evict it.
            let least = m
                .autoscalers
                .iter()
                .find(|a| a.target_name == d.name)
                .map_or(d.replicas.unwrap_or(1), |a| a.min_replicas);
            if least < 2 {
                problems.push(format!(
                    "PodDisruptionBudget {} guards Deployment {}, which may run one pod: it would block node drains",
                    b.name, d.name
                ));
            }
        }
    }
    for a in &m.autoscalers {
        let Some(d) = m
            .deployments
            .iter()
            .find(|d| a.target_kind == "Deployment" && d.name == a.target_name)
        else {
            problems.push(format!(
                "HorizontalPodAutoscaler {}: no Deployment {} to scale",
                a.name, a.target_name
            ));
            continue;
        };
        if d.replicas.is_some() {
            problems.push(format!(
                "HorizontalPodAutoscaler {} scales Deployment {}, which also sets replicas (each apply resets it)",
                a.name, d.name
            ));
        }
        for c in d.containers.iter().filter(|c| !c.cpu_request) {
            problems.push(format!(
                "HorizontalPodAutoscaler {} scales on CPU, but {}/{} requests none",
                a.name, d.name, c.name
            ));
        }
    }
    problems
}

/// Every check, in order, de-duplicated (the container list is walked by several).
pub fn all(m: &Manifests, code: &BTreeMap<String, Process>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in env_vars(m, code)
        .into_iter()
        .chain(keys(m))
        .chain(ports(m, code))
        .chain(grace(m, code))
        .chain(references(m))
    {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}
