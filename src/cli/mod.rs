//! One file per subcommand: wiring and printing only, no business logic. `anyhow` lives here
//! and in main.rs, nowhere else.

pub mod api;
pub mod audience;
pub mod bench;
pub mod dlq;
pub mod email;
pub mod key;
pub mod migrate;
pub mod mock;
pub mod pause;
pub mod prune;
pub mod report;
pub mod schedule;
pub mod send;
pub mod status;
pub mod suppress;
pub mod template;
pub mod worker;

use crate::config::Global;
use clap::{Parser, Subcommand};

impl Cli {
    /// Parse the process's arguments (with [`Cli::full_command`]'s help).
    pub fn parse_args() -> Cli {
        use clap::FromArgMatches;
        let matches = Cli::full_command().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The command line as the binary parses it:
    /// - every flag's `[env: NAME]` is shown without its value: clap would print `[env: NAME=]`
    ///   for an unset variable, which reads as set to empty, and a set one's value may be a secret;
    /// - `worker -h` and `worker --help` list the settings an operator sets on day one, each on
    ///   one line, and `worker --help-all` every setting with its full text.
    pub fn full_command() -> clap::Command {
        use clap::{Arg, ArgAction, CommandFactory};
        fn env_names_only(c: clap::Command) -> clap::Command {
            c.mut_args(|a| a.hide_env_values(true))
                .mut_subcommands(env_names_only)
        }
        env_names_only(Cli::command()).mut_subcommand("worker", |c| {
            c.mut_args(|a| {
                let day_one = crate::config::WORKER_DAY_ONE.contains(&a.get_id().as_str());
                a.hide_short_help(!day_one)
            })
            .disable_help_flag(true)
            .arg(
                Arg::new("help")
                    .short('h')
                    .long("help")
                    .action(ArgAction::HelpShort)
                    .help("Print the day-one settings (every one: --help-all)"),
            )
            .arg(
                Arg::new("help-all")
                    .long("help-all")
                    .action(ArgAction::HelpLong)
                    .help("Print every setting, each with its full description"),
            )
            .after_help(
                "The tuning settings (batching, in-flight pools, retries, the reconciler, the \
                 scheduler's lease, rendering bounds, Postgres pools) are listed by \
                 `mailfleet worker --help-all` and in docs/configuration.md.",
            )
        })
    }
}

/// The command line: the settings every subcommand shares, then the subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "mailfleet",
    version,
    about = "A Redis-coordinated, horizontally scaled email delivery cluster"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the lanes and send: the process you scale by replica count.
    Worker(crate::config::WorkerArgs),
    /// The HTTP ingest API (POST /v1/emails, /v1/emails/batch; GET /v1/emails/{id}).
    Api(crate::config::ApiArgs),
    /// Enqueue emails from the shell (flags for one email, or --file jobs.jsonl).
    Send(crate::config::SendArgs),
    /// Apply the Postgres migrations.
    Migrate,
    /// One email: its status and every attempt with the provider's answer.
    #[command(subcommand)]
    Email(email::EmailCmd),
    /// Store and read named templates.
    #[command(subcommand)]
    Template(template::TemplateCmd),
    /// Run the mock email provider (SendGrid, SES, Mailgun, Postmark, SMTP) for development and tests.
    MockProvider(crate::config::MockArgs),
    /// Inspect, replay and purge the dead-letter streams.
    #[command(subcommand)]
    Dlq(dlq::DlqCmd),
    /// Recurring schedules: cron + timezone, a template, an audience.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCmd),
    /// Audiences: the members a schedule fans out to.
    #[command(subcommand)]
    Audience(audience::AudienceCmd),
    /// Measure the whole pipeline (producer → workers → mock provider → Postgres → ack), or
    /// with `bench fanout` a schedule's audience fan-out.
    Bench(crate::config::BenchArgs),
    /// Compare enqueued ids with Postgres and a mock-provider log: sent, lost, duplicates.
    Report(report::ReportArgs),
    /// Retention: delete final emails, webhook event ids and schedule runs older than an age.
    Prune(prune::PruneArgs),
    /// The cluster at a glance: lanes, delayed, dead letters, workers, leader, breakers.
    Status(status::StatusArgs),
    /// API keys bound to a tenant and scopes: create, list, revoke.
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// The suppression list: addresses never sent to (bounce, complaint, unsubscribe, manual).
    #[command(subcommand)]
    Suppress(suppress::SuppressCmd),
    /// Pause a lane, provider or tenant on every worker (within a second).
    Pause(pause::PauseArgs),
    /// Lift a pause.
    Resume(pause::PauseArgs),
}

