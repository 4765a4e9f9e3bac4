//! `detector cameras`: the camera catalog, camera configurations as data in a compacted Kafka
//! topic keyed by camera id (docs/fleet.md). A record's value is the camera's `[[camera]]` table
//! as TOML, as a cameras file holds it, so one parser and one validation serve both, with the
//! same error lines; a tombstone (a record without a value) removes the camera.
//!
//! Compaction keeps the newest record of a key *within a partition*, so a camera's records must
//! all go to one partition: a new camera is placed once, in the partition with the fewest cameras
//! (so that hosts, which are assigned partitions, stay balanced by camera count), and its changes
//! and its tombstone go where it is. Placing by the key's hash would not balance a few cameras.
//!
//! Credentials: a source with a password (or a secret-named query value) in clear is refused;
//! it is written as `${NAME}` references, which each host expands from its own environment
//! (`common::secret::expand_env`), as it does for a cameras file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use common::kafka::{check_topic, KafkaConnection};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::{Config, References};
use crate::error::DetectorError;

/// How long a call to the brokers may take before the command gives up (exit 3).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Manages the camera catalog: the cameras a fleet of detectors runs (`detector --fleet`), in a
/// compacted Kafka topic keyed by camera id. Entries are `[[camera]]` tables of a cameras file
/// (docs/detector.md), validated as the detector validates that file; options left out take each
/// host's flags. A password in a source is given as a `${NAME}` reference, set in each host's
/// environment; one in clear is refused.
#[derive(Debug, Parser)]
#[command(name = "detector cameras", after_help = "Exit codes: 0 done, 2 a setting or entry to fix, 3 the brokers. See docs/fleet.md.")]
pub struct CatalogCli {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Adds or changes cameras: the entries of a cameras file (--file), or one camera from flags.
    Put(PutArgs),
    /// Removes a camera (a tombstone in its partition).
    Delete(DeleteArgs),
    /// Prints the catalog as a cameras file, each entry after a comment with its partition.
    List(Target),
    /// Makes the catalog equal to a cameras file: puts what is new or changed, deletes what the
    /// file does not list, leaves the rest untouched.
    Apply(ApplyArgs),
}

/// The catalog's topic and the brokers.
#[derive(Debug, Args)]
pub struct Target {
    /// The catalog's topic; created compacted, with --partitions, on first use.
    #[arg(long, env = "DETECTOR_CATALOG_TOPIC", default_value = "cameras")]
    pub catalog: String,

    /// Partitions of a catalog created here: the most detector hosts that can share it.
    #[arg(long, env = "DETECTOR_CATALOG_PARTITIONS", default_value_t = 12)]
    pub partitions: i32,

    #[command(flatten)]
    pub kafka: KafkaConnection,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub target: Target,

    /// A cameras file: each of its `[[camera]]` entries is put.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["id", "source"])]
    pub file: Option<PathBuf>,

    /// The camera's id (without --file).
    #[arg(long, required_unless_present = "file", requires = "source")]
    pub id: Option<String>,

    /// Its source (without --file); a password as a ${NAME} reference.
    #[arg(long, requires = "id")]
    pub source: Option<String>,

    /// Further options of the entry, as `KEY=VALUE` in TOML (repeatable): --set max_fps=5,
    /// --set 'crowd_people=4'. Zones and lines: --rules.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "id")]
    pub options: Vec<String>,

    /// A TOML file of the camera's zone and line rules (a `[camera.rules]` table's keys:
    /// docs/analytics.md).
    #[arg(long, value_name = "FILE", requires = "id")]
    pub rules: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub target: Target,

    /// The camera's id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: Target,

    /// The cameras file the catalog is to equal.
    pub file: PathBuf,
}

/// A camera as stored: where, and its entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
    /// The `[[camera]]` table, as TOML.
    pub entry: String,
}

