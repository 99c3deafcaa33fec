//! Drift test: deploy/kubernetes against the code's configuration (run by
//! `cargo xtask test`, as part of `cargo test --workspace`).
//!
//! What the code reads is taken from its sources ([`scan`]); the manifests
//! are loaded as YAML ([`kube`]); [`checks`] compares them:
//!
//! 1. every variable in a container's `env:` is read by that process (or is
//!    a standard `OTEL_*` the exporter reads, [`checks::OTEL_ALLOWED`]), and
//!    every variable the process requires is set;
//! 2. every `configMapKeyRef`/`secretKeyRef` names `mesh-config`/`mesh-secrets`
//!    and a key they define, every key they define is used, and nothing that
//!    looks secret is in the ConfigMap or written inline;
//! 3. containerPort, the Service's port/targetPort and the probes' ports are
//!    the port the process listens on (its `<PREFIX>_ADDR`, else the code's
//!    `DEFAULT_ADDR`), which is not loopback; the gateway's httpGet paths are
//!    its routes; `prometheus.io/port` is a port the process serves
//!    `/metrics` on; URLs naming a Service use one of its ports;
//! 4. terminationGracePeriodSeconds exceeds preStop sleep + `MESH_DRAIN_SECONDS`;
//! 5. each Deployment's selector matches its pods, each Service and
//!    PodDisruptionBudget selects some Deployment's pods (a budget only on
//!    one that keeps two or more), and each autoscaler scales a Deployment
//!    that sets no `replicas` and requests CPU.

