//! envoyproxy/ratelimit's environment variables (`src/settings/settings.go`), so its
//! Deployment (Envoy Gateway's, a Helm chart's) runs unchanged but for the image and the store:
//! each one set is translated into the `ZAEL_*` variable of the flag that does the same, unless
//! that `ZAEL_*` variable is set (ours win). Settings with no counterpart here (Redis,
//! memcache, statsd) are reported once at start as ignored; a few are errors because ignoring
//! them would change what is enforced or who may call (`BACKEND_TYPE` other than a zael store,
//! `GRPC_CLIENT_TLS_SAN`, `GRPC_UDS`).

/// What to set, and what to say once logging is up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// `(ZAEL_* name, value)` to set where unset.
    pub set: Vec<(&'static str, String)>,
    /// One line per reference setting that has no effect here.
    pub ignored: Vec<String>,
}

#[derive(Copy, Clone)]
enum Form {
    Text,
    Bool,
    /// A Go duration (`1h30m`, `500ms`), given to us in milliseconds.
    Duration,
    Lower,
}

/// One reference variable for one of our variables.
const DIRECT: &[(&str, &str, Form)] = &[
    ("SHADOW_MODE", "ZAEL_SHADOW_MODE", Form::Bool),
    ("QUOTA_MODE", "ZAEL_QUOTA_MODE", Form::Bool),
    ("MERGE_DOMAIN_CONFIG", "ZAEL_MERGE_DOMAIN_CONFIG", Form::Bool),
    ("RESPONSE_DYNAMIC_METADATA", "ZAEL_RESPONSE_DYNAMIC_METADATA", Form::Bool),
    ("LIMIT_RESPONSE_HEADERS_ENABLED", "ZAEL_RESPONSE_HEADERS", Form::Bool),
    ("LIMIT_LIMIT_HEADER", "ZAEL_RESPONSE_HEADER_LIMIT", Form::Text),
    ("LIMIT_REMAINING_HEADER", "ZAEL_RESPONSE_HEADER_REMAINING", Form::Text),
    ("LIMIT_RESET_HEADER", "ZAEL_RESPONSE_HEADER_RESET", Form::Text),
    ("LOG_LEVEL", "ZAEL_LOG_LEVEL", Form::Lower),
    ("LOG_FORMAT", "ZAEL_LOG_FORMAT", Form::Lower),
    ("CONFIG_GRPC_XDS_NODE_ID", "ZAEL_XDS_NODE_ID", Form::Text),
    ("CONFIG_GRPC_XDS_NODE_METADATA", "ZAEL_XDS_NODE_METADATA", Form::Text),
    ("CONFIG_GRPC_XDS_SERVER_URL", "ZAEL_XDS_SERVER", Form::Text),
    ("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", "ZAEL_XDS_HEADERS", Form::Text),
    ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "ZAEL_XDS_TLS", Form::Bool),
    ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "ZAEL_XDS_TLS_CERT", Form::Text),
    ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "ZAEL_XDS_TLS_KEY", Form::Text),
    ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "ZAEL_XDS_TLS_CA", Form::Text),
    ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "ZAEL_XDS_TLS_SERVER_NAME", Form::Text),
    ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "ZAEL_XDS_BACKOFF_INITIAL", Form::Duration),
    ("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "ZAEL_XDS_BACKOFF_MAX", Form::Duration),
    ("FORCE_START_WITHOUT_INITIAL_CONFIG", "ZAEL_FORCE_START_WITHOUT_INITIAL_CONFIG", Form::Bool),
    ("GRPC_MAX_CONNECTION_AGE", "ZAEL_GRPC_MAX_CONNECTION_AGE", Form::Duration),
    ("GRPC_MAX_CONNECTION_AGE_GRACE", "ZAEL_GRPC_MAX_CONNECTION_AGE_GRACE", Form::Duration),
    ("PROMETHEUS_PATH", "ZAEL_METRICS_PATH", Form::Text),
];

