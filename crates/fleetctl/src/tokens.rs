//! `fleetctl tokens`: API tokens for automation (acting for an operator,
//! never above their role) and service identities (service-to-service
//! calls). `create` prints the token alone on the last line of stdout, once;
//! only its hash is stored.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Subcommand};
use fleetwatch_auth::Role;
use fleetwatch_auth::store::{self, NewApiToken, StoreError, TokenOwner};

use crate::cli::Global;
use crate::connect;
use crate::users::{actor, parse_role};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; it is printed once, alone on the last line of stdout.
    #[command(group(ArgGroup::new("owner").required(true).args(["user", "service"])))]
    #[command(group(ArgGroup::new("expiry").args(["expires_in", "no_expiry"])))]
    Create {
        /// The operator the token acts for.
        #[arg(long)]
        user: Option<String>,
        /// A service identity (`ingest`, `persistence`, ...); needs --role.
        #[arg(long)]
        service: Option<String>,
        /// What it is for, shown by `tokens list` (e.g. `ci-deploy`).
        #[arg(long)]
        name: String,
        /// Default: the user's role. At most the user's role.
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// Lifetime: `90d`, `12h`, `30m`, `2w` (default 90d).
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<Duration>,
        /// Valid until revoked.
        #[arg(long)]
        no_expiry: bool,
    },
    /// List tokens: id, owner, name, role, status, created, expires, last used.
    List {
        /// Include revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by id: it stops working at once on every replica.
    Revoke { id: i64 },
}

const DEFAULT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// `90d`, `12h`, `30m`, `2w`, `3600s`.
pub fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit: use e.g. 90d, 12h, 30m, 2w"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a number with a unit, e.g. 90d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}: use s, m, h, d or w"
            ));
        }
    };
    let total = n
        .checked_mul(secs)
        .filter(|t| (1..=10 * 365 * 86_400).contains(t))
        .ok_or_else(|| format!("{s:?}: a lifetime is 1s to 10 years"))?;
    Ok(Duration::from_secs(total))
}

fn when(t: Option<DateTime<Utc>>, none: &str) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| none.to_string())
}

pub async fn run(g: &Global, cmd: TokensCommand) -> anyhow::Result<()> {
    let pool = connect::db(&g.database_url).await?;
    let actor = actor();
    match cmd {
        TokensCommand::Create {
            user,
            service,
            name,
            role,
            expires_in,
            no_expiry,
        } => {
            let owner = match (user, service) {
                (Some(u), _) => TokenOwner::User(u),
                (None, Some(s)) => TokenOwner::Service(s),
                (None, None) => anyhow::bail!("name the owner: --user or --service"),
            };
            let expires_at = if no_expiry {
                None
            } else {
                let lifetime = chrono::Duration::from_std(expires_in.unwrap_or(DEFAULT_LIFETIME))
                    .context("lifetime out of range")?;
                Some(Utc::now() + lifetime)
            };
            let new = NewApiToken {
                owner: owner.clone(),
                name,
                role,
                expires_at,
            };
            let (info, secret) =
                store::create_api_token(&pool, &new, &actor)
                    .await
                    .map_err(|e| match e {
                        StoreError::NoSuchUser(u) => {
                            anyhow::anyhow!("no user {u}: see `fleetctl users list`")
                        }
                        StoreError::ServiceRoleMissing => anyhow::anyhow!(
                            "a service token needs --role (viewer, operator or admin)"
                        ),
                        e => anyhow::Error::new(e),
                    })?;
            eprintln!(
                "created token {} for {} ({}, {}); it is shown only now:",
                info.id,
                info.owner,
                info.role,
                match info.expires_at {
                    Some(t) => format!("expires {}", t.format("%Y-%m-%d %H:%M UTC")),
                    None => "valid until revoked".into(),
                }
            );
            println!("{secret}");
        }
        TokensCommand::List { all } => {
            let tokens = store::list_api_tokens(&pool, all)
                .await
                .context("listing tokens failed")?;
            let now = Utc::now();
            let owners: Vec<String> = tokens.iter().map(|t| t.owner.to_string()).collect();
            let ow = owners.iter().map(String::len).max().unwrap_or(5).max(5);
            let nw = tokens
                .iter()
                .map(|t| t.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            println!(
                "{:<6}  {:<ow$}  {:<nw$}  {:<8}  {:<7}  {:<16}  {:<16}  LAST USED",
                "ID", "OWNER", "NAME", "ROLE", "STATUS", "CREATED", "EXPIRES"
            );
            for (t, owner) in tokens.iter().zip(&owners) {
                println!(
                    "{:<6}  {:<ow$}  {:<nw$}  {:<8}  {:<7}  {:<16}  {:<16}  {}",
                    t.id,
                    owner,
                    t.name,
                    t.role.as_str(),
                    t.status(now),
                    when(Some(t.created_at), ""),
                    when(t.expires_at, "never"),
                    when(t.last_used_at, "never"),
                );
            }
            eprintln!("{} tokens", tokens.len());
        }
        TokensCommand::Revoke { id } => {
            let now = store::revoke_api_token(&pool, id, &actor)
                .await
                .map_err(|e| match e {
                    StoreError::NoSuchToken(_) => {
                        anyhow::anyhow!("no token {id}: see `fleetctl tokens list --all`")
                    }
                    e => anyhow::Error::new(e),
                })?;
            if now {
                println!("revoked token {id}");
            } else {
                println!("token {id} was already revoked");
            }
        }
    }
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_lifetime("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_lifetime("30m"), Ok(Duration::from_secs(1_800)));
        for bad in [
            "",
            "90",
            "d",
            "-1d",
            "0d",
            "1y",
            "99999999999999999d",
            "1.5d",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}
