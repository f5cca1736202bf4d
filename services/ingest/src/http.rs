//! The vehicle-facing HTTP API (v1 routes plus the seed's `/api/data`,
//! `/api/video`, `/api/latest`).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, body::Bytes};
use base64::Engine;
use fleetwatch_proto::v1::{Frame, GetLatestRequest, TelemetryPoint};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::App;
use crate::error::{FieldError, IngestError};
use crate::metrics;
use crate::parse::{self, Clock, Shape};

pub fn router(app: Arc<App>) -> Router {
    let json_limit = DefaultBodyLimit::max(app.limits.max_json_body_bytes);
    // Base64 in JSON is 4/3 of the frame, plus a little for the other fields.
    let frame_limit = DefaultBodyLimit::max(app.limits.max_frame_bytes / 3 * 4 + 8 * 1024);
    Router::new()
        .route("/api/v1/telemetry", post(post_telemetry).layer(json_limit))
        .route(
            "/api/v1/detections",
            post(post_detections).layer(json_limit),
        )
        .route("/api/v1/frames", post(post_frame).layer(frame_limit))
        .route("/api/data", post(post_data).layer(json_limit))
        .route("/api/video", post(post_frame).layer(frame_limit))
        .route("/api/latest", get(get_latest))
        .fallback(|| async { IngestError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn(observe))
        .with_state(app)
}

/// Request span (child of the caller's `traceparent`) and the request metric.
async fn observe(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let route = matched
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("http_request", method = %req.method(), route = %route);
    if let Some(tp) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        fleetwatch_common::telemetry::set_remote_parent(&span, tp);
    }
    let resp = next.run(req).instrument(span).await;
    metrics::REQUESTS
        .with_label_values(&[
            "http",
            &route,
            metrics::status_class(resp.status().as_u16()),
        ])
        .inc();
    resp
}

fn respond(r: Result<Value, IngestError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            metrics::REJECTIONS
                .with_label_values(&["http", e.code()])
                .inc();
            if e.is_retryable() {
                tracing::debug!(error = %e, "refused with 503");
            }
            e.into_response()
        }
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, IngestError> {
    body.map_err(|r| {
        if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            IngestError::TooLarge(format!("request body exceeds {limit} bytes"))
        } else {
            IngestError::Malformed {
                code: "bad_body",
                message: r.body_text(),
            }
        }
    })
}

fn accepted(n: usize, ignored: &std::collections::BTreeSet<String>) -> Value {
    let mut v = json!({ "accepted": n });
    if !ignored.is_empty() {
        v["ignored_fields"] = json!(ignored);
    }
    v
}

async fn telemetry(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    shape: Shape,
) -> Result<Value, IngestError> {
    let vehicle = app.auth.authenticate(authorization(headers)).await?;
    let body = body_bytes(body, app.limits.max_json_body_bytes)?;
    let clock = Clock::new(&app.limits, fleetwatch_common::now_unix_us());
    let parsed = parse::parse_telemetry(&body, shape, &vehicle, &app.limits, &clock)?;
    let n = app
        .sink
        .send_telemetry(&vehicle, parsed.points, "http", clock.now_us)
        .await?;
    Ok(accepted(n, &parsed.ignored_fields))
}

async fn post_telemetry(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(telemetry(&app, &headers, body, Shape::Any).await)
}

async fn post_data(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(telemetry(&app, &headers, body, Shape::Single).await)
}

