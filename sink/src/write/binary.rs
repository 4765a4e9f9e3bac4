//! PostgreSQL's binary COPY format: values travel as their wire bytes, so neither the sink nor the
//! server formats or parses text (the keypoints' 51 floats per detection were most of that work).
//! <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>

use chrono::{DateTime, Utc};

use crate::message::Row;
use crate::tables::{Table, Value};

/// OID of `real` (float4), the element type of the keypoints array.
const FLOAT4_OID: u32 = 700;
/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The COPY stream of `table`'s rows among `frames`, in the table's column order; `None` when
/// there is no row.
pub fn encode(table: &Table, frames: &[Row]) -> Option<Vec<u8>> {
    // A first guess at the size (a frame row is ~160 bytes, a pose detection ~500); it grows as needed.
    let mut c = CopyBinary::with_capacity(frames.len() * 256);
    for (row, i) in table.rows(frames) {
        c.row(table.columns.len() as i16);
        for col in table.columns {
            c.value(&(col.value)(row, i));
        }
    }
    c.finish()
}

/// One COPY ... (FORMAT binary) stream under construction.
pub struct CopyBinary {
    buf: Vec<u8>,
    rows: usize,
}

impl CopyBinary {
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes + 19 + 2);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        CopyBinary { buf, rows: 0 }
    }

    pub fn row(&mut self, fields: i16) {
        self.rows += 1;
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, len: usize) {
        self.buf.extend_from_slice(&(len as i32).to_be_bytes());
    }

    pub fn text(&mut self, s: &str) {
        self.field(s.len());
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub fn int4(&mut self, v: i32) {
        self.field(4);
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn int8(&mut self, v: i64) {
        self.field(8);
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn float4(&mut self, v: f32) {
        self.field(4);
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn timestamptz(&mut self, t: &DateTime<Utc>) {
        self.int8(t.timestamp_micros() - PG_EPOCH_MICROS);
    }

    pub fn uuid(&mut self, id: &uuid::Uuid) {
        self.field(16);
        self.buf.extend_from_slice(id.as_bytes());
    }

    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Text(s) => self.text(s),
            Value::Uuid(id) => self.uuid(id),
            Value::Int4(n) => self.int4(*n),
            Value::Int8(n) => self.int8(*n),
            Value::Float4(x) => self.float4(*x),
            Value::Timestamptz(t) => self.timestamptz(t),
            Value::Keypoints(Some(k)) => self.float4_rows(k),
            Value::Keypoints(None) | Value::Null => self.null(),
        }
    }

    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// A `real[n][3]` array; an empty list is the empty array.
    pub fn float4_rows(&mut self, rows: &[[f32; 3]]) {
        let dims: &[i32] = if rows.is_empty() { &[] } else { &[rows.len() as i32, 3] };
        self.field(12 + dims.len() * 8 + rows.len() * 3 * 8);
        self.buf.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(&0i32.to_be_bytes()); // no NULL elements
        self.buf.extend_from_slice(&FLOAT4_OID.to_be_bytes());
        for d in dims {
            self.buf.extend_from_slice(&d.to_be_bytes());
            self.buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        }
        for v in rows.iter().flatten() {
            self.buf.extend_from_slice(&4i32.to_be_bytes());
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// The stream with its trailer, or nothing when no row was added (no COPY needed).
    pub fn finish(mut self) -> Option<Vec<u8>> {
        if self.rows == 0 {
            return None;
        }
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        Some(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_layout() {
        let mut c = CopyBinary::with_capacity(0);
        assert!(CopyBinary::with_capacity(0).finish().is_none());
        c.row(4);
        c.text("ab");
        c.int4(-2);
        c.null();
        c.timestamptz(&DateTime::parse_from_rfc3339("2000-01-01T00:00:01.5Z").unwrap().into());
        let bytes = c.finish().unwrap();
        let mut want = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        want.extend_from_slice(&[0, 4, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff]);
        want.extend_from_slice(&[0, 0, 0, 8]);
        want.extend_from_slice(&1_500_000i64.to_be_bytes());
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn arrays_carry_their_dimensions() {
        let mut c = CopyBinary::with_capacity(0);
        c.float4_rows(&[[1.0, 2.0, 0.5], [3.0, 4.0, 1.0]]);
        let a = &c.buf[19..];
        let int = |at: usize| i32::from_be_bytes(a[at..at + 4].try_into().unwrap());
        assert_eq!(int(0) as usize, a.len() - 4, "field length");
        assert_eq!((int(4), int(8), int(12) as u32), (2, 0, FLOAT4_OID));
        assert_eq!((int(16), int(20), int(24), int(28)), (2, 1, 3, 1));
        assert_eq!((int(32), f32::from_be_bytes(a[36..40].try_into().unwrap())), (4, 1.0));
        assert_eq!(a.len(), 4 + 12 + 16 + 6 * 8);

        let mut e = CopyBinary::with_capacity(0);
        e.float4_rows(&[]);
        assert_eq!(&e.buf[19..], &[0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0xbc]);
    }
}
