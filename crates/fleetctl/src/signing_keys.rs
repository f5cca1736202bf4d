//! `fleetctl signing-keys`: the Ed25519 keys access tokens are signed with.
//! `create` writes the private key to a file (mode 0600, for the console's
//! `auth.signing_key_file`) and registers only the public key; the key id
//! is printed alone on the last line of stdout.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use fleetwatch_auth::SigningKey;
use fleetwatch_auth::store::{self, StoreError};

use crate::cli::Global;
use crate::connect;
use crate::users::actor;

#[derive(Debug, Subcommand)]
pub enum SigningKeysCommand {
    /// Generate a key into --out (never overwritten) and register its public
    /// half: verifiers accept tokens signed with it from now on.
    Create {
        /// Where the private key goes (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Register the public half of an existing key file (e.g. one made by
    /// `openssl genpkey -algorithm ed25519`).
    Register { file: PathBuf },
    /// List keys: kid, status, created, retired.
    List,
    /// Refuse every token signed with this key, at once.
    Retire { kid: String },
}

pub async fn run(g: &Global, cmd: SigningKeysCommand) -> anyhow::Result<()> {
    let pool = connect::db(&g.database_url).await?;
    let actor = actor();
    match cmd {
        SigningKeysCommand::Create { out } => {
            let key = SigningKey::create_file(&out)?;
            store::register_signing_key(&pool, &key.public_key(), &actor)
                .await
                .with_context(|| {
                    format!(
                        "{} is written, but its public key is not registered: run `fleetctl signing-keys register {}`",
                        out.display(),
                        out.display()
                    )
                })?;
            eprintln!(
                "wrote {} (mode 0600); verifiers accept tokens signed with key:",
                out.display()
            );
            println!("{}", key.kid());
        }
        SigningKeysCommand::Register { file } => {
            let key = SigningKey::load(&file)?;
            store::register_signing_key(&pool, &key.public_key(), &actor).await?;
            eprintln!("registered the public key of {}:", file.display());
            println!("{}", key.kid());
        }
        SigningKeysCommand::List => {
            let keys = store::list_signing_keys(&pool)
                .await
                .context("listing signing keys failed")?;
            println!("{:<43}  {:<7}  {:<16}  RETIRED", "KID", "STATUS", "CREATED");
            for k in &keys {
                println!(
                    "{:<43}  {:<7}  {:<16}  {}",
                    k.kid,
                    if k.retired_at.is_some() {
                        "retired"
                    } else {
                        "active"
                    },
                    k.created_at.format("%Y-%m-%d %H:%M"),
                    k.retired_at
                        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default(),
                );
            }
            eprintln!("{} keys", keys.len());
        }
        SigningKeysCommand::Retire { kid } => {
            store::retire_signing_key(&pool, &kid, &actor)
                .await
                .map_err(|e| match e {
                    StoreError::NoSuchKey(_) => {
                        anyhow::anyhow!("no signing key {kid}: see `fleetctl signing-keys list`")
                    }
                    e => anyhow::Error::new(e),
                })?;
            println!("retired {kid}");
        }
    }
    pool.close().await;
    Ok(())
}
