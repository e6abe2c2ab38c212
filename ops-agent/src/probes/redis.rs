//! The Redis probe (`kind = "redis"` under `[services.*]`): `redis_ping`, a `PING` that
//! must answer `PONG` (its round trip is the value), and `redis_memory`, `used_memory`
//! against `maxmemory` from `INFO memory`.
//!
//! Both talk to Redis through the `redis` crate on tokio, with rustls for `rediss://`.
//! Every operation is bounded by the probe's [`ProbeBudget`]: the connection (TCP, TLS,
//! `AUTH`, `SELECT`) by `connect`, each command by `statement`, so a blackholed address
//! answers within its budget.
//!
//! `redis_ping` is a login check: a server that wants a password and gets none
//! (`NOAUTH`), refuses the one it gets (`WRONGPASS`), cannot be reached, or answers
//! anything but `PONG` is *unhealthy*, never alive — `redis-cli ping` exits 0 on
//! `NOAUTH`, and that is the lie this check exists to avoid. `redis_memory` needs a
//! working session to measure anything, so for it the same failures are errors ("could
//! not check", `unknown` in a suite), not a verdict about memory.
//!
//! The URL's password never reaches a reason, an error or `Debug`: the URL is shown
//! only as [`redact_url`] prints it, and every message from the client is scrubbed of
//! the password before it leaves this module. What must not live here: RESP written by
//! hand, and anything that writes to the server.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, RedisError};
use async_trait::async_trait;
use ops_core::secret::REDACTED;
use ops_core::{
    Error, ErrorKind, HealthCheck, HealthReport, HealthStatus, Limits, ProbeBudget, Result, Secret,
    Thresholds, redact_url,
};

/// The name of the `PING` check (and its key in `[health.thresholds]`).
pub const PING: &str = "redis_ping";
/// The name of the memory check (and its key in `[health.thresholds]`).
pub const MEMORY: &str = "redis_memory";
/// Default `PING` round-trip limits in seconds: 100 ms warns, 1 s is critical.
pub const PING_LIMITS: Limits = Limits::new(0.1, 1.0);
/// Default memory limits, percent of `maxmemory`: 80 warns, 90 is critical.
pub const MEMORY_LIMITS: Limits = Limits::new(80.0, 90.0);

/// The checks of the Redis at `url` (`redis://[USER][:PASSWORD@]HOST[:PORT][/DB]`, or
/// `rediss://` for TLS): [`PING`] and [`MEMORY`], with `thresholds`' overrides of
/// [`PING_LIMITS`] and [`MEMORY_LIMITS`], each operation bounded by `budget`.
///
/// Nothing is contacted here; the checks connect afresh each time they run, so a
/// restarted server or a changed password shows at the next check.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] when `url` is not a Redis URL (the message shows it with
/// the password masked).
pub fn probes(
    url: &str,
    thresholds: &Thresholds,
    budget: ProbeBudget,
) -> Result<Vec<Arc<dyn HealthCheck>>> {
    let server = Arc::new(Server::open(url, budget)?);
    Ok(vec![
        Arc::new(RedisPing {
            server: server.clone(),
            limits: thresholds.limits(PING, PING_LIMITS),
        }),
        Arc::new(RedisMemory {
            server,
            limits: thresholds.limits(MEMORY, MEMORY_LIMITS),
        }),
    ])
}

/// One Redis server as the checks reach it.
struct Server {
    /// Holds the password; never printed (its `Debug` would show it).
    client: Client,
    /// The URL as it may be shown: password masked.
    shown: String,
    /// The password as written in the URL and percent-decoded, to scrub from the
    /// client's messages.
    secrets: Vec<Secret>,
    budget: ProbeBudget,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.shown)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Why a connection or a command did not give an answer. The text is already scrubbed.
enum Failure {
    /// No connection, or no answer within the budget.
    Unreachable(String),
    /// The TLS handshake failed (untrusted certificate, wrong name, plain server).
    Tls(String),
    /// Something answered, but not in Redis's protocol (an HTTP proxy, another
    /// service on the port).
    NotRedis(String),
    /// The server wants a password it did not get, or refused the one it got.
    Auth { missing: bool, detail: String },
    /// The server answered with an error.
    Server(String),
}

