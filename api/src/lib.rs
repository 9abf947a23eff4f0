//! The `zael.limiter.v1` API of zael-server (`proto/zael/limiter/v1/limiter.proto`):
//! messages, the tonic client ([`limiter_client::LimiterClient`]) and server trait.

tonic::include_proto!("zael.limiter.v1");

/// The encoded `FileDescriptorSet` of the API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/limiter_descriptor.bin"));

/// Fully-qualified name of the service.
pub const SERVICE_NAME: &str = "zael.limiter.v1.Limiter";

/// The type URL of [`RateLimitExceeded`] in a `google.rpc.Status`'s details.
pub const RATE_LIMIT_EXCEEDED_TYPE_URL: &str = "type.googleapis.com/zael.limiter.v1.RateLimitExceeded";
