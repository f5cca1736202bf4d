//! The read side: the `PersistenceQuery` gRPC service over Postgres and the
//! object store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use fleetwatch_auth::Role;
use fleetwatch_auth::grpc::require;
use fleetwatch_common::error::{ApiError, ErrorCode};
use fleetwatch_proto::v1::persistence_query_server::PersistenceQuery;
use fleetwatch_proto::v1::{
    BoundingBox, Detection, DetectionsRequest, DetectionsResponse, FieldStats, FramesRequest,
    FramesResponse, GetLatestRequest, GetLatestResponse, GetObjectRequest, GetObjectResponse,
    StoredDetection, StoredFrame, TelemetryBucket, TelemetryBucketsRequest,
    TelemetryBucketsResponse, TelemetryPoint, TelemetryRangeRequest, TelemetryRangeResponse,
    VehicleState,
};
use object_store::ObjectStore;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::objects;

pub const DEFAULT_TELEMETRY_LIMIT: u32 = 10_000;
pub const MAX_TELEMETRY_LIMIT: u32 = 100_000;
pub const DEFAULT_LIMIT: u32 = 1_000;
pub const MAX_LIMIT: u32 = 10_000;
/// Bounds the work of one bucket query (and the response size).
pub const MAX_BUCKETS: i64 = 100_000;
pub const MAX_FIELDS: usize = 32;
pub const STANDARD_FIELDS: [&str; 6] = ["lat", "lon", "alt", "speed", "heading", "battery"];

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> QueryError {
    QueryError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

impl From<sqlx::Error> for QueryError {
    fn from(e: sqlx::Error) -> Self {
        match fleetwatch_db::classify(&e) {
            fleetwatch_db::ErrorClass::Transient => Self::Unavailable(e.to_string()),
            // A request value the database refuses (a NUL byte, say) is the caller's to fix.
            fleetwatch_db::ErrorClass::Data => invalid("request", e.to_string()),
            fleetwatch_db::ErrorClass::Bug => Self::Internal(e.to_string()),
        }
    }
}

impl QueryError {
    /// The row of the shared error table this kind answers with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        if let QueryError::Internal(_) = &e {
            tracing::warn!(error = %e, "query failed");
        }
        ApiError::new(e.error_code(), e.to_string()).into()
    }
}

pub struct GrpcApi {
    pub pool: PgPool,
    pub store: Arc<dyn ObjectStore>,
}

