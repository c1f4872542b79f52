//! The TOML file (`MAILFLEET_CONFIG`): providers with their credentials (inline, from an
//! environment variable or from a file), routes and breaker settings. See
//! docs/configuration.md and `mailfleet.example.toml`.

use super::Secret;
use super::providers::*;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    name: String,
    kind: ProviderKind,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    api_key: Option<Secret>,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    api_key_file: Option<PathBuf>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    key_id_env: Option<String>,
    #[serde(default)]
    session_token_env: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    message_stream: Option<String>,
    #[serde(default)]
    configuration_set: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    tls: SmtpTls,
    #[serde(default)]
    pool_size: Option<u32>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    rate_per_sec: Option<u32>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    window_ms: Option<u64>,
    #[serde(default)]
    tenant_limit: Option<u32>,
    #[serde(default)]
    limit_margin_ms: Option<u64>,
    #[serde(default)]
    limit_spread_ms: Option<u64>,
    #[serde(default)]
    limit_cold_margin_ms: Option<u64>,
    #[serde(default)]
    batch_max: Option<usize>,
    #[serde(default)]
    batch_linger_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    providers: Vec<FileProvider>,
    #[serde(default)]
    routes: Option<Routes>,
    #[serde(default)]
    breaker: Option<BreakerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Only the parser's message and where: its usual rendering quotes the offending line,
    /// which can hold an inline `api_key`.
    #[error("config file {path} is invalid at line {line}, column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("provider {name:?}: {message}")]
    Provider { name: String, message: String },
    #[error("routes: {0}")]
    Routes(String),
}

/// A parse error that says where, never what the line holds.
fn parse_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..at).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        message: e.message().to_owned(),
    }
}

/// Read a secret given inline, by environment variable or by file (at most one of them).
fn secret(
    inline: Option<Secret>,
    env: Option<&str>,
    file: Option<&Path>,
    what: &str,
) -> Result<Option<Secret>, String> {
    match (inline, env, file) {
        (Some(k), None, None) => Ok(Some(k)),
        (None, Some(var), None) => std::env::var(var)
            .map(|v| Some(Secret::new(v)))
            .map_err(|_| format!("environment variable {var} is not set")),
        (None, None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| Some(Secret::new(v.trim())))
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        (None, None, None) => Ok(None),
        _ => Err(format!(
            "set at most one of {what}, {what}_env, {what}_file"
        )),
    }
}

fn provider(p: FileProvider) -> Result<ProviderConfig, ConfigError> {
    let err = |message: String| ConfigError::Provider {
        name: p.name.clone(),
        message,
    };
    let api_key = secret(
        p.api_key.clone(),
        p.api_key_env.as_deref(),
        p.api_key_file.as_deref(),
        "api_key",
    )
    .map_err(&err)?
    .unwrap_or_default();
    let key_id = match (&p.key_id, &p.key_id_env) {
        (Some(k), None) => Some(k.clone()),
        (None, Some(var)) => Some(
            std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set")))?,
        ),
        (None, None) => None,
        _ => return Err(err("set at most one of key_id, key_id_env".into())),
    };
    let session_token = match &p.session_token_env {
        Some(var) => {
            Some(Secret::new(std::env::var(var).map_err(|_| {
                err(format!("environment variable {var} is not set"))
            })?))
        }
        None => None,
    };
    let base_url = match p
        .base_url
        .clone()
        .or_else(|| p.kind.default_base_url(p.region.as_deref()))
    {
        Some(u) => u,
        None if p.kind == ProviderKind::Smtp => String::new(),
        None => return Err(err("base_url or region is required".into())),
    };
    match p.kind {
        ProviderKind::Ses if p.region.is_none() => {
            return Err(err(
                "region is required (it is part of the SigV4 signature)".into(),
            ));
        }
        ProviderKind::Ses if key_id.is_none() || api_key.is_empty() => {
            return Err(err(
                "key_id and api_key (the secret access key) are required".into(),
            ));
        }
        ProviderKind::Mailgun if p.domain.is_none() => {
            return Err(err("domain is required".into()));
        }
        ProviderKind::Mailgun if !matches!(p.region.as_deref(), None | Some("us" | "eu")) => {
            return Err(err("region must be \"us\" or \"eu\"".into()));
        }
        ProviderKind::Smtp if p.host.is_none() => return Err(err("host is required".into())),
        _ => {}
    }
    let limit = match (p.limit, p.window_ms) {
        (Some(0), _) => return Err(err("limit must be at least 1".into())),
        (Some(limit), window) => {
            let window_ms = window.unwrap_or(1000).max(1);
            // 5% of the window by default: the spread between a permit and its request
            // reaching the provider, measured in docs/rate-limiting.md.
            let margin_ms = p.limit_margin_ms.unwrap_or(window_ms * 5 / 100);
            Some(Limit {
                limit,
                window_ms,
                tenant_limit: p.tenant_limit,
                margin_ms,
                // A tenth of the window by default, never less than the margin.
                cold_margin_ms: p
                    .limit_cold_margin_ms
                    .unwrap_or(window_ms / 10)
                    .max(margin_ms),
                // A tenth of the window: permits flow evenly instead of in a burst per window.
                spread_ms: p.limit_spread_ms.unwrap_or(window_ms / 10).min(window_ms),
            })
        }
        (None, None) if p.tenant_limit.is_none() => None,
        _ => return Err(err("window_ms and tenant_limit need limit".into())),
    };
    Ok(ProviderConfig {
        name: p.name,
        kind: p.kind,
        base_url,
        api_key,
        key_id,
        session_token,
        region: p.region,
        domain: p.domain,
        message_stream: p.message_stream,
        configuration_set: p.configuration_set,
        host: p.host,
        port: p.port,
        tls: p.tls,
        pool_size: p.pool_size.unwrap_or(8).max(1),
        timeout_ms: p.timeout_ms,
        concurrency: p.concurrency.filter(|&c| c > 0),
        rate_per_sec: p.rate_per_sec,
        limit,
        batch_max: p
            .batch_max
            .unwrap_or(super::providers::default_batch_max(p.kind)),
        batch_linger_ms: p
            .batch_linger_ms
            .unwrap_or(super::providers::DEFAULT_BATCH_LINGER_MS),
    })
}

