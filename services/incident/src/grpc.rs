//! The `IncidentService` gRPC API. One mapping from store errors to the
//! shared error codes: NotFound, FailedPrecondition (illegal lifecycle
//! transitions), InvalidArgument (naming the field), AlreadyExists,
//! Unavailable; the table in `fleetwatch_common::error` makes them gRPC codes.
// tonic::Status is large; these helpers return it like tonic's handlers do.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use fleetwatch_auth::grpc::require;
use fleetwatch_auth::{Principal, Role};
use fleetwatch_common::error::{ApiError, ErrorCode};
use fleetwatch_proto::v1 as pb;
use fleetwatch_proto::v1::incident_service_server::IncidentService;
use sqlx::PgPool;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::engine::RulesCache;
use crate::rules::{Params, Rule};
use crate::store::{self, OperatorAction, StoreError};

pub struct GrpcApi {
    pub pool: PgPool,
    pub rules: RulesCache,
    pub published: Arc<Notify>,
    pub retention_days: u32,
}

fn status(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(_) | StoreError::RuleNotFound(_) => ApiError::not_found(e.to_string()),
        StoreError::Precondition(m) => ApiError::new(ErrorCode::FailedPrecondition, m),
        StoreError::Conflict(m) if m.starts_with("rule.name") => {
            ApiError::new(ErrorCode::AlreadyExists, m)
        }
        StoreError::Conflict(m) => ApiError::invalid_argument(m),
        StoreError::Db(e) => {
            tracing::warn!(error = %e, "database error serving the incident api");
            ApiError::unavailable(format!("database unavailable: {e}"))
        }
    }
}

fn db(e: sqlx::Error) -> ApiError {
    status(StoreError::Db(e))
}

/// The handler's answer; calls are counted by the server's shared layer.
fn done<T>(r: Result<T, ApiError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

fn need_id(field: &str, id: i64) -> Result<i64, ApiError> {
    if id <= 0 {
        return Err(ApiError::invalid_argument(format!(
            "{field}: must be a positive incident id"
        )));
    }
    Ok(id)
}

/// The name audit rows carry: the verified caller's. The request's `actor`
/// may be left empty; when given it must be the caller's own name, so no one
/// acts in someone else's name.
fn actor_of(who: &Principal, claimed: &str) -> Result<String, ApiError> {
    let claimed = claimed.trim();
    if !claimed.is_empty() && claimed != who.name && claimed != who.actor() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "actor: {claimed:?} is not the caller ({}); leave it empty, the caller's identity is recorded",
                who.actor()
            ),
        ));
    }
    Ok(who.actor())
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A rule from the API, validated; errors name the field.
fn rule_from_proto(r: Option<&pb::Rule>, need_id: bool) -> Result<Rule, ApiError> {
    let r = r.ok_or_else(|| ApiError::invalid_argument("rule: must be set"))?;
    let mut errs = Vec::new();
    if need_id && r.id <= 0 {
        errs.push("rule.id: must be the id of the rule to update".to_string());
    }
    if !valid_name(&r.name) {
        errs.push("rule.name: must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}".into());
    }
    if !r.vehicle_id.is_empty() && !fleetwatch_proto::valid_vehicle_id(&r.vehicle_id) {
        errs.push("rule.vehicle_id: not a valid vehicle id".into());
    }
    let severity = match pb::Severity::try_from(r.severity) {
        Ok(s) if s != pb::Severity::Unspecified => s as i16,
        _ => {
            errs.push("rule.severity: must be WARNING, MINOR, MAJOR or CRITICAL".into());
            0
        }
    };
    let params = match Params::from_proto(r.params.as_ref()) {
        Ok(p) => {
            errs.extend(p.validate());
            Some(p)
        }
        Err(e) => {
            errs.push(e);
            None
        }
    };
    match params {
        Some(params) if errs.is_empty() => Ok(Rule {
            id: r.id,
            name: r.name.clone(),
            vehicle_id: (!r.vehicle_id.is_empty()).then(|| r.vehicle_id.clone()),
            severity,
            enabled: r.enabled,
            description: r.description.clone(),
            params,
            created_us: 0,
            updated_us: 0,
        }),
        _ => Err(ApiError::invalid_argument(errs.join("; "))),
    }
}

