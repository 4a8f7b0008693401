//! Connections that outlive their request: a WebSocket tunnel once both sides switched
//! protocols, and the cut that ends a tunnel or a streamed response to a killed route's
//! non-stable backend after `kill_grace`, so a kill really ends all traffic there.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::watch;

/// Resolves `grace` after the route's next kill (a bump of its `kill_signal`); never, if it
/// is not killed.
pub fn cut_on_kill(
    kill_signal: &watch::Sender<u64>,
    grace: Duration,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut kills = kill_signal.subscribe();
    async move {
        if kills.changed().await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// Relays bytes both ways once client and backend have both switched protocols, until
/// either side closes or `cut` resolves.
pub async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    cut: Option<impl std::future::Future<Output = ()>>,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    let relay = tokio::io::copy_bidirectional(&mut client, &mut backend);
    let cut = async {
        match cut {
            Some(cut) => cut.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = relay => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "tunnel closed with an error");
            }
        }
        () = cut => tracing::info!("closing a tunnel to a killed route's backend after kill_grace"),
    }
}
