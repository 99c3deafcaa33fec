//! Calls from one part of the mesh to another service: a lazily connected
//! channel with a deadline on every call, the mesh bearer token, a client
//! span (traced.rs), and its trace context, so the callee's spans join the
//! caller's trace.

mod traced;

use std::{sync::OnceLock, time::Duration};

use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::{
    ApiError,
    config::{ConfigError, Pem, invalid},
};

/// Sends the mesh bearer token and the current trace context with every call.
#[derive(Clone)]
pub struct MeshInterceptor {
    authorization: MetadataValue<Ascii>,
    timeout: Duration,
}

impl Interceptor for MeshInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = crate::telemetry::inject_trace_context(request)?;
        // Sent as `grpc-timeout`: the callee gives up when the caller has.
        request.set_timeout(self.timeout);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        Ok(request)
    }
}

/// What a generated client is built over: `FooClient::new(downstream.channel())`.
pub type MeshChannel = traced::Traced<InterceptedService<Channel, MeshInterceptor>>;

/// Whether a call failing with `code` means the callee did not answer
/// (down, slow, overloaded): worth retrying, unlike a refusal.
pub fn did_not_answer(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown
    )
}

/// One service this process calls.
pub struct Downstream {
    url: String,
    endpoint: Endpoint,
    interceptor: MeshInterceptor,
    /// Made on first use (a channel needs the runtime), then shared: it
    /// connects lazily and reconnects as needed, so the caller starts without
    /// the callee and survives its restarts.
    channel: OnceLock<Channel>,
}

impl Downstream {
    /// `url` comes from the variable `var` (named in errors). Every call gets
    /// `timeout` as its deadline, which is also sent as `grpc-timeout` so the
    /// callee stops working on an answer nobody waits for. An `https://` URL
    /// is called over TLS, trusting `tls_ca` (`MESH_TLS_CA_FILE`) only.
    pub fn new(
        var: &str,
        url: &str,
        auth_token: &str,
        tls_ca: Option<&Pem>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| invalid(var, url, &e.to_string()))?
            .connect_timeout(Duration::from_secs(3).min(timeout))
            .timeout(timeout)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let Some(ca) = tls_ca else {
                return Err(invalid(
                    var,
                    url,
                    "an https:// URL needs MESH_TLS_CA_FILE, the CA that signed the service's certificate",
                ));
            };
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.0));
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| invalid("MESH_TLS_CA_FILE", "(file)", &e.to_string()))?;
        }
        let authorization = format!("Bearer {auth_token}").parse().map_err(|_| {
            invalid(
                "MESH_AUTH_TOKEN",
                "(hidden)",
                "cannot be sent as a gRPC header",
            )
        })?;
        Ok(Self {
            url: url.to_owned(),
            endpoint,
            interceptor: MeshInterceptor {
                authorization,
                timeout,
            },
            channel: OnceLock::new(),
        })
    }

    /// The address, for logs.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The shared connection without the token (health checks need none).
    pub fn raw_channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }

    /// The shared connection, with the token, a client span and its trace
    /// context on every call.
    pub fn channel(&self) -> MeshChannel {
        traced::Traced::new(InterceptedService::new(
            self.raw_channel(),
            self.interceptor.clone(),
        ))
    }

    /// How this service answers when a call to `callee` (e.g. "the users
    /// service") failed with `status`: its NOT_FOUND as `not_found()`, a
    /// callee that did not answer (down, slow, overloaded) as UNAVAILABLE so
    /// the caller retries, anything else as INTERNAL (logged, not leaked).
    pub fn failure(
        &self,
        callee: &str,
        status: Status,
        not_found: impl FnOnce() -> String,
    ) -> ApiError {
        match status.code() {
            Code::NotFound => ApiError::NotFound(not_found()),
            code if did_not_answer(code) => {
                tracing::warn!(url = %self.url, %status, "{callee} did not answer");
                ApiError::Unavailable(format!("{callee} is unavailable; retry"))
            }
            _ => ApiError::internal(anyhow::anyhow!(
                "{callee} failed: {} {}",
                status.code(),
                status.message()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_bad_url_or_token_names_its_variable_and_hides_the_token() {
        let url = Downstream::new("GATEWAY_USERS_URL", "not a url", "t", None, SECOND)
            .err()
            .expect("a URL with spaces is refused");
        assert!(url.to_string().contains("GATEWAY_USERS_URL"), "{url}");

        let token = Downstream::new(
            "GATEWAY_USERS_URL",
            "http://127.0.0.1:1",
            "s3cret\n",
            None,
            SECOND,
        )
        .err()
        .expect("a token that is no header value is refused");
        let text = token.to_string();
        assert!(text.contains("MESH_AUTH_TOKEN"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn every_call_carries_the_token_and_the_deadline() {
        let downstream =
            Downstream::new("X_URL", "http://127.0.0.1:1", "dev-token", None, 3 * SECOND).unwrap();
        assert_eq!(downstream.url(), "http://127.0.0.1:1");
        let request = downstream
            .interceptor
            .clone()
            .call(tonic::Request::new(()))
            .unwrap();
        let metadata = request.metadata();
        assert_eq!(metadata.get("authorization").unwrap(), "Bearer dev-token");
        // tonic's encoding of the 3 s deadline, sent so the callee gives up too.
        assert_eq!(metadata.get("grpc-timeout").unwrap(), "3000000u");
    }
}
