//! [`EngineFeed`]: where the HTTP side hands accepted requests. A plain server
//! feeds one live run ([`LiveClient`]); a coordinator feeds its relay, which
//! carries each request across the timely clusters of successive memberships.

use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{EngineClosed, LiveClient, Submission};
use tokenflow_operators::SeqId;

/// The engine as the handlers see it: accepts requests and cancellations from
/// any thread; events come back through the server's event routes.
pub trait EngineFeed: Send + Sync + std::fmt::Debug {
    /// Accepts `request`; its events will reach the route opened for its id.
    fn submit(&self, request: Request) -> Result<(), EngineClosed>;
    /// Withdraws `seq` (its client went away or the drain deadline passed).
    fn cancel(&self, seq: SeqId) -> Result<(), EngineClosed>;
    /// Whether requests can be served now (beyond the workers having posted):
    /// a coordinator is ready once a cluster of nodes is formed.
    fn serving(&self) -> bool {
        true
    }
}

impl EngineFeed for LiveClient {
    fn submit(&self, request: Request) -> Result<(), EngineClosed> {
        LiveClient::submit(self, Submission::now(request))
    }

    fn cancel(&self, seq: SeqId) -> Result<(), EngineClosed> {
        LiveClient::cancel(self, seq)
    }
}