impl GrpcApi {
    async fn incident(&self, row: store::IncidentRow) -> Result<pb::Incident, ApiError> {
        let clips = store::clip_keys(&self.pool, row.id).await.map_err(db)?;
        Ok(row.to_proto(clips))
    }

    async fn act(&self, id: i64, actor: &str, a: OperatorAction) -> Result<pb::Incident, ApiError> {
        let row = store::act(&self.pool, id, actor, &a, self.retention_days)
            .await
            .map_err(status)?;
        self.published.notify_one();
        self.incident(row).await
    }

    async fn rules_changed(&self) {
        if let Err(e) = self.rules.reload(&self.pool).await {
            tracing::warn!(error = %e, "cannot reload rules after a change; the periodic reload will");
        }
    }
}

#[tonic::async_trait]
impl IncidentService for GrpcApi {
    async fn list_incidents(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        require(&req, Role::Viewer)?;
        let r = async {
            let q = req.into_inner();
            if q.limit > 1000 {
                return Err(ApiError::invalid_argument("limit: at most 1000"));
            }
            if q.before_id < 0 {
                return Err(ApiError::invalid_argument(
                    "before_id: must not be negative",
                ));
            }
            let mut statuses = Vec::new();
            for s in &q.statuses {
                match pb::IncidentStatus::try_from(*s) {
                    Ok(pb::IncidentStatus::Open) => statuses.push("open".to_string()),
                    Ok(pb::IncidentStatus::Acknowledged) => statuses.push("acknowledged".into()),
                    Ok(pb::IncidentStatus::Resolved) => statuses.push("resolved".into()),
                    _ => {
                        return Err(ApiError::invalid_argument(format!(
                            "statuses: {s} is not a status"
                        )));
                    }
                }
            }
            let min_severity = match pb::Severity::try_from(q.min_severity) {
                Ok(pb::Severity::Unspecified) => None,
                Ok(s) => Some(s as i16),
                Err(_) => return Err(ApiError::invalid_argument("min_severity: not a severity")),
            };
            let limit = if q.limit == 0 {
                100
            } else {
                i64::from(q.limit)
            };
            let f = store::Filter {
                vehicle_id: (!q.vehicle_id.is_empty()).then_some(q.vehicle_id),
                statuses,
                rule_id: (q.rule_id != 0).then_some(q.rule_id),
                min_severity,
                before_id: (q.before_id != 0).then_some(q.before_id),
                limit,
            };
            let rows = store::list(&self.pool, &f).await.map_err(db)?;
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let mut clips = store::clip_keys_many(&self.pool, &ids).await.map_err(db)?;
            let next = if rows.len() as i64 == limit {
                rows.last().map(|r| r.id).unwrap_or(0)
            } else {
                0
            };
            Ok(pb::ListIncidentsResponse {
                incidents: rows
                    .into_iter()
                    .map(|r| {
                        let c = clips.remove(&r.id).unwrap_or_default();
                        r.to_proto(c)
                    })
                    .collect(),
                next_before_id: next,
            })
        }
        .await;
        done(r)
    }