/// Runs one action; what to print on standard output.
pub fn run(cli: CatalogCli) -> Result<String, DetectorError> {
    match cli.action {
        Action::Put(a) => {
            let entries = match &a.file {
                Some(path) => entries_of_file(path)?,
                None => vec![entry_from_flags(&a)?],
            };
            let catalog = Catalog::open(&a.target)?;
            let mut stored = catalog.read()?;
            let mut out = String::new();
            for (id, entry) in entries {
                out += &catalog.put(&mut stored, &id, entry)?;
            }
            Ok(out)
        }
        Action::Delete(a) => {
            let catalog = Catalog::open(&a.target)?;
            let mut stored = catalog.read()?;
            catalog.delete(&mut stored, &a.id)
        }
        Action::List(t) => {
            let stored = Catalog::open(&t)?.read()?;
            Ok(stored
                .iter()
                .map(|(id, s)| format!("# camera {id:?}: partition {}, offset {}\n{}\n", s.partition, s.offset, s.entry))
                .collect())
        }
        Action::Apply(a) => {
            let wanted = entries_of_file(&a.file)?;
            let catalog = Catalog::open(&a.target)?;
            let mut stored = catalog.read()?;
            let mut out = String::new();
            let (mut added, mut changed, mut unchanged) = (0, 0, 0);
            for (id, entry) in &wanted {
                match stored.get(id) {
                    None => added += 1,
                    Some(s) if s.entry == *entry => unchanged += 1,
                    Some(_) => changed += 1,
                }
                out += &catalog.put(&mut stored, id, entry.clone())?;
            }
            let gone: Vec<String> = stored.keys().filter(|id| !wanted.iter().any(|(w, _)| w == *id)).cloned().collect();
            for id in &gone {
                out += &catalog.delete(&mut stored, id)?;
            }
            out += &format!("applied added={added} changed={changed} removed={} unchanged={unchanged}\n", gone.len());
            Ok(out)
        }
    }
}

/// Each entry of a cameras file as its own `[[camera]]` TOML, validated as the detector validates
/// the file (the same error lines), with sources as written.
fn entries_of_file(path: &std::path::Path) -> Result<Vec<(String, String)>, DetectorError> {
    let origin = format!("--file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| DetectorError::Config(format!("{origin}: cannot read: {e}")))?;
    let cameras = defaults()?.cameras_in(&text, &origin, References::AsWritten)?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| DetectorError::Config(format!("{origin}: {e}")))?;
    let entries = table.get("camera").and_then(toml::Value::as_array).cloned().unwrap_or_default();
    cameras
        .iter()
        .zip(entries)
        .map(|(camera, entry)| {
            no_clear_secret(&camera.id, &camera.source)?;
            Ok((camera.id.clone(), entry_text(entry)))
        })
        .collect()
}

/// The `[[camera]]` entry of `put --id --source [--set ...] [--rules ...]`, validated.
fn entry_from_flags(a: &PutArgs) -> Result<(String, String), DetectorError> {
    let (id, source) = (a.id.clone().unwrap_or_default(), a.source.clone().unwrap_or_default());
    let mut entry = toml::Table::new();
    entry.insert("id".into(), id.clone().into());
    entry.insert("source".into(), source.clone().into());
    for option in &a.options {
        let parsed: toml::Table = toml::from_str(option)
            .map_err(|e| DetectorError::Config(format!("--set {option:?}: not KEY=VALUE in TOML: {}", e.message())))?;
        entry.extend(parsed);
    }
    if let Some(path) = &a.rules {
        let text =
            std::fs::read_to_string(path).map_err(|e| DetectorError::Config(format!("--rules {}: cannot read: {e}", path.display())))?;
        let rules: toml::Table =
            toml::from_str(&text).map_err(|e| DetectorError::Config(format!("--rules {}: {}", path.display(), e.message())))?;
        entry.insert("rules".into(), rules.into());
    }
    let text = entry_text(toml::Value::Table(entry));
    defaults()?.cameras_in(&text, &format!("camera {id:?}"), References::AsWritten)?;
    no_clear_secret(&id, &source)?;
    Ok((id, text))
}

/// One entry as a cameras file of its own.
fn entry_text(entry: toml::Value) -> String {
    let mut file = toml::Table::new();
    file.insert("camera".into(), toml::Value::Array(vec![entry]));
    toml::to_string(&file).expect("a TOML table serializes")
}

