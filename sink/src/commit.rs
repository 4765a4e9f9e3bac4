//! Commits offsets to Kafka once a batch is durable: the next offset to read, not the last one
//! seen, so lag tools and a restarted group start right after the stored rows.

use std::collections::BTreeMap;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::consume::GroupConsumer;
use crate::error::SinkError;

pub fn commit(consumer: &GroupConsumer, topic: &str, next_offsets: &BTreeMap<i32, i64>, mode: CommitMode) -> Result<(), SinkError> {
    if next_offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, next) in next_offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    consumer.commit(&tpl, mode)?;
    Ok(())
}