pub async fn dispatch(global: Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Worker(a) => worker::run(global, a).await,
        Command::Api(a) => api::run(global, a).await,
        Command::Send(a) => send::run(global, a).await,
        Command::Migrate => migrate::run(global).await,
        Command::Template(c) => template::run(global, c).await,
        Command::MockProvider(a) => mock::run(a).await,
        Command::Report(a) => report::run(global, a).await,
        Command::Prune(a) => prune::run(global, a).await,
        Command::Status(a) => status::run(global, a).await,
        Command::Email(c) => email::run(global, c).await,
        Command::Suppress(c) => suppress::run(global, c).await,
        Command::Key(c) => key::run(global, c).await,
        Command::Pause(a) => pause::run(global, a, true).await,
        Command::Resume(a) => pause::run(global, a, false).await,
        Command::Dlq(c) => dlq::run(global, c).await,
        Command::Schedule(c) => schedule::run(global, c).await,
        Command::Audience(c) => audience::run(global, c).await,
        Command::Bench(c) => bench::run(global, c).await,
    }
}

pub(crate) fn redis_pool(g: &Global) -> anyhow::Result<crate::stream::Pool> {
    Ok(crate::producer::redis_pool(g)?)
}

pub(crate) fn producer(g: &Global) -> anyhow::Result<crate::Producer> {
    Ok(crate::Producer::for_global(g)?)
}

#[cfg(test)]
mod tests {
    use super::Cli;

    fn help(args: &[&str]) -> String {
        match Cli::full_command().try_get_matches_from(args) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{args:?} printed no help"),
        }
    }

    /// Every on/off setting a `MAILFLEET_*` variable can set takes what people write in an
    /// environment (`1`, `yes`, `on`, `true` and their opposites), not only `true`/`false`
    /// (clap's default for a flag).
    #[test]
    fn every_on_off_variable_takes_1_and_0_as_well_as_true_and_false() {
        fn walk(cmd: &clap::Command, found: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let flag = matches!(a.get_action(), clap::ArgAction::SetTrue);
                let Some(env) = a.get_env().filter(|_| flag) else {
                    continue;
                };
                let env = env.to_string_lossy().into_owned();
                let takes: Vec<String> = a
                    .get_possible_values()
                    .iter()
                    .map(|v| v.get_name().to_owned())
                    .collect();
                for word in ["1", "0", "yes", "no", "true", "false"] {
                    assert!(
                        takes.iter().any(|t| t == word),
                        "{env} takes only {takes:?}: give it clap::builder::BoolishValueParser"
                    );
                }
                found.push(env);
            }
            for sub in cmd.get_subcommands() {
                walk(sub, found);
            }
        }
        let mut found = Vec::new();
        walk(&Cli::full_command(), &mut found);
        for env in [
            "MAILFLEET_FIXED_IN_FLIGHT",
            "MAILFLEET_REDIS_CLUSTER",
            "MAILFLEET_ADMIN_INSECURE_COOKIE",
        ] {
            assert!(found.iter().any(|f| f == env), "{env} not found: {found:?}");
        }
    }

    #[test]
    fn worker_help_lists_the_day_one_settings_and_help_all_lists_every_one() {
        let worker = Cli::full_command();
        let worker = worker.find_subcommand("worker").expect("worker");
        for id in crate::config::WORKER_DAY_ONE {
            assert!(
                worker.get_arguments().any(|a| a.get_id() == *id),
                "DAY_ONE names {id}, which `worker` does not have"
            );
        }
        let short = help(&["mailfleet", "worker", "--help"]);
        assert_eq!(short, help(&["mailfleet", "worker", "-h"]));
        assert!(short.contains("--sendgrid-api-key"), "{short}");
        assert!(short.contains("--help-all"), "{short}");
        assert!(!short.contains("--read-linger-ms"), "{short}");
        let all = help(&["mailfleet", "worker", "--help-all"]);
        assert!(all.contains("--read-linger-ms"), "{all}");
        assert!(all.lines().count() > short.lines().count() * 2);
        // Unset variables must not look set to empty.
        assert!(!all.contains("MAILFLEET_PREFIX="), "{all}");
    }
}
