//! The gRPC codec of the Check service: prost, with buffers sized for
//! ext_authz messages. tonic's default allocates an 8 KiB buffer for every
//! request and every answer; a Check is one to two KiB in and well under one
//! out, and the buffers grow when a message is larger.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Room for a typical CheckRequest from Envoy (headers plus an ~1 KiB token).
const DECODE_BUFFER: usize = 2048;
/// An OK answer: the minted token plus a little metadata.
const ENCODE_BUFFER: usize = 1024;
/// tonic's default: when to yield while encoding a stream (Check is unary).
const YIELD_THRESHOLD: usize = 32 * 1024;

pub(crate) struct CheckCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CheckCodec<T, U> {
    fn default() -> Self {
        CheckCodec(PhantomData)
    }
}

impl<T, U> Codec for CheckCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> ProstDecoder<U> {
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }
}
