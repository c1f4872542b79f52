use crate::config::{Global, SendArgs};
use crate::domain::{Lane, Payload};
use crate::producer::NewJob;
use anyhow::{Context, bail};
use std::io::BufRead;

const CHUNK: usize = 1000;

pub async fn run(g: Global, a: SendArgs) -> anyhow::Result<()> {
    let producer = super::producer(&g)?;
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
                total += flush(&producer, &mut batch).await?;
            }
        }
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
    let e = producer
        .send(NewJob {
            lane: a.lane,
            idempotency_key: a.idem,
            payload,
        })
        .await?;
    println!("{}", e.id);
    if !e.added {
        eprintln!("idempotency key already used: this is the first job's id; nothing was added");
    }
    Ok(())
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
