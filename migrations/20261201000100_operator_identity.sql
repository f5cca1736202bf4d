-- Operator identity (issue 13): users, API tokens (operators' automation and
-- service identities), the public halves of the access-token signing keys,
-- and an audit trail of changes to all three. Private signing keys are NOT
-- stored here: the issuer reads its key from a file (a Kubernetes Secret),
-- so read access to this database never grants the power to sign.
--
-- Every change that must end access (revoke, disable, role or password
-- change, key retirement) notifies channel `fleetwatch_auth`, delivered at
-- commit to every replica's verifier, which drops the cached entry at once.

CREATE TABLE users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Lower case only, so `Alice` and `alice` cannot be two accounts.
    username TEXT NOT NULL UNIQUE
        CONSTRAINT users_username_shape CHECK (username ~ '^[a-z0-9][a-z0-9._@-]{0,63}$'),
    -- argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    password_hash TEXT NOT NULL
        CONSTRAINT users_password_argon2id CHECK (password_hash LIKE '$argon2id$%'),
    role TEXT NOT NULL CONSTRAINT users_role CHECK (role IN ('viewer', 'operator', 'admin')),
    disabled_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Access tokens issued before this are refused (a password change ends sessions).
    password_changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Exactly one owner: an operator (automation acting for them) or a
    -- service identity (service-to-service calls).
    user_id BIGINT REFERENCES users (id) ON DELETE CASCADE,
    service TEXT CONSTRAINT api_tokens_service_shape CHECK (service ~ '^[a-z][a-z0-9-]{0,63}$'),
    name TEXT NOT NULL CONSTRAINT api_tokens_name_length CHECK (length(name) BETWEEN 1 AND 128),
    -- SHA-256 of the whole token (`fwt_` + 64 hex digits); the token itself
    -- is shown once and never stored.
    secret_sha256 BYTEA NOT NULL UNIQUE
        CONSTRAINT api_tokens_hash_length CHECK (length(secret_sha256) = 32),
    -- A user's token never acts above its owner's current role.
    role TEXT NOT NULL CONSTRAINT api_tokens_role CHECK (role IN ('viewer', 'operator', 'admin')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    CONSTRAINT api_tokens_one_owner CHECK ((user_id IS NULL) <> (service IS NULL))
);
CREATE INDEX api_tokens_user ON api_tokens (user_id) WHERE user_id IS NOT NULL;

CREATE TABLE signing_keys (
    -- RFC 7638 JWK thumbprint of the public key: the JWT `kid` header.
    kid TEXT PRIMARY KEY CONSTRAINT signing_keys_kid_shape CHECK (kid ~ '^[A-Za-z0-9_-]{1,64}$'),
    algorithm TEXT NOT NULL DEFAULT 'EdDSA' CONSTRAINT signing_keys_algorithm CHECK (algorithm = 'EdDSA'),
    -- The raw 32-byte Ed25519 public key.
    public_key BYTEA NOT NULL UNIQUE
        CONSTRAINT signing_keys_public_key_length CHECK (length(public_key) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Tokens signed by a retired key are refused.
    retired_at TIMESTAMPTZ
);

-- Who changed which identity, and how. `actor` is the verified principal
-- (or `fleetctl (<os user>)` for the CLI, which holds database credentials).
CREATE TABLE auth_audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX auth_audit_at ON auth_audit (at);

-- Invalidation. Payloads: `user:<id>`, `token:<sha256 hex>`, `key:<kid>`,
-- `all` (TRUNCATE). Postgres delivers them at commit, never for a rolled-back
-- transaction, and folds identical ones within a transaction.
CREATE FUNCTION auth_notify_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetwatch_auth', 'user:' || OLD.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER auth_notify_user_change
    AFTER UPDATE ON users
    FOR EACH ROW
    WHEN (OLD.role IS DISTINCT FROM NEW.role
          OR OLD.disabled_at IS DISTINCT FROM NEW.disabled_at
          OR OLD.password_changed_at IS DISTINCT FROM NEW.password_changed_at
          OR OLD.username IS DISTINCT FROM NEW.username)
    EXECUTE FUNCTION auth_notify_user();

CREATE TRIGGER auth_notify_user_delete
    AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION auth_notify_user();

CREATE FUNCTION auth_notify_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetwatch_auth', 'token:' || encode(OLD.secret_sha256, 'hex'));
    RETURN NULL;
END
$$;

CREATE TRIGGER auth_notify_token_change
    AFTER UPDATE ON api_tokens
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.role IS DISTINCT FROM NEW.role
          OR OLD.secret_sha256 IS DISTINCT FROM NEW.secret_sha256)
    EXECUTE FUNCTION auth_notify_token();

CREATE TRIGGER auth_notify_token_delete
    AFTER DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION auth_notify_token();

-- Keys notify on insert too: a verifier that refused an unknown kid forgets that.
CREATE FUNCTION auth_notify_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('fleetwatch_auth', 'key:' || OLD.kid);
    ELSE
        PERFORM pg_notify('fleetwatch_auth', 'key:' || NEW.kid);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER auth_notify_key_change
    AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION auth_notify_key();

CREATE FUNCTION auth_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetwatch_auth', 'all');
    RETURN NULL;
END
$$;

CREATE TRIGGER auth_notify_users_truncate
    AFTER TRUNCATE ON users FOR EACH STATEMENT EXECUTE FUNCTION auth_notify_all();
CREATE TRIGGER auth_notify_tokens_truncate
    AFTER TRUNCATE ON api_tokens FOR EACH STATEMENT EXECUTE FUNCTION auth_notify_all();
CREATE TRIGGER auth_notify_keys_truncate
    AFTER TRUNCATE ON signing_keys FOR EACH STATEMENT EXECUTE FUNCTION auth_notify_all();
