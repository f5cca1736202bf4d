//! An independent Kafka client reads what we write: Kafka's own console
//! consumer shows our records with their key and headers, and its
//! consumer-groups tool shows our group's committed offsets and lag.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fleetwatch_kafka::admin::{TopicSpec, ensure_topics};
use fleetwatch_kafka::{
    BatchHandler, Consumer, OutRecord, Producer, Record, Rejection, TransientError,
};
use fleetwatch_testkit as tk;
use tokio_util::sync::CancellationToken;

struct Ignore;

impl BatchHandler for Ignore {
    async fn handle(&self, _batch: &[Record]) -> Result<Vec<Rejection>, TransientError> {
        Ok(Vec::new())
    }
}

async fn send(p: &Producer, topic: &str, key: &str, value: &str) {
    p.send(OutRecord {
        topic,
        key,
        payload: value.as_bytes(),
        message_type: "fleetwatch.v1.TelemetryBatch",
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        extra_headers: &[],
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_console_consumer_and_consumer_groups_read_our_records_and_lag() {
    let bootstrap = tk::shared_bootstrap().await;
    let topic = format!("fleet.tools.{}", tk::unique_suffix());
    let group = format!("fleetwatch-tools-{}", tk::unique_suffix());
    let cfg = tk::kafka_config(&bootstrap, &group);
    ensure_topics(&cfg, &[TopicSpec::single_replica(topic.clone(), 1)])
        .await
        .unwrap();
    let producer = Producer::new(&cfg, "tools-test").unwrap();
    for i in 0..3 {
        send(&producer, &topic, "drone-07", &format!("point-{i}")).await;
    }

    // Our group consumes and commits the first three.
    let consumer = Consumer::new(&cfg, "tools-consumer", &[&topic], producer.clone()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(Ignore, stop.clone()));
    let describe = [
        "--bootstrap-server",
        &bootstrap,
        "--describe",
        "--group",
        &group,
    ];
    let class = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand";
    tk::wait_for(
        "the group's committed offset 3",
        Duration::from_secs(60),
        || async {
            let (_, out, _) = tk::kafka_tool(class, &describe).await;
            lag_row(&out, &topic)
                .filter(|(current, _, _)| *current == 3)
                .map(|_| ())
        },
    )
    .await;
    stop.cancel();
    task.await.unwrap();

    // Two more that nobody consumes: the tool shows a lag of 2.
    send(&producer, &topic, "drone-07", "point-3").await;
    send(&producer, &topic, "drone-07", "point-4").await;
    let (current, end, lag) = tk::wait_for("a lag of 2", Duration::from_secs(30), || async {
        let (_, out, _) = tk::kafka_tool(class, &describe).await;
        lag_row(&out, &topic).filter(|(_, end, _)| *end == 5)
    })
    .await;
    assert_eq!((current, end, lag), (3, 5, 2));

    let (ok, out, err) = tk::kafka_tool(
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            &topic,
            "--from-beginning",
            "--max-messages",
            "5",
            "--timeout-ms",
            "20000",
            "--property",
            "print.key=true",
            "--property",
            "print.headers=true",
        ],
    )
    .await;
    assert!(ok, "kafka-console-consumer failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.contains("content-type:application/x-protobuf"),
            "{line}"
        );
        assert!(
            line.contains("fleetwatch-type:fleetwatch.v1.TelemetryBatch"),
            "{line}"
        );
        assert!(
            line.contains("traceparent:00-0af7651916cd43dd8448eb211c80319c"),
            "{line}"
        );
        assert!(line.ends_with(&format!("drone-07\tpoint-{i}")), "{line}");
    }
}

/// (current offset, log end offset, lag) of partition 0 of `topic` in the
/// tool's `--describe` table.
fn lag_row(out: &str, topic: &str) -> Option<(i64, i64, i64)> {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(topic))?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    Some((
        cols.get(3)?.parse().ok()?,
        cols.get(4)?.parse().ok()?,
        cols.get(5)?.parse().ok()?,
    ))
}
