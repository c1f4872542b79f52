//! A small SMTP server for the mock provider (plain, no TLS): EHLO/HELO, AUTH PLAIN/LOGIN
//! (any credentials but the password `wrong`), MAIL, RCPT (a recipient whose local part
//! starts with `reject` gets 550), DATA, RSET, NOOP, QUIT. The job id is read from the
//! `X-Mailfleet-Id` header. After DATA the same faults as the HTTP dialects apply: a rate
//! limit or a 503 verdict answers 451, accept-then-drop closes the connection (reset) without
//! the final reply.

use super::{Mock, Verdict};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const NAME: &str = "smtp";
/// Longest command line or DATA line read (RFC 5321 allows 1000 octets).
const MAX_LINE: usize = 4096;
/// Largest message accepted.
const MAX_MESSAGE: usize = 10 << 20;

/// Serve SMTP on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, m: Mock, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
        };
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        let m = m.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = session(stream, &m) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn read_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    buf.clear();
    let n = (&mut *r)
        .take(MAX_LINE as u64)
        .read_until(b'\n', buf)
        .await?;
    Ok(n > 0)
}

use tokio::io::AsyncReadExt;

async fn session(stream: TcpStream, m: &Mock) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 mock.mailfleet ESMTP\r\n").await?;
    let mut rcpts = 0usize;
    let mut line = Vec::new();
    loop {
        if !read_line(&mut r, &mut line).await? {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let verb = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-mock.mailfleet\r\n250-8BITMIME\r\n250-SIZE 10485760\r\n250 AUTH PLAIN LOGIN\r\n",
            "HELO" => b"250 mock.mailfleet\r\n",
            "AUTH" => {
                if auth(text, &mut r, &mut w).await? {
                    b"235 2.7.0 Authentication successful\r\n"
                } else {
                    b"535 5.7.8 Authentication credentials invalid\r\n"
                }
            }
            "MAIL" => {
                rcpts = 0;
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" => {
                let to = text.to_ascii_lowercase();
                if to.contains("<reject") || to.contains(":reject") {
                    b"550 5.1.1 Recipient address rejected: user unknown\r\n"
                } else {
                    rcpts += 1;
                    b"250 2.1.5 Ok\r\n"
                }
            }
            "DATA" if rcpts == 0 => b"554 5.5.1 Error: no valid recipients\r\n",
            "DATA" => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut id = String::new();
                let mut size = 0usize;
                let mut in_headers = true;
                // The message's header block, for tests that capture (bounded by the size cap).
                let mut head = Vec::new();
                loop {
                    if !read_line(&mut r, &mut line).await? {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    size += line.len();
                    if in_headers && size <= MAX_MESSAGE {
                        head.extend_from_slice(&line);
                    }
                    let l = String::from_utf8_lossy(&line);
                    let l = l.trim_end();
                    if l.is_empty() {
                        in_headers = false;
                    } else if in_headers
                        && let Some((k, v)) = l.split_once(':')
                        && k.eq_ignore_ascii_case("x-mailfleet-id")
                    {
                        id = v.trim().to_owned();
                    }
                }
                rcpts = 0;
                m.capture(NAME, "DATA", &axum::http::HeaderMap::new(), &head);
                if size > MAX_MESSAGE {
                    b"552 5.3.4 Message size exceeds fixed limit\r\n"
                } else {
                    match m.arrive(NAME, None, 1).await {
                        Verdict::RateLimited(_) | Verdict::Throttled => {
                            b"451 4.7.1 Rate limit exceeded, try again later\r\n"
                        }
                        Verdict::Unavailable => b"451 4.3.0 Temporary server failure\r\n",
                        Verdict::Accept => {
                            let (message_id, answer) = m.accept(NAME, &id);
                            // SMTP has no "taken, but an error": accept-then-5xx closes the
                            // connection unanswered, like accept-then-drop.
                            if answer != super::Answer::Success {
                                // Taken, and no answer: the connection resets.
                                return Ok(());
                            }
                            w.write_all(format!("250 2.0.0 Ok: queued as {message_id}\r\n").as_bytes())
                                .await?;
                            continue;
                        }
                    }
                }
            }
            "RSET" => {
                rcpts = 0;
                b"250 2.0.0 Ok\r\n"
            }
            "NOOP" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 Error: command not recognized\r\n",
        };
        w.write_all(reply).await?;
    }
}

/// AUTH PLAIN (initial response or continuation) or LOGIN; false when the password is `wrong`.
async fn auth<R: AsyncBufReadExt + Unpin, W: AsyncWriteExt + Unpin>(
    text: &str,
    r: &mut R,
    w: &mut W,
) -> std::io::Result<bool> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut parts = text.split_whitespace().skip(1);
    let mech = parts.next().unwrap_or("").to_ascii_uppercase();
    let mut line = Vec::new();
    let mut ask = async |prompt: &[u8], line: &mut Vec<u8>| -> std::io::Result<Vec<u8>> {
        w.write_all(prompt).await?;
        read_line(r, line).await?;
        Ok(b64
            .decode(String::from_utf8_lossy(line).trim())
            .unwrap_or_default())
    };
    let password = match mech.as_str() {
        "PLAIN" => {
            let creds = match parts.next() {
                Some(initial) => b64.decode(initial).unwrap_or_default(),
                None => ask(b"334 \r\n", &mut line).await?,
            };
            creds.split(|&b| b == 0).nth(2).map(<[u8]>::to_vec)
        }
        "LOGIN" => {
            ask(b"334 VXNlcm5hbWU6\r\n", &mut line).await?;
            Some(ask(b"334 UGFzc3dvcmQ6\r\n", &mut line).await?)
        }
        _ => None,
    };
    Ok(password.is_some_and(|p| p != b"wrong"))
}