mod checks;
mod kube;
mod scan;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn manifests_agree_with_the_code() {
    let dir = root().join("deploy/kubernetes");
    assert!(
        dir.is_dir(),
        "{} is missing: the drift test has no manifests to check",
        dir.display()
    );
    let manifests = kube::Manifests::load(&dir).unwrap();
    assert!(
        !manifests.deployments.is_empty(),
        "no Deployment in {}",
        dir.display()
    );
    let code = scan::workspace(&root());
    let problems = checks::all(&manifests, &code);
    assert!(
        problems.is_empty(),
        "deploy/kubernetes disagrees with the code ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[cfg(test)]
mod scanner {
    use super::scan::*;

    fn names(src: &str) -> Vec<(String, bool)> {
        reads(&tokenize(src))
            .into_iter()
            .map(|r| (r.name, r.required))
            .collect()
    }

    #[test]
    fn tokenizer_drops_comments_and_keeps_literals() {
        let t = tokenize(
            r###"// optional("NOT_A")
            /* optional("NOT_B") /* nested */ */
            fn f<'a>(x: &'a str) -> char { let _ = r#"optional("RAW")"#; '\''; 'x' }
            let s = "esc\"aped";"###,
        );
        assert!(
            !t.iter()
                .any(|t| matches!(t, Tok::Str(s) if s.contains("NOT_")))
        );
        assert!(t.contains(&Tok::Str(r#"optional("RAW")"#.into())));
        assert!(t.contains(&Tok::Str(r#"esc\"aped"#.into())));
        assert!(t.contains(&Tok::Ident("a".into())));
    }

    #[test]
    fn finds_every_reader_form() {
        let found = names(
            r#"
            let a = optional("A_VAR");
            let b = config::required("B_VAR", "hint")?;
            let c = config::positive::<u64>("C_VAR", 3)?;
            let d = positive_seconds("D_VAR", Duration::from_secs(1))?;
            let e = config::http_url("E_URL", "http://x")?;
            let f = parsed_or("F_VAR", 10)?;
            let g = std::env::var("G_VAR");
            let h = from_file("H_FILE", parse)?;
            let i = env::var_os("I_VAR");
            // Not configuration:
            channel::optional("channel", 0);
            q.fetch_optional(pool);
            x.optional("METHOD_CALL");
            var("NO_ENV_PATH");
            parsed_or(&format!("{prefix}_ADDR"), d);
            "#,
        );
        let expect = [
            ("A_VAR", false),
            ("B_VAR", true),
            ("C_VAR", false),
            ("D_VAR", false),
            ("E_URL", false),
            ("F_VAR", false),
            ("G_VAR", false),
            ("H_FILE", false),
            ("I_VAR", false),
        ];
        let expect: Vec<_> = expect.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        assert_eq!(found, expect);
    }

    #[test]
    fn expands_service_config_helpers_consts_and_routes() {
        let p = process(&[(
            "lib.rs".into(),
            r#"
            pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";
            pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9054";
            fn load() { ServiceConfig::from_env("USERS", DEFAULT_ADDR)?;
                parsed_or("MESH_DRAIN_SECONDS", 12)?;
                parsed_or("USERS_METRICS_ADDR", DEFAULT_METRICS_ADDR.parse().unwrap())?; }
            pub fn url_var(self) -> &'static str {
                match self { A => "USERS_A_URL", B => "USERS_B_URL" }
            }
            fn other() -> &'static str { "NOT_READ" }
            "#
            .into(),
        )]);
        for v in [
            "USERS_ADDR",
            "USERS_DATABASE_URL",
            "USERS_DB_MAX_CONNECTIONS",
            "USERS_A_URL",
            "USERS_B_URL",
        ] {
            assert!(p.reads.contains(v), "{v}");
        }
        assert!(!p.reads.contains("NOT_READ"));
        assert!(p.required.contains("USERS_DATABASE_URL"));
        assert!(p.grpc);
        assert_eq!(p.listen_var.as_deref(), Some("USERS_ADDR"));
        assert_eq!(p.default_addr.as_deref(), Some("127.0.0.1:50051"));
        assert_eq!(p.drain_default, Some(12));
        assert_eq!(
            p.metrics,
            vec![Metrics::Addr {
                var: "USERS_METRICS_ADDR".into(),
                default: "127.0.0.1:9054".into()
            }]
        );

        let gw = process(&[(
            "gw.rs".into(),
            r#"const DEFAULT_ADDR: &str = "127.0.0.1:8080";
            parsed_or("GATEWAY_ADDR", DEFAULT_ADDR.parse().expect("valid"))?;
            Router::new().route("/healthz", get(h)).route("/metrics", get(m));"#
                .into(),
        )]);
        assert!(!gw.grpc);
        assert_eq!(gw.listen_var.as_deref(), Some("GATEWAY_ADDR"));
        assert!(gw.routes.contains("/healthz"));
        assert_eq!(gw.metrics, vec![Metrics::Main]);
    }

    /// The runtime builds `<PREFIX>_...` names with format!: SERVICE_SUFFIXES
    /// must list exactly those.
    #[test]
    fn service_suffixes_match_the_runtime() {
        let src =
            std::fs::read_to_string(super::root().join("crates/runtime/src/config.rs")).unwrap();
        let mut in_code: Vec<String> = tokenize(&src)
            .into_iter()
            .filter_map(|t| match t {
                Tok::Str(s) => s.strip_prefix("{prefix}_").map(str::to_owned),
                _ => None,
            })
            .collect();
        in_code.sort();
        in_code.dedup();
        let mut listed: Vec<String> = SERVICE_SUFFIXES
            .iter()
            .map(|(s, _)| s.to_string())
            .collect();
        listed.sort();
        assert_eq!(in_code, listed);
    }

    /// What the real code reads, as far as the scanner sees it.
    #[test]
    fn reads_the_real_workspace() {
        let code = workspace(&super::root());
        assert_eq!(code.len(), 6);
        let users = &code["users"];
        for v in [
            "USERS_ADDR",
            "USERS_CONVERSATIONS_URL",
            "USERS_BILLING_URL",
            "USERS_ERASURE_SETTLE_SECONDS",
            "MESH_AUTH_TOKEN",
            "MESH_DRAIN_SECONDS",
            "MESH_TLS_CA_FILE",
            "MESH_TLS_CERT_FILE",
            "RUST_LOG",
            "LOG_FORMAT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            assert!(users.reads.contains(v), "users reads {v}");
        }
        assert!(users.required.contains("USERS_DATABASE_URL"));
        assert!(users.required.contains("MESH_AUTH_TOKEN"));
        assert_eq!(users.default_addr.as_deref(), Some("127.0.0.1:50051"));
        assert_eq!(users.drain_default, Some(10));
        assert!(code["billing"].reads.contains("BILLING_PLANS_FILE"));
        assert!(code["memory"].required.contains("MEMORY_MODEL_DIR"));
        assert!(
            code["conversations"]
                .reads
                .contains("WHATSAPP_ACCESS_TOKEN")
        );
        let gw = &code["gateway"];
        assert_eq!(gw.listen_var.as_deref(), Some("GATEWAY_ADDR"));
        assert_eq!(gw.default_addr.as_deref(), Some("127.0.0.1:8080"));
        assert!(gw.routes.contains("/readyz") && gw.routes.contains("/healthz"));
        assert!(gw.required.contains("MESH_AUTH_TOKEN"));
        assert!(!gw.reads.contains("GATEWAY_DATABASE_URL"));
        assert_eq!(gw.metrics, vec![Metrics::Main]);
        assert!(matches!(&code["scheduler"].metrics[..],
            [Metrics::Addr { var, default }] if var == "SCHEDULER_METRICS_ADDR" && default == "127.0.0.1:9054"));
        // The runtime's testing module is for tests only.
        assert!(code.values().all(|p| !p.reads.contains("DATABASE_URL")));
        assert!(code.values().all(|p| !p.reads.contains("MESH_DB_PASSWORD")));
    }
}

#[cfg(test)]
mod drift {
    use std::collections::BTreeMap;

    use super::{checks, kube::Manifests, scan};

    const USERS_RS: &str = r#"
        pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";
        ServiceConfig::from_env("USERS", DEFAULT_ADDR)?;
        required("MESH_AUTH_TOKEN", "hint")?;
        parsed_or("MESH_DRAIN_SECONDS", 10)?;
        optional("RUST_LOG");
    "#;
    const GATEWAY_RS: &str = r#"
        pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
        parsed_or("GATEWAY_ADDR", DEFAULT_ADDR.parse().expect("valid"))?;
        optional("GATEWAY_USERS_URL");
        required("MESH_AUTH_TOKEN", "hint")?;
        optional("WHATSAPP_APP_SECRET");
        parsed_or("MESH_DRAIN_SECONDS", 10)?;
        Router::new().route("/healthz", get(a)).route("/readyz", get(b)).route("/metrics", get(c));
    "#;

    /// Manifests that agree with USERS_RS and GATEWAY_RS, in three documents
    /// of one stream and a second file.
    const GOOD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: mesh-config}
data:
  USERS_ADDR: "0.0.0.0:50051"
  GATEWAY_ADDR: "0.0.0.0:8080"
  GATEWAY_USERS_URL: "http://users:50051"
  MESH_DRAIN_SECONDS: "20"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: users}
spec:
  replicas: 2
  selector: {matchLabels: {app: users}}
  template:
    metadata:
      labels: {app: users}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: users
          ports: [{name: grpc, containerPort: 50051}]
          env:
            - name: USERS_ADDR
              valueFrom: {configMapKeyRef: {name: mesh-config, key: USERS_ADDR}}
            - name: USERS_DATABASE_URL
              valueFrom: {secretKeyRef: {name: mesh-secrets, key: USERS_DATABASE_URL}}
            - name: MESH_AUTH_TOKEN
              valueFrom: {secretKeyRef: {name: mesh-secrets, key: MESH_AUTH_TOKEN}}
            - name: MESH_DRAIN_SECONDS
              valueFrom: {configMapKeyRef: {name: mesh-config, key: MESH_DRAIN_SECONDS}}
            - name: RUST_LOG
              value: info
            - name: OTEL_EXPORTER_OTLP_ENDPOINT
              value: http://otel-collector:4317
          readinessProbe: {grpc: {port: 50051}}
          livenessProbe: {grpc: {port: 50051, service: liveness}}
---
apiVersion: v1
kind: Service
metadata: {name: users}
spec:
  selector: {app: users}
  ports: [{name: grpc, port: 50051, targetPort: grpc}]
"#;
    const GOOD_GATEWAY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: mesh-gateway}
spec:
  selector: {matchLabels: {app: gateway}}
  template:
    metadata:
      labels: {app: gateway}
      annotations: {prometheus.io/scrape: "true", prometheus.io/port: "8080", prometheus.io/path: /metrics}
    spec:
      terminationGracePeriodSeconds: 40
      containers:
        - name: gateway
          ports: [{name: http, containerPort: 8080}]
          resources: {requests: {cpu: 200m}}
          lifecycle: {preStop: {exec: {command: ["sleep", "5"]}}}
          env:
            - name: GATEWAY_ADDR
              valueFrom: {configMapKeyRef: {name: mesh-config, key: GATEWAY_ADDR}}
            - name: GATEWAY_USERS_URL
              valueFrom: {configMapKeyRef: {name: mesh-config, key: GATEWAY_USERS_URL}}
            - name: MESH_AUTH_TOKEN
              valueFrom: {secretKeyRef: {name: mesh-secrets, key: MESH_AUTH_TOKEN}}
            - name: WHATSAPP_APP_SECRET
              valueFrom: {secretKeyRef: {name: mesh-secrets, key: WHATSAPP_APP_SECRET}}
          readinessProbe: {httpGet: {path: /readyz, port: http}}
          livenessProbe: {httpGet: {path: /healthz, port: 8080}}
---
apiVersion: v1
kind: Service
metadata: {name: gateway}
spec:
  selector: {app: gateway}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: gateway}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: gateway}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: gateway}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: mesh-gateway}
  minReplicas: 2
  maxReplicas: 4
---
apiVersion: v1
kind: Secret
metadata: {name: mesh-secrets}
stringData:
  USERS_DATABASE_URL: postgres://mesh_users:change-me@postgres:5432/mesh
  MESH_AUTH_TOKEN: change-me
  WHATSAPP_APP_SECRET: change-me
"#;

