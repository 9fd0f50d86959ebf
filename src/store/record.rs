//! One stored entry (key, value and where it came from) in a single allocation behind an
//! 8-byte pointer.
//!
//! Layout: `[body_len][key_len << 1 | encoded][key][partition][offset][timestamp_ms][value]`,
//! every number a LEB128 varint (the three of the origin zigzag-encoded, so any `i32`/`i64`
//! fits). The map's slot holds only the pointer; the allocation knows its own length. An
//! `encoded` value (see [`Stored`]) starts with the dictionary generation it was compressed with
//! (0: compression was tried and did not pay, the bytes follow as they are), then the
//! decompressed length, then the zstd frame; a plain value costs no byte more than before.
//!
//! Why `unsafe`: a `Box<[u8]>` slot is 16 bytes (pointer and length) and the fixed header it
//! carried was 24, where this layout needs 8 and about 12 (1 + 1 + 1 + 3 + 6 for a million offsets
//! and a current timestamp): tens of bytes less per entry, measured in BENCHMARKS.md. The unsafe code is the blocks below,
//! all about turning the thin pointer back into the allocation it came from (a `Box<[u8]>`, or
//! a mimalloc block for small records: see `SMALL_RECORD`).

use std::alloc::{GlobalAlloc, Layout};
use std::fmt;
use std::ptr::NonNull;

use bytes::Bytes;

/// A lookup hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub value: Bytes,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// An owned, immutable record. Hash and equality are those of the key, so a map of records is
/// looked up by `&[u8]`.
pub struct Record(NonNull<u8>);

// SAFETY: a Record uniquely owns its heap buffer (a `Box<[u8]>` or a mimalloc block), like a
// `Box<[u8]>` does, and never mutates it after construction. Both allocators free a block from any
// thread. So moving a Record or sharing `&Record` across threads is as safe as for `Box<[u8]>`.
#[allow(unsafe_code)]
unsafe impl Send for Record {}
#[allow(unsafe_code)]
unsafe impl Sync for Record {}

/// The longest varint of a `u64`.
const MAX_VARINT: usize = 10;

/// A value as a record holds it. Compression lives in [`super::compression`]; a record only
/// keeps the bytes and says which they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored<'a> {
    /// Stored as received, compression not tried (no dictionary yet, off, or too short).
    Plain(&'a [u8]),
    /// Compression with a dictionary was tried and did not pay: stored as received, and not
    /// tried again.
    Incompressible(&'a [u8]),
    /// A zstd frame compressed with the table's dictionary `generation` (1 and up), `raw_len`
    /// bytes once decompressed.
    Compressed {
        generation: u32,
        raw_len: usize,
        frame: &'a [u8],
    },
}

impl Stored<'_> {
    /// The value's length as received.
    pub fn raw_len(&self) -> usize {
        match *self {
            Stored::Plain(bytes) | Stored::Incompressible(bytes) => bytes.len(),
            Stored::Compressed { raw_len, .. } => raw_len,
        }
    }

    /// The bytes the value takes in the record, its encoding's header included.
    fn stored_len(&self) -> usize {
        match *self {
            Stored::Plain(bytes) => bytes.len(),
            Stored::Incompressible(bytes) => 1 + bytes.len(),
            Stored::Compressed {
                generation,
                raw_len,
                frame,
            } => varint_len(u64::from(generation)) + varint_len(raw_len as u64) + frame.len(),
        }
    }
}

impl Record {
    /// A record of a value stored as received.
    #[cfg(test)]
    pub fn new(key: &[u8], value: &[u8], partition: i32, offset: i64, timestamp_ms: i64) -> Record {
        Record::with_value(
            key,
            Stored::Plain(value),
            Origin {
                partition,
                offset,
                timestamp_ms,
            },
        )
    }