async fn detections(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, IngestError> {
    let vehicle = app.auth.authenticate(authorization(headers)).await?;
    let body = body_bytes(body, app.limits.max_json_body_bytes)?;
    let clock = Clock::new(&app.limits, fleetwatch_common::now_unix_us());
    let batch = parse::parse_detections(&body, &vehicle, &app.limits, &clock)?;
    app.sink.send_detections(&batch, "http").await?;
    Ok(json!({ "accepted": batch.detections.len() }))
}

async fn post_detections(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(detections(&app, &headers, body).await)
}

#[derive(Debug, Default, Deserialize)]
struct FrameQuery {
    timestamp: Option<String>,
    frame_id: Option<String>,
}

/// The seed's base64 form: `{"frame": "<base64 JPEG>", ...}`.
#[derive(Debug, Deserialize)]
struct Base64Frame {
    frame: String,
    timestamp: Option<String>,
    frame_id: Option<String>,
    drone_id: Option<String>,
    vehicle_id: Option<String>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

async fn frame(
    app: &App,
    headers: &HeaderMap,
    query: Result<Query<FrameQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, IngestError> {
    let vehicle = app.auth.authenticate(authorization(headers)).await?;
    let Query(query) = query.map_err(|r| IngestError::Malformed {
        code: "bad_query",
        message: r.body_text(),
    })?;
    let body = body_bytes(body, app.limits.max_frame_bytes)?;
    let content_type = header_str(headers, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_json = content_type.starts_with("application/json")
        || (content_type.is_empty()
            && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
    let mut timestamp = query
        .timestamp
        .or_else(|| header_str(headers, "x-frame-timestamp").map(str::to_string));
    let mut frame_id = query
        .frame_id
        .or_else(|| header_str(headers, "x-frame-id").map(str::to_string));
    let data: Vec<u8> = if is_json {
        let f: Base64Frame = serde_json::from_slice(&body).map_err(|e| IngestError::Malformed {
            code: "malformed_json",
            message: format!("expected {{\"frame\": \"<base64 JPEG>\"}}: {e}"),
        })?;
        for (field, id) in [("drone_id", &f.drone_id), ("vehicle_id", &f.vehicle_id)] {
            if let Some(id) = id.as_ref().filter(|id| **id != vehicle) {
                return Err(IngestError::Forbidden(FieldError::new(
                    field,
                    format!("names vehicle {id:?}, but the credentials belong to {vehicle:?}"),
                )));
            }
        }
        timestamp = f.timestamp.or(timestamp);
        frame_id = f.frame_id.or(frame_id);
        let b64 = f
            .frame
            .split_once(";base64,")
            .map(|(_, d)| d)
            .unwrap_or(&f.frame);
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| {
                IngestError::invalid(
                    parse::INVALID_FRAME,
                    vec![FieldError::new(
                        "frame",
                        format!("is not valid base64: {e}"),
                    )],
                )
            })?
    } else if content_type.is_empty()
        || content_type.starts_with("image/jpeg")
        || content_type.starts_with("application/octet-stream")
    {
        body.to_vec()
    } else {
        return Err(IngestError::UnsupportedMediaType(format!(
            "content-type {content_type:?} is not accepted; send image/jpeg, or application/json with a base64 \"frame\""
        )));
    };
    let clock = Clock::new(&app.limits, fleetwatch_common::now_unix_us());
    let (width, height) = parse::jpeg_dimensions(&data, app.limits.max_frame_bytes)?;
    let time = parse::frame_time(timestamp.as_deref(), &clock)?;
    let frame = Frame {
        vehicle_id: vehicle,
        time_unix_us: time,
        frame_id: frame_id.unwrap_or_default(),
        content_type: "image/jpeg".into(),
        data,
        width,
        height,
        received_unix_us: clock.now_us,
    };
    app.sink.send_frame(&frame, "http").await?;
    Ok(json!({ "accepted": 1, "width": width, "height": height }))
}

async fn post_frame(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<FrameQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(frame(&app, &headers, query, body).await)
}

fn rfc3339(us: i64) -> Value {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
        .unwrap_or(Value::Null)
}

/// The seed's flat telemetry shape.
pub fn point_json(p: &TelemetryPoint) -> Value {
    let mut v = json!({
        "vehicle_id": p.vehicle_id,
        "drone_id": p.vehicle_id,
        "timestamp": rfc3339(p.time_unix_us),
    });
    for (k, f) in [
        ("lat", p.lat),
        ("lon", p.lon),
        ("alt", p.alt),
        ("speed", p.speed),
        ("heading", p.heading),
        ("battery", p.battery),
    ] {
        if let Some(f) = f {
            v[k] = json!(f);
        }
    }
    if !p.metrics.is_empty() {
        let m: std::collections::BTreeMap<_, _> = p.metrics.iter().collect();
        v["metrics"] = json!(m);
    }
    v
}

async fn latest(app: &App, headers: &HeaderMap) -> Result<Value, IngestError> {
    let vehicle = app.auth.authenticate(authorization(headers)).await?;
    let unavailable = |reason: String| IngestError::Unavailable {
        reason,
        retry_after_secs: app.limits.retry_after_secs,
    };
    let mut client = app.persistence.clone();
    let resp = client
        .get_latest(GetLatestRequest {
            vehicle_ids: vec![vehicle.clone()],
        })
        .await
        .map_err(|s| {
            tracing::debug!(code = ?s.code(), error = %s.message(), "persistence query failed");
            match s.code() {
                tonic::Code::NotFound => {
                    IngestError::NotFound(format!("no telemetry for {vehicle} yet"))
                }
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    tracing::error!(error = %s.message(), "persistence refuses ingest's queries: set persistence.service_token_file to a service token of role viewer (fleetctl tokens create --service ingest --name ingest --role viewer)");
                    unavailable("the latest-state query is not available".into())
                }
                _ => unavailable(format!("persistence is unavailable: {}", s.message())),
            }
        })?;
    let state = resp
        .into_inner()
        .vehicles
        .into_iter()
        .find(|s| s.vehicle_id == vehicle && s.point.is_some())
        .ok_or_else(|| IngestError::NotFound(format!("no telemetry for {vehicle} yet")))?;
    let mut v = state
        .point
        .as_ref()
        .map(point_json)
        .unwrap_or_else(|| json!({}));
    v["vehicle_id"] = json!(vehicle);
    v["drone_id"] = json!(vehicle);
    v["updated_at"] = rfc3339(state.updated_unix_us);
    Ok(v)
}

async fn get_latest(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    respond(latest(&app, &headers).await)
}
