//! The last stage: frame messages out, to Kafka or to standard output.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use common::registry::Registry;

use crate::config::{Config, OutputKind};
use crate::error::DetectorError;

/// Counts delivery reports, which librdkafka hands back on its own thread.
#[derive(Default)]
pub struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        common::kafka::log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        common::kafka::log_client_error(error, reason);
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "kafka delivery failed");
                *self.last_error.lock().unwrap() = Some(e.to_string());
            }
        }
    }
}

pub struct KafkaOutput {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    /// The registry's id of the wire schema, when messages are framed for it.
    schema_id: Option<u32>,
    sent: u64,
    flush_timeout: Duration,
}

pub enum Output {
    Kafka(KafkaOutput),
    Stdout(std::io::BufWriter<std::io::Stdout>),
}

impl Output {
    /// `client_id` names the producer to the brokers.
    pub fn open(cfg: &Config, client_id: &str) -> Result<Self, DetectorError> {
        match cfg.output {
            OutputKind::Stdout => Ok(Output::Stdout(std::io::BufWriter::new(std::io::stdout()))),
            OutputKind::Kafka => KafkaOutput::connect(cfg, client_id).map(Output::Kafka),
        }
    }

    /// Publishes one message. `stop` (a shutdown was asked) bounds how long a full local queue
    /// is waited for.
    pub fn publish(&mut self, msg: &wire::FrameMessage, stop: &AtomicBool) -> Result<(), DetectorError> {
        match self {
            Output::Kafka(k) => k.send(msg, stop),
            Output::Stdout(out) => {
                let mut line = msg.to_json();
                line.push(b'\n');
                out.write_all(&line).map_err(|e| DetectorError::Output(format!("stdout: {e}")))
            }
        }
    }

    /// Waits for every message to be delivered (or the timeout), then reports.
    pub fn finish(self, timeout: Duration) -> Result<(), DetectorError> {
        match self {
            Output::Kafka(k) => k.finish(timeout),
            Output::Stdout(mut out) => out.flush().map_err(|e| DetectorError::Output(format!("stdout: {e}"))),
        }
    }
}

/// Registers (or finds) the wire schema under `<topic>-value`, with BACKWARD compatibility, so the
/// registry refuses a later schema that could not read what this one wrote; its id.
fn register_schema(url: &str, topic: &str) -> Result<u32, DetectorError> {
    let registry = Registry::new(url, Duration::from_secs(10)).map_err(DetectorError::Config)?;
    let subject = format!("{topic}-value");
    registry.set_compatibility(&subject, "BACKWARD").map_err(DetectorError::registry)?;
    let id = registry.register(&subject, wire::JSON_SCHEMA).map_err(DetectorError::registry)?;
    tracing::info!(registry = %registry.url(), %subject, schema_id = id, "wire schema registered; messages are framed with its id");
    Ok(id)
}

impl KafkaOutput {
    fn connect(cfg: &Config, client_id: &str) -> Result<Self, DetectorError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &cfg.brokers)
            .set("client.id", client_id)
            // Idempotence keeps retries from duplicating or reordering a camera's frames.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            // 0 = retry forever: a file's frames wait for a broker that is away rather than
            // being dropped; the bounded queue then holds capture back.
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", "10000");
        for (k, v) in &cfg.kafka_properties {
            client.set(k, v);
        }
        let schema_id = cfg.schema_registry.as_deref().map(|url| register_schema(url, &cfg.topic)).transpose()?;
        let shown: Vec<String> = cfg.kafka_properties.iter().map(|(k, v)| format!("{k}={}", common::kafka::redact(k, v))).collect();
        tracing::info!(brokers = %cfg.brokers, topic = %cfg.topic, extra = ?shown, "connecting to kafka");
        let producer: ThreadedProducer<DeliveryCounter> = client
            .create_with_context(DeliveryCounter::default())
            .map_err(|e| DetectorError::Config(format!("kafka producer settings: {e}")))?;
        // Fail at start, with the address, rather than queueing into the void.
        producer
            .client()
            .fetch_metadata(Some(&cfg.topic), Duration::from_secs(10))
            .map_err(|e| DetectorError::Kafka(format!("cannot reach the brokers at {}: {e}", cfg.brokers)))?;
        Ok(KafkaOutput { producer, topic: cfg.topic.clone(), schema_id, sent: 0, flush_timeout: Duration::from_secs(cfg.flush_timeout_s) })
    }

    fn send(&mut self, msg: &wire::FrameMessage, stop: &AtomicBool) -> Result<(), DetectorError> {
        let json = msg.to_json();
        let payload = match self.schema_id {
            Some(id) => wire::envelope::frame(id, &json),
            None => json,
        };
        let mut record = BaseRecord::to(&self.topic).key(msg.camera_id.as_str()).payload(&payload);
        let mut stopping_since = None;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // The local queue is full (broker slow or away): wait, which backs the pipeline up
                // (a live source then drops its oldest frames). Once a shutdown is asked, wait no
                // longer than the flush timeout, so SIGTERM ends a run whose broker never returns.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    if stop.load(Ordering::Relaxed) && stopping_since.get_or_insert_with(Instant::now).elapsed() >= self.flush_timeout {
                        return Err(DetectorError::Kafka(format!(
                            "shutting down with the broker unreachable: {} queued messages and frame {} of camera {} not delivered within the {} s flush timeout",
                            self.producer.in_flight_count(),
                            msg.frame_seq,
                            msg.camera_id,
                            self.flush_timeout.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(DetectorError::Kafka(format!("send: {e}"))),
            }
        }
        self.sent += 1;
        Ok(())
    }

    fn finish(self, timeout: Duration) -> Result<(), DetectorError> {
        let flushed = self.producer.flush(timeout);
        let ctx = self.producer.context();
        let delivered = ctx.delivered.load(Ordering::Relaxed);
        let failed = ctx.failed.load(Ordering::Relaxed);
        if failed > 0 || flushed.is_err() || delivered != self.sent {
            let last = ctx.last_error.lock().unwrap().clone().unwrap_or_else(|| "flush timed out".into());
            return Err(DetectorError::Kafka(format!(
                "{} of {} messages not delivered ({failed} failed): {last}",
                self.sent - delivered,
                self.sent
            )));
        }
        tracing::info!(delivered, "all messages delivered");
        Ok(())
    }
}
