//! MQTT delivery: one JSON telemetry object per message on
//! `fleet/<id>/telemetry`, QoS 1, each vehicle over its own connection
//! logged in as itself (username = vehicle id, password = its token), as
//! the broker's ACL lets a vehicle publish only under its own id.
//! A point counts as acknowledged when the MQTT broker's PUBACK arrives (the
//! ingest bridge takes it from there).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::{Delivery, Outcome, error_chain};
use super::point::Point;
use super::stats::{ErrorKind, Stats};

/// One vehicle's connection.
pub struct Mqtt {
    pub client: AsyncClient,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

pub fn parse_addr(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--mqtt {addr:?} must be host:port, e.g. 127.0.0.1:1883"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("--mqtt {addr:?}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

impl Mqtt {
    /// Connects as `vehicle` (in the background, retrying) and counts
    /// PUBACKs as acknowledged points.
    pub fn start(
        addr: &str,
        vehicle: &str,
        token: &str,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Self> {
        let (host, port) = parse_addr(addr)?;
        let mut opts = MqttOptions::new(vehicle, host, port);
        opts.set_credentials(vehicle, token)
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(100)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, eventloop) = AsyncClient::new(opts, 1_000);
        let stop = CancellationToken::new();
        let task = tokio::spawn(drive(
            eventloop,
            stats,
            stop.clone(),
            addr.to_string(),
            vehicle.to_string(),
        ));
        Ok(Self { client, task, stop })
    }

    async fn disconnect(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stop.cancelled()).await;
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Waits until the broker accepts `vehicle`'s login, e.g. after a reload.
pub async fn wait_login_accepted(
    addr: &str,
    vehicle: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (host, port) = parse_addr(addr)?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut opts = MqttOptions::new(vehicle, host.clone(), port);
        opts.set_credentials(vehicle, token);
        let (client, mut eventloop) = AsyncClient::new(opts, 1);
        let r = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        let _ = client.try_disconnect();
        match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(ConnectionError::ConnectionRefused(_))) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => anyhow::bail!(
                "MQTT broker {addr} does not accept {vehicle}'s new login: {}",
                error_chain(&e)
            ),
            Err(_) => anyhow::bail!("MQTT broker {addr} did not answer within 2 s"),
        }
    }
}

/// Every vehicle's connection.
#[derive(Default)]
pub struct MqttFleet {
    pub vehicles: Vec<Mqtt>,
}

impl MqttFleet {
    /// Waits (bounded) for outstanding PUBACKs, then disconnects everyone.
    pub async fn finish(self, stats: &Stats, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let (sent, acked, failed) = stats.points.snapshot();
            if acked + failed >= sent {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut set = tokio::task::JoinSet::new();
        for v in self.vehicles {
            set.spawn(v.disconnect());
        }
        while set.join_next().await.is_some() {}
    }
}

async fn drive(
    mut eventloop: EventLoop,
    stats: Arc<Stats>,
    stop: CancellationToken,
    addr: String,
    vehicle: String,
) {
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stop.cancelled() => return,
        };
        match ev {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                stats.points.acked.fetch_add(1, Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                stop.cancel();
                return;
            }
            Ok(_) => {}
            Err(e) => {
                stats.error(ErrorKind::Connection, || match &e {
                    ConnectionError::ConnectionRefused(code) => format!(
                        "MQTT broker {addr} refused {vehicle}'s login ({code:?}): does Mosquitto's password file have it? \
                         --register with --mqtt-password-file writes it"
                    ),
                    _ => format!("MQTT broker {addr}: {}", error_chain(&e)),
                });
                // The next poll reconnects and resends unacknowledged publishes.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Telemetry of one vehicle over MQTT.
pub struct MqttTelemetry {
    client: AsyncClient,
    topic: String,
    vehicle_id: Arc<str>,
    shutdown: CancellationToken,
    buf: Vec<u8>,
}

impl MqttTelemetry {
    pub fn new(client: AsyncClient, vehicle_id: Arc<str>, shutdown: CancellationToken) -> Self {
        Self {
            client,
            topic: format!("fleet/{vehicle_id}/telemetry"),
            vehicle_id,
            shutdown,
            buf: Vec::with_capacity(512),
        }
    }

    pub async fn send(&mut self, points: &[Point], stats: &Stats) -> Delivery {
        for p in points {
            self.buf.clear();
            p.write_json(&self.vehicle_id, &mut self.buf);
            // Waits when the client's queue is full: MQTT back-pressure slows the vehicle down.
            let publish = self.client.publish(
                self.topic.as_str(),
                QoS::AtLeastOnce,
                false,
                self.buf.as_slice(),
            );
            tokio::select! {
                r = publish => if let Err(e) = r {
                    stats.error(ErrorKind::Connection, || format!("MQTT publish: {e}"));
                    stats.points.failed.fetch_add(1, Relaxed);
                },
                _ = self.shutdown.cancelled() => return Delivery { outcome: Outcome::Cancelled, backed_off: false },
            }
        }
        Delivery {
            outcome: Outcome::Acked,
            backed_off: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".to_string(), 1883)
        );
        assert_eq!(parse_addr("[::1]:1884").unwrap(), ("::1".to_string(), 1884));
        assert!(parse_addr("localhost").is_err());
        assert!(parse_addr("h:x").is_err());
    }
}
