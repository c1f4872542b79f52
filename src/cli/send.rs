use crate::config::{Global, SendArgs};
use crate::domain::{Lane, Payload};
use crate::producer::NewJob;
use crate::store;
use anyhow::{Context, bail};
use std::io::BufRead;

const CHUNK: usize = 1000;

pub async fn run(g: Global, a: SendArgs) -> anyhow::Result<()> {
    let producer = super::producer(&g)?;
    let mut templates = Templates::new(&g);
    if let Some(path) = &a.file {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            ))
        };
        let mut batch = Vec::with_capacity(CHUNK);
        let mut total = 0usize;
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("line {}: not JSON", n + 1))?;
            batch.push(job_from_json(v).with_context(|| format!("line {}", n + 1))?);
            if batch.len() == CHUNK {
                templates.check(&batch, total).await?;
                total += flush(&producer, &mut batch).await?;
            }
        }
        templates.check(&batch, total).await?;
        total += flush(&producer, &mut batch).await?;
        eprintln!("enqueued {total} emails");
        return Ok(());
    }
    let Some(from) = a.from else {
        bail!("--from (or MAILFLEET_DEFAULT_FROM) is required")
    };
    let vars = a
        .vars
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--vars must be a JSON object")?;
    let payload = Payload {
        to: a.to,
        cc: a.cc,
        bcc: a.bcc,
        from,
        reply_to: a.reply_to,
        subject: a.subject,
        template: a.template,
        vars,
        html: a.html,
        text: a.text,
        tenant: a.tenant,
        send_at: a.send_at,
        ..Default::default()
    };
    let job = NewJob {
        lane: a.lane,
        idempotency_key: a.idem,
        payload,
    };
    templates.check(std::slice::from_ref(&job), 0).await?;
    let e = producer.send(job).await?;
    println!("{}", e.id);
    if !e.added {
        eprintln!("idempotency key already used: this is the first job's id; nothing was added");
    }
    Ok(())
}

/// The templates jobs name must exist: a missing one would fail each email later, at the
/// worker, where the sender does not see it. Checked when Postgres answers (the first batch
/// connects); if it does not, the worker checks before sending.
struct Templates<'g> {
    g: &'g Global,
    pg: Option<Option<sqlx::PgPool>>,
    known: std::collections::HashMap<String, crate::store::templates::Template>,
    /// Renders each job of a stored template with its variables, as the worker will: a
    /// variable the template needs and the job lacks is refused here.
    renderer: crate::render::Renderer,
}

impl<'g> Templates<'g> {
    fn new(g: &'g Global) -> Self {
        Templates {
            g,
            pg: None,
            known: Default::default(),
            renderer: crate::render::Renderer::new(crate::render::Limits::default()),
        }
    }

    /// Each job of a known template renders with its own variables; the first that does not
    /// fails the batch (by its position, the template and the renderer's reason: no value).
    fn render_each(&self, jobs: &[NewJob], before: usize) -> anyhow::Result<()> {
        for (i, j) in jobs.iter().enumerate() {
            let Some(t) = j.payload.template.as_ref().and_then(|n| self.known.get(n)) else {
                continue;
            };
            let Ok(email) = crate::domain::Email::try_from(j.payload.clone()) else {
                continue; // the producer refuses it, with its field errors
            };
            if let Err(e) = self.renderer.render(&email, Some(t)) {
                bail!(
                    "email {} does not render with template {:?}: {e}; nothing of this batch was \
                     enqueued{}",
                    before + i + 1,
                    t.name,
                    if before > 0 {
                        format!(" ({before} emails before it were)")
                    } else {
                        String::new()
                    }
                );
            }
        }
        Ok(())
    }

    /// `jobs` is the next batch; `before` emails were enqueued already.
    async fn check(&mut self, jobs: &[NewJob], before: usize) -> anyhow::Result<()> {
        let mut names: Vec<String> = jobs
            .iter()
            .filter_map(|j| j.payload.template.clone())
            .filter(|n| !self.known.contains_key(n))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return self.render_each(jobs, before);
        }
        if self.pg.is_none() {
            self.pg = Some(
                match store::connect(self.g.database_url.expose(), 1).await {
                    Ok(pg) => Some(pg),
                    Err(e) => {
                        eprintln!("warning: templates not checked: {e}");
                        None
                    }
                },
            );
        }
        let Some(Some(pg)) = &self.pg else {
            return Ok(());
        };
        let found = match store::templates::latest(pg, &names).await {
            Ok(found) => found,
            Err(e) => {
                eprintln!("warning: templates not checked: {e}");
                return Ok(());
            }
        };
        self.known
            .extend(found.into_iter().map(|t| (t.name.clone(), t)));
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !self.known.contains_key(*n))
            .collect();
        if let Some(first) = missing.first() {
            let earlier = if before > 0 {
                format!(" ({before} emails before it were)")
            } else {
                String::new()
            };
            bail!(
                "no template named {first:?}{}: nothing of this batch was enqueued{earlier}; \
                 `mailfleet template list` shows the stored ones, `mailfleet template put` adds one",
                if missing.len() > 1 {
                    format!(" (nor {} other(s))", missing.len() - 1)
                } else {
                    String::new()
                }
            );
        }
        self.render_each(jobs, before)
    }
}

fn job_from_json(mut v: serde_json::Value) -> anyhow::Result<NewJob> {
    let obj = v
        .as_object_mut()
        .context("each line must be a JSON object")?;
    let lane = match obj.remove("lane") {
        Some(serde_json::Value::String(s)) => s.parse()?,
        None => Lane::Tx,
        Some(_) => bail!("lane must be \"tx\" or \"bulk\""),
    };
    let idempotency_key = match obj.remove("idempotency_key") {
        Some(serde_json::Value::String(s)) => Some(s),
        None => None,
        Some(_) => bail!("idempotency_key must be a string"),
    };
    let payload: Payload = serde_json::from_value(v)?;
    Ok(NewJob {
        lane,
        idempotency_key,
        payload,
    })
}

async fn flush(p: &crate::Producer, batch: &mut Vec<NewJob>) -> anyhow::Result<usize> {
    if batch.is_empty() {
        return Ok(0);
    }
    let out = p.send_many(std::mem::take(batch)).await?;
    let mut stdout = String::with_capacity(out.len() * 37);
    for e in &out {
        stdout.push_str(&e.id.to_string());
        stdout.push('\n');
    }
    print!("{stdout}");
    Ok(out.len())
}
