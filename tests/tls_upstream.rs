//! The sidecar's upstream side over TLS (SPEC 4.3): rustls, HTTP/2 negotiated by ALPN, pooled
//! connections. The upstream is a real TLS server on loopback with a self-signed certificate
//! for `localhost`, trusted by the proxy process through `SSL_CERT_FILE` (read by the platform
//! verifier on Linux).

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::config::octo_route;
use support::http_client::{http1_client, request};
use support::process::{Proxy, TempDir};
use support::*;
use tokio_rustls::rustls;

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    version: Version,
    authorization: Option<String>,
    path: String,
}

/// A TLS upstream offering h2 and http/1.1; counts TLS connections and records requests.
async fn tls_upstream(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
    alpn: &[&[u8]],
) -> (u16, Arc<Mutex<Vec<Seen>>>, Count) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Count::default();
    let (seen2, conns2) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen, conns) = (acceptor.clone(), seen2.clone(), conns2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                conns.bump();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(Seen {
                            version: req.version(),
                            authorization: req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_string()),
                            path: req.uri().path().to_string(),
                        });
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, seen, connections)
}

/// A sidecar config routing `/github` to `https://localhost:{port}` for account `octo`.
fn config(port: u16, access: &str, refresh: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
admin_listen = ""
# One serving thread, so one upstream pool: the pooling assertions count its connections (each
# worker has a pool of its own).
[server]
workers = 1
[refresh]
backend_url = "http://127.0.0.1:9"
{}"#,
        octo_route(
            &format!("https://localhost:{port}"),
            refresh,
            access,
            now_secs() + 86_400
        )
    )
}

async fn run(alpn: &[&[u8]], expected: Version) {
    capture_logs();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (port, seen, connections) = tls_upstream(&cert, alpn).await;
    let dir = TempDir::new("tls");
    let ca = dir.write("upstream-ca.pem", &cert.cert.pem());
    let access = "ghu_tls-upstream-access-token";
    let refresh = "ghr_tls-upstream-refresh-token";
    let config = config(port, access, refresh);
    let proxy = Proxy::start(&config, &[], &[("SSL_CERT_FILE", ca.to_str().unwrap())]).await;
    let client = http1_client();
    for i in 0..20 {
        let answer = request(
            &client,
            "GET",
            &proxy.url(&format!("/github/repos/{i}")),
            &[],
            empty(),
        )
        .await;
        assert_eq!(answer.status, 200, "request {i}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            s.version, expected,
            "request {i} reached the upstream over {:?}",
            s.version
        );
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Bearer {access}").as_str())
        );
        assert_eq!(s.path, format!("/repos/{i}"));
    }
    // Pooled: sequential requests reuse one TLS connection.
    assert_eq!(connections.get(), 1, "TLS connections opened");
    proxy.assert_no_secret_in_stderr(&[access.to_string(), refresh.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_offering_h2_is_spoken_to_over_http2_on_one_pooled_connection() {
    run(&[b"h2", b"http/1.1"], Version::HTTP_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_offering_only_http11_is_spoken_to_over_http11_with_keepalive() {
    run(&[b"http/1.1"], Version::HTTP_11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_certificate_is_a_502_and_no_token_is_sent() {
    capture_logs();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (port, seen, _) = tls_upstream(&cert, &[b"h2", b"http/1.1"]).await;
    let config = config(port, "ghu_untrusted-access", "ghr_untrusted-refresh");
    // No SSL_CERT_FILE: the self-signed certificate is not trusted.
    let proxy = Proxy::start(&config, &[], &[]).await;
    let answer = request(
        &http1_client(),
        "GET",
        &proxy.url("/github/user"),
        &[],
        empty(),
    )
    .await;
    assert_eq!(answer.status, 502);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the request never reached the upstream"
    );
    proxy.assert_no_secret_in_stderr(&[
        "ghu_untrusted-access".to_string(),
        "ghr_untrusted-refresh".to_string(),
    ]);
}
