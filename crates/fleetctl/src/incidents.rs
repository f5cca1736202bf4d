//! `fleetctl incidents`: list, acknowledge and resolve incidents through
//! the incident service's gRPC API.

use anyhow::Context;
use fleetwatch_proto::v1 as pb;
use fleetwatch_proto::v1::incident_service_client::IncidentServiceClient;

use crate::cli::{IncidentStatusArg, IncidentsArgs, IncidentsCommand};

fn status_name(s: i32) -> &'static str {
    match pb::IncidentStatus::try_from(s) {
        Ok(pb::IncidentStatus::Open) => "open",
        Ok(pb::IncidentStatus::Acknowledged) => "acknowledged",
        Ok(pb::IncidentStatus::Resolved) => "resolved",
        _ => "?",
    }
}

fn severity_name(s: i32) -> &'static str {
    match pb::Severity::try_from(s) {
        Ok(pb::Severity::Critical) => "critical",
        Ok(pb::Severity::Major) => "major",
        Ok(pb::Severity::Minor) => "minor",
        Ok(pb::Severity::Warning) => "warning",
        _ => "?",
    }
}

fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn line(i: &pb::Incident) -> String {
    format!(
        "{:>6}  {:<12}  {:<8}  {:<20}  {:<16}  {:<7}  x{:<4}  {}  {}",
        i.id,
        status_name(i.status),
        severity_name(i.severity),
        i.vehicle_id,
        i.incident_type,
        if i.cleared { "cleared" } else { "" },
        i.trigger_count,
        time(i.first_seen_unix_us),
        i.title
    )
}

fn grpc_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

pub async fn run(args: IncidentsArgs) -> anyhow::Result<()> {
    let Some(token) = args.token.as_deref() else {
        anyhow::bail!(
            "the incident service needs your token: pass --token or set FLEETWATCH_TOKEN (create one with `fleetctl tokens create --user <you> --name cli`)"
        );
    };
    let mut c = incident_client(&args.incident_grpc_url, token).await?;
    // The service records the token's owner; no name of our own.
    let actor = String::new();
    match args.command {
        IncidentsCommand::List {
            vehicle,
            status,
            limit,
        } => {
            let statuses = status
                .iter()
                .map(|s| match s {
                    IncidentStatusArg::Open => pb::IncidentStatus::Open as i32,
                    IncidentStatusArg::Acknowledged => pb::IncidentStatus::Acknowledged as i32,
                    IncidentStatusArg::Resolved => pb::IncidentStatus::Resolved as i32,
                })
                .collect();
            let r = c
                .list_incidents(pb::ListIncidentsRequest {
                    vehicle_id: vehicle.unwrap_or_default(),
                    statuses,
                    limit,
                    ..Default::default()
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            for i in &r.incidents {
                println!("{}", line(i));
            }
        }
        IncidentsCommand::Ack { id, note } => {
            let i = c
                .acknowledge_incident(pb::IncidentActionRequest {
                    incident_id: id,
                    actor: actor.clone(),
                    note: note.unwrap_or_default(),
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            println!("{}", line(&i));
        }
        IncidentsCommand::Resolve { id, note } => {
            let i = c
                .resolve_incident(pb::IncidentActionRequest {
                    incident_id: id,
                    actor: actor.clone(),
                    note: note.unwrap_or_default(),
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            println!("{}", line(&i));
        }
    }
    Ok(())
}

/// Sends `authorization: Bearer <token>` with every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

pub type IncidentClient = IncidentServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A client of the incident service calling with `token`.
pub async fn incident_client(url: &str, token: &str) -> anyhow::Result<IncidentClient> {
    let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", token.trim()).parse().map_err(|_| {
            anyhow::anyhow!(
                "the token contains characters no token has; check --token / FLEETWATCH_TOKEN"
            )
        })?;
    value.set_sensitive(true);
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .with_context(|| format!("{url} is not a URL"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the incident service at {url}"))?;
    Ok(IncidentServiceClient::with_interceptor(
        channel,
        Bearer(value),
    ))
}
