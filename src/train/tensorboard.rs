//! TensorBoard event files, so `tensorboard --logdir logs` shows the curves the users watch.
//!
//! An event file is a sequence of TFRecords, each `len (u64 LE) | masked CRC-32C of len |
//! payload | masked CRC-32C of payload`, whose payloads are `tensorflow.Event` protobuf messages.
//! We write only two kinds of event, so the few protobuf fields involved are encoded here by hand
//! rather than pulling in a protobuf toolchain:
//! - `Event { wall_time: double = 1, step: int64 = 2, file_version: string = 3, summary: Summary = 5 }`
//! - `Summary { value: repeated Value = 1 }`, `Value { tag: string = 1, simple_value: float = 2 }`
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use crc::{Crc, CRC_32_ISCSI};

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// TFRecord's checksum: CRC-32C, rotated and offset so that CRCs of CRCs stay well distributed.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = CRC32C.checksum(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends scalar summaries to one event file in a log directory.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it (one per run, as TensorBoard expects:
    /// it merges all files of a directory into one run).
    pub fn create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating the log directory {}", dir.display()))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cephalo".into());
        let stem = format!("events.out.tfevents.{}.{host}.{}", now.as_secs(), std::process::id());
        // A new file, never an earlier run's: two runs of one process (a resume from the same
        // program) can start within the same second.
        let mut n = 0;
        let (path, file) = loop {
            let path = dir.join(if n == 0 { stem.clone() } else { format!("{stem}.{n}") });
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        };
        let mut writer = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.write_record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `value` under `tag` (e.g. `train/loss`, `val/mre_mm`) at `step`.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        self.scalars(step, &[(tag, value)])
    }

    /// Records several values at one step in one event.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            put_float(&mut v, 2, *value as f32);
            put_bytes(&mut summary, 1, &v);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_varint_field(&mut event, 2, step);
        put_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    /// Pushes buffered events to the file (call once per epoch; TensorBoard reads what is there).
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }

    fn write_record(&mut self, payload: &[u8]) -> Result<()> {
        let len = (payload.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(payload.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        record.extend_from_slice(payload);
        record.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
        self.out
            .write_all(&record)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// Drops, from the event files already in `dir`, the events logged after `step`: a resumed run
/// logs those steps again, and TensorBoard would otherwise draw both. A record cut short by a
/// kill is dropped too. Files are rewritten atomically, and only when something goes.
pub fn drop_events_after(dir: &Path, step: u64) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_events = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("events.out.tfevents."));
        if !is_events || !path.is_file() {
            continue;
        }
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (kept, dropped) = records_up_to(&bytes, step);
        if dropped {
            crate::checkpoint::write_atomically(&path, |f| Ok(f.write_all(&kept)?))?;
        }
    }
    Ok(())
}

/// The complete, intact records of an event file whose step is at most `step` (events without a
/// step, like the file-version header, stay), and whether anything was left out.
fn records_up_to(bytes: &[u8], step: u64) -> (Vec<u8>, bool) {
    let (mut kept, mut at) = (Vec::with_capacity(bytes.len()), 0usize);
    while let Some(len_bytes) = bytes.get(at..at + 8) {
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let Some(record) = at.checked_add(16 + len).and_then(|end| bytes.get(at..end)) else {
            break;
        };
        let payload = &record[12..12 + len];
        let intact = record[8..12] == masked_crc32c(len_bytes).to_le_bytes()
            && record[12 + len..] == masked_crc32c(payload).to_le_bytes();
        if !intact {
            break;
        }
        if event_step(payload).is_none_or(|s| s <= step) {
            kept.extend_from_slice(record);
        }
        at += 16 + len;
    }
    let dropped = kept.len() != bytes.len();
    (kept, dropped)
}

