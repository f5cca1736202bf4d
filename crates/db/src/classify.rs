//! The one classification of database errors: transient (retry), data (the
//! database refuses these values; isolate the record) or bug (our SQL or
//! schema is wrong; an operator must act).

/// What a failed statement means for its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection, server or a concurrent transaction got in the way;
    /// the same statement can succeed later.
    Transient,
    /// The database refused the values themselves; retrying them can never
    /// succeed, so a consumer dead-letters the record and an API answers
    /// with an invalid-argument error.
    Data,
    /// The statement or the schema is wrong. Consumers still retry (a fixed
    /// deployment or migration heals it, dead-lettering would lose every
    /// record meanwhile), but the caller logs it as an error.
    Bug,
}

impl ErrorClass {
    /// `transient`, `data` or `bug`: a bounded metric label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Data => "data",
            Self::Bug => "bug",
        }
    }
}

/// Classifies an sqlx error by its SQLSTATE, or by its kind when the server
/// never answered.
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Database(db) => db.code().map_or(ErrorClass::Bug, |c| classify_sqlstate(&c)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => ErrorClass::Transient,
        // A value the driver cannot encode is refused before it is sent.
        sqlx::Error::Encode(_) => ErrorClass::Data,
        _ => ErrorClass::Bug,
    }
}

/// Classifies a PostgreSQL SQLSTATE (appendix A of the PostgreSQL manual).
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code {
        // Lock timeouts and the read-only replica a failover briefly leaves
        // behind clear up on their own, unlike the rest of their classes.
        "55P03" | "55006" | "25006" | "25P03" => ErrorClass::Transient,
        _ => match code.get(..2).unwrap_or("") {
            // 08 connection, 40 serialization failure / deadlock, 53
            // insufficient resources, 57 operator intervention (shutdown,
            // statement timeout), 58 system (I/O) errors.
            "08" | "40" | "53" | "57" | "58" => ErrorClass::Transient,
            // 22 data exception (bad encoding such as a NUL byte, value out
            // of range), 23 integrity violation, 54 program limit exceeded
            // (an index row or a value too large). A batch refused for 54
            // may only be too large as a whole: per-record retry tells.
            "22" | "23" | "54" => ErrorClass::Data,
            _ => ErrorClass::Bug,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        for c in [
            "08006", "40001", "40P01", "53300", "57P01", "57014", "58030", "55P03",
        ] {
            assert_eq!(classify_sqlstate(c), ErrorClass::Transient, "{c}");
        }
        for c in [
            "22021", "22P05", "22003", "23505", "23514", "54000", "54001",
        ] {
            assert_eq!(classify_sqlstate(c), ErrorClass::Data, "{c}");
        }
        for c in ["42P01", "42703", "42601", "0A000", "XX000", "", "x"] {
            assert_eq!(classify_sqlstate(c), ErrorClass::Bug, "{c}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Bug);
        assert_eq!(
            classify(&sqlx::Error::ColumnNotFound("x".into())),
            ErrorClass::Bug
        );
    }
}