/// Reference settings that change nothing here, and why.
const IGNORED: &[(&str, &str)] = &[
    ("REDIS_", "buckets live in this process or in DynamoDB (--store)"),
    ("MEMCACHE_", "buckets live in this process or in DynamoDB (--store)"),
    ("USE_STATSD", "metrics are Prometheus (/metrics, or --metrics-listen)"),
    ("STATSD_", "metrics are Prometheus (/metrics, or --metrics-listen)"),
    ("USE_DOG_STATSD", "metrics are Prometheus (/metrics, or --metrics-listen)"),
    ("EXTRA_TAGS", "metrics are Prometheus (/metrics, or --metrics-listen)"),
    ("STATS_FLUSH_INTERVAL", "metrics are Prometheus (/metrics, or --metrics-listen)"),
    ("DISABLE_STATS", "metrics are Prometheus (/metrics, or --metrics-listen)"),
    ("PROMETHEUS_MAPPER_YAML", "metric names are zael's own (README, Metrics)"),
    ("PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS", "durations are in seconds"),
    ("LOCAL_CACHE_SIZE_IN_BYTES", "the DynamoDB store has its own rejection cache"),
    ("EXPIRATION_JITTER_MAX_SECONDS", "token buckets have no window keys to expire"),
    ("CACHE_KEY_PREFIX", "bucket identity is the table format's (README, Bucket identity)"),
    ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "not supported yet: each bucket is decided on its own"),
    ("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "health follows the config (README, Health)"),
    ("RUNTIME_IGNOREDOTFILES", "dot files are always skipped"),
    ("RUNTIME_WATCH_ROOT", "the config directory is always watched"),
    ("DEBUG_HOST", "/rlconfig is served on the HTTP port"),
    ("DEBUG_PORT", "/rlconfig is served on the HTTP port"),
    ("GRPC_SERVER_TLS_CA_CERT", "not a reference setting (client certificates: GRPC_CLIENT_TLS_CACERT)"),
    ("TRACING_SERVICE_NAME", "spans name the service zael-server"),
    ("TRACING_SERVICE_NAMESPACE", "spans name the service zael-server"),
    ("TRACING_SERVICE_INSTANCE_ID", "spans name the service zael-server"),
    ("TRACING_SAMPLING_RATE", "every decision is traced when tracing is on"),
];