    fn code() -> BTreeMap<String, scan::Process> {
        [("users", USERS_RS), ("gateway", GATEWAY_RS)]
            .into_iter()
            .map(|(n, src)| (n.to_owned(), scan::process(&[(n.into(), src.into())])))
            .collect()
    }

    fn problems(users_file: &str, gateway_file: &str) -> Vec<String> {
        let mut m = Manifests::default();
        m.add("users.yaml", users_file).unwrap();
        m.add("gateway.yaml", gateway_file).unwrap();
        checks::all(&m, &code())
    }

    /// `GOOD`/`GOOD_GATEWAY` with `from` replaced by `to` (which must occur).
    fn drifted(from: &str, to: &str) -> Vec<String> {
        let (u, g) = (
            GOOD.replacen(from, to, 1),
            GOOD_GATEWAY.replacen(from, to, 1),
        );
        assert!(
            u != GOOD || g != GOOD_GATEWAY,
            "{from:?} is in neither fixture"
        );
        problems(&u, &g)
    }

    fn assert_one(problems: Vec<String>, needle: &str) {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem containing {needle:?}, got {problems:#?}"
        );
    }

    #[test]
    fn agreeing_manifests_pass() {
        let mut m = Manifests::default();
        m.add("users.yaml", GOOD).unwrap();
        assert_eq!(m.deployments.len(), 1, "multi-document stream");
        assert_eq!(m.services.len(), 1);
        assert_eq!(problems(GOOD, GOOD_GATEWAY), Vec::<String>::new());
    }