impl Server {
    fn open(url: &str, budget: ProbeBudget) -> Result<Self> {
        let shown = redact_url(url);
        let secrets = password_forms(url);
        let client = Client::open(url).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{shown} is not a Redis URL ({}); write redis://[:PASSWORD@]HOST[:PORT][/DB], \
                     or rediss:// for TLS",
                    scrub(&secrets, &e.to_string())
                ),
            )
        })?;
        Ok(Self {
            client,
            shown,
            secrets,
            budget,
        })
    }

    /// A fresh connection: TCP, TLS, `AUTH` and `SELECT` within `budget.connect`, and
    /// every later command within `budget.statement`.
    async fn connect(&self) -> std::result::Result<MultiplexedConnection, Failure> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.budget.connect))
            .set_response_timeout(Some(self.budget.statement));
        // The client's own timeouts are set too, but this one is the guarantee: the
        // budget holds whatever the client does inside (DNS, TLS, the handshake).
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.budget.connect, connecting).await {
            Ok(Ok(con)) => Ok(con),
            Ok(Err(e)) => Err(self.classify(&e, self.budget.connect, "connection")),
            Err(_) => Err(Failure::Unreachable(no_answer(
                self.budget.connect,
                "connection",
            ))),
        }
    }

    /// Runs one command within `budget.statement`.
    async fn query<T: FromRedisValue>(
        &self,
        con: &mut MultiplexedConnection,
        cmd: &Cmd,
    ) -> std::result::Result<T, Failure> {
        match tokio::time::timeout(self.budget.statement, cmd.query_async::<T>(con)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(&e, self.budget.statement, "answer")),
            Err(_) => Err(Failure::Unreachable(no_answer(
                self.budget.statement,
                "answer",
            ))),
        }
    }

    fn classify(&self, e: &RedisError, budget: Duration, what: &str) -> Failure {
        let detail = scrub(&self.secrets, &e.to_string())
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let lower = detail.to_ascii_lowercase();
        let code = e.code().unwrap_or_default();
        if code == "NOAUTH" || lower.contains("noauth") {
            return Failure::Auth {
                missing: true,
                detail,
            };
        }
        // Redis 6+ says WRONGPASS "invalid username-password pair"; Redis 5 and older
        // "ERR invalid password"; the client reports a refused AUTH during the
        // handshake as AuthenticationFailed.
        if e.kind() == ::redis::ErrorKind::AuthenticationFailed
            || code == "WRONGPASS"
            || lower.contains("wrongpass")
            || lower.contains("invalid username-password pair")
            || lower.contains("invalid password")
        {
            return Failure::Auth {
                missing: false,
                detail,
            };
        }
        if e.kind() == ::redis::ErrorKind::Parse || lower.contains("parse error") {
            return Failure::NotRedis(detail);
        }
        if e.is_timeout() {
            return Failure::Unreachable(no_answer(budget, what));
        }
        if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            let tls = ["certificate", "tls", "handshake", "peer sent", "alert"];
            if tls.iter().any(|w| lower.contains(w)) {
                return Failure::Tls(detail);
            }
            return Failure::Unreachable(detail);
        }
        Failure::Server(detail)
    }

    /// The failure as an error, for checks that could not measure because of it.
    fn error(&self, failure: Failure, doing: &str) -> Error {
        match failure {
            Failure::Unreachable(d) => Error::new(
                ErrorKind::Unreachable,
                format!("Redis at {} is not reachable: {d}", self.shown),
            )
            .temporary(),
            Failure::Tls(d) => Error::new(
                ErrorKind::Unreachable,
                format!("Redis at {} is not reachable over TLS: {d}", self.shown),
            ),
            Failure::NotRedis(d) => Error::new(
                ErrorKind::Unreachable,
                format!(
                    "Redis at {} is not reachable: {NOT_REDIS} ({d})",
                    self.shown
                ),
            ),
            Failure::Auth { missing, detail } => Error::new(
                ErrorKind::Authentication,
                format!(
                    "Redis at {} refused authentication: {} ({detail})",
                    self.shown,
                    auth_hint(missing)
                ),
            ),
            Failure::Server(d) => Error::new(
                ErrorKind::Database,
                format!(
                    "Redis at {} answered {doing} with an error: {d}",
                    self.shown
                ),
            ),
        }
    }
}

const NOT_REDIS: &str = "what answers there does not speak Redis's protocol";

fn no_answer(budget: Duration, what: &str) -> String {
    format!("no {what} within {:.1} s", budget.as_secs_f64())
}

fn auth_hint(missing: bool) -> &'static str {
    if missing {
        "the server requires a password and the URL gives none (NOAUTH); \
         put it in the URL as redis://:${PASSWORD}@HOST"
    } else {
        "the server rejected the URL's user or password; check the password in the URL"
    }
}

/// The password of `url` as written and percent-decoded. Passwords shorter than three
/// characters are not scrubbed: masking every `a` in a message would make it unreadable
/// and hides nothing a guess would not find.
fn password_forms(url: &str) -> Vec<Secret> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let Some(raw) = parsed.password() else {
        return Vec::new();
    };
    let mut forms = vec![raw.to_owned()];
    if let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8() {
        forms.push(decoded.into_owned());
    }
    forms.retain(|f| f.chars().count() >= 3);
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms.into_iter().map(Secret::new).collect()
}

fn scrub(secrets: &[Secret], text: &str) -> String {
    secrets
        .iter()
        .fold(text.to_owned(), |t, s| t.replace(s.expose(), REDACTED))
}

/// `redis_ping`: connect, `PING`, expect `PONG`; the value is the `PING` round trip in
/// seconds (what `redis-cli --latency` measures).
#[derive(Debug)]
struct RedisPing {
    server: Arc<Server>,
    limits: Limits,
}

