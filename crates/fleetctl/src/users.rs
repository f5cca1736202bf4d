//! `fleetctl users`: operators of the console and the operator APIs (add,
//! list, disable/enable, passwd, set-role) and `ensure-admin`, which creates
//! the first admin of a fresh installation.
//!
//! Like `vehicles`, a command that makes a secret prints it alone on the
//! last line of stdout (a generated password, shown once); everything
//! addressed to a person goes to stderr. Passwords never come from argv:
//! `--password-stdin` reads the first line of stdin.

use anyhow::Context;
use clap::Subcommand;
use fleetwatch_auth::store::{self, StoreError};
use fleetwatch_auth::{Role, password};

use crate::cli::Global;
use crate::connect;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create an operator. Without --password-stdin a password is generated
    /// and printed once, alone on the last line of stdout.
    Add {
        username: String,
        #[arg(long, default_value = "viewer", value_parser = parse_role)]
        role: Role,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List operators: username, role, status, created, password changed.
    List,
    /// Disable an operator: their access and API tokens stop working at once.
    Disable { username: String },
    /// Enable a disabled operator again.
    Enable { username: String },
    /// Set a new password (generated and printed once without
    /// --password-stdin); the user's earlier sessions end.
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change an operator's role, effective at once.
    SetRole {
        username: String,
        #[arg(value_parser = parse_role)]
        role: Role,
    },
    /// Create an admin with a generated password if no active admin exists,
    /// and print the password once on the last line of stdout; print
    /// nothing on stdout if an admin exists. For installers (scripts/up).
    EnsureAdmin {
        #[arg(long, default_value = "admin")]
        username: String,
    },
}

pub fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: fleetwatch_auth::UnknownRole| e.to_string())
}

/// Who the audit trail records for a CLI change. fleetctl acts with the
/// database's credentials, so this names the operating-system user for the
/// record; it is not an authentication.
pub fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("fleetctl ({user})")
}

/// The first line of stdin, for `--password-stdin`.
pub fn read_password_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(
        !password.is_empty(),
        "no password on stdin: pipe one in (`printf '%s\\n' \"$PW\" | fleetctl users ... --password-stdin`) or leave out --password-stdin to generate one"
    );
    password::check_policy(&password)?;
    Ok(password)
}

fn explain(e: StoreError, username: &str) -> anyhow::Error {
    match e {
        StoreError::NoSuchUser(_) => {
            anyhow::anyhow!("no user {username}: see `fleetctl users list`")
        }
        StoreError::UserExists(_) => anyhow::anyhow!(
            "user {username} already exists: use `fleetctl users passwd {username}` for a new password"
        ),
        StoreError::LastAdmin(_) => anyhow::anyhow!(
            "{username} is the last active admin: make another user admin first (`fleetctl users set-role <user> admin`)"
        ),
        StoreError::NotAnAdmin(_) => anyhow::anyhow!(
            "no active admin exists, but user {username} does and is not one: run `fleetctl users set-role {username} admin` and `fleetctl users enable {username}`, or pick another --username"
        ),
        e => anyhow::Error::new(e),
    }
}

pub async fn run(g: &Global, cmd: UsersCommand) -> anyhow::Result<()> {
    let pool = connect::db(&g.database_url).await?;
    let actor = actor();
    match cmd {
        UsersCommand::Add {
            username,
            role,
            password_stdin,
        } => {
            let (password, generated) = if password_stdin {
                (read_password_stdin()?, false)
            } else {
                (password::generate_password(), true)
            };
            store::create_user(&pool, &username, &password, role, &actor)
                .await
                .map_err(|e| explain(e, &username))?;
            if generated {
                eprintln!("created {role} {username}; the password is shown only now:");
                println!("{password}");
            } else {
                println!("created {role} {username}");
            }
        }
        UsersCommand::List => {
            let users = store::list_users(&pool)
                .await
                .context("listing users failed")?;
            let width = users
                .iter()
                .map(|u| u.username.len())
                .max()
                .unwrap_or(8)
                .max(8);
            println!(
                "{:<6}  {:<width$}  {:<8}  {:<8}  {:<20}  PASSWORD CHANGED",
                "ID", "USERNAME", "ROLE", "STATUS", "CREATED"
            );
            for u in &users {
                let status = if u.is_active() { "active" } else { "disabled" };
                println!(
                    "{:<6}  {:<width$}  {:<8}  {:<8}  {:<20}  {}",
                    u.id,
                    u.username,
                    u.role.as_str(),
                    status,
                    u.created_at.format("%Y-%m-%d %H:%M:%S"),
                    u.password_changed_at.format("%Y-%m-%d %H:%M:%S"),
                );
            }
            eprintln!("{} users", users.len());
        }
        UsersCommand::Disable { username } => {
            store::set_disabled(&pool, &username, true, &actor)
                .await
                .map_err(|e| explain(e, &username))?;
            println!("disabled {username}");
        }
        UsersCommand::Enable { username } => {
            store::set_disabled(&pool, &username, false, &actor)
                .await
                .map_err(|e| explain(e, &username))?;
            println!("enabled {username}");
        }
        UsersCommand::Passwd {
            username,
            password_stdin,
        } => {
            let (password, generated) = if password_stdin {
                (read_password_stdin()?, false)
            } else {
                (password::generate_password(), true)
            };
            store::set_password(&pool, &username, &password, &actor)
                .await
                .map_err(|e| explain(e, &username))?;
            if generated {
                eprintln!(
                    "new password for {username} (their earlier sessions have ended); it is shown only now:"
                );
                println!("{password}");
            } else {
                println!("password of {username} changed (their earlier sessions have ended)");
            }
        }
        UsersCommand::SetRole { username, role } => {
            store::set_role(&pool, &username, role, &actor)
                .await
                .map_err(|e| explain(e, &username))?;
            println!("{username} is now {role}");
        }
        UsersCommand::EnsureAdmin { username } => {
            match store::ensure_admin(&pool, &username, &actor)
                .await
                .map_err(|e| explain(e, &username))?
            {
                Some((user, password)) => {
                    eprintln!(
                        "created the first admin {}; the password is shown only now:",
                        user.username
                    );
                    println!("{password}");
                }
                None => eprintln!("an active admin exists already; nothing to do"),
            }
        }
    }
    pool.close().await;
    Ok(())
}
