//! The protobuf codec of the cache service: prost, with per-call buffers sized for the small
//! messages a key-value lookup exchanges.
//!
//! tonic's default codec starts every call with an 8 KiB buffer each way. A Get request or
//! response is a few hundred bytes, and those two 8 KiB allocations per call showed in server
//! profiles (malloc, free, consolidation). Here buffers start at 1 KiB, and the encoder reserves
//! the message's exact encoded length first, so a large MultiGet response grows its buffer once
//! instead of by repeated doubling.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstCodec;

const BUFFER_BYTES: usize = 1024;
/// tonic's default: how much a streaming response may buffer before it yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// Named in `build.rs` as the codec of the generated client and server.
#[derive(Debug, Clone)]
pub struct CacheCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CacheCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for CacheCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = CacheEncoder<T>;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        CacheEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}

#[derive(Debug, Clone)]
pub struct CacheEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for CacheEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
