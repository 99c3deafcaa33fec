//! Bearer-token authentication of callers, as a tower layer in front of every
//! service. Health and reflection stay open so probes and `grpcurl list` work
//! without a token. A refused call never reaches its handler.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use subtle::ConstantTimeEq;
use tonic::body::Body;
use tower::{Layer, Service};

/// Paths served without a token.
const OPEN_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

#[derive(Clone)]
pub struct BearerAuthLayer {
    expected: Arc<[u8]>,
}

impl BearerAuthLayer {
    pub fn new(token: &str) -> Self {
        Self {
            expected: format!("Bearer {token}").into_bytes().into(),
        }
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            expected: self.expected.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BearerAuth<S> {
    inner: S,
    expected: Arc<[u8]>,
}

impl<S> BearerAuth<S> {
    fn allows<B>(&self, request: &http::Request<B>) -> bool {
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
            return true;
        }
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .is_some_and(|value| bool::from(value.as_bytes().ct_eq(&self.expected)))
    }
}

impl<S, B> Service<http::Request<B>> for BearerAuth<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if self.allows(&request) {
            futures_util::future::Either::Left(self.inner.call(request))
        } else {
            tracing::info!(
                path = request.uri().path(),
                "refused: missing or wrong bearer token"
            );
            let status = tonic::Status::unauthenticated(
                "missing or invalid credentials: send `authorization: Bearer <MESH_AUTH_TOKEN>`",
            );
            futures_util::future::Either::Right(std::future::ready(Ok(status.into_http())))
        }
    }
}
