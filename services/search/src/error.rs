//! [`SearchError`], the one error type of the service, and its one mapping
//! to gRPC statuses. The api maps those to HTTP: the caller's mistakes
//! (`INVALID_ARGUMENT`, `DEADLINE_EXCEEDED`, `FAILED_PRECONDITION`) to 400,
//! everything else to 500.

use std::time::Duration;

use tonic::Status;

use crate::index::IndexError;
use crate::query::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    InvalidQuery(#[from] QueryError),
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("the query took longer than {0:?}")]
    Timeout(Duration),
    #[error("the guild has more than {0} messages; rebuild it instead")]
    TooManyDocs(usize),
    #[error("the api's message feed is unavailable: {0}")]
    FeedUnavailable(String),
    #[error("the search service is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Index(IndexError),
}

impl From<IndexError> for SearchError {
    fn from(err: IndexError) -> Self {
        match err {
            IndexError::Query(err) => Self::InvalidQuery(err),
            IndexError::TooManyDocs(max) => Self::TooManyDocs(max),
            other => Self::Index(other),
        }
    }
}

impl From<SearchError> for Status {
    fn from(err: SearchError) -> Self {
        let message = err.to_string();
        match err {
            SearchError::InvalidQuery(_) | SearchError::InvalidArgument(_) => {
                Self::invalid_argument(message)
            }
            SearchError::Timeout(_) => Self::deadline_exceeded(message),
            SearchError::TooManyDocs(_) => Self::failed_precondition(message),
            SearchError::FeedUnavailable(_) | SearchError::ShuttingDown => {
                Self::unavailable(message)
            }
            SearchError::Index(_) => {
                tracing::error!(error = %message, "search failed");
                Self::internal("index error")
            }
        }
    }
}
