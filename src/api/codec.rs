//! The protobuf codec of the `mayfly.v1` services: tonic_prost's, except that a
//! request body that does not decode as its message is answered INVALID_ARGUMENT
//! (the client sent it) rather than INTERNAL. A response that does not decode,
//! on the client side, stays INTERNAL: the client did nothing wrong.
//!
//! The codec builds its `Status` itself, not in `error.rs`: tonic's `Decoder`
//! returns one, and the codec also serves the verifier library's clients, built
//! without the broker (feature `server`) that `error.rs` belongs to.
use prost::{Message, Name};
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

include!(concat!(env!("OUT_DIR"), "/mayfly_requests.rs"));

/// Encodes `T` and decodes `U` with prost (the generated code names it in
/// build.rs, `codec_path`).
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; a body that is not a valid `U` is refused by [`undecodable`].
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Name + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| undecodable::<U>(&e))
    }
}

/// The status for a body that is not a valid `U`: INVALID_ARGUMENT when `U` is a
/// request (a server decoding what a client sent), INTERNAL when it is a response
/// (a client decoding what the broker sent). prost's message names the field
/// path and the fault; it quotes none of the body.
pub fn undecodable<U: Name>(e: &prost::DecodeError) -> Status {
    let name = U::full_name();
    let why = e.to_string();
    let why = why
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&why);
    if REQUESTS.contains(&name.as_str()) {
        Status::invalid_argument(format!(
            "request body is not a valid {name} protobuf message: {why}"
        ))
    } else {
        Status::internal(format!(
            "response body is not a valid {name} protobuf message: {why}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pb;
    use tonic::Code;

    fn decode_error<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> prost::DecodeError {
        M::decode(bytes).expect_err("not a valid message")
    }

    #[test]
    fn a_request_that_does_not_decode_is_the_callers_fault() {
        let e = decode_error::<pb::StartTaskRequest>(&[0x1a, 0x02, 0xff, 0xfe]);
        let status = undecodable::<pb::StartTaskRequest>(&e);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "request body is not a valid mayfly.v1.StartTaskRequest protobuf message: \
             StartTaskRequest.objective: invalid string value: data is not UTF-8 encoded"
        );
    }

    #[test]
    fn a_response_that_does_not_decode_is_an_internal_error() {
        let e = decode_error::<pb::MintTokenResponse>(&[0x80]);
        let status = undecodable::<pb::MintTokenResponse>(&e);
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().starts_with(
                "response body is not a valid mayfly.v1.MintTokenResponse protobuf message: "
            ),
            "{}",
            status.message()
        );
    }

    #[test]
    fn the_requests_are_exactly_the_inputs_of_the_services() {
        let fds = <prost_types::FileDescriptorSet as Message>::decode(pb::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut inputs: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| &f.service)
            .flat_map(|s| &s.method)
            .map(|m| m.input_type().trim_start_matches('.').to_string())
            .collect();
        inputs.sort();
        inputs.dedup();
        assert_eq!(inputs, REQUESTS);
        assert!(REQUESTS.contains(&"mayfly.v1.WatchRevocationsRequest"));
        assert!(!REQUESTS.iter().any(|r| r.ends_with("Response")));
    }
}