/// Providers, routes and breaker settings from the config file if it names any providers,
/// else the default SendGrid provider.
pub fn send_config(
    file: Option<&Path>,
    default: &DefaultProvider,
) -> Result<SendConfig, ConfigError> {
    let parsed = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            toml::from_str::<FileConfig>(&text).map_err(|e| parse_error(path, &text, &e))?
        }
        None => FileConfig::default(),
    };
    let from_file = !parsed.providers.is_empty();
    let providers = if !from_file {
        let mut p = ProviderConfig::new("sendgrid", ProviderKind::Sendgrid, &default.sendgrid_url);
        p.api_key = default.sendgrid_api_key.clone();
        p.timeout_ms = default.provider_timeout_ms;
        p.batch_max = default.sendgrid_batch_max;
        vec![p]
    } else {
        parsed
            .providers
            .into_iter()
            .map(provider)
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut names = std::collections::HashSet::new();
    for p in &providers {
        if !names.insert(p.name.as_str()) {
            return Err(ConfigError::Provider {
                name: p.name.clone(),
                message: "named twice".into(),
            });
        }
    }
    // An empty credential is a mistake, never an intent: a worker with one would send every
    // email to the vendor (the real SendGrid by default) and have it refused.
    for p in &providers {
        let needs_key = p.kind != ProviderKind::Smtp || p.key_id.is_some();
        if needs_key && p.api_key.expose().is_empty() {
            return Err(ConfigError::Provider {
                name: p.name.clone(),
                message: if from_file {
                    "its api_key is empty: set api_key, api_key_env (to a variable that is set) \
                     or api_key_file"
                        .into()
                } else {
                    format!(
                        "its API key is empty: set MAILFLEET_SENDGRID_API_KEY (and \
                         MAILFLEET_SENDGRID_URL, now {}), or name providers in a --config file",
                        p.base_url
                    )
                },
            });
        }
    }
    let routes = parsed.routes.unwrap_or_default();
    let all_routes = std::iter::once(("(default)", &routes.default))
        .chain(routes.tenants.iter().map(|(t, r)| (t.as_str(), r)));
    for (who, r) in all_routes {
        for lane in crate::domain::Lane::ALL {
            if let Some(list) = r.get(lane) {
                if list.is_empty() {
                    return Err(ConfigError::Routes(format!(
                        "{who} {lane}: the list is empty"
                    )));
                }
                if let Some(n) = list.iter().find(|n| !names.contains(n.as_str())) {
                    return Err(ConfigError::Routes(format!(
                        "{who} {lane}: no provider is named {n:?}"
                    )));
                }
            }
        }
    }
    let breaker = parsed.breaker.unwrap_or_default();
    if !(0.0..=1.0).contains(&breaker.error_rate) || breaker.consecutive_failures == 0 {
        return Err(ConfigError::Routes(
            "breaker: error_rate must be within 0..1 and consecutive_failures at least 1".into(),
        ));
    }
    Ok(SendConfig {
        providers,
        routes,
        breaker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let mut p = ProviderConfig::new("x", ProviderKind::Sendgrid, "http://x");
        p.api_key = s;
        p.session_token = Some(Secret::new("hunter3"));
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"));
    }

    #[test]
    fn reads_providers_from_toml_with_keys_from_env() {
        let dir = std::env::temp_dir().join(format!("mf-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        // SAFETY: test-only; no other thread reads this variable.
        unsafe { std::env::set_var("MF_TEST_SG_KEY", "k1") };
        std::fs::write(&path, "[[providers]]\nname = \"sg\"\nkind = \"sendgrid\"\nbase_url = \"http://h\"\napi_key_env = \"MF_TEST_SG_KEY\"\n").unwrap();
        let d = DefaultProvider {
            sendgrid_url: "u".into(),
            sendgrid_api_key: Secret::default(),
            provider_timeout_ms: 5,
            sendgrid_batch_max: 500,
        };
        let ps = send_config(Some(&path), &d).unwrap().providers;
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].api_key.expose(), "k1");
        assert_eq!(ps[0].timeout_ms, 10_000);
        std::fs::write(
            &path,
            "[[providers]]\nname = \"sg\"\nkind = \"carrier-pigeon\"\nbase_url = \"x\"\n",
        )
        .unwrap();
        assert!(matches!(
            send_config(Some(&path), &d),
            Err(ConfigError::Parse { .. })
        ));
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn parse(text: &str) -> Result<SendConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("mf-cfg2-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, text).expect("write");
        let d = DefaultProvider {
            sendgrid_url: "u".into(),
            sendgrid_api_key: Secret::default(),
            provider_timeout_ms: 5,
            sendgrid_batch_max: 500,
        };
        let r = send_config(Some(&path), &d);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn a_parse_error_says_where_and_never_quotes_the_line() {
        let e = parse("[[providers]]\nname = \"sg\"\napi_key = \"SG.very-secret\" oops\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(!e.contains("very-secret"), "{e}");
    }

    #[test]
    fn the_example_file_parses_into_five_providers_with_routes() {
        // SAFETY: test-only; these variables are read by this test alone.
        unsafe {
            for v in [
                "SENDGRID_API_KEY",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "POSTMARK_SERVER_TOKEN",
                "SMTP_PASSWORD",
            ] {
                std::env::set_var(v, "x");
            }
        }
        let text = include_str!("../../mailfleet.example.toml")
            .replace("api_key_file = \"/run/secrets/mailgun\"", "api_key = \"k\"");
        let c = parse(&text).expect("the example is valid");
        let kinds: Vec<ProviderKind> = c.providers.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                ProviderKind::Sendgrid,
                ProviderKind::Ses,
                ProviderKind::Mailgun,
                ProviderKind::Postmark,
                ProviderKind::Smtp
            ]
        );
        assert_eq!(
            c.providers[1].base_url,
            "https://email.eu-west-1.amazonaws.com"
        );
        assert_eq!(c.providers[2].base_url, "https://api.eu.mailgun.net");
        assert_eq!(
            c.providers[0].limit,
            Some(Limit {
                limit: 1000,
                window_ms: 1000,
                tenant_limit: None,
                margin_ms: 50,
                cold_margin_ms: 100,
                spread_ms: 100,
            })
        );
        assert_eq!(c.routes.default.tx.as_deref().map(<[_]>::len), Some(3));
        assert_eq!(
            c.routes.tenants["acme"].tx.as_deref(),
            Some(&["relay".to_owned(), "postmark".to_owned()][..])
        );
        assert_eq!(c.breaker, BreakerConfig::default());
    }

    #[test]
    fn refuses_unknown_route_names_and_incomplete_providers() {
        let sg = "[[providers]]\nname = \"a\"\nkind = \"sendgrid\"\napi_key = \"k\"\n";
        assert!(matches!(
            parse("[[providers]]\nname = \"a\"\nkind = \"sendgrid\"\n"),
            Err(ConfigError::Provider { message, .. }) if message.contains("api_key is empty")
        ));
        // A relay without AUTH needs no key; one with a user does.
        let relay = "[[providers]]\nname = \"r\"\nkind = \"smtp\"\nhost = \"localhost\"\n";
        assert!(parse(relay).is_ok());
        assert!(matches!(
            parse(&format!("{relay}key_id = \"user\"\n")),
            Err(ConfigError::Provider { message, .. }) if message.contains("api_key is empty")
        ));
        let unset = DefaultProvider {
            sendgrid_url: "https://api.sendgrid.com".into(),
            sendgrid_api_key: Secret::default(),
            provider_timeout_ms: 5,
            sendgrid_batch_max: 500,
        };
        assert!(matches!(
            send_config(None, &unset),
            Err(ConfigError::Provider { message, .. })
                if message.contains("MAILFLEET_SENDGRID_API_KEY") && message.contains("api.sendgrid.com")
        ));
        assert!(matches!(
            parse(&format!("{sg}[routes]\ntx = [\"b\"]\n")),
            Err(ConfigError::Routes(m)) if m.contains("\"b\"")
        ));
        assert!(matches!(
            parse("[[providers]]\nname = \"s\"\nkind = \"ses\"\nregion = \"us-east-1\"\n"),
            Err(ConfigError::Provider { message, .. }) if message.contains("key_id")
        ));
        assert!(matches!(
            parse("[[providers]]\nname = \"m\"\nkind = \"mailgun\"\n"),
            Err(ConfigError::Provider { message, .. }) if message.contains("domain")
        ));
        assert!(matches!(
            parse(&format!("{sg}window_ms = 10\n")),
            Err(ConfigError::Provider { message, .. }) if message.contains("need limit")
        ));
        assert!(matches!(
            parse(&format!("{sg}{sg}")),
            Err(ConfigError::Provider { message, .. }) if message.contains("twice")
        ));
    }
}
