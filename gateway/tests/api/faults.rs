//! A gRPC pass-through in front of a service that answers chosen methods
//! with a chosen error instead, a set number of times: the failures a
//! running service gives only by bad luck (a conversation closed between two
//! calls, a user made by another delivery in between), made to order.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{extract::Request, response::Response};
use tonic::{
    Code, Status,
    service::Routes,
    transport::{Channel, Server, server::TcpIncoming},
};
use tower::{Service, ServiceExt};

/// The errors still to give, shared by every pass-through of one test.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<Fault>>>);

struct Fault {
    method: &'static str,
    code: Code,
    times: usize,
}

impl Faults {
    /// The next `times` calls of `method` (e.g. "RecordInboundMessage")
    /// answer `code` without reaching the service.
    pub fn inject(&self, method: &'static str, code: Code, times: usize) {
        self.0.lock().unwrap().push(Fault {
            method,
            code,
            times,
        });
    }

    /// The error this call of `path` gives, if one is due.
    fn take(&self, path: &str) -> Option<Code> {
        let method = path.rsplit('/').next()?;
        let mut faults = self.0.lock().unwrap();
        let fault = faults
            .iter_mut()
            .find(|f| f.method == method && f.times > 0)?;
        fault.times -= 1;
        Some(fault.code)
    }
}

/// Starts a pass-through to `upstream`; returns its address.
pub async fn start(upstream: SocketAddr, faults: Faults) -> SocketAddr {
    let channel = Channel::from_shared(format!("http://{upstream}"))
        .unwrap()
        .connect_lazy();
    let pass = move |request: Request| {
        let (mut channel, faults) = (channel.clone(), faults.clone());
        async move {
            let response: Response = if let Some(code) = faults.take(request.uri().path()) {
                Status::new(code, "injected by the test").into_http()
            } else {
                let forwarded = async {
                    channel.ready().await?;
                    channel.call(request.map(tonic::body::Body::new)).await
                };
                match forwarded.await {
                    Ok(response) => response.map(axum::body::Body::new),
                    Err(error) => Status::unavailable(error.to_string()).into_http(),
                }
            };
            response
        }
    };
    let router = axum::Router::new().fallback(pass);
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_routes(Routes::from(router))
            .serve_with_incoming(incoming),
    );
    addr
}