    pub fn with_value(key: &[u8], value: Stored<'_>, origin: Origin) -> Record {
        let mut meta = [0u8; 3 * MAX_VARINT];
        let mut meta_len = 0;
        for n in [i64::from(origin.partition), origin.offset, origin.timestamp_ms] {
            meta_len += write_varint(zigzag(n), &mut meta[meta_len..]);
        }
        let encoded = !matches!(value, Stored::Plain(_));
        let key_field = (key.len() as u64) << 1 | u64::from(encoded);
        let body_len = (varint_len(key_field) + key.len() + meta_len + value.stored_len()) as u64;
        let mut bytes = Vec::with_capacity(varint_len(body_len) + body_len as usize);
        push_varint(&mut bytes, body_len);
        push_varint(&mut bytes, key_field);
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&meta[..meta_len]);
        match value {
            Stored::Plain(raw) => bytes.extend_from_slice(raw),
            Stored::Incompressible(raw) => {
                push_varint(&mut bytes, 0);
                bytes.extend_from_slice(raw);
            }
            Stored::Compressed {
                generation,
                raw_len,
                frame,
            } => {
                push_varint(&mut bytes, u64::from(generation));
                push_varint(&mut bytes, raw_len as u64);
                bytes.extend_from_slice(frame);
            }
        }
        debug_assert_eq!(bytes.len(), bytes.capacity());
        Record(allocate(bytes))
    }

    /// The whole allocation, length prefix included.
    fn bytes(&self) -> &[u8] {
        let start = self.0.as_ptr();
        let mut body_len = 0u64;
        let mut prefix_len = 0;
        loop {
            // SAFETY: the allocation starts with a complete varint written by `new`, so every
            // byte up to and including the first without the continuation bit is in bounds.
            #[allow(unsafe_code)]
            let byte = unsafe { *start.add(prefix_len) };
            body_len |= u64::from(byte & 0x7f) << (7 * prefix_len);
            prefix_len += 1;
            if byte & 0x80 == 0 {
                break;
            }
            debug_assert!(prefix_len < MAX_VARINT, "record length prefix is corrupt");
        }
        // SAFETY: `new` allocated exactly `prefix_len + body_len` initialized bytes at `start`,
        // and they live, unchanged, as long as `self`.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(start, prefix_len + body_len as usize)
        }
    }

    /// The bytes after the length prefix: `[key field][key][meta][value]`, with the key's bounds
    /// and whether the value is encoded.
    fn body(&self) -> (&[u8], std::ops::Range<usize>, bool) {
        let mut bytes = self.bytes();
        read_varint(&mut bytes);
        let body = bytes;
        let key_field = read_varint(&mut bytes);
        let key_len = (key_field >> 1) as usize;
        let key_start = body.len() - bytes.len();
        (body, key_start..key_start + key_len, key_field & 1 == 1)
    }

    pub fn key(&self) -> &[u8] {
        let (body, key, _) = self.body();
        &body[key]
    }

    /// Key plus value bytes as received (what a table's `data_bytes` counts) and as stored
    /// (compressed, with the encoding's header), from one read of the header.
    pub fn lens(&self) -> (i64, i64) {
        let (key, value, _) = self.parts();
        (
            (key.len() + value.raw_len()) as i64,
            (key.len() + value.stored_len()) as i64,
        )
    }

    pub fn data_len(&self) -> i64 {
        self.lens().0
    }

    pub fn stored_len(&self) -> i64 {
        self.lens().1
    }

    /// Where the record came from.
    pub fn origin(&self) -> Origin {
        self.parts().2
    }

    /// The value as stored, and where the record came from.
    pub fn value_and_origin(&self) -> (Stored<'_>, Origin) {
        let (_, value, origin) = self.parts();
        (value, origin)
    }

    /// Key, value and origin, read past the header's varints.
    fn parts(&self) -> (&[u8], Stored<'_>, Origin) {
        let (body, key, encoded) = self.body();
        let mut rest = &body[key.end..];
        let origin = Origin {
            partition: unzigzag(read_varint(&mut rest)) as i32,
            offset: unzigzag(read_varint(&mut rest)),
            timestamp_ms: unzigzag(read_varint(&mut rest)),
        };
        let value = if !encoded {
            Stored::Plain(rest)
        } else {
            match read_varint(&mut rest) {
                0 => Stored::Incompressible(rest),
                generation => {
                    let raw_len = read_varint(&mut rest) as usize;
                    Stored::Compressed {
                        generation: generation as u32,
                        raw_len,
                        frame: rest,
                    }
                }
            }
        };
        (&body[key], value, origin)
    }
}

/// Where a stored value came from: its Kafka partition, offset and timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
}

impl Origin {
    pub fn with_value(self, value: Bytes) -> Found {
        Found {
            value,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        free(self.0, self.bytes().len());
    }
}

/// Records of up to this many bytes come from mimalloc, the rest from the global allocator
/// (glibc). glibc puts an 8-byte header before each allocation and rounds to 16 bytes, so a
/// 64-byte record takes 80; mimalloc has no header and, up to 128 bytes, size classes 8-16 bytes
/// apart, so it takes 64. Above 128 its classes are 32 bytes or more apart and glibc wastes less (a
/// 229-byte record: 256 in mimalloc, 240 in glibc). The per-entry figures of each choice are in
/// BENCHMARKS.md.
const SMALL_RECORD: usize = 128;

#[cfg(not(miri))]
static SMALL_RECORDS: mimalloc::MiMalloc = mimalloc::MiMalloc;
// Miri cannot run mimalloc's C code; the system allocator takes the same calls.
#[cfg(miri)]
static SMALL_RECORDS: std::alloc::System = std::alloc::System;

/// Makes mimalloc give a page back to the OS as soon as its last block is freed. With its
/// default 10 ms purge delay, the pages of records freed after loading (replaced when values are
/// recompressed with a trained dictionary, or shrunk by `--project`) stayed resident: measured
/// with `cargo bench --bench projection`, a projected table with `--compression auto` took 269
/// bytes per entry of RSS instead of 153. Done once, before the first small record.
#[cfg(not(miri))]
fn purge_freed_pages_at_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // mimalloc v2 (the version libmimalloc-sys builds by default): `mi_option_purge_delay`
        // is 15 in `mi_option_e`, which the binding crate does not name.
        const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
        #[allow(unsafe_code)]
        unsafe extern "C" {
            fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
        }
        // SAFETY: mi_option_set stores an option value in mimalloc's option table; it has no
        // preconditions and touches no allocation.
        #[allow(unsafe_code)]
        unsafe {
            mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    });
}

