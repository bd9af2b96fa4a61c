//! The raw-streaming sink that the push benchmark compares with: a gRPC service that
//! acknowledges pushes without applying them.
use accrete_proto::bench::sink_server::{Sink, SinkServer};
use accrete_proto::v1 as pb;
use anyhow::Result;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};

struct SinkSvc;

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::PushAck, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Sink for SinkSvc {
    type DrainStream = AckStream;
    async fn drain(
        &self,
        req: tonic::Request<tonic::Streaming<pb::PushRequest>>,
    ) -> Result<tonic::Response<AckStream>, tonic::Status> {
        let mut n = 0u64;
        let acks = req.into_inner().map(move |m| {
            m.map(|_| {
                n += 1;
                pb::PushAck { lineage_epoch: 1, head_version: 1, updates: n }
            })
        });
        Ok(tonic::Response::new(Box::pin(acks)))
    }
}

pub(crate) async fn serve_sink(listen: SocketAddr) -> Result<()> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(SinkServer::new(SinkSvc).max_decoding_message_size(256 << 20))
        .serve_with_shutdown(listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