/// The flags' defaults, as this host has them (its environment included). Which cameras a host
/// runs (DETECTOR_SOURCE, DETECTOR_CAMERAS, DETECTOR_FLEET) is not a default: left out, so that a
/// fleet host's own environment does not conflict here.
fn defaults() -> Result<Config, DetectorError> {
    let no_env = |a: clap::Arg| a.env(None);
    let matches = Config::command()
        .mut_arg("source", no_env)
        .mut_arg("cameras", no_env)
        .mut_arg("group", no_env)
        .try_get_matches_from(["detector", "--source", "catalog"])
        .and_then(|m| Config::from_arg_matches(&m));
    matches.map_err(|e| DetectorError::Config(format!("the detector's defaults: {e}")))
}

fn no_clear_secret(id: &str, source: &str) -> Result<(), DetectorError> {
    if common::secret::url_has_clear_secret(source) {
        return Err(DetectorError::Config(format!(
            "camera {id:?}: its source holds a password in clear; every host and anyone who can read the catalog would see it. \
             Write a reference such as ${{CAM_PASSWORD}} in its place and set that variable on each detector host"
        )));
    }
    Ok(())
}

/// The catalog's topic, with a producer and the means to read it whole.
struct Catalog {
    topic: String,
    kafka: ClientConfig,
    producer: FutureProducer,
    partitions: i32,
}

impl Catalog {
    /// Connects, and creates the topic (compacted) if it is missing; a topic that is there and not
    /// compacted is refused, as its retention would delete cameras.
    fn open(t: &Target) -> Result<Catalog, DetectorError> {
        check_topic("--catalog", &t.catalog).map_err(DetectorError::Config)?;
        t.kafka.check().map_err(DetectorError::Config)?;
        if !(1..=1000).contains(&t.partitions) {
            return Err(DetectorError::Config(format!("--partitions must be within 1 and 1000, got {}", t.partitions)));
        }
        let mut kafka = ClientConfig::new();
        kafka.set("client.id", "detector-cameras");
        t.kafka.apply(&mut kafka);
        create_compacted(&kafka, &t.catalog, t.partitions, "catalog")?;
        let mut producing = kafka.clone();
        producing.set("enable.idempotence", "true").set("acks", "all");
        let producer: FutureProducer = producing.create().map_err(kafka_error)?;
        // A topic just created may take a moment to show its partitions.
        let consumer = Catalog::consumer(&kafka)?;
        let deadline = Instant::now() + TIMEOUT;
        let partitions = loop {
            let metadata = consumer.fetch_metadata(Some(&t.catalog), TIMEOUT).map_err(kafka_error)?;
            let partitions = metadata.topics().first().map_or(0, |m| m.partitions().len() as i32);
            if partitions > 0 {
                break partitions;
            }
            if Instant::now() > deadline {
                return Err(DetectorError::Kafka(format!("the catalog topic {} shows no partitions", t.catalog)));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        Ok(Catalog { topic: t.catalog.clone(), kafka, producer, partitions })
    }

    /// A topic that was there already must be compacted.
    fn check_compacted(admin: &AdminClient<DefaultClientContext>, topic: &str, what: &str) -> Result<(), DetectorError> {
        let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
        let described =
            futures_executor::block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options)).map_err(kafka_error)?;
        let config = described.into_iter().next().ok_or_else(|| DetectorError::Kafka(format!("no configuration for the topic {topic}")))?;
        let config = config.map_err(|code| DetectorError::Kafka(format!("cannot read the configuration of the topic {topic}: {code}")))?;
        let policy = config.get("cleanup.policy").and_then(|e| e.value.clone()).unwrap_or_default();
        if !policy.split(',').any(|p| p.trim() == "compact") {
            return Err(DetectorError::Config(format!(
                "the {what} topic {topic} has cleanup.policy={policy:?}: it must be compacted, or retention would delete its records"
            )));
        }
        Ok(())
    }

