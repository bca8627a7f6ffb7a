//! Black-box tests of `oauth_refresh_proxy::google_apis::TokenSource`, google-apis-rs'
//! `GetToken` served from the cache, against the crate's in-process fake refresh backend.
//! Calls are counted at the fake; logs are captured at trace level and grepped for every token.

mod support;

use std::sync::Arc;
use std::time::Duration;

use google_apis_common::GetToken;
use oauth_refresh_proxy::google_apis::TokenSource;
use oauth_refresh_proxy::{Error, ErrorKind, Provider, TokenSeed, Tokens};
use support::*;

async fn tokens_for(realm: &Arc<Realm>) -> Tokens {
    let backend = start_backend(realm.clone()).await;
    let refresher = backend_refresher(&backend, realm).timeout(Duration::from_secs(10));
    Tokens::builder(refresher).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_serves_the_cache_with_one_refresh_for_a_thousand_callers() {
    capture_logs();
    let realm = Realm::new("gapis");
    let tokens = tokens_for(&realm).await;
    let refresh = realm.new_refresh_token();
    let expired = realm.new_access_token(&refresh);
    tokens.insert(
        Provider::Google,
        "alice",
        TokenSeed::new(refresh.as_str())
            .access_token(expired.as_str())
            .expires_at(expiry(-1)),
    );
    // What a hub holds: a boxed `GetToken`, cloned into each call.
    let auth: Box<dyn GetToken> = Box::new(TokenSource::new(tokens.clone(), "alice"));
    realm.script([Reply::Gated]);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            auth.get_token(&["https://www.googleapis.com/auth/drive.readonly"])
                .await
                .map_err(|e| e.to_string())
        }));
    }
    realm.backend_calls.wait_for(1).await;
    wait_coalesced(&tokens, Provider::Google, 999, |_| {
        "callers did not join".to_string()
    })
    .await;
    realm.release_backend(1);
    let got = joined_ok(tasks).await;
    assert_eq!(realm.backend_calls.get(), 1, "exactly one refresh call");
    let token = got[0].clone().expect("a token, not NoToken");
    assert!(got.iter().all(|t| t.as_deref() == Some(token.as_str())));
    assert_ne!(token, expired);
    assert!(realm.is_valid_access(&token));
    // Cached now: no further refresh.
    assert_eq!(auth.get_token(&[]).await.unwrap(), Some(token));
    assert_eq!(realm.backend_calls.get(), 1);
    assert_no_secret_logged(&realm.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_errors_are_the_caches() {
    capture_logs();
    let realm = Realm::new("gapis-err");
    let tokens = tokens_for(&realm).await;
    let refresh = realm.new_refresh_token();
    realm.revoke_refresh(&refresh);
    tokens.insert(Provider::Google, "alice", TokenSeed::new(refresh.as_str()));
    let unknown = TokenSource::new(tokens.clone(), "nobody");
    let err = unknown.get_token(&[]).await.unwrap_err();
    let err = err.downcast_ref::<Error>().expect("the cache's error");
    assert_eq!(err.kind(), ErrorKind::UnknownAccount);
    assert_eq!(realm.backend_calls.get(), 0);
    let dead = TokenSource::new(tokens.clone(), "alice");
    let err = dead.get_token(&[]).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Error>().unwrap().kind(),
        ErrorKind::RefreshRejected
    );
    assert_eq!(realm.backend_calls.get(), 1);
    // Fails fast afterwards: the account needs new tokens.
    let err = dead.get_token(&[]).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Error>().unwrap().kind(),
        ErrorKind::RefreshRejected
    );
    assert_eq!(realm.backend_calls.get(), 1);
    assert_no_secret_logged(&realm.secrets());
}
