//! The ECU link: gRPC over mutually authenticated TLS. A peer whose
//! certificate is not the one configured (another CA, or another leaf of the
//! same CA when a leaf is pinned), or that has none, is refused in the
//! handshake and no call reaches the service. OpenSSL's `s_client` is the
//! independent peer.

use rota_ecu::proto::ecu_server::Ecu;
use rota_ecu::proto::{EcuStatus, PrepareRequest, State, StatusRequest, TransactionRef};
use rota_ecu::server::Peer;
use rota_ecu::tls::{self, TlsConfig};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::pki_file;
use tonic::{Request, Response, Status};

/// A secondary that answers GetStatus and counts every call it sees.
#[derive(Clone, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<String>>>,
}

impl Counting {
    fn seen<T>(&self, r: &Request<T>) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let peer = r.extensions().get::<Peer>().map(|p| p.subject.clone()).unwrap_or_default();
        self.peers.lock().unwrap().push(peer);
    }
}

#[tonic::async_trait]
impl Ecu for Counting {
    async fn get_status(&self, r: Request<StatusRequest>) -> Result<Response<EcuStatus>, Status> {
        self.seen(&r);
        Ok(Response::new(EcuStatus { ecu_id: "display".into(), state: State::Idle.into(), ..Default::default() }))
    }
    async fn prepare(&self, r: Request<PrepareRequest>) -> Result<Response<EcuStatus>, Status> {
        self.seen(&r);
        Err(Status::unimplemented("test"))
    }
    async fn switch(&self, r: Request<TransactionRef>) -> Result<Response<EcuStatus>, Status> {
        self.seen(&r);
        Err(Status::unimplemented("test"))
    }
    async fn commit(&self, r: Request<TransactionRef>) -> Result<Response<EcuStatus>, Status> {
        self.seen(&r);
        Err(Status::unimplemented("test"))
    }
    async fn revert(&self, r: Request<TransactionRef>) -> Result<Response<EcuStatus>, Status> {
        self.seen(&r);
        Err(Status::unimplemented("test"))
    }
}

fn identity(name: &str, peer: &str) -> TlsConfig {
    TlsConfig { cert: pki_file(&format!("{name}.pem")), key: pki_file(&format!("{name}.key")), peer: pki_file(peer) }
}

