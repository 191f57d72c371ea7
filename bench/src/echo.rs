//! The bare echo baseline: the same tonic server stack as the daemon (a
//! multi-thread runtime, `Server::builder()` defaults, a Unix listener), with a
//! handler that only returns its input.

use std::path::Path;

use anyhow::Context;
use defenseclaw_proto::bench::EchoMessage;
use defenseclaw_proto::bench::echo_server::{Echo, EchoServer};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

/// Serves until the process is killed or receives SIGTERM/SIGINT.
pub fn serve(socket: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("echo-server")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(socket)
            .with_context(|| format!("binding {}", socket.display()))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
            .await
            .context("echo server")
    })?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}