    #[test]
    fn env_var_the_code_does_not_read() {
        assert_one(
            drifted("- name: RUST_LOG", "- name: USERS_LOG_LEVEL"),
            "sets USERS_LOG_LEVEL, which users never reads",
        );
        // An OTEL variable outside the allowlist.
        assert_one(
            drifted(
                "- name: OTEL_EXPORTER_OTLP_ENDPOINT",
                "- name: OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            "sets OTEL_EXPORTER_OTLP_PROTOCOL",
        );
        // Another process's variable.
        assert_one(
            drifted("- name: GATEWAY_USERS_URL\n", "- name: USERS_ADDR\n"),
            "sets USERS_ADDR, which gateway never reads",
        );
    }

    #[test]
    fn required_variable_missing() {
        let no_db = GOOD.replace(
            "            - name: USERS_DATABASE_URL\n              valueFrom: {secretKeyRef: {name: mesh-secrets, key: USERS_DATABASE_URL}}\n",
            "",
        );
        assert_ne!(no_db, GOOD);
        let p = problems(&no_db, GOOD_GATEWAY);
        assert_one(p.clone(), "does not set USERS_DATABASE_URL");
        assert_one(
            p,
            "Secret mesh-secrets: key USERS_DATABASE_URL is used by no container",
        );
        assert_one(
            drifted(
                "- name: MESH_AUTH_TOKEN\n              valueFrom: {secretKeyRef: {name: mesh-secrets, key: MESH_AUTH_TOKEN}}\n            - name: WHATSAPP_APP_SECRET",
                "- name: WHATSAPP_APP_SECRET",
            ),
            "does not set MESH_AUTH_TOKEN, which gateway requires",
        );
    }

    #[test]
    fn conditional_requirement_follows_its_selector() {
        let memory = scan::process(&[(
            "m.rs".into(),
            r#"match optional("EMBEDDER").as_deref() { "local" => required("MEMORY_MODEL_DIR", "h"),
               "supplied" => required("EMBEDDINGS_MODEL", "h") }"#
                .into(),
        )]);
        let code: BTreeMap<_, _> = [("memory".to_owned(), memory)].into();
        let doc = |env: &str| {
            format!(
                "kind: Deployment\nmetadata: {{name: memory}}\nspec:\n  template:\n    spec:\n      containers:\n        - name: memory\n          env: {env}\n"
            )
        };
        let run = |env: &str| {
            let mut m = Manifests::default();
            m.add("m.yaml", &doc(env)).unwrap();
            checks::env_vars(&m, &code)
        };
        assert_one(run("[]"), "does not set MEMORY_MODEL_DIR");
        assert_eq!(
            run("[{name: MEMORY_MODEL_DIR, value: /models}]"),
            Vec::<String>::new()
        );
        let supplied = run("[{name: EMBEDDER, value: supplied}]");
        assert_one(supplied.clone(), "does not set EMBEDDINGS_MODEL");
        assert!(!supplied.iter().any(|p| p.contains("MEMORY_MODEL_DIR")));
    }