    fn consumer(kafka: &ClientConfig) -> Result<BaseConsumer, DetectorError> {
        let mut c = kafka.clone();
        // Assigned, never subscribed: the group id is librdkafka's requirement, nothing is committed.
        c.set("group.id", "detector-cameras").set("enable.auto.commit", "false").set("enable.partition.eof", "false");
        c.create().map_err(kafka_error)
    }

    /// Every camera now in the catalog: each partition read from its start to its end.
    fn read(&self) -> Result<BTreeMap<String, Stored>, DetectorError> {
        let consumer = Catalog::consumer(&self.kafka)?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in 0..self.partitions {
            let (low, high) = consumer.fetch_watermarks(&self.topic, p, TIMEOUT).map_err(kafka_error)?;
            if high > low {
                assignment.add_partition_offset(&self.topic, p, Offset::Beginning).map_err(kafka_error)?;
                ends.insert(p, high);
            }
        }
        consumer.assign(&assignment).map_err(kafka_error)?;
        let mut found: BTreeMap<String, Stored> = BTreeMap::new();
        let deadline = Instant::now() + TIMEOUT;
        // By position, not by the last offset seen: compaction may have removed that record.
        let at_end = |c: &BaseConsumer| -> Result<bool, DetectorError> {
            let positions = c.position().map_err(kafka_error)?;
            Ok(positions.elements().iter().all(|e| matches!(e.offset(), Offset::Offset(o) if o >= ends[&e.partition()])))
        };
        while !at_end(&consumer)? {
            if Instant::now() > deadline {
                return Err(DetectorError::Kafka(format!(
                    "the catalog topic {} was not read to its end within {} s",
                    self.topic,
                    TIMEOUT.as_secs()
                )));
            }
            let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
            let m = m.map_err(kafka_error)?;
            let Some(id) = m.key().map(|k| String::from_utf8_lossy(k).into_owned()) else { continue };
            match m.payload() {
                None => {
                    found.remove(&id);
                }
                Some(value) => {
                    let entry = String::from_utf8_lossy(value).into_owned();
                    if let Some(other) = found.get(&id).filter(|s| s.partition != m.partition()) {
                        return Err(DetectorError::Config(format!(
                            "camera {id:?} is in partitions {} and {} of {}: written there by another tool; delete it and put it again",
                            other.partition,
                            m.partition(),
                            self.topic
                        )));
                    }
                    found.insert(id, Stored { partition: m.partition(), offset: m.offset(), entry });
                }
            }
        }
        Ok(found)
    }

    /// Writes a camera's entry where it is, or a new camera in the least loaded partition; an
    /// unchanged entry is not written again.
    fn put(&self, stored: &mut BTreeMap<String, Stored>, id: &str, entry: String) -> Result<String, DetectorError> {
        let (partition, what) = match stored.get(id) {
            Some(s) if s.entry == entry => return Ok(format!("unchanged camera={id} partition={}\n", s.partition)),
            Some(s) => (s.partition, "changed"),
            None => (least_loaded(stored, self.partitions), "added"),
        };
        let offset = self.send(id, Some(&entry), partition)?;
        stored.insert(id.to_string(), Stored { partition, offset, entry });
        Ok(format!("{what} camera={id} partition={partition} offset={offset}\n"))
    }

    fn delete(&self, stored: &mut BTreeMap<String, Stored>, id: &str) -> Result<String, DetectorError> {
        let Some(s) = stored.remove(id) else {
            return Err(DetectorError::Config(format!("camera {id:?} is not in the catalog {}", self.topic)));
        };
        let offset = self.send(id, None, s.partition)?;
        Ok(format!("removed camera={id} partition={} offset={offset}\n", s.partition))
    }

    /// Produces one record and waits for the brokers to have it; its offset.
    fn send(&self, id: &str, entry: Option<&str>, partition: i32) -> Result<i64, DetectorError> {
        let mut record: FutureRecord<str, str> = FutureRecord::to(&self.topic).key(id).partition(partition);
        if let Some(e) = entry {
            record = record.payload(e);
        }
        let delivery = self.producer.send_result(record).map_err(|(e, _)| kafka_error(e))?;
        match futures_executor::block_on(delivery) {
            Ok(Ok(d)) => Ok(d.offset),
            Ok(Err((e, _))) => Err(kafka_error(e)),
            Err(_) => Err(DetectorError::Kafka("the producer stopped before the record was delivered".into())),
        }
    }
}