/// The handler's answer; calls are counted by the server's shared layer.
// tonic fixes the error type of handlers.
#[allow(clippy::result_large_err)]
fn finish<T>(r: Result<T, QueryError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

fn time(field: &'static str, us: i64) -> Result<DateTime<Utc>, QueryError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| invalid(field, format!("{us} is out of range")))
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Checks vehicle id and `[from, to)`.
fn range(
    vehicle_id: &str,
    from: i64,
    to: i64,
) -> Result<(DateTime<Utc>, DateTime<Utc>), QueryError> {
    if vehicle_id.is_empty() {
        return Err(invalid("vehicle_id", "must not be empty"));
    }
    let f = time("from_unix_us", from)?;
    let t = time("to_unix_us", to)?;
    if from >= to {
        return Err(invalid(
            "to_unix_us",
            format!("must be greater than from_unix_us ({from} >= {to})"),
        ));
    }
    Ok((f, t))
}

fn limit(requested: u32, default: u32, max: u32) -> u32 {
    if requested == 0 {
        default
    } else {
        requested.min(max)
    }
}

fn metrics_map(v: Option<serde_json::Value>) -> HashMap<String, f64> {
    match v {
        Some(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_f64().map(|f| (k, f)))
            .collect(),
        _ => HashMap::new(),
    }
}

#[derive(sqlx::FromRow)]
struct PointRow {
    vehicle_id: String,
    time: DateTime<Utc>,
    lat: Option<f64>,
    lon: Option<f64>,
    alt: Option<f64>,
    speed: Option<f64>,
    heading: Option<f64>,
    battery: Option<f64>,
    metrics: Option<serde_json::Value>,
}

impl From<PointRow> for TelemetryPoint {
    fn from(r: PointRow) -> Self {
        TelemetryPoint {
            vehicle_id: r.vehicle_id,
            time_unix_us: us(r.time),
            lat: r.lat,
            lon: r.lon,
            alt: r.alt,
            speed: r.speed,
            heading: r.heading,
            battery: r.battery,
            metrics: metrics_map(r.metrics),
        }
    }
}

#[derive(sqlx::FromRow)]
struct LatestRow {
    #[sqlx(flatten)]
    point: PointRow,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct BucketRow {
    start_us: i64,
    name: String,
    points: i64,
    n: i64,
    avg: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
}

#[derive(sqlx::FromRow)]
struct DetectionRow {
    id: i64,
    drone_id: String,
    timestamp: DateTime<Utc>,
    class: String,
    confidence: f64,
    x_min: Option<f64>,
    y_min: Option<f64>,
    x_max: Option<f64>,
    y_max: Option<f64>,
    frame_id: String,
    object_id: Option<String>,
    clip_s3_key: Option<String>,
    model_name: String,
    model_version: String,
}

#[derive(sqlx::FromRow)]
struct FrameRow {
    vehicle_id: String,
    time: DateTime<Utc>,
    frame_id: String,
    object_key: String,
    content_type: String,
    size_bytes: i32,
    width: Option<i32>,
    height: Option<i32>,
}

const BUCKETS_SQL: &str = "\
WITH pts AS (
    SELECT date_bin(make_interval(secs => $4), time, $2) AS bucket,
           lat, lon, alt, speed, heading, battery, metrics
    FROM telemetry
    WHERE vehicle_id = $1 AND time >= $2 AND time < $3
), vals AS (
    SELECT p.bucket, f.name,
           CASE f.name
               WHEN 'lat' THEN p.lat WHEN 'lon' THEN p.lon WHEN 'alt' THEN p.alt
               WHEN 'speed' THEN p.speed WHEN 'heading' THEN p.heading WHEN 'battery' THEN p.battery
               ELSE CASE WHEN jsonb_typeof(p.metrics -> f.name) = 'number'
                         THEN (p.metrics ->> f.name)::float8 END
           END AS v
    FROM pts p CROSS JOIN UNNEST($5::text[]) AS f(name)
)
SELECT (extract(epoch FROM bucket) * 1000000)::int8 AS start_us, name,
       count(*) AS points, count(v) AS n, avg(v) AS avg, min(v) AS min, max(v) AS max
FROM vals
GROUP BY bucket, name
ORDER BY bucket, name";

impl GrpcApi {
    async fn get_latest(&self, req: GetLatestRequest) -> Result<GetLatestResponse, QueryError> {
        if let Some(i) = req.vehicle_ids.iter().position(String::is_empty) {
            return Err(invalid("vehicle_ids", format!("entry {i} is empty")));
        }
        let rows: Vec<LatestRow> = sqlx::query_as(
            "SELECT vehicle_id, time, lat, lon, alt, speed, heading, battery, metrics, updated_at
             FROM vehicle_latest
             WHERE cardinality($1::text[]) = 0 OR vehicle_id = ANY($1)
             ORDER BY vehicle_id",
        )
        .bind(&req.vehicle_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(GetLatestResponse {
            vehicles: rows
                .into_iter()
                .map(|r| VehicleState {
                    vehicle_id: r.point.vehicle_id.clone(),
                    updated_unix_us: us(r.updated_at),
                    point: Some(r.point.into()),
                })
                .collect(),
        })
    }

    async fn query_telemetry(
        &self,
        req: TelemetryRangeRequest,
    ) -> Result<TelemetryRangeResponse, QueryError> {
        let (from, to) = range(&req.vehicle_id, req.from_unix_us, req.to_unix_us)?;
        let limit = limit(req.limit, DEFAULT_TELEMETRY_LIMIT, MAX_TELEMETRY_LIMIT) as usize;
        let mut rows: Vec<PointRow> = sqlx::query_as(
            "SELECT vehicle_id, time, lat, lon, alt, speed, heading, battery, metrics
             FROM telemetry WHERE vehicle_id = $1 AND time >= $2 AND time < $3
             ORDER BY time LIMIT $4",
        )
        .bind(&req.vehicle_id)
        .bind(from)
        .bind(to)
        .bind(limit as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        let truncated = rows.len() > limit;
        rows.truncate(limit);
        Ok(TelemetryRangeResponse {
            points: rows.into_iter().map(Into::into).collect(),
            truncated,
        })
    }

    async fn query_buckets(
        &self,
        req: TelemetryBucketsRequest,
    ) -> Result<TelemetryBucketsResponse, QueryError> {
        let (from, to) = range(&req.vehicle_id, req.from_unix_us, req.to_unix_us)?;
        if req.bucket_seconds == 0 {
            return Err(invalid("bucket_seconds", "must be at least 1"));
        }
        let width_us = i64::from(req.bucket_seconds) * 1_000_000;
        let span = req.to_unix_us.saturating_sub(req.from_unix_us);
        let buckets = span / width_us + i64::from(span % width_us != 0);
        if buckets > MAX_BUCKETS {
            return Err(invalid(
                "bucket_seconds",
                format!(
                    "the range would need {buckets} buckets, more than {MAX_BUCKETS}; use larger buckets"
                ),
            ));
        }
        let fields: Vec<String> = if req.fields.is_empty() {
            STANDARD_FIELDS.iter().map(|s| s.to_string()).collect()
        } else {
            let unique: BTreeSet<&String> = req.fields.iter().collect();
            unique.into_iter().cloned().collect()
        };
        if fields.len() > MAX_FIELDS {
            return Err(invalid(
                "fields",
                format!("at most {MAX_FIELDS} fields per query"),
            ));
        }
        let custom: Vec<&String> = fields
            .iter()
            .filter(|f| !STANDARD_FIELDS.contains(&f.as_str()))
            .collect();
        if !custom.is_empty() {
            // The latest-state row accumulates every metric name the vehicle
            // ever reported, which makes it the catalogue of known fields.
            let known: Vec<String> = sqlx::query_scalar(
                "SELECT k FROM vehicle_latest, jsonb_object_keys(COALESCE(metrics, '{}'::jsonb)) AS k
                 WHERE vehicle_id = $1",
            )
            .bind(&req.vehicle_id)
            .fetch_all(&self.pool)
            .await?;
            if let Some(unknown) = custom.iter().find(|f| !known.contains(f)) {
                return Err(invalid(
                    "fields",
                    format!(
                        "unknown field {unknown:?}: use {} or a metric name vehicle {} reported",
                        STANDARD_FIELDS.join(", "),
                        req.vehicle_id
                    ),
                ));
            }
        }
        let rows: Vec<BucketRow> = sqlx::query_as(BUCKETS_SQL)
            .bind(&req.vehicle_id)
            .bind(from)
            .bind(to)
            .bind(f64::from(req.bucket_seconds))
            .bind(&fields)
            .fetch_all(&self.pool)
            .await?;
        let mut out: BTreeMap<i64, TelemetryBucket> = BTreeMap::new();
        for r in rows {
            let b = out.entry(r.start_us).or_insert_with(|| TelemetryBucket {
                start_unix_us: r.start_us,
                points: r.points as u64,
                fields: HashMap::new(),
            });
            b.fields.insert(
                r.name,
                FieldStats {
                    avg: r.avg.unwrap_or_default(),
                    min: r.min.unwrap_or_default(),
                    max: r.max.unwrap_or_default(),
                    count: r.n as u64,
                },
            );
        }
        Ok(TelemetryBucketsResponse {
            buckets: out.into_values().collect(),
        })
    }

    async fn query_detections(
        &self,
        req: DetectionsRequest,
    ) -> Result<DetectionsResponse, QueryError> {
        let (from, to) = range(&req.vehicle_id, req.from_unix_us, req.to_unix_us)?;
        if !req.min_confidence.is_finite() || !(0.0..=1.0).contains(&req.min_confidence) {
            return Err(invalid("min_confidence", "must be between 0 and 1"));
        }
        let limit = limit(req.limit, DEFAULT_LIMIT, MAX_LIMIT);
        let rows: Vec<DetectionRow> = sqlx::query_as(
            "SELECT id, drone_id, timestamp, class, confidence, x_min, y_min, x_max, y_max,
                    frame_id, object_id, clip_s3_key, model_name, model_version
             FROM detections
             WHERE drone_id = $1 AND timestamp >= $2 AND timestamp < $3
               AND ($4 = '' OR class = $4) AND confidence >= $5
             ORDER BY timestamp, id LIMIT $6",
        )
        .bind(&req.vehicle_id)
        .bind(from)
        .bind(to)
        .bind(&req.class_name)
        .bind(f64::from(req.min_confidence))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let detections = rows
            .into_iter()
            .map(|r| {
                let bbox = match (r.x_min, r.y_min, r.x_max, r.y_max) {
                    (Some(a), Some(b), Some(c), Some(d)) => Some(BoundingBox {
                        x_min: a as f32,
                        y_min: b as f32,
                        x_max: c as f32,
                        y_max: d as f32,
                    }),
                    _ => None,
                };
                StoredDetection {
                    id: r.id,
                    vehicle_id: r.drone_id,
                    time_unix_us: us(r.timestamp),
                    detection: Some(Detection {
                        class_name: r.class,
                        confidence: r.confidence as f32,
                        bbox,
                        track_id: r.object_id.unwrap_or_default(),
                    }),
                    frame_id: r.frame_id,
                    frame_key: r.clip_s3_key.unwrap_or_default(),
                    model_name: r.model_name,
                    model_version: r.model_version,
                }
            })
            .collect();
        Ok(DetectionsResponse { detections })
    }

    async fn query_frames(&self, req: FramesRequest) -> Result<FramesResponse, QueryError> {
        let (from, to) = range(&req.vehicle_id, req.from_unix_us, req.to_unix_us)?;
        let limit = limit(req.limit, DEFAULT_LIMIT, MAX_LIMIT);
        let rows: Vec<FrameRow> = sqlx::query_as(
            "SELECT vehicle_id, time, frame_id, object_key, content_type, size_bytes, width, height
             FROM frames WHERE vehicle_id = $1 AND time >= $2 AND time < $3
             ORDER BY time LIMIT $4",
        )
        .bind(&req.vehicle_id)
        .bind(from)
        .bind(to)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let frames = rows
            .into_iter()
            .map(|r| StoredFrame {
                vehicle_id: r.vehicle_id,
                time_unix_us: us(r.time),
                frame_id: r.frame_id,
                object_key: r.object_key,
                content_type: r.content_type,
                size_bytes: r.size_bytes.max(0) as u64,
                width: r.width.unwrap_or(0).max(0) as u32,
                height: r.height.unwrap_or(0).max(0) as u32,
            })
            .collect();
        Ok(FramesResponse { frames })
    }

    async fn get_object(&self, req: GetObjectRequest) -> Result<GetObjectResponse, QueryError> {
        let path = objects::client_key(&req.key).map_err(|reason| invalid("key", reason))?;
        let got = match self.store.get(&path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(QueryError::NotFound(format!(
                    "no object with key {:?}",
                    req.key
                )));
            }
            Err(e) => return Err(QueryError::Unavailable(e.to_string())),
        };
        let data = got
            .bytes()
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        Ok(GetObjectResponse {
            data: data.to_vec(),
            content_type: objects::content_type_for(&req.key).into(),
        })
    }
}

// Every query is a read: viewer or above (ingest's service token is one).
#[tonic::async_trait]
impl PersistenceQuery for GrpcApi {
    async fn get_latest(
        &self,
        r: Request<GetLatestRequest>,
    ) -> Result<Response<GetLatestResponse>, Status> {
        require(&r, Role::Viewer)?;
        finish(self.get_latest(r.into_inner()).await)
    }

    async fn query_telemetry(
        &self,
        r: Request<TelemetryRangeRequest>,
    ) -> Result<Response<TelemetryRangeResponse>, Status> {
        require(&r, Role::Viewer)?;
        finish(self.query_telemetry(r.into_inner()).await)
    }

    async fn query_telemetry_buckets(
        &self,
        r: Request<TelemetryBucketsRequest>,
    ) -> Result<Response<TelemetryBucketsResponse>, Status> {
        require(&r, Role::Viewer)?;
        finish(self.query_buckets(r.into_inner()).await)
    }

    async fn query_detections(
        &self,
        r: Request<DetectionsRequest>,
    ) -> Result<Response<DetectionsResponse>, Status> {
        require(&r, Role::Viewer)?;
        finish(self.query_detections(r.into_inner()).await)
    }

    async fn query_frames(
        &self,
        r: Request<FramesRequest>,
    ) -> Result<Response<FramesResponse>, Status> {
        require(&r, Role::Viewer)?;
        finish(self.query_frames(r.into_inner()).await)
    }

    async fn get_object(
        &self,
        r: Request<GetObjectRequest>,
    ) -> Result<Response<GetObjectResponse>, Status> {
        require(&r, Role::Viewer)?;
        finish(self.get_object(r.into_inner()).await)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_limits() {
        assert!(matches!(
            range("", 0, 1),
            Err(QueryError::InvalidArgument {
                field: "vehicle_id",
                ..
            })
        ));
        assert!(matches!(
            range("d", 5, 5),
            Err(QueryError::InvalidArgument {
                field: "to_unix_us",
                ..
            })
        ));
        assert!(range("d", 0, 1).is_ok());
        assert_eq!(limit(0, 10, 100), 10);
        assert_eq!(limit(1_000, 10, 100), 100);
        assert_eq!(limit(7, 10, 100), 7);
    }

    #[test]
    fn status_mapping() {
        assert_eq!(
            Status::from(invalid("x", "bad")).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Status::from(QueryError::from(sqlx::Error::PoolTimedOut)).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            Status::from(QueryError::NotFound("k".into())).code(),
            tonic::Code::NotFound
        );
        assert!(
            Status::from(invalid("bucket_seconds", "must be at least 1"))
                .message()
                .starts_with("bucket_seconds:")
        );
    }
}