    #[test]
    fn missing_and_dead_keys() {
        assert_one(
            drifted("key: GATEWAY_USERS_URL}", "key: GATEWAY_USER_URL}"),
            "refers to key GATEWAY_USER_URL of ConfigMap mesh-config, which has no such key",
        );
        assert_one(
            drifted("key: WHATSAPP_APP_SECRET}", "key: WHATSAPP_SECRET}"),
            "refers to key WHATSAPP_SECRET of Secret mesh-secrets, which the example does not define",
        );
        assert_one(
            drifted(
                "  MESH_DRAIN_SECONDS: \"20\"\n",
                "  MESH_DRAIN_SECONDS: \"20\"\n  UNUSED_KEY: x\n",
            ),
            "ConfigMap mesh-config: key UNUSED_KEY is used by no container",
        );
        assert_one(
            drifted(
                "name: mesh-config, key: USERS_ADDR",
                "name: other-config, key: USERS_ADDR",
            ),
            "refers to ConfigMap other-config, not mesh-config",
        );
    }

    #[test]
    fn secrets_stay_out_of_the_config_map() {
        let moved = GOOD
            .replacen(
                "  MESH_DRAIN_SECONDS: \"20\"\n",
                "  MESH_DRAIN_SECONDS: \"20\"\n  USERS_DATABASE_URL: postgres://x\n",
                1,
            )
            .replacen(
                "valueFrom: {secretKeyRef: {name: mesh-secrets, key: USERS_DATABASE_URL}}",
                "valueFrom: {configMapKeyRef: {name: mesh-config, key: USERS_DATABASE_URL}}",
                1,
            );
        let p = problems(&moved, GOOD_GATEWAY);
        assert_one(
            p.clone(),
            "key USERS_DATABASE_URL looks secret: move it to Secret",
        );
        assert_one(
            p,
            "USERS_DATABASE_URL looks secret but comes from ConfigMap",
        );
        assert_one(
            drifted(
                "- name: WHATSAPP_APP_SECRET\n              valueFrom: {secretKeyRef: {name: mesh-secrets, key: WHATSAPP_APP_SECRET}}",
                "- name: WHATSAPP_APP_SECRET\n              value: hunter2",
            ),
            "WHATSAPP_APP_SECRET looks secret but is written in the Deployment",
        );
    }

