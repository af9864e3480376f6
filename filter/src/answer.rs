//! A key-service answer (SPEC §6, [`crate::config::SyncResponse`] on the wire), read as it
//! streams in: each key is compiled into the answer's own table the moment it is parsed, so a
//! 100,000-key snapshot never exists as 19 MB of text plus 100,000 parsed configurations in
//! one VM (the high-water mark that was 68 MiB); what is held is the table being built and one
//! key. The wire format is unchanged.

use crate::config::{ApiKeyConfig, ConfigError, StoreId, SyncResponse};
use crate::keys::{Incoming, KeyTable};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use std::collections::HashMap;
use std::fmt;

impl Incoming {
    /// An answer already in memory (the operator's own copy of the gateways' table).
    pub fn of(
        answer: &SyncResponse,
        stores: &HashMap<&str, StoreId>,
        store_count: usize,
    ) -> Result<Incoming, ConfigError> {
        Ok(Incoming {
            revision: answer.revision.clone(),
            snapshot: answer.snapshot,
            keys: KeyTable::from_keys(&answer.keys, stores, store_count)?,
            removed: answer.removed.clone(),
        })
    }
}

/// Reads an answer from `body` as it arrives, compiling each key as it is parsed.
/// `keys_hint` sizes the table up front (a guess; see [`keys_hint`]). A malformed answer,
/// an unknown field or a key the filter cannot compile refuses the whole answer.
pub fn read(
    body: impl std::io::Read,
    stores: &HashMap<&str, StoreId>,
    store_count: usize,
    keys_hint: usize,
) -> Result<Incoming, String> {
    let mut de = serde_json::Deserializer::from_reader(body);
    let answer = AnswerSeed {
        stores,
        store_count,
        keys_hint,
    }
    .deserialize(&mut de)
    .map_err(|e| format!("the answer is not a SyncResponse: {e}"))?;
    de.end()
        .map_err(|e| format!("the answer is not a SyncResponse: {e}"))?;
    Ok(answer)
}

/// How many keys an answer of `bytes` bytes may carry, at least: a key is about 190 bytes of
/// JSON; erring low keeps the table's maps at the size the keys need (they grow once if the
/// guess was short). Never more than [`MAX_KEYS_HINT`]: the room is taken before a byte is
/// parsed, so an oversized answer must not reserve memory its keys would not justify.
pub fn keys_hint(bytes: usize) -> usize {
    (bytes / 200).min(MAX_KEYS_HINT)
}

/// The most keys [`keys_hint`] reserves room for (2.5× the 100,000 keys SPEC §9 plans for).
pub const MAX_KEYS_HINT: usize = 250_000;

#[cfg(test)]
mod tests {
    #[test]
    fn the_room_reserved_before_parsing_is_bounded() {
        assert_eq!(super::keys_hint(19_000_000), 95_000);
        assert_eq!(super::keys_hint(usize::MAX), super::MAX_KEYS_HINT);
    }
}

struct AnswerSeed<'a> {
    stores: &'a HashMap<&'a str, StoreId>,
    store_count: usize,
    keys_hint: usize,
}

impl<'de> DeserializeSeed<'de> for AnswerSeed<'_> {
    type Value = Incoming;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Incoming, D::Error> {
        d.deserialize_map(self)
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
enum Field {
    Revision,
    Snapshot,
    Keys,
    Removed,
}

impl<'de> Visitor<'de> for AnswerSeed<'_> {
    type Value = Incoming;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key-service answer")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Incoming, A::Error> {
        let (mut revision, mut snapshot, mut keys, mut removed) = (None, None, None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Revision if revision.is_none() => revision = Some(map.next_value()?),
                Field::Snapshot if snapshot.is_none() => snapshot = Some(map.next_value()?),
                Field::Removed if removed.is_none() => removed = Some(map.next_value()?),
                Field::Keys if keys.is_none() => {
                    keys = Some(map.next_value_seed(KeysSeed {
                        table: KeyTable::with_capacity(self.keys_hint),
                        stores: self.stores,
                        store_count: self.store_count,
                    })?);
                }
                _ => return Err(de::Error::custom("a field appears twice")),
            }
        }
        Ok(Incoming {
            revision: revision.ok_or_else(|| de::Error::missing_field("revision"))?,
            snapshot: snapshot.ok_or_else(|| de::Error::missing_field("snapshot"))?,
            keys: keys.unwrap_or_default(),
            removed: removed.unwrap_or_default(),
        })
    }
}

struct KeysSeed<'a> {
    table: KeyTable,
    stores: &'a HashMap<&'a str, StoreId>,
    store_count: usize,
}

impl<'de> DeserializeSeed<'de> for KeysSeed<'_> {
    type Value = KeyTable;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<KeyTable, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed<'_> {
    type Value = KeyTable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of keys")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<KeyTable, A::Error> {
        while let Some(k) = seq.next_element::<ApiKeyConfig>()? {
            self.table
                .insert_new(&k, self.stores, self.store_count)
                .map_err(|e| de::Error::custom(format!("the answer was refused: {e}")))?;
        }
        Ok(self.table)
    }
}