/// The translation of the variables `get` finds.
pub fn translate(get: impl Fn(&str) -> Option<String>, names: &[String]) -> Result<Translation, String> {
    let mut out = Translation::default();
    for &(reference, ours, form) in DIRECT {
        if let Some(value) = get(reference) {
            let value = match form {
                Form::Text => value,
                Form::Lower => value.to_ascii_lowercase(),
                Form::Bool => go_bool(reference, &value)?.to_string(),
                Form::Duration => format!("{}ms", go_duration(reference, &value)?),
            };
            out.set.push((ours, value));
        }
    }
    let address = |host: Option<String>, port: Option<String>, default_port: &str| {
        let host = host.filter(|h| !h.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
        format!("{host}:{}", port.unwrap_or_else(|| default_port.into()))
    };
    if get("GRPC_HOST").is_some() || get("GRPC_PORT").is_some() {
        out.set.push(("ZAEL_LISTEN", address(get("GRPC_HOST"), get("GRPC_PORT"), "8081")));
    }
    if get("HOST").is_some() || get("PORT").is_some() {
        out.set.push(("ZAEL_HTTP_LISTEN", address(get("HOST"), get("PORT"), "8080")));
    }
    if get("GRPC_UDS").is_some_and(|v| !v.is_empty()) {
        return Err("GRPC_UDS: zael-server serves gRPC on TCP only (GRPC_HOST, GRPC_PORT or --listen)".into());
    }
    let xds = match get("CONFIG_TYPE").as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("FILE") => false,
        Some("GRPC_XDS_SOTW") => true,
        Some(other) => return Err(format!("CONFIG_TYPE={other}: FILE or GRPC_XDS_SOTW")),
    };
    if get("CONFIG_TYPE").is_some() {
        out.set.push(("ZAEL_CONFIG_TYPE", if xds { "grpc-xds-sotw" } else { "file" }.into()));
    }
    if !xds && (get("RUNTIME_ROOT").is_some() || get("RUNTIME_SUBDIRECTORY").is_some()) {
        let root = get("RUNTIME_ROOT").unwrap_or_else(|| "/srv/runtime_data/current".into());
        let mut path = std::path::PathBuf::from(root);
        for part in [get("RUNTIME_SUBDIRECTORY"), Some(get("RUNTIME_APPDIRECTORY").unwrap_or_else(|| "config".into()))]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
        {
            path.push(part);
        }
        out.set.push(("ZAEL_CONFIG", path.display().to_string()));
    }
    if get("GRPC_SERVER_USE_TLS").map(|v| go_bool("GRPC_SERVER_USE_TLS", &v)).transpose()? == Some(true) {
        for (reference, ours) in [("GRPC_SERVER_TLS_CERT", "ZAEL_TLS_CERT"), ("GRPC_SERVER_TLS_KEY", "ZAEL_TLS_KEY")] {
            match get(reference).filter(|v| !v.is_empty()) {
                Some(file) => out.set.push((ours, file)),
                None => return Err(format!("GRPC_SERVER_USE_TLS=true needs {reference}")),
            }
        }
        if let Some(ca) = get("GRPC_CLIENT_TLS_CACERT").filter(|v| !v.is_empty()) {
            out.set.push(("ZAEL_TLS_CLIENT_CA", ca));
        }
    }
    if get("GRPC_CLIENT_TLS_SAN").is_some_and(|v| !v.is_empty()) {
        return Err("GRPC_CLIENT_TLS_SAN: the client certificate SAN check is not supported yet; \
                    without it any certificate the CA signed is accepted, so zael-server does not start"
            .into());
    }
    if get("USE_PROMETHEUS").map(|v| go_bool("USE_PROMETHEUS", &v)).transpose()? == Some(true) {
        let addr = get("PROMETHEUS_ADDR").unwrap_or_else(|| ":9090".into());
        let addr = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr };
        out.set.push(("ZAEL_METRICS_LISTEN", addr));
    }
    if get("TRACING_ENABLED").map(|v| go_bool("TRACING_ENABLED", &v)).transpose()? == Some(true) {
        let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|| "http://localhost:4317".into());
        out.set.push(("ZAEL_OTLP_ENDPOINT", endpoint));
        if get("TRACING_EXPORTER_PROTOCOL").is_none_or(|p| !p.eq_ignore_ascii_case("grpc")) {
            out.ignored.push(
                "TRACING_EXPORTER_PROTOCOL: spans are exported over OTLP/gRPC (point OTEL_EXPORTER_OTLP_ENDPOINT at a gRPC port)"
                    .into(),
            );
        }
    }
    if let Some(ratio) = get("NEAR_LIMIT_RATIO").filter(|r| r.trim() != "0.8") {
        out.ignored.push(format!("NEAR_LIMIT_RATIO={ratio}: near limit is under 20 % remaining (the reference's 0.8)"));
    }
    match get("BACKEND_TYPE").map(|b| b.to_ascii_lowercase()).as_deref() {
        None => {}
        Some(store @ ("memory" | "dynamodb")) => out.set.push(("ZAEL_STORE", store.to_owned())),
        Some(other) => {
            return Err(format!(
                "BACKEND_TYPE={other}: zael-server keeps buckets in memory or in DynamoDB; \
                 set ZAEL_STORE=dynamodb and ZAEL_TABLE (or --store, --table) and unset BACKEND_TYPE"
            ));
        }
    }
    for (prefix, why) in IGNORED {
        let exact = !prefix.ends_with('_');
        for name in names.iter().filter(|n| if exact { n.as_str() == *prefix } else { n.starts_with(prefix) }) {
            out.ignored.push(format!("{name}: ignored, {why}"));
        }
    }
    Ok(out)
}

/// Go's `strconv.ParseBool`.
fn go_bool(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => Err(format!("{name}={other}: not a boolean (true or false)")),
    }
}