    #[test]
    fn port_drift() {
        assert_one(
            drifted("containerPort: 50051", "containerPort: 50052"),
            "no containerPort 50051",
        );
        assert_one(
            drifted("{grpc: {port: 50051}}", "{grpc: {port: 50052}}"),
            "readinessProbe Grpc { port: 50052, service: \"\" } does not probe 50051",
        );
        assert_one(
            drifted(
                "port: 50051, targetPort: grpc",
                "port: 50052, targetPort: grpc",
            ),
            "Service users: port 50052 is not 50051",
        );
        assert_one(
            drifted("port: 80, targetPort: 8080", "port: 80, targetPort: 9090"),
            "Service gateway: targetPort Number(9090) is not 8080",
        );
        // The address moves, the ports stay.
        assert_one(
            drifted(
                "USERS_ADDR: \"0.0.0.0:50051\"",
                "USERS_ADDR: \"0.0.0.0:50061\"",
            ),
            "no containerPort 50061",
        );
        // Unset: the code's default, which is loopback.
        let no_addr = GOOD.replacen(
            "            - name: USERS_ADDR\n              valueFrom: {configMapKeyRef: {name: mesh-config, key: USERS_ADDR}}\n",
            "",
            1,
        ).replacen("  USERS_ADDR: \"0.0.0.0:50051\"\n", "", 1);
        assert_one(
            problems(&no_addr, GOOD_GATEWAY),
            "listens on 127.0.0.1:50051 (the code's DEFAULT_ADDR), loopback",
        );
        assert_one(
            drifted("{path: /readyz, port: http}", "{path: /ready, port: http}"),
            "httpGet path /ready is no route of gateway",
        );
        assert_one(
            drifted(
                "{path: /healthz, port: 8080}",
                "{path: /healthz, port: 8081}",
            ),
            "port: Number(8081) } does not probe 8080",
        );
        assert_one(
            drifted(
                "readinessProbe: {grpc: {port: 50051}}",
                "readinessProbe: {httpGet: {path: /readyz, port: 50051}}",
            ),
            "is not the agreed kind",
        );
        assert_one(
            drifted(
                "prometheus.io/port: \"8080\"",
                "prometheus.io/port: \"9090\"",
            ),
            "prometheus.io/port=9090, but gateway serves /metrics on [8080]",
        );
        assert_one(
            drifted(
                "GATEWAY_USERS_URL: \"http://users:50051\"",
                "GATEWAY_USERS_URL: \"http://users:50052\"",
            ),
            "GATEWAY_USERS_URL=http://users:50052, but Service users exposes ports [50051]",
        );
    }

    #[test]
    fn scrape_path_is_a_route() {
        assert_one(
            drifted("prometheus.io/path: /metrics", "prometheus.io/path: /stats"),
            "prometheus.io/path=/stats is no route of gateway",
        );
    }

    #[test]
    fn references_between_objects() {
        assert_one(
            drifted(
                "selector: {matchLabels: {app: users}}",
                "selector: {matchLabels: {app: user}}",
            ),
            "Deployment users: selector",
        );
        assert_one(
            drifted("  selector: {app: users}", "  selector: {app: usres}"),
            "Service users: selector",
        );
        assert_one(
            drifted(
                "selector: {matchLabels: {app: gateway}}\n---\napiVersion: autoscaling/v2",
                "selector: {matchLabels: {app: gw}}\n---\napiVersion: autoscaling/v2",
            ),
            "PodDisruptionBudget gateway: selector",
        );
        assert_one(
            drifted("minReplicas: 2", "minReplicas: 1"),
            "which may run one pod",
        );
        assert_one(
            drifted(
                "kind: Deployment, name: mesh-gateway",
                "kind: Deployment, name: gatewy",
            ),
            "no Deployment gatewy to scale",
        );
        assert_one(
            drifted("          resources: {requests: {cpu: 200m}}\n", ""),
            "requests none",
        );
        assert_one(
            drifted(
                "metadata: {name: mesh-gateway}\nspec:\n",
                "metadata: {name: mesh-gateway}\nspec:\n  replicas: 2\n",
            ),
            "which also sets replicas",
        );
    }

    #[test]
    fn probes_ask_the_right_health_and_none_is_missing() {
        assert_one(
            drifted(
                "livenessProbe: {grpc: {port: 50051, service: liveness}}",
                "livenessProbe: {grpc: {port: 50051}}",
            ),
            "livenessProbe asks about health \"\", not \"liveness\"",
        );
        assert_one(
            drifted(
                "readinessProbe: {grpc: {port: 50051}}",
                "readinessProbe: {grpc: {port: 50051, service: typo}}",
            ),
            "readinessProbe asks about health \"typo\", not \"\"",
        );
        assert_one(
            drifted(
                "livenessProbe: {grpc: {port: 50051, service: liveness}}",
                "",
            ),
            "no livenessProbe",
        );
        assert_one(
            drifted("readinessProbe: {httpGet: {path: /readyz, port: http}}", ""),
            "no readinessProbe",
        );
    }

