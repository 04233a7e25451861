//! The seam between a domain service and its event stream: presence and
//! voice publish through an [`EventSink`], so their domain logic is tested
//! with a recorder in its place and runs on a [`Fanout`] in production.

use async_trait::async_trait;
use filament_proto::v1::Event;

use crate::Fanout;

/// Where a service's events go: the service's [`Fanout`] in production, a
/// recorder in tests.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(&self, event: Event);
}

#[async_trait]
impl EventSink for Fanout {
    async fn publish(&self, event: Event) {
        let report = Fanout::publish(self, event).await;
        if report.missed > 0 {
            tracing::debug!(
                service = self.service_name(),
                ?report,
                "event missed some gateways"
            );
        }
    }
}
