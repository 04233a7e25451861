//! The tonic adapter: accepts a gateway's stream, reads its `Hello` and
//! acknowledgements, and hands the outbound half to [`Fanout`].

use std::pin::Pin;
use std::time::Duration;

use filament_proto::v1::event_stream_server::{EventStream, EventStreamServer};
use filament_proto::v1::{
    GatewayMessage, ServiceMessage, Welcome, gateway_message, service_message,
};
use filament_registry::GatewayId;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Fanout;

/// How long a gateway has to say `Hello` after opening a stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The `filament.v1.EventStream` service of one domain service.
#[derive(Clone)]
pub struct EventStreamService {
    fanout: Fanout,
}

impl EventStreamService {
    pub(crate) fn new(fanout: Fanout) -> Self {
        Self { fanout }
    }

    pub fn into_server(self) -> EventStreamServer<Self> {
        EventStreamServer::new(self)
    }
}

type OutboundStream = Pin<Box<dyn Stream<Item = Result<ServiceMessage, Status>> + Send>>;

#[tonic::async_trait]
impl EventStream for EventStreamService {
    type OpenStream = OutboundStream;

    async fn open(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello"))??;
        let gateway = match first.and_then(|m| m.kind) {
            Some(gateway_message::Kind::Hello(hello)) => parse_gateway_id(&hello.gateway_id)?,
            _ => return Err(Status::invalid_argument("the first message must be hello")),
        };

        let (tx, rx) = mpsc::channel(self.fanout.config().stream_capacity.max(1));
        let Some((stream, missed)) = self.fanout.attach(gateway.clone(), tx) else {
            return Err(Status::unavailable("shutting down"));
        };
        let welcome = ServiceMessage {
            kind: Some(service_message::Kind::Welcome(Welcome {
                service: self.fanout.service_name().to_owned(),
                instance_id: self.fanout.instance_id().to_owned(),
                missed_events: missed,
                durable: self.fanout.is_durable(),
            })),
        };
        tracing::info!(%gateway, missed, "gateway stream opened");

        let fanout = self.fanout.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(GatewayMessage {
                        kind: Some(gateway_message::Kind::Ack(ack)),
                    })) => stream.acknowledge(ack.seq),
                    Ok(Some(_)) => {
                        tracing::warn!(%gateway, "unexpected message on event stream; closing it");
                        break;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%gateway, %status, "gateway stream ended with an error");
                        break;
                    }
                }
            }
            // No acknowledgement can come any more: whoever waits for one
            // stops waiting now.
            stream.close();
            fanout.detach(&gateway, stream.generation);
            tracing::info!(%gateway, "gateway stream closed");
        });

        // The welcome goes first, ahead of anything already queued.
        let welcome = futures_util::stream::once(async move { Ok(welcome) });
        let events = ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(futures_util::StreamExt::chain(
            welcome, events,
        ))))
    }
}

fn parse_gateway_id(raw: &str) -> Result<GatewayId, Status> {
    ulid::Ulid::from_string(raw)
        .map(|id| GatewayId::new(id.to_string()))
        .map_err(|_| Status::invalid_argument("gateway_id must be a ULID"))
}
