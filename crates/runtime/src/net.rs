//! Listener settings every Filament server shares.
//!
//! Realtime traffic is many small writes (a websocket frame, a gRPC
//! response's headers, data and trailers). With Nagle's algorithm on, a
//! small write waits for the ACK of the previous one, and the peer's
//! delayed ACK turns that into tens of milliseconds per exchange. Every
//! accepted socket therefore gets `TCP_NODELAY`.

use axum::serve::{ListenerExt as _, TapIo};
use tokio::net::{TcpListener, TcpStream};

/// An axum listener whose accepted sockets have `TCP_NODELAY` set.
pub fn nodelay(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_nodelay)
}

/// A tonic incoming stream whose accepted sockets have `TCP_NODELAY` set.
pub fn grpc_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

fn set_nodelay(stream: &mut TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "cannot set TCP_NODELAY");
    }
}
