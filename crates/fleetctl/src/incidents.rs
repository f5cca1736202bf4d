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
    let mut c = IncidentServiceClient::connect(args.incident_grpc_url.clone())
        .await
        .with_context(|| {
            format!(
                "cannot reach the incident service at {}",
                args.incident_grpc_url
            )
        })?;
    let actor = args.actor.clone();
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
                    actor,
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
                    actor,
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