    #[test]
    fn tcp_probes_only_for_liveness_and_startup() {
        let tcp = "livenessProbe: {tcpSocket: {port: grpc}}";
        assert_eq!(
            drifted(
                "livenessProbe: {grpc: {port: 50051, service: liveness}}",
                tcp
            ),
            Vec::<String>::new()
        );
        assert_one(
            drifted(
                "livenessProbe: {grpc: {port: 50051, service: liveness}}",
                "livenessProbe: {tcpSocket: {port: 5005}}",
            ),
            "livenessProbe Tcp { port: Number(5005) } does not probe 50051",
        );
        assert_one(
            drifted(
                "readinessProbe: {grpc: {port: 50051}}",
                "readinessProbe: {tcpSocket: {port: 50051}}",
            ),
            "readinessProbe Tcp { port: Number(50051) } is not the agreed kind",
        );
    }

    #[test]
    fn required_values_from_the_image_and_empty_values() {
        let no_token = GOOD.replacen(
            "            - name: MESH_AUTH_TOKEN\n              valueFrom: {secretKeyRef: {name: mesh-secrets, key: MESH_AUTH_TOKEN}}\n",
            "",
            1,
        );
        assert_ne!(no_token, GOOD);
        let mut m = Manifests::default();
        m.add("users.yaml", &no_token).unwrap();
        m.add("gateway.yaml", GOOD_GATEWAY).unwrap();
        let mut code = code();
        assert_one(checks::env_vars(&m, &code), "does not set MESH_AUTH_TOKEN");
        code.get_mut("users").unwrap().image_env = scan::dockerfile_env(
            "FROM a AS b\nENV MESH_AUTH_TOKEN=x\nFROM c\nENV A=1 \\\n  MESH_AUTH_TOKEN=y\n",
        );
        assert_eq!(checks::env_vars(&m, &code), Vec::<String>::new());
        assert_one(
            drifted(
                "valueFrom: {secretKeyRef: {name: mesh-secrets, key: USERS_DATABASE_URL}}",
                "value: \"\"",
            ),
            "sets USERS_DATABASE_URL to an empty value",
        );
    }

    #[test]
    fn dockerfile_env_reads_the_last_stage() {
        let env = scan::dockerfile_env(
            "FROM x AS build\nENV SQLX_OFFLINE=true\nFROM y AS runtime\nENV A_DIR=/a \\\n    B_VAR=1\nENV C_OLD value\n",
        );
        let env: Vec<_> = env.into_iter().collect();
        assert_eq!(env, ["A_DIR", "B_VAR", "C_OLD"]);
    }

    #[test]
    fn grace_period_outlasts_the_drain() {
        assert_one(
            drifted("MESH_DRAIN_SECONDS: \"20\"", "MESH_DRAIN_SECONDS: \"30\""),
            "terminationGracePeriodSeconds 30 does not exceed preStop sleep 0 + MESH_DRAIN_SECONDS 30",
        );
        // The gateway sets no MESH_DRAIN_SECONDS: the code's 10, plus its preStop sleep 5.
        assert_one(
            drifted(
                "terminationGracePeriodSeconds: 40",
                "terminationGracePeriodSeconds: 15",
            ),
            "terminationGracePeriodSeconds 15 does not exceed preStop sleep 5 + MESH_DRAIN_SECONDS 10 = 15",
        );
    }

    #[test]
    fn unknown_deployments_and_missing_processes() {
        // Renamed everywhere (its autoscaler names it too).
        let p = problems(
            GOOD,
            &GOOD_GATEWAY.replace("name: mesh-gateway", "name: edge"),
        );
        assert!(p.is_empty(), "the container's name is enough: {p:#?}");
        let p = drifted("- name: gateway\n", "- name: proxy\n");
        assert!(p.is_empty(), "the Deployment's name is enough: {p:#?}");
        let p = problems(GOOD, "");
        assert_one(p, "no Deployment runs gateway");
    }
}
