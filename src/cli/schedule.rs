use crate::config::Global;
use crate::domain::Lane;
use crate::scheduler::admin::{self, Definition};
use crate::scheduler::cron::CronSpec;
use crate::store::{self, schedules};
use anyhow::{Context, bail};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Add a recurring schedule: at each tick, one email per subscribed audience member.
    Add {
        name: String,
        /// 5 fields (min hour day month weekday) or 6 with leading seconds; or @daily, @hourly...
        #[arg(long)]
        cron: String,
        /// IANA timezone the expression is read in.
        #[arg(long, default_value = "UTC")]
        tz: String,
        #[arg(long)]
        template: String,
        #[arg(long)]
        audience: String,
        /// Sender: `addr@example.com` or `Name <addr@example.com>`.
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "bulk")]
        lane: Lane,
        /// Template variables for every member (a JSON object); members' own vars win.
        #[arg(long, default_value = "{}")]
        vars: String,
        /// Ticks missed while no leader ran: `skip` them, or fire the latest `once`.
        #[arg(long, default_value = "once")]
        catch_up: String,
        /// Never fire a tick (or continue its fan-out) later than this after its time.
        #[arg(long, default_value = "1h")]
        stale_after: String,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// List schedules.
    List {
        /// One JSON object per schedule per line.
        #[arg(long)]
        json: bool,
    },
    /// Fire a schedule once now, outside its expression: one email per subscribed member, like
    /// a tick (its own run, exactly once; the leader fans it out within seconds). Its regular
    /// ticks are unchanged.
    RunNow { name: String },
    /// Show one schedule and its next ticks.
    Show { name: String },
    /// Stop firing until resumed; a fan-out under way halts after its current batch.
    Pause { name: String },
    /// Fire again from the next tick after now (ticks passed while paused are not fired); a
    /// halted fan-out continues.
    Resume { name: String },
    /// Delete a schedule and its run history.
    Rm { name: String },
    /// The latest runs of a schedule: one line per handled tick.
    Runs {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(g: Global, c: ScheduleCmd) -> anyhow::Result<()> {
    let pool = store::connect(g.database_url.expose(), 2).await?;
    store::ensure_migrated(&pool).await?;
    match c {
        ScheduleCmd::Add {
            name,
            cron,
            tz,
            template,
            audience,
            from,
            lane,
            vars,
            catch_up,
            stale_after,
            paused,
        } => {
            let vars: serde_json::Value =
                serde_json::from_str(&vars).context("--vars is not JSON")?;
            let s = admin::add(
                &pool,
                &Definition {
                    name,
                    cron,
                    timezone: tz,
                    template,
                    audience,
                    from,
                    lane,
                    vars,
                    catch_up,
                    stale_after,
                    paused,
                },
            )
            .await?;
            println!(
                "{} added; first tick {}{}",
                s.name,
                s.next_tick.to_rfc3339(),
                if s.enabled { "" } else { " (paused)" }
            );
        }
        ScheduleCmd::List { json: true } => {
            for s in schedules::list(&pool).await? {
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        ScheduleCmd::RunNow { name } => {
            let Some(s) = schedules::get(&pool, &name).await? else {
                bail!("no schedule named {name:?}");
            };
            if !s.enabled {
                bail!("{name} is paused: resume it first (`mailfleet schedule resume {name}`)");
            }
            let run = schedules::run_now(&pool, s.id).await?;
            println!(
                "{name}: run {} for {} member(s); a scheduler leader fans it out (`mailfleet schedule runs {name}`)",
                run.tick.to_rfc3339(),
                run.total
            );
        }
        ScheduleCmd::List { json: false } => {
            println!(
                "{:<24} {:<18} {:<16} {:<16} {:<7} next tick",
                "name", "cron", "timezone", "audience", "state"
            );
            for s in schedules::list(&pool).await? {
                println!(
                    "{:<24} {:<18} {:<16} {:<16} {:<7} {}",
                    s.name,
                    s.cron,
                    s.timezone,
                    s.audience,
                    if s.enabled { "active" } else { "paused" },
                    s.next_tick.to_rfc3339()
                );
            }
        }
        ScheduleCmd::Show { name } => {
            let Some(s) = schedules::get(&pool, &name).await? else {
                bail!("no schedule named {name:?}");
            };
            let spec = CronSpec::parse(&s.cron, &s.timezone)?;
            let mut next = Vec::new();
            let mut t = Some(s.next_tick);
            while let Some(tick) = t
                && next.len() < 5
            {
                next.push(tick.to_rfc3339());
                t = spec.next_after(tick);
            }
            let mut v = serde_json::to_value(&s)?;
            v["describe"] = spec.describe().into();
            v["upcoming"] = next.into();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ScheduleCmd::Pause { name } => {
            admin::pause(&pool, &name).await?;
            println!("{name} paused");
        }
        ScheduleCmd::Resume { name } => {
            let s = admin::resume(&pool, &name).await?;
            println!("{name} active; next tick {}", s.next_tick.to_rfc3339());
        }
        ScheduleCmd::Rm { name } => {
            if !schedules::remove(&pool, &name).await? {
                bail!("no schedule named {name:?}");
            }
            println!("{name} removed");
        }
        ScheduleCmd::Runs { name, limit, json } => {
            let Some(s) = schedules::get(&pool, &name).await? else {
                bail!("no schedule named {name:?}");
            };
            let runs = schedules::runs(&pool, s.id, limit.max(1)).await?;
            if json {
                for r in &runs {
                    println!("{}", serde_json::to_string(r)?);
                }
                return Ok(());
            }
            println!(
                "{:<26} {:<11} {:>7} {:>9} {:>8} {:>7}  detail",
                "tick", "status", "token", "enqueued", "total", "lag_s"
            );
            for r in runs {
                println!(
                    "{:<26} {:<11} {:>7} {:>9} {:>8} {:>7.2}  {}",
                    r.tick.to_rfc3339(),
                    r.status,
                    r.token,
                    r.enqueued,
                    r.total,
                    (r.fired_at - r.tick).num_milliseconds() as f64 / 1000.0,
                    r.detail.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
