//! API tokens of operators and services: create (the secret is returned
//! once), list, revoke, and the verifier's lookup by hash.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::users::{UserState, valid_service_name};
use super::{StoreError, audit, parse_role};
use crate::Role;
use crate::api_token::{api_token_hash, generate_api_token};

/// Whom a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOwner {
    /// An operator, by username: the token acts for them, never above their role.
    User(String),
    /// A service identity (`ingest`, `persistence`, ...).
    Service(String),
}

impl std::fmt::Display for TokenOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(u) => f.write_str(u),
            Self::Service(s) => write!(f, "service:{s}"),
        }
    }
}

/// What `create_api_token` makes.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    pub owner: TokenOwner,
    /// What it is for (`ci-deploy`, `ingest → persistence`); shown in lists.
    pub name: String,
    /// Defaults to the user's role; required for services.
    pub role: Option<Role>,
    /// `None`: until revoked.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token as listed (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenInfo {
    pub id: i64,
    pub owner: TokenOwner,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiTokenInfo {
    /// `active`, `revoked` or `expired` at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

const COLUMNS: &str = "t.id, t.user_id, t.service, t.name, t.role, t.created_at, t.created_by,
    t.expires_at, t.revoked_at, t.last_used_at, u.username";

fn info_from(row: &PgRow) -> Result<ApiTokenInfo, sqlx::Error> {
    let service: Option<String> = row.try_get("service")?;
    let username: Option<String> = row.try_get("username")?;
    let owner = match (service, username) {
        (Some(s), _) => TokenOwner::Service(s),
        (None, Some(u)) => TokenOwner::User(u),
        (None, None) => TokenOwner::User(String::new()),
    };
    Ok(ApiTokenInfo {
        id: row.try_get("id")?,
        owner,
        name: row.try_get("name")?,
        role: parse_role(row.try_get("role")?)?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

/// Creates a token and returns it with its secret (`fwt_...`), which is
/// shown once and stored only as its hash.
pub async fn create_api_token(
    pool: &PgPool,
    new: &NewApiToken,
    actor: &str,
) -> Result<(ApiTokenInfo, String), StoreError> {
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(StoreError::InvalidTokenName);
    }
    if new.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(StoreError::ExpiryInPast);
    }
    let mut tx = pool.begin().await?;
    let (user_id, service, role) = match &new.owner {
        TokenOwner::User(username) => {
            let row: Option<(i64, String, Option<DateTime<Utc>>)> = sqlx::query_as(
                "SELECT id, role, disabled_at FROM users WHERE username = $1 FOR SHARE",
            )
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?;
            let (id, has, disabled) =
                row.ok_or_else(|| StoreError::NoSuchUser(username.clone()))?;
            if disabled.is_some() {
                return Err(StoreError::UserDisabled(username.clone()));
            }
            let has = parse_role(&has)?;
            let role = new.role.unwrap_or(has);
            if role > has {
                return Err(StoreError::RoleAboveOwner {
                    user: username.clone(),
                    wanted: role,
                    has,
                });
            }
            (Some(id), None, role)
        }
        TokenOwner::Service(name) => {
            if !valid_service_name(name) {
                return Err(StoreError::InvalidServiceName(name.clone()));
            }
            (
                None,
                Some(name.as_str()),
                new.role.ok_or(StoreError::ServiceRoleMissing)?,
            )
        }
    };
    let secret = generate_api_token();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO api_tokens (user_id, service, name, secret_sha256, role, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(user_id)
    .bind(service)
    .bind(name)
    .bind(api_token_hash(&secret).as_slice())
    .bind(role.as_str())
    .bind(actor)
    .bind(new.expires_at)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        actor,
        "token.create",
        &format!("token {id}"),
        json!({ "owner": new.owner.to_string(), "name": name, "role": role,
                "expires_at": new.expires_at }),
    )
    .await?;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id WHERE t.id = $1"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let info = info_from(&row)?;
    tx.commit().await?;
    Ok((info, secret))
}

/// Every token, oldest first; revoked and expired ones only with `include_inactive`.
pub async fn list_api_tokens(
    pool: &PgPool,
    include_inactive: bool,
) -> Result<Vec<ApiTokenInfo>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id
         WHERE $1 OR (t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()))
         ORDER BY t.id"
    ))
    .bind(include_inactive)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(info_from).collect::<Result<_, _>>()?)
}

/// Revokes a token: it stops working at once on every replica. `true` when
/// revoked now, `false` when it already was.
pub async fn revoke_api_token(pool: &PgPool, id: i64, actor: &str) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let revoked: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT revoked_at FROM api_tokens WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    match revoked {
        None => Err(StoreError::NoSuchToken(id)),
        Some(Some(_)) => Ok(false),
        Some(None) => {
            sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit(
                &mut tx,
                actor,
                "token.revoke",
                &format!("token {id}"),
                json!({}),
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        }
    }
}

/// What the verifier needs of a token row.
#[derive(Debug, Clone)]
pub(crate) struct TokenRow {
    pub id: i64,
    pub user_id: Option<i64>,
    pub service: Option<String>,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

/// The token with this hash and, for a user's token, its owner.
pub(crate) async fn lookup_token(
    pool: &PgPool,
    hash: &[u8; 32],
) -> Result<Option<(TokenRow, Option<UserState>)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT t.id, t.user_id, t.service, t.role, t.expires_at, t.revoked_at IS NOT NULL AS revoked,
                u.username, u.role AS user_role, u.disabled_at, u.created_at AS user_created_at,
                u.password_changed_at
         FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id
         WHERE t.secret_sha256 = $1",
    )
    .bind(hash.as_slice())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let token = TokenRow {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        service: row.try_get("service")?,
        role: parse_role(row.try_get("role")?)?,
        expires_at: row.try_get("expires_at")?,
        revoked: row.try_get("revoked")?,
    };
    let user = match token.user_id {
        Some(id) => Some(UserState {
            id,
            username: row.try_get("username")?,
            role: parse_role(row.try_get("user_role")?)?,
            disabled_at: row.try_get("disabled_at")?,
            created_at: row.try_get("user_created_at")?,
            password_changed_at: row.try_get("password_changed_at")?,
        }),
        None => None,
    };
    Ok(Some((token, user)))
}

/// Records that a token was used (now).
pub(crate) async fn touch_token(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
