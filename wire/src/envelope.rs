//! How a message travels: plain JSON, or framed for a schema registry in the Confluent wire format
//! (byte 0 = 0x00, bytes 1-4 = the schema id, big-endian, then the JSON). JSON text never starts
//! with byte 0, so a reader tells the two apart by the first byte alone.

use crate::WireError;

const MAGIC: u8 = 0;
const HEADER_LEN: usize = 5;

/// A payload's framing, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope<'a> {
    Plain(&'a [u8]),
    Framed { schema_id: u32, json: &'a [u8] },
}

impl<'a> Envelope<'a> {
    pub fn open(payload: &'a [u8]) -> Result<Self, WireError> {
        match payload {
            [MAGIC, rest @ ..] => {
                if rest.len() < HEADER_LEN - 1 {
                    return Err(WireError::Envelope(format!("{} bytes: too short for the 5-byte schema registry header", payload.len())));
                }
                let schema_id = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
                Ok(Envelope::Framed { schema_id, json: &rest[4..] })
            }
            _ => Ok(Envelope::Plain(payload)),
        }
    }

    /// The JSON inside, whatever the framing.
    pub fn json(&self) -> &'a [u8] {
        match *self {
            Envelope::Plain(json) | Envelope::Framed { json, .. } => json,
        }
    }
}

/// `json` framed under `schema_id`.
pub fn frame(schema_id: u32, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + json.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_and_plain_are_told_apart_by_the_first_byte() {
        let framed = frame(0x0102_0304, b"{\"a\":1}");
        assert_eq!(&framed[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(Envelope::open(&framed).unwrap(), Envelope::Framed { schema_id: 0x0102_0304, json: b"{\"a\":1}" });
        assert_eq!(Envelope::open(b"{\"a\":1}").unwrap(), Envelope::Plain(b"{\"a\":1}"));
        assert_eq!(Envelope::open(&framed).unwrap().json(), b"{\"a\":1}");
        // An id with nothing after it is a framed empty document (refused later, as JSON).
        assert_eq!(Envelope::open(&[0, 0, 0, 0, 9]).unwrap(), Envelope::Framed { schema_id: 9, json: b"" });
        for short in [&[0u8][..], &[0, 1, 2, 3]] {
            assert!(Envelope::open(short).unwrap_err().to_string().contains("too short"));
        }
    }
}
