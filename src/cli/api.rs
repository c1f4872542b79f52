use crate::api::{self, ingest};
use crate::config::{Global, Secret};
use crate::{shutdown, store};
use anyhow::Context;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Listen address.
    #[arg(long, env = "MAILFLEET_API_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Accepted bearer API keys, comma-separated. Requests without one get 401.
    #[arg(
        long,
        env = "MAILFLEET_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub api_keys: Vec<Secret>,
    /// SendGrid's Event Webhook verification key (base64 DER); enables /v1/webhooks/sendgrid.
    #[arg(long, env = "MAILFLEET_WEBHOOK_SENDGRID_PUBLIC_KEY")]
    pub webhook_sendgrid_public_key: Option<String>,
    /// Mailgun's webhook signing key; enables /v1/webhooks/mailgun.
    #[arg(
        long,
        env = "MAILFLEET_WEBHOOK_MAILGUN_SIGNING_KEY",
        hide_env_values = true
    )]
    pub webhook_mailgun_signing_key: Option<Secret>,
    /// Basic-auth user and password Postmark's webhook is configured with; enable
    /// /v1/webhooks/postmark.
    #[arg(long, env = "MAILFLEET_WEBHOOK_POSTMARK_USER")]
    pub webhook_postmark_user: Option<String>,
    #[arg(
        long,
        env = "MAILFLEET_WEBHOOK_POSTMARK_PASSWORD",
        hide_env_values = true
    )]
    pub webhook_postmark_password: Option<Secret>,
    /// SNS topic ARNs whose SES events are accepted (comma-separated); enables
    /// /v1/webhooks/ses.
    #[arg(long, env = "MAILFLEET_WEBHOOK_SES_TOPIC_ARNS", value_delimiter = ',')]
    pub webhook_ses_topic_arns: Vec<String>,
    /// Replace the SNS certificate URL rule (https://sns.<region>.amazonaws.com/...pem) with
    /// these URL prefixes (comma-separated): for private endpoints and tests only.
    #[arg(
        long,
        env = "MAILFLEET_WEBHOOK_SNS_URL_PREFIXES",
        value_delimiter = ','
    )]
    pub webhook_sns_url_prefixes: Vec<String>,
    /// Secret that signs unsubscribe links (the workers' MAILFLEET_UNSUBSCRIBE_SECRET);
    /// enables /v1/unsubscribe/{token}.
    #[arg(long, env = "MAILFLEET_UNSUBSCRIBE_SECRET", hide_env_values = true)]
    pub unsubscribe_secret: Option<Secret>,
    /// Token that signs in to the admin page (/admin); at least 16 characters. Without it the
    /// page is off (404).
    #[arg(long, env = "MAILFLEET_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Mark the admin session cookie `Secure` (when the API is served over HTTPS).
    #[arg(long, env = "MAILFLEET_ADMIN_SECURE_COOKIE")]
    pub admin_secure_cookie: bool,
    /// Largest accepted age (or clock skew) of a signed webhook's timestamp, in seconds.
    #[arg(long, env = "MAILFLEET_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub webhook_tolerance_secs: i64,
}

fn ses_hook(a: &ApiArgs) -> anyhow::Result<Option<Arc<api::webhooks::SesHook>>> {
    let topics: Vec<String> = a
        .webhook_ses_topic_arns
        .iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if topics.is_empty() {
        return Ok(None);
    }
    let rule = api::sns::UrlRule {
        prefixes: a
            .webhook_sns_url_prefixes
            .iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
    };
    Ok(Some(Arc::new(api::webhooks::SesHook {
        topic_arns: topics,
        verifier: api::sns::SnsVerifier::new(rule)?,
    })))
}

pub async fn run(g: Global, a: ApiArgs) -> anyhow::Result<()> {
    let pg = store::connect(g.database_url.expose(), 8).await?;
    store::ensure_migrated(&pg).await?;
    let producer = super::producer(&g)?;
    let redis = super::redis_pool(&g)?;
    let state = ingest::ApiState::new(producer, pg.clone(), &a.api_keys, g.max_payload_bytes);
    let draining = Arc::new(AtomicBool::new(false));
    let hooks = api::webhooks::WebhookKeys {
        sendgrid_public_key: a.webhook_sendgrid_public_key.clone(),
        mailgun_signing_key: a.webhook_mailgun_signing_key.clone(),
        postmark_user: a.webhook_postmark_user.clone(),
        postmark_password: a.webhook_postmark_password.clone(),
        ses: ses_hook(&a)?,
        tolerance_secs: a.webhook_tolerance_secs,
    };
    let mut router = ingest::router(state).merge(api::webhooks::router(pg.clone(), hooks));
    if let Some(token) = a.admin_token.clone().filter(|t| !t.is_empty()) {
        if token.expose().len() < 16 {
            anyhow::bail!("MAILFLEET_ADMIN_TOKEN must be at least 16 characters");
        }
        router = router.merge(api::admin::router(api::admin::AdminState {
            pg: pg.clone(),
            redis: redis.clone(),
            keys: crate::stream::Keys::new(&g.prefix, g.partitions),
            token,
            secure_cookie: a.admin_secure_cookie,
        }));
    }
    if let Some(secret) = a.unsubscribe_secret.clone().filter(|s| !s.is_empty()) {
        router = router.merge(api::unsubscribe::router(pg.clone(), secret));
    }
    let router = router.merge(api::ops_router(api::Health {
        redis,
        pg,
        draining: draining.clone(),
    }));
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding the API address {}", a.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "api listening");
    println!("api listening on http://{addr}");
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    api::serve(listener, router, token).await?;
    Ok(())
}