#[cfg(miri)]
fn purge_freed_pages_at_once() {}

/// Moves a record's bytes into their long-lived allocation.
fn allocate(bytes: Vec<u8>) -> NonNull<u8> {
    if bytes.len() > SMALL_RECORD {
        // `new` reserved the exact capacity, so this does not reallocate.
        let boxed = Box::into_raw(bytes.into_boxed_slice());
        return NonNull::new(boxed.cast::<u8>()).expect("Box pointers are non-null");
    }
    purge_freed_pages_at_once();
    let layout = small_layout(bytes.len());
    // SAFETY: the layout's size is non-zero: every record holds at least its length prefix.
    #[allow(unsafe_code)]
    let ptr = unsafe { SMALL_RECORDS.alloc(layout) };
    let Some(ptr) = NonNull::new(ptr) else {
        std::alloc::handle_alloc_error(layout)
    };
    // SAFETY: `ptr` is a fresh allocation of `bytes.len()` bytes, so it is valid for the write
    // and cannot overlap `bytes`.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len());
    }
    ptr
}

/// Frees what `allocate` returned for `len` bytes; `len` picks the allocator again.
fn free(ptr: NonNull<u8>, len: usize) {
    if len > SMALL_RECORD {
        let slice = std::ptr::slice_from_raw_parts_mut(ptr.as_ptr(), len);
        // SAFETY: pointer and length are those of the `Box<[u8]>` leaked in `allocate`, and the
        // record owning them is being dropped, so the box is rebuilt and freed exactly once.
        #[allow(unsafe_code)]
        drop(unsafe { Box::from_raw(slice) });
    } else {
        // SAFETY: `allocate` got this pointer from `SMALL_RECORDS` with this same layout, and the
        // record owning it is being dropped, so it is freed exactly once.
        #[allow(unsafe_code)]
        unsafe {
            SMALL_RECORDS.dealloc(ptr.as_ptr(), small_layout(len));
        }
    }
}

fn small_layout(len: usize) -> Layout {
    Layout::from_size_align(len, 1).expect("a record of at most 128 bytes has a valid layout")
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (key, value, origin) = self.parts();
        f.debug_struct("Record")
            .field("key", &String::from_utf8_lossy(key))
            .field("value_len", &value.raw_len())
            .field("partition", &origin.partition)
            .field("offset", &origin.offset)
            .finish()
    }
}