/// The `step` field (2) of an `Event` message, if present and the message well-formed.
fn event_step(mut b: &[u8]) -> Option<u64> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
            if shift >= 64 {
                return None;
            }
        }
    }
    let mut step = None;
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let skip = match key & 7 {
            0 => {
                let v = varint(&mut b)?;
                if key >> 3 == 2 {
                    step = Some(v);
                }
                0
            }
            1 => 8,
            2 => varint(&mut b)? as usize,
            5 => 4,
            _ => return None,
        };
        b = b.get(skip..)?;
    }
    step
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// Protobuf wire format: key = field << 3 | wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}
fn put_double(out: &mut Vec<u8>, field: u64, v: f64) {
    put_varint(out, field << 3 | 1);
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_float(out: &mut Vec<u8>, field: u64, v: f32) {
    put_varint(out, field << 3 | 5);
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal reader for what we write: checks both CRCs of every record and decodes the
    /// scalar values, independently of the writer's encoding helpers.
    fn read_scalars(path: &Path) -> (String, Vec<(u64, String, f32)>) {
        let bytes = fs::read(path).unwrap();
        let mut at = 0;
        let mut version = String::new();
        let mut scalars = Vec::new();
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()),
                masked_crc32c(len_bytes)
            );
            let payload = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(payload));
            at += 16 + len;
            let mut step = 0;
            for (field, value) in fields(payload) {
                match (field, value) {
                    (2, Field::Varint(s)) => step = s,
                    (3, Field::Bytes(b)) => version = String::from_utf8(b.to_vec()).unwrap(),
                    (5, Field::Bytes(summary)) => {
                        for (_, v) in fields(summary) {
                            let Field::Bytes(v) = v else {
                                panic!("value is a message")
                            };
                            let (mut tag, mut val) = (String::new(), f32::NAN);
                            for (f, x) in fields(v) {
                                match (f, x) {
                                    (1, Field::Bytes(t)) => tag = String::from_utf8(t.to_vec()).unwrap(),
                                    (2, Field::Fixed32(b)) => val = f32::from_le_bytes(b),
                                    _ => panic!("unexpected field {f} in Value"),
                                }
                            }
                            scalars.push((step, tag, val));
                        }
                    }
                    _ => {}
                }
            }
        }
        (version, scalars)
    }

    enum Field<'a> {
        Varint(u64),
        Fixed64,
        Fixed32([u8; 4]),
        Bytes(&'a [u8]),
    }

    fn fields(mut b: &[u8]) -> Vec<(u64, Field<'_>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= ((byte & 0x7f) as u64) << shift;
                if byte < 0x80 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let field = match key & 7 {
                0 => Field::Varint(varint(&mut b)),
                1 => {
                    b = &b[8..];
                    Field::Fixed64
                }
                5 => {
                    let v = b[..4].try_into().unwrap();
                    b = &b[4..];
                    Field::Fixed32(v)
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    let (head, tail) = b.split_at(n);
                    b = tail;
                    Field::Bytes(head)
                }
                t => panic!("wire type {t}"),
            };
            out.push((key >> 3, field));
        }
        out
    }

    #[test]
    fn events_after_a_step_are_dropped_and_a_cut_record_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let mut w = EventWriter::create(dir.path()).unwrap();
            for step in 1..=6 {
                w.scalar("train/loss", step, step as f64).unwrap();
            }
            w.flush().unwrap();
            w.path().to_path_buf()
        };
        // A kill in the middle of a write leaves half a record at the end.
        let mut bytes = fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_within(whole - 20..whole - 3);
        fs::write(&path, &bytes).unwrap();
        drop_events_after(dir.path(), 4).unwrap();
        let (version, scalars) = read_scalars(&path);
        assert_eq!(version, "brain.Event:2");
        let steps: Vec<u64> = scalars.iter().map(|s| s.0).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        // Nothing to drop: the file stays as it is.
        let before = fs::read(&path).unwrap();
        drop_events_after(dir.path(), 10).unwrap();
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C of "123456789" is 0xE3069283 (the catalogue's check value).
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn scalars_round_trip_through_the_record_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("train/loss", 1, 0.5).unwrap();
        w.scalars(300, &[("val/mre_mm", 1.75), ("val/sdr_2mm", 81.25)]).unwrap();
        w.flush().unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let (version, scalars) = read_scalars(w.path());
        assert_eq!(version, "brain.Event:2");
        assert_eq!(
            scalars,
            vec![
                (1, "train/loss".to_string(), 0.5),
                (300, "val/mre_mm".to_string(), 1.75),
                (300, "val/sdr_2mm".to_string(), 81.25)
            ]
        );
    }
}