/// Creates `topic` compacted with `partitions` if it is missing; one that is there and not
/// compacted is refused. `what` names it in messages (catalog, leases).
pub fn create_compacted(kafka: &ClientConfig, topic: &str, partitions: i32, what: &str) -> Result<(), DetectorError> {
    let admin: AdminClient<DefaultClientContext> = kafka.create().map_err(kafka_error)?;
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let created = futures_executor::block_on(admin.create_topics([&new], &options)).map_err(kafka_error)?;
    match created.into_iter().next() {
        Some(Ok(_)) => tracing::info!(%topic, partitions, "{what} topic created, compacted"),
        Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) | None => Catalog::check_compacted(&admin, topic, what)?,
        Some(Err((_, code))) => return Err(DetectorError::Kafka(format!("cannot create the {what} topic {topic}: {code}"))),
    }
    Ok(())
}

/// The partition with the fewest cameras, the first of them on a tie.
fn least_loaded(stored: &BTreeMap<String, Stored>, partitions: i32) -> i32 {
    (0..partitions).min_by_key(|p| stored.values().filter(|s| s.partition == *p).count()).unwrap_or(0)
}

pub fn kafka_error(e: rdkafka::error::KafkaError) -> DetectorError {
    DetectorError::Kafka(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32) -> Stored {
        Stored { partition, offset: 0, entry: String::new() }
    }

    #[test]
    fn a_new_camera_goes_to_the_partition_with_the_fewest() {
        let mut stored = BTreeMap::new();
        assert_eq!(least_loaded(&stored, 3), 0);
        for (i, p) in [0, 0, 1, 2, 2].into_iter().enumerate() {
            stored.insert(format!("c{i}"), at(p));
        }
        assert_eq!(least_loaded(&stored, 3), 1);
        assert_eq!(least_loaded(&stored, 4), 3, "an empty partition first");
    }

    #[test]
    fn an_entry_from_flags_is_a_cameras_file_of_one() {
        let cli = CatalogCli::try_parse_from([
            "detector cameras",
            "put",
            "--id",
            "door",
            "--source",
            "rtsp://${DOOR_USER}:${DOOR_PASSWORD}@cam-1/stream",
            "--set",
            "max_fps=5.0",
            "--set",
            "crowd_people=4",
        ])
        .unwrap();
        let Action::Put(a) = cli.action else { panic!("put") };
        let (id, text) = entry_from_flags(&a).unwrap();
        assert_eq!(id, "door");
        let cameras = defaults().unwrap().cameras_in(&text, "test", References::AsWritten).unwrap();
        assert_eq!((cameras[0].max_fps, cameras[0].crowd.map(|c| c.people)), (5.0, Some(4)));
        assert_eq!(cameras[0].source, "rtsp://${DOOR_USER}:${DOOR_PASSWORD}@cam-1/stream", "references stay references");
    }

    #[test]
    fn entries_are_refused_with_the_cameras_files_lines() {
        let put = |args: &[&str]| {
            let cli = CatalogCli::try_parse_from(["detector cameras", "put"].iter().chain(args)).unwrap();
            let Action::Put(a) = cli.action else { panic!("put") };
            entry_from_flags(&a).unwrap_err().to_string()
        };
        assert!(put(&["--id", "a", "--source", "rtsp://u:pw@cam/s"]).contains("holds a password in clear"));
        assert!(
            put(&["--id", "a", "--source", "x.mp4", "--set", "max_fps=-1.0"]).contains("--max-fps (max_fps) must be 0 (no cap) to 1000")
        );
        assert!(put(&["--id", "a", "--source", "x.mp4", "--set", "colour=1"]).contains("unknown field `colour`"));
        assert!(put(&["--id", "a", "--source", "x.mp4", "--set", "max_fps"]).contains("--set \"max_fps\": not KEY=VALUE"));
    }
}