impl std::hash::Hash for Record {
    // Must hash exactly as `[u8]` does, for lookups by borrowed key.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Record {}

impl std::borrow::Borrow<[u8]> for Record {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

fn write_varint(mut n: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    while n >= 0x80 {
        out[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    out[i] = n as u8;
    i + 1
}

fn push_varint(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; MAX_VARINT];
    let len = write_varint(n, &mut buf);
    out.extend_from_slice(&buf[..len]);
}

/// Reads a varint written by `new`, advancing `bytes` past it.
fn read_varint(bytes: &mut &[u8]) -> u64 {
    let mut n = 0u64;
    for (i, &byte) in bytes.iter().enumerate() {
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return n;
        }
    }
    unreachable!("records hold only complete varints")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Record {
        /// The hit for a record of a plain value.
        fn found(&self) -> Found {
            let (Stored::Plain(value), origin) = self.value_and_origin() else {
                panic!("not a plain value: {self:?}");
            };
            origin.with_value(Bytes::copy_from_slice(value))
        }
    }

    fn origin() -> Origin {
        Origin {
            partition: 3,
            offset: 77,
            timestamp_ms: 1_763_900_000_000,
        }
    }

    #[test]
    fn encoded_values_keep_their_generation_and_lengths() {
        let frame = [9u8; 40];
        let compressed = Stored::Compressed {
            generation: 300,
            raw_len: 1000,
            frame: &frame,
        };
        let record = Record::with_value(b"key", compressed, origin());
        assert_eq!(record.key(), b"key");
        assert_eq!(record.value_and_origin(), (compressed, origin()));
        assert_eq!(record.data_len(), 3 + 1000);
        // Generation 300 and length 1000 take two bytes each.
        assert_eq!(record.stored_len(), 3 + 2 + 2 + 40);

        let kept = Stored::Incompressible(b"random bytes");
        let record = Record::with_value(b"key", kept, origin());
        assert_eq!(record.value_and_origin(), (kept, origin()));
        assert_eq!(record.data_len(), 3 + 12);
        assert_eq!(record.stored_len(), 3 + 1 + 12);
    }

    #[test]
    fn round_trips_typical_record() {
        let record = Record::new(
            b"{\"id\":1}",
            b"{\"name\":\"a\"}",
            2,
            1_000_000,
            1_763_900_000_000,
        );
        assert_eq!(record.key(), b"{\"id\":1}");
        assert_eq!(
            record.found(),
            Found {
                value: Bytes::from_static(b"{\"name\":\"a\"}"),
                partition: 2,
                offset: 1_000_000,
                timestamp_ms: 1_763_900_000_000,
            }
        );
        assert_eq!(record.data_len(), 20);
        // 1 length + 1 key length + 1 partition + 3 offset + 6 timestamp bytes of header.
        assert_eq!(record.bytes().len(), 20 + 12);
    }

    #[test]
    fn empty_key_and_value_and_missing_timestamp() {
        let record = Record::new(b"", b"", 0, 0, -1);
        assert_eq!(record.key(), b"");
        let found = record.found();
        assert!(found.value.is_empty());
        assert_eq!((found.partition, found.offset, found.timestamp_ms), (0, 0, -1));
        assert_eq!(record.data_len(), 0);
    }

    #[test]
    fn long_values_take_multi_byte_lengths() {
        let value = vec![7u8; 100_000];
        let key = vec![1u8; 300];
        let record = Record::new(&key, &value, i32::MAX, i64::MAX, i64::MIN);
        assert_eq!(record.key(), key.as_slice());
        let found = record.found();
        assert_eq!(found.value.as_ref(), value.as_slice());
        assert_eq!(
            (found.partition, found.offset, found.timestamp_ms),
            (i32::MAX, i64::MAX, i64::MIN)
        );
    }

    #[test]
    fn records_either_side_of_the_small_size_round_trip() {
        // Six header bytes with a one-byte key, one more once the body length needs two bytes.
        let mut sizes = Vec::new();
        for value_len in SMALL_RECORD - 8..SMALL_RECORD - 4 {
            let value = vec![b'v'; value_len];
            let record = Record::new(b"k", &value, 0, 0, 0);
            assert_eq!(record.found().value.as_ref(), value.as_slice());
            sizes.push(record.bytes().len());
        }
        assert_eq!(
            sizes,
            [SMALL_RECORD - 2, SMALL_RECORD - 1, SMALL_RECORD, SMALL_RECORD + 2]
        );
    }

    #[test]
    fn hashes_and_compares_as_its_key() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let a = Record::new(b"k", b"one", 0, 1, 2);
        let b = Record::new(b"k", b"two", 1, 5, 6);
        assert_eq!(a, b);
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(b"k".as_slice()));
        assert_ne!(a, Record::new(b"j", b"one", 0, 1, 2));
    }

    #[test]
    fn varint_lengths_match_writes() {
        for n in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = [0u8; MAX_VARINT];
            assert_eq!(write_varint(n, &mut buf), varint_len(n), "{n}");
            let mut slice = &buf[..];
            assert_eq!(read_varint(&mut slice), n);
        }
    }

    proptest! {
        #[test]
        fn any_record_round_trips(
            key in proptest::collection::vec(any::<u8>(), 0..300),
            value in proptest::collection::vec(any::<u8>(), 0..3000),
            partition: i32,
            offset: i64,
            timestamp_ms: i64,
        ) {
            let record = Record::new(&key, &value, partition, offset, timestamp_ms);
            prop_assert_eq!(record.key(), key.as_slice());
            prop_assert_eq!(record.data_len(), (key.len() + value.len()) as i64);
            let found = record.found();
            prop_assert_eq!(found.value.as_ref(), value.as_slice());
            prop_assert_eq!((found.partition, found.offset, found.timestamp_ms), (partition, offset, timestamp_ms));
        }

        #[test]
        fn any_encoded_record_round_trips(
            key in proptest::collection::vec(any::<u8>(), 0..300),
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            generation in 0u32..100_000,
            raw_len in 0usize..1 << 40,
        ) {
            let value = if generation == 0 {
                Stored::Incompressible(&bytes)
            } else {
                Stored::Compressed { generation, raw_len, frame: &bytes }
            };
            let record = Record::with_value(&key, value, origin());
            prop_assert_eq!(record.key(), key.as_slice());
            prop_assert_eq!(record.value_and_origin(), (value, origin()));
            prop_assert_eq!(record.data_len(), (key.len() + value.raw_len()) as i64);
        }
    }
}