/// A served secondary: its address, the service and the refusals it logged.
struct Served {
    addr: SocketAddr,
    service: Counting,
    refused: Arc<Mutex<Vec<String>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(config: &TlsConfig) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Counting::default();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let log = refused.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let acceptor = tls::acceptor(config).unwrap();
    let svc = service.clone();
    tokio::spawn(async move {
        rota_ecu::server::serve(
            listener,
            acceptor,
            svc,
            move |_, reason| log.lock().unwrap().push(reason.to_string()),
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap()
    });
    Served { addr, service, refused, _stop: stop }
}

async fn status_of(addr: SocketAddr, config: &TlsConfig) -> Result<String, String> {
    let connector = tls::connector(config).map_err(|e| e.to_string())?;
    let mut client =
        rota_ecu::client::connect(&addr.to_string(), connector, Duration::from_secs(10), Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
    let s = client.get_status(StatusRequest {}).await.map_err(|e| e.to_string())?;
    Ok(s.into_inner().ecu_id)
}

/// Waits until the server logged `n` refusals.
async fn refusals(s: &Served, n: usize) -> Vec<String> {
    for _ in 0..200 {
        if s.refused.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    s.refused.lock().unwrap().clone()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn only_the_pinned_peer_gets_through() {
    rt().block_on(async {
        // The secondary pins the main's certificate.
        let s = serve(&identity("ecu-display", "ecu-main.pem")).await;
        assert_eq!(status_of(s.addr, &identity("ecu-main", "ecu-display.pem")).await.unwrap(), "display");
        assert_eq!(s.service.calls.load(Ordering::SeqCst), 1);
        assert!(s.service.peers.lock().unwrap()[0].contains("CN=rota ECU main"), "{:?}", s.service.peers);

        // Same subject from another CA; another leaf of the right CA: both
        // refused in the handshake, on both sides' word.
        for (who, why) in [
            ("ecu-rogue", "unable to get local issuer certificate"),
            ("ecu-pay", "unable to get local issuer certificate"),
        ] {
            let e = status_of(s.addr, &identity(who, "ecu-display.pem")).await.unwrap_err();
            let prefix = format!("Connecting to ECU at {0} failed: {0} refused this ECU's certificate:", s.addr);
            assert!(e.starts_with(&prefix), "{who}: {e}");
            let refused = refusals(&s, 1).await;
            assert!(refused.iter().any(|r| r.contains(why)), "{who}: {refused:?}");
            s.refused.lock().unwrap().clear();
        }
        assert_eq!(s.service.calls.load(Ordering::SeqCst), 1, "no call from a refused peer");

        // The main refuses a secondary that is not the one it pinned.
        let e = status_of(s.addr, &identity("ecu-main", "ecu-pay.pem")).await.unwrap_err();
        assert!(e.contains("certificate verify failed"), "{e}");
        assert_eq!(s.service.calls.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_ca_admits_every_ecu_it_signed() {
    rt().block_on(async {
        let s = serve(&identity("ecu-display", "root.pem")).await;
        for who in ["ecu-main", "ecu-pay", "ecu-spare"] {
            assert_eq!(status_of(s.addr, &identity(who, "root.pem")).await.unwrap(), "display", "{who}");
        }
        assert!(status_of(s.addr, &identity("ecu-rogue", "root.pem")).await.is_err());
        assert_eq!(s.service.calls.load(Ordering::SeqCst), 3);
    });
}

/// `openssl s_client` against the server (for at most 10 s): what it printed.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &addr.to_string(), "-alpn", "h2", "-verify_return_error"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn openssl_s_client_sees_mutual_tls_with_h2() {
    let rt = rt();
    let s = rt.block_on(serve(&identity("ecu-display", "ecu-main.pem")));
    let ca = pki_file("root.pem");
    let (cert, key) = (pki_file("ecu-main.pem"), pki_file("ecu-main.key"));
    let ok = s_client(
        s.addr,
        &["-CAfile", ca.to_str().unwrap(), "-cert", cert.to_str().unwrap(), "-key", key.to_str().unwrap()],
    );
    assert!(ok.contains("ALPN protocol: h2"), "{ok}");
    assert!(ok.contains("Verify return code: 0 (ok)"), "{ok}");
    assert!(ok.contains("CN = rota ECU display"), "{ok}");

    // Without a client certificate the server ends the handshake (with TLS
    // 1.3 s_client hears it once it reads, hence -ign_eof).
    let none = s_client(s.addr, &["-CAfile", ca.to_str().unwrap(), "-ign_eof"]);
    assert!(none.contains("alert certificate required"), "{none}");
    let refused = rt.block_on(refusals(&s, 1));
    assert!(
        refused.iter().any(|r| r.contains("peer did not return a certificate") || r.contains("certificate")),
        "{refused:?}"
    );
    assert_eq!(s.service.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn idle_and_garbage_connections_hold_up_nobody() {
    rt().block_on(async {
        let s = serve(&identity("ecu-display", "ecu-main.pem")).await;
        // 200 connections that never start a handshake, and one that sends
        // an HTTP request instead of TLS.
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
        }
        let mut garbage = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        // The pinned main still gets through meanwhile.
        assert_eq!(status_of(s.addr, &identity("ecu-main", "ecu-display.pem")).await.unwrap(), "display");
        let refused = refusals(&s, 1).await;
        assert!(!refused.is_empty(), "the non-TLS peer is refused with a reason");
        assert_eq!(s.service.calls.load(Ordering::SeqCst), 1);
        drop(idle);
    });
}