impl RedisPing {
    /// An unhealthy report for a server that did not answer `PONG`; the value is the
    /// time spent finding out.
    fn down(&self, failure: Failure, spent: Duration) -> HealthReport {
        let shown = &self.server.shown;
        let reason = match failure {
            Failure::Unreachable(d) => format!("Redis at {shown} is not reachable: {d}"),
            Failure::Tls(d) => format!("Redis at {shown} is not reachable over TLS: {d}"),
            Failure::NotRedis(d) => format!("Redis at {shown} is not reachable: {NOT_REDIS} ({d})"),
            Failure::Auth { missing, detail } => format!(
                "Redis at {shown} refused authentication, so it is not usable: {} ({detail})",
                auth_hint(missing)
            ),
            Failure::Server(d) => {
                format!("Redis at {shown} answered PING with an error instead of PONG: {d}")
            }
        };
        HealthReport::new(
            PING,
            HealthStatus::Unhealthy,
            spent.as_secs_f64(),
            "seconds",
            reason,
        )
        .with_limits(self.limits)
    }
}

#[async_trait]
impl HealthCheck for RedisPing {
    fn name(&self) -> &str {
        PING
    }

    async fn check(&self) -> Result<HealthReport> {
        let started = Instant::now();
        let mut con = match self.server.connect().await {
            Ok(con) => con,
            Err(f) => return Ok(self.down(f, started.elapsed())),
        };
        let connected = started.elapsed();
        let sent = Instant::now();
        let reply = self
            .server
            .query::<::redis::Value>(&mut con, &::redis::cmd("PING"))
            .await;
        let round_trip = sent.elapsed();
        let shown = &self.server.shown;
        Ok(match reply {
            Ok(::redis::Value::SimpleString(s)) if s == "PONG" => {
                let r = self.limits.judge(PING, round_trip.as_secs_f64(), "seconds");
                let reason = format!(
                    "Redis at {shown} answered PONG (connected in {:.3} s); PING round trip {}",
                    connected.as_secs_f64(),
                    r.reason
                );
                r.with_reason(reason)
            }
            Ok(other) => HealthReport::new(
                PING,
                HealthStatus::Unhealthy,
                round_trip.as_secs_f64(),
                "seconds",
                format!(
                    "Redis at {shown} answered PING with {} instead of PONG: this is not a \
                     working Redis",
                    scrub(&self.server.secrets, &format!("{other:?}"))
                ),
            )
            .with_limits(self.limits),
            Err(f) => self.down(f, started.elapsed()),
        })
    }
}

/// `redis_memory`: `used_memory` as a percentage of `maxmemory`; no `maxmemory` is
/// healthy with value 0 and says so.
#[derive(Debug)]
struct RedisMemory {
    server: Arc<Server>,
    limits: Limits,
}

#[async_trait]
impl HealthCheck for RedisMemory {
    fn name(&self) -> &str {
        MEMORY
    }

    async fn check(&self) -> Result<HealthReport> {
        let server = &self.server;
        let mut con = server
            .connect()
            .await
            .map_err(|f| server.error(f, "AUTH or SELECT"))?;
        let info: String = server
            .query(&mut con, ::redis::cmd("INFO").arg("memory"))
            .await
            .map_err(|f| server.error(f, "INFO memory"))?;
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let number = |key: &str| -> Result<u64> {
            field(key).and_then(|v| v.parse().ok()).ok_or_else(|| {
                Error::new(
                    ErrorKind::Database,
                    format!(
                        "Redis at {} sent INFO memory without a numeric {key} field: is this \
                         a Redis server?",
                        server.shown
                    ),
                )
            })
        };
        let used = number("used_memory")?;
        let max = number("maxmemory")?;
        let shown = &server.shown;
        if max == 0 {
            return Ok(HealthReport::new(
                MEMORY,
                HealthStatus::Healthy,
                0.0,
                "percent",
                format!(
                    "no maxmemory set: Redis at {shown} uses {} and may grow until the host \
                     runs out of memory; set maxmemory (and a maxmemory-policy) to bound it",
                    show_bytes(used)
                ),
            )
            .with_limits(self.limits));
        }
        let percent = used as f64 * 100.0 / max as f64;
        let r = self.limits.judge(MEMORY, percent, "percent");
        let policy = field("maxmemory_policy").unwrap_or("unknown");
        let reason = format!(
            "Redis at {shown} uses {} of maxmemory {} (maxmemory-policy {policy}): {}",
            show_bytes(used),
            show_bytes(max),
            r.reason
        );
        Ok(r.with_reason(reason))
    }
}

fn show_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_scrubbed_raw_and_decoded() {
        let forms = password_forms("redis://:s3cr%40t!@127.0.0.1:6379/0");
        let text = "AUTH s3cr%40t! failed; also s3cr@t! here";
        let s = scrub(&forms, text);
        assert!(!s.contains("s3cr"), "{s}");
        assert!(password_forms("redis://127.0.0.1/0").is_empty());
    }

    #[test]
    fn bytes_read_as_an_operator_reads_them() {
        assert_eq!(show_bytes(900), "900 bytes");
        assert_eq!(show_bytes(1_048_576), "1.0 MiB");
    }
}
