//! Operators: create, list, disable/enable, change password and role, the
//! first admin, and password login.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::{StoreError, audit, is_unique_violation, parse_role};
use crate::Role;
use crate::error::AuthError;
use crate::password::{generate_password, hash_password, verify_dummy, verify_password};

/// An operator account (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub password_changed_at: DateTime<Utc>,
}

impl User {
    pub fn is_active(&self) -> bool {
        self.disabled_at.is_none()
    }
}

/// What the verifier caches per user: the row itself.
pub(crate) type UserState = User;

const COLUMNS: &str = "id, username, role, disabled_at, created_at, password_changed_at";

fn user_from(row: &PgRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        role: parse_role(row.try_get("role")?)?,
        disabled_at: row.try_get("disabled_at")?,
        created_at: row.try_get("created_at")?,
        password_changed_at: row.try_get("password_changed_at")?,
    })
}

/// 1-64 lower-case letters, digits, `.`, `_`, `@`, `-`, starting with a
/// letter or digit (what the `users_username_shape` constraint accepts).
pub fn valid_username(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'@' | b'-')
        })
}

/// 1-64 lower-case letters, digits and `-`, starting with a letter (`ingest`,
/// `persistence`).
pub fn valid_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn check_username(name: &str) -> Result<(), StoreError> {
    if valid_username(name) {
        Ok(())
    } else {
        Err(StoreError::InvalidUsername(name.to_string()))
    }
}

/// argon2id on the blocking pool: it takes tens of milliseconds of CPU.
async fn hash_blocking(password: &str) -> Result<String, StoreError> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| StoreError::Blocking(e.to_string()))?
        .map_err(StoreError::from)
}

async fn insert(
    tx: &mut PgConnection,
    username: &str,
    hash: &str,
    role: Role,
) -> Result<User, StoreError> {
    let row = sqlx::query(&format!(
        "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
    ))
    .bind(username)
    .bind(hash)
    .bind(role.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e, None) {
            StoreError::UserExists(username.to_string())
        } else {
            e.into()
        }
    })?;
    Ok(user_from(&row)?)
}

/// Creates an operator with `password` (checked against the policy).
pub async fn create_user(
    pool: &PgPool,
    username: &str,
    password: &str,
    role: Role,
    actor: &str,
) -> Result<User, StoreError> {
    check_username(username)?;
    let hash = hash_blocking(password).await?;
    let mut tx = pool.begin().await?;
    let user = insert(&mut tx, username, &hash, role).await?;
    audit(
        &mut tx,
        actor,
        "user.create",
        username,
        json!({ "role": role }),
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// Creates admin `username` with a generated password when no active admin
/// exists, and returns it with that password (to show once). `None` when an
/// active admin exists already. Concurrent calls create at most one admin.
pub async fn ensure_admin(
    pool: &PgPool,
    username: &str,
    actor: &str,
) -> Result<Option<(User, String)>, StoreError> {
    check_username(username)?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('fleetwatch_auth.ensure_admin'))")
        .execute(&mut *tx)
        .await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND disabled_at IS NULL)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if exists {
        return Ok(None);
    }
    let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE username = $1)")
        .bind(username)
        .fetch_one(&mut *tx)
        .await?;
    if taken {
        return Err(StoreError::NotAnAdmin(username.to_string()));
    }
    let password = generate_password();
    let hash = hash_blocking(&password).await?;
    let user = insert(&mut tx, username, &hash, Role::Admin).await?;
    audit(
        &mut tx,
        actor,
        "user.ensure_admin",
        username,
        json!({ "role": Role::Admin }),
    )
    .await?;
    tx.commit().await?;
    Ok(Some((user, password)))
}

pub async fn list_users(pool: &PgPool) -> Result<Vec<User>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM users ORDER BY username"))
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(user_from).collect::<Result<_, _>>()?)
}

pub async fn find_user(pool: &PgPool, username: &str) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE username = $1"))
        .bind(username)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(user_from).transpose()?)
}

/// The verifier's lookup by id.
pub(crate) async fn lookup_user(pool: &PgPool, id: i64) -> Result<Option<UserState>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(user_from).transpose()
}

/// Locks every active admin, then the target: whoever changes an admin
/// waits for the others, so two admins cannot demote each other at once and
/// leave none. Always in this order, so no two callers deadlock.
async fn lock_for_admin_change(
    tx: &mut PgConnection,
    username: &str,
) -> Result<(User, i64), StoreError> {
    let admins: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM users WHERE role = 'admin' AND disabled_at IS NULL ORDER BY id FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM users WHERE username = $1 FOR UPDATE"
    ))
    .bind(username)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::NoSuchUser(username.to_string()))?;
    Ok((user_from(&row)?, admins.len() as i64))
}

