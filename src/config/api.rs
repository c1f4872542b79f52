//! The HTTP API's settings (`mailfleet api`): listen address, API keys, webhook verification
//! keys, the unsubscribe secret and the admin page.

use super::Secret;
use clap::Args;

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
    /// Drop `Secure` (and the `__Host-` prefix) from the admin session cookie: for plain-HTTP
    /// development only. By default the cookie is `Secure`, so the page needs HTTPS.
    #[arg(long, env = "MAILFLEET_ADMIN_INSECURE_COOKIE", value_parser = clap::builder::BoolishValueParser::new())]
    pub admin_insecure_cookie: bool,
    /// Where `/metrics` is served: its own listener, never the public port. Empty turns it
    /// off.
    #[arg(
        long,
        env = "MAILFLEET_API_METRICS_LISTEN",
        default_value = "0.0.0.0:9465"
    )]
    pub metrics_listen: String,
    /// Most client connections open at once; more wait to be accepted.
    #[arg(long, env = "MAILFLEET_API_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// A request's headers must arrive within this many ms, or the connection is closed.
    #[arg(long, env = "MAILFLEET_API_HEADER_TIMEOUT_MS", default_value_t = 5_000)]
    pub header_timeout_ms: u64,
    /// A request, body included, must be answered within this many ms, or it gets 408.
    #[arg(
        long,
        env = "MAILFLEET_API_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub request_timeout_ms: u64,
    /// A connection with no request for this many ms is closed.
    #[arg(long, env = "MAILFLEET_API_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Largest accepted age (or clock skew) of a signed webhook's timestamp, in seconds.
    #[arg(long, env = "MAILFLEET_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub webhook_tolerance_secs: i64,
}
