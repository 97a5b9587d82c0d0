//! The broker's own ceiling on this machine, for `docs/benchmarks.md`: fills a private queue of
//! the same kind Herald consumes (quorum, durable, persistent messages of a SpendUpdated's size)
//! and drains it with a consumer that does nothing but ack, so Herald's drain rate can be read
//! against what RabbitMQ itself delivers. Prints one JSON line.
//!
//! herald-broker [--messages N] [--prefetch P] [--ack-every A] [--queue-type quorum|classic]
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::Instant;

#[derive(clap::Parser)]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Ack with `multiple` once per this many deliveries (1 = one ack per message).
    #[arg(long, default_value_t = 1)]
    ack_every: u64,
    #[arg(long, default_value = "quorum")]
    queue_type: String,
    /// Publishes kept unconfirmed at once while filling.
    #[arg(long, default_value_t = 2000)]
    window: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Args = clap::Parser::parse();
    let queue = format!("bench.broker.{}", std::process::id());
    let conn = Connection::connect(&args.amqp_url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(args.queue_type.clone().into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_args,
        )
        .await?;

    // Fill: persistent messages under publisher confirms, a window of them in flight.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = sample_body();
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(args.window);
    for i in 0..args.messages {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body.replace("{i}", &i.to_string()).as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= args.window
            && let Some(c) = pending.pop_front()
        {
            c.await?;
        }
    }
    for c in pending {
        c.await?;
    }
    let fill_s = started.elapsed().as_secs_f64();

    // Drain with a consumer that only acks.
    let consumer_channel = conn.create_channel().await?;
    consumer_channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "broker-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut received = 0u64;
    while received < args.messages {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery?;
        received += 1;
        if received.is_multiple_of(args.ack_every) || received == args.messages {
            delivery
                .ack(BasicAckOptions {
                    multiple: args.ack_every > 1,
                })
                .await?;
        }
    }
    let drain_s = started.elapsed().as_secs_f64();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    println!(
        "{{\"label\":\"broker\",\"queue_type\":\"{}\",\"messages\":{},\"prefetch\":{},\"ack_every\":{},\"fill_per_s\":{:.0},\"drain_per_s\":{:.0}}}",
        args.queue_type,
        received,
        args.prefetch,
        args.ack_every,
        args.messages as f64 / fill_s,
        received as f64 / drain_s
    );
    Ok(())
}

/// A MassTransit SpendUpdated envelope of the size Herald's load generator publishes.
fn sample_body() -> String {
    r#"{"messageId":"bench-{i}","messageType":["urn:message:ConduitLLM.Core.Events:SpendUpdated"],"sentTime":"2026-11-30T00:00:00Z","message":{"keyId":7,"amount":0.0001,"newTotalSpend":1.2345,"requestId":"t0","model":"gpt-4o","provider":"openai"}}"#
        .to_owned()
}
