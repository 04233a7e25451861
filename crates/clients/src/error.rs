//! The one error of every client here: the URL was not one, or the call
//! failed. Each names its service, so a caller's log line says which peer
//! failed without saying it again.

/// Why a client could not be made, or a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid {service} url: {source}")]
    InvalidUrl {
        service: &'static str,
        source: tonic::transport::Error,
    },
    #[error("{service} call failed: {status}")]
    Call {
        service: &'static str,
        status: tonic::Status,
    },
}

impl ClientError {
    /// The service's answer, when a call was made and refused or failed.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::InvalidUrl { .. } => None,
            Self::Call { status, .. } => Some(status),
        }
    }
}

/// A generated client's answer: its message, or a [`ClientError`] that
/// names `service`.
pub(crate) trait Answer<T> {
    fn answer(self, service: &'static str) -> Result<T, ClientError>;
}

impl<T> Answer<T> for Result<tonic::Response<T>, tonic::Status> {
    fn answer(self, service: &'static str) -> Result<T, ClientError> {
        self.map(tonic::Response::into_inner)
            .map_err(|status| ClientError::Call { service, status })
    }
}