/// Disables (or enables again) an operator. Their access tokens and API
/// tokens stop working at once on every replica. The last active admin
/// cannot be disabled.
pub async fn set_disabled(
    pool: &PgPool,
    username: &str,
    disabled: bool,
    actor: &str,
) -> Result<User, StoreError> {
    let mut tx = pool.begin().await?;
    let (user, admins) = lock_for_admin_change(&mut tx, username).await?;
    if disabled && user.role == Role::Admin && user.is_active() && admins <= 1 {
        return Err(StoreError::LastAdmin(username.to_string()));
    }
    let row = sqlx::query(&format!(
        "UPDATE users SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) END
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(user.id)
    .bind(disabled)
    .fetch_one(&mut *tx)
    .await?;
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    audit(&mut tx, actor, action, username, json!({})).await?;
    tx.commit().await?;
    Ok(user_from(&row)?)
}

/// Sets a new password; access tokens issued before it stop working.
pub async fn set_password(
    pool: &PgPool,
    username: &str,
    password: &str,
    actor: &str,
) -> Result<User, StoreError> {
    let hash = hash_blocking(password).await?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "UPDATE users SET password_hash = $2, password_changed_at = now()
         WHERE username = $1 RETURNING {COLUMNS}"
    ))
    .bind(username)
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::NoSuchUser(username.to_string()))?;
    audit(&mut tx, actor, "user.passwd", username, json!({})).await?;
    tx.commit().await?;
    Ok(user_from(&row)?)
}

/// Changes an operator's role, effective at once for their access and API
/// tokens. The last active admin cannot be demoted.
pub async fn set_role(
    pool: &PgPool,
    username: &str,
    role: Role,
    actor: &str,
) -> Result<User, StoreError> {
    let mut tx = pool.begin().await?;
    let (user, admins) = lock_for_admin_change(&mut tx, username).await?;
    if user.role == Role::Admin && role != Role::Admin && user.is_active() && admins <= 1 {
        return Err(StoreError::LastAdmin(username.to_string()));
    }
    let row = sqlx::query(&format!(
        "UPDATE users SET role = $2 WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(user.id)
    .bind(role.as_str())
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        actor,
        "user.role",
        username,
        json!({ "from": user.role, "to": role }),
    )
    .await?;
    tx.commit().await?;
    Ok(user_from(&row)?)
}

/// Password login (the console's): the user when the password matches and
/// the account is active. Unknown users cost a full verification too, and
/// both failures read the same, so neither timing nor message tells which
/// usernames exist.
pub async fn login(pool: &PgPool, username: &str, password: &str) -> Result<User, AuthError> {
    let username = username.trim().to_lowercase();
    let row = if valid_username(&username) {
        sqlx::query(&format!(
            "SELECT {COLUMNS}, password_hash FROM users WHERE username = $1"
        ))
        .bind(&username)
        .fetch_optional(pool)
        .await
        .map_err(|e| crate::verifier::db_failure("user lookup", &e))?
    } else {
        None
    };
    let found = match &row {
        Some(r) => Some((
            user_from(r).map_err(|e| crate::verifier::db_failure("user lookup", &e))?,
            r.try_get::<String, _>("password_hash")
                .map_err(|e| crate::verifier::db_failure("user lookup", &e))?,
        )),
        None => None,
    };
    let password = password.to_string();
    let (user, ok) = tokio::task::spawn_blocking(move || match found {
        Some((user, hash)) => {
            let ok = verify_password(&password, &hash);
            (Some(user), ok)
        }
        None => (None, verify_dummy(&password)),
    })
    .await
    .map_err(|_| AuthError::Internal)?;
    match user {
        Some(user) if ok && user.is_active() => Ok(user),
        Some(user) if ok => {
            tracing::debug!(user = %user.username, "login of a disabled user refused");
            Err(AuthError::Disabled)
        }
        _ => Err(AuthError::BadLogin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["alice", "a", "bob.smith", "ops@example.com", "x_1-2", "007"] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "-x",
            ".x",
            "a b",
            "a:b",
            "a/b",
            &"a".repeat(65),
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
        for ok in ["ingest", "persistence", "console-2"] {
            assert!(valid_service_name(ok), "{ok}");
        }
        for bad in ["", "Ingest", "1ngest", "in_gest", "in gest", "in:gest"] {
            assert!(!valid_service_name(bad), "{bad}");
        }
    }
}