    async fn get_incident(
        &self,
        req: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::IncidentDetail>, Status> {
        require(&req, Role::Viewer)?;
        let r = async {
            let id = need_id("id", req.into_inner().id)?;
            let row = store::get(&self.pool, id)
                .await
                .map_err(db)?
                .ok_or_else(|| ApiError::not_found(format!("incident {id} not found")))?;
            let audit = store::audit(&self.pool, id).await.map_err(db)?;
            Ok(pb::IncidentDetail {
                incident: Some(self.incident(row).await?),
                audit,
            })
        }
        .await;
        done(r)
    }

    async fn acknowledge_incident(
        &self,
        req: Request<pb::IncidentActionRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let who = require(&req, Role::Operator)?;
        let q = req.into_inner();
        let r = async {
            let id = need_id("incident_id", q.incident_id)?;
            let actor = actor_of(&who, &q.actor)?;
            self.act(
                id,
                &actor,
                OperatorAction::Acknowledge {
                    note: q.note.clone(),
                },
            )
            .await
        }
        .await;
        done(r)
    }

    async fn assign_incident(
        &self,
        req: Request<pb::AssignIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let who = require(&req, Role::Operator)?;
        let q = req.into_inner();
        let r = async {
            let id = need_id("incident_id", q.incident_id)?;
            let actor = actor_of(&who, &q.actor)?;
            if q.assignee.len() > 128 {
                return Err(ApiError::invalid_argument(
                    "assignee: at most 128 characters",
                ));
            }
            self.act(
                id,
                &actor,
                OperatorAction::Assign {
                    assignee: q.assignee.trim().to_string(),
                },
            )
            .await
        }
        .await;
        done(r)
    }

    async fn comment_incident(
        &self,
        req: Request<pb::CommentIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let who = require(&req, Role::Operator)?;
        let q = req.into_inner();
        let r = async {
            let id = need_id("incident_id", q.incident_id)?;
            let actor = actor_of(&who, &q.actor)?;
            if q.text.trim().is_empty() {
                return Err(ApiError::invalid_argument("text: must not be empty"));
            }
            if q.text.len() > 10_000 {
                return Err(ApiError::invalid_argument("text: at most 10000 bytes"));
            }
            self.act(
                id,
                &actor,
                OperatorAction::Comment {
                    text: q.text.clone(),
                },
            )
            .await
        }
        .await;
        done(r)
    }

    async fn resolve_incident(
        &self,
        req: Request<pb::IncidentActionRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let who = require(&req, Role::Operator)?;
        let q = req.into_inner();
        let r = async {
            let id = need_id("incident_id", q.incident_id)?;
            let actor = actor_of(&who, &q.actor)?;
            self.act(
                id,
                &actor,
                OperatorAction::Resolve {
                    note: q.note.clone(),
                },
            )
            .await
        }
        .await;
        done(r)
    }

    async fn list_rules(
        &self,
        req: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        require(&req, Role::Viewer)?;
        let q = req.into_inner();
        let r = async {
            let rules = store::load_rules(&self.pool).await.map_err(db)?;
            Ok(pb::ListRulesResponse {
                rules: rules
                    .iter()
                    .filter(|r| q.include_disabled || r.enabled)
                    .filter(|r| {
                        q.vehicle_id.is_empty()
                            || r.vehicle_id.is_none()
                            || r.vehicle_id.as_deref() == Some(q.vehicle_id.as_str())
                    })
                    .map(Rule::to_proto)
                    .collect(),
            })
        }
        .await;
        done(r)
    }

    async fn create_rule(
        &self,
        req: Request<pb::CreateRuleRequest>,
    ) -> Result<Response<pb::Rule>, Status> {
        let who = require(&req, Role::Admin)?;
        let q = req.into_inner();
        let r = async {
            let rule = rule_from_proto(q.rule.as_ref(), false)?;
            let created = store::create_rule(&self.pool, &rule)
                .await
                .map_err(status)?;
            self.rules_changed().await;
            tracing::info!(actor = %who.actor(), rule = created.id, "rule created");
            Ok(created.to_proto())
        }
        .await;
        done(r)
    }

    async fn update_rule(
        &self,
        req: Request<pb::UpdateRuleRequest>,
    ) -> Result<Response<pb::Rule>, Status> {
        let who = require(&req, Role::Admin)?;
        let q = req.into_inner();
        let r = async {
            let rule = rule_from_proto(q.rule.as_ref(), true)?;
            let updated = store::update_rule(&self.pool, &rule)
                .await
                .map_err(status)?;
            self.rules_changed().await;
            tracing::info!(actor = %who.actor(), rule = updated.id, "rule updated");
            Ok(updated.to_proto())
        }
        .await;
        done(r)
    }

    async fn disable_rule(
        &self,
        req: Request<pb::DisableRuleRequest>,
    ) -> Result<Response<pb::Rule>, Status> {
        let who = require(&req, Role::Admin)?;
        let q = req.into_inner();
        let r = async {
            if q.id <= 0 {
                return Err(ApiError::invalid_argument("id: must be a positive rule id"));
            }
            let rule = store::disable_rule(&self.pool, q.id)
                .await
                .map_err(status)?;
            self.rules_changed().await;
            tracing::info!(actor = %who.actor(), rule = rule.id, "rule disabled");
            Ok(rule.to_proto())
        }
        .await;
        done(r)
    }
}
