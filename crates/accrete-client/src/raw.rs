//! The generated gRPC stubs with accrete's message limits: for tests of the wire contract
//! itself and for benchmarks that measure the transport. Roles use [`crate::Client`].
use accrete_proto::v1::cluster_client::ClusterClient;
use accrete_proto::v1::models_client::ModelsClient;
use accrete_proto::v1::parameters_client::ParametersClient;
use tonic::transport::Channel;

#[derive(Debug, Clone)]
pub struct RawClient {
    pub models: ModelsClient<Channel>,
    pub params: ParametersClient<Channel>,
    pub cluster: ClusterClient<Channel>,
}

impl RawClient {
    pub async fn connect(url: &str) -> crate::Result<RawClient> {
        Ok(RawClient::from_channel(crate::channel(url).await?))
    }

    pub fn from_channel(channel: Channel) -> RawClient {
        RawClient {
            models: ModelsClient::new(channel.clone())
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
            params: ParametersClient::new(channel.clone())
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
            cluster: ClusterClient::new(channel)
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
        }
    }
}