/// Go's `time.ParseDuration`, in whole milliseconds (`1h30m`, `2.5s`, `300ms`).
fn go_duration(name: &str, value: &str) -> Result<u64, String> {
    let bad = || format!("{name}={value}: not a duration (e.g. 10s, 1m30s, 500ms)");
    if value == "0" {
        return Ok(0);
    }
    let (mut rest, mut total) = (value.trim(), 0.0_f64);
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let millis = match &rest[..unit_len] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1_000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return Err(bad()),
        };
        total += number * millis;
        rest = &rest[unit_len..];
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(vars: &[(&str, &str)]) -> Result<Translation, String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let names: Vec<String> = map.keys().cloned().collect();
        translate(|k| map.get(k).cloned(), &names)
    }

    /// The environment Envoy Gateway gives its rate limit Deployment
    /// (`internal/infrastructure/kubernetes/ratelimit`, testdata `default.yaml`).
    #[test]
    fn the_envoy_gateway_deployment_translates() {
        let t = run(&[
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("RUNTIME_IGNOREDOTFILES", "true"),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("LOG_LEVEL", "info"),
            ("USE_STATSD", "false"),
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_SERVER_URL", "envoy-gateway:18001"),
            ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", "/certs/tls.crt"),
            ("GRPC_SERVER_TLS_KEY", "/certs/tls.key"),
            ("GRPC_SERVER_TLS_CA_CERT", "/certs/ca.crt"),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/certs/tls.crt"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "/certs/tls.key"),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/certs/ca.crt"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "redis.redis.svc:6379"),
            ("USE_PROMETHEUS", "true"),
            ("PROMETHEUS_ADDR", ":19001"),
            ("PROMETHEUS_MAPPER_YAML", "/etc/statsd-exporter/conf.yaml"),
        ])
        .unwrap();
        let mut set = t.set.clone();
        set.sort();
        let expected: Vec<(&str, String)> = [
            ("ZAEL_CONFIG_TYPE", "grpc-xds-sotw"),
            ("ZAEL_FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
            ("ZAEL_LOG_LEVEL", "info"),
            ("ZAEL_METRICS_LISTEN", "0.0.0.0:19001"),
            ("ZAEL_TLS_CERT", "/certs/tls.crt"),
            ("ZAEL_TLS_KEY", "/certs/tls.key"),
            ("ZAEL_XDS_NODE_ID", "envoy-ratelimit"),
            ("ZAEL_XDS_SERVER", "envoy-gateway:18001"),
            ("ZAEL_XDS_TLS", "true"),
            ("ZAEL_XDS_TLS_CA", "/certs/ca.crt"),
            ("ZAEL_XDS_TLS_CERT", "/certs/tls.crt"),
            ("ZAEL_XDS_TLS_KEY", "/certs/tls.key"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        assert_eq!(set, expected);
        let mut ignored: Vec<_> = t.ignored.iter().map(|l| l.split(':').next().unwrap().to_owned()).collect();
        ignored.sort();
        assert_eq!(
            ignored,
            [
                "GRPC_SERVER_TLS_CA_CERT",
                "PROMETHEUS_MAPPER_YAML",
                "REDIS_SOCKET_TYPE",
                "REDIS_URL",
                "RUNTIME_IGNOREDOTFILES",
                "RUNTIME_WATCH_ROOT",
                "USE_STATSD"
            ]
        );
    }

    #[test]
    fn files_addresses_durations_and_modes() {
        let t = run(&[
            ("RUNTIME_ROOT", "/srv/runtime"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("GRPC_PORT", "9081"),
            ("HOST", "127.0.0.1"),
            ("SHADOW_MODE", "1"),
            ("QUOTA_MODE", "False"),
            ("GRPC_MAX_CONNECTION_AGE", "1h30m"),
            ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "2.5s"),
            ("LOG_FORMAT", "JSON"),
            ("BACKEND_TYPE", "dynamodb"),
        ])
        .unwrap();
        let get = |k: &str| t.set.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ZAEL_CONFIG"), Some("/srv/runtime/ratelimit/config"));
        assert_eq!(get("ZAEL_LISTEN"), Some("0.0.0.0:9081"));
        assert_eq!(get("ZAEL_HTTP_LISTEN"), Some("127.0.0.1:8080"));
        assert_eq!((get("ZAEL_SHADOW_MODE"), get("ZAEL_QUOTA_MODE")), (Some("true"), Some("false")));
        assert_eq!(get("ZAEL_GRPC_MAX_CONNECTION_AGE"), Some("5400000ms"));
        assert_eq!(get("ZAEL_XDS_BACKOFF_INITIAL"), Some("2500ms"));
        assert_eq!((get("ZAEL_LOG_FORMAT"), get("ZAEL_STORE")), (Some("json"), Some("dynamodb")));
        assert!(t.ignored.is_empty(), "{:?}", t.ignored);
    }

    #[test]
    fn what_would_change_enforcement_or_callers_is_an_error() {
        for (vars, says) in [
            (&[("BACKEND_TYPE", "redis")][..], "ZAEL_STORE=dynamodb"),
            (&[("GRPC_CLIENT_TLS_SAN", "envoy")][..], "SAN check is not supported"),
            (&[("GRPC_UDS", "/tmp/s")][..], "TCP only"),
            (&[("CONFIG_TYPE", "CONSUL")][..], "FILE or GRPC_XDS_SOTW"),
            (&[("SHADOW_MODE", "yes")][..], "not a boolean"),
            (&[("GRPC_MAX_CONNECTION_AGE", "soon")][..], "not a duration"),
            (&[("GRPC_SERVER_USE_TLS", "true")][..], "needs GRPC_SERVER_TLS_CERT"),
        ] {
            let e = run(vars).unwrap_err();
            assert!(e.contains(says), "{vars:?}: {e}");
        }
    }
}
